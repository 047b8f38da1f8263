"""The MNIST command end to end: outputs, presets, bad settings, and real data in CI."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from run_helpers import make_idx_dir, run

from experiments import mnist, run_folder
from jaxnet import architectures

SMALL = (
    "--iterations",
    "60",
    "--batch-size",
    "16",
    "--val-size",
    "50",
    "--log-every",
    "10",
    "--eval-every",
    "20",
    "--checkpoint-every",
    "20",
    "--no-progress",
)
PNG = b"\x89PNG\r\n\x1a\n"


def test_smoke_writes_every_output(idx_dir, tmp_path, capsys, malloc_calls):
    out = tmp_path / "run"
    argv = ["--idx-dir", str(idx_dir), "--out", str(out), *SMALL, "--reuse-freed-memory"]
    assert mnist.run(argv) == 0
    assert malloc_calls == [True]
    for name in run_folder.FIGURES:
        assert (out / name).read_bytes().startswith(PNG), name
    config = json.loads((out / "config.json").read_text())
    assert config["fit"]["iterations"] == 60 and config["fit"]["batch_size"] == 16
    assert {"jax", "jaxlib", "optax", "device", "malloc"} <= set(config["environment"])
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [10, 20, 30, 40, 50, 60]
    assert {
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "learning_rate",
        "elapsed_s",
    } <= set(rows[0])
    assert rows[1]["val_accuracy"] != "nan" and rows[0]["val_accuracy"] == "nan"
    layers = [layer.name for layer in architectures.get("mnist").parametrised]
    diagnostics = [f"{kind}/{name}" for kind in ("grad_norm", "update_ratio") for name in layers]
    assert list(rows[0])[-len(diagnostics) :] == diagnostics
    values = np.array([[float(r[k]) for k in diagnostics] for r in rows])
    assert np.all(np.isfinite(values)) and np.all(values > 0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["parameter_count"] == 416 + 6416 + 7850
    assert np.asarray(metrics["confusion_matrix"]).sum() == 100
    assert set(metrics["per_class"]) == {str(d) for d in range(10)}
    with np.load(out / "params.npz") as params:
        keys = set(params.files)
    assert any("conv1" in k and "w" in k for k in keys), keys
    assert "416" in (out / "parameters.md").read_text()
    assert "precision" in (out / "per_class.md").read_text().lower()
    assert "test accuracy" in capsys.readouterr().out


def test_learns_the_small_set(idx_dir, tmp_path, malloc_calls):
    out = tmp_path / "run"
    args = [
        "--idx-dir",
        str(idx_dir),
        "--out",
        str(out),
        "--iterations",
        "150",
        "--batch-size",
        "32",
        "--val-size",
        "50",
        "--no-progress",
        "--no-augment",  # the class is a bar's row: shifts would blur it
        "--schedule",
        "constant",
        "--steps-per-call",
        "8",  # 18 calls of 8 steps and 6 single ones (a history row at 100)
    ]
    assert mnist.run(args) == 0
    assert malloc_calls == []
    assert "malloc" not in json.loads((out / "config.json").read_text())["environment"]
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] > 0.9


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--learning-rate", "-0.1"), "learning-rate must be positive"),
        (("--batch-size", "0"), "batch-size must be a positive integer"),
        (("--batch-size", "5000"), "larger than the training set"),
        (("--momentum", "1.5"), "momentum must be in"),
        (("--iterations", "-3"), "iterations must be a positive integer"),
        (("--steps-per-call", "0"), "steps-per-call must be a positive integer"),
        (("--seed", "-1"), "seed must be an integer in [0, 4294967295], got -1"),
        (("--seed", "18446744073709551616"), "seed must be an integer in [0, 4294967295]"),
        (("--weight-decay", "inf"), "weight-decay must be a finite number >= 0, got inf"),
        (("--label-smoothing", "nan"), "label-smoothing must be in [0, 1)"),
    ],
)
def test_bad_settings_exit_2(idx_dir, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        mnist.run(
            ["--idx-dir", str(idx_dir), "--out", str(tmp_path / "r"), "--val-size", "50", *flags]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "r").exists()  # refused before any work


def test_occupied_folder_is_refused(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert mnist.run(["--idx-dir", str(idx_dir), "--out", str(out), *SMALL]) == 0
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        mnist.run(["--idx-dir", str(idx_dir), "--out", str(out), *SMALL])
    assert exit_info.value.code == 2
    assert "holds another run" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == before  # nothing lost
    assert (
        mnist.run(
            ["--idx-dir", str(idx_dir), "--out", str(out), "--overwrite", "--seed", "1", *SMALL]
        )
        == 0
    )


def test_a_checkpoint_that_does_not_fit_is_one_line_on_resume(idx_dir, tmp_path, capsys):
    """A run saved before the state had a field (here ``diagnostics``, as an older jaxnet saved
    it): --resume names the checkpoint and the missing field in one line, status 1, and
    deletes nothing."""
    out = tmp_path / "run"
    assert mnist.run(["--idx-dir", str(idx_dir), "--out", str(out), *SMALL]) == 0
    saved = sorted((out / "checkpoints").glob("ckpt_*.npz"))
    for path in saved:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files if k != ".diagnostics"}
        assert len(arrays) < len(z.files)
        np.savez(path, **arrays)
    before = {path: path.read_bytes() for path in saved}
    capsys.readouterr()
    assert mnist.run(["--idx-dir", str(idx_dir), "--out", str(out), *SMALL, "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot resume: checkpoint ") and str(saved[-1]) in err
    assert "missing from the file: .diagnostics" in err
    assert {path: path.read_bytes() for path in saved} == before


def test_missing_data_is_one_line_and_status_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAXNET_CACHE", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert mnist.run(["--idx-dir", str(empty), "--out", str(tmp_path / "r"), *SMALL]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_a_file_that_fails_its_check_names_the_flag_that_skips_it(tmp_path, monkeypatch):
    """As a user meets it: the message names --no-verify, and --no-verify then trains."""
    monkeypatch.setenv("JAXNET_CACHE", str(tmp_path / "cache"))
    make_idx_dir(tmp_path / "data" / "mnist")  # not the official files: the wrong size
    args = ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r"), *SMALL]
    result = run("experiments.mnist", *args)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "wrong size" in line and "pass --no-verify (verify=False in Python)" in line, line
    assert run("experiments.mnist", *args, "--no-verify").returncode == 0


def test_help_explains_every_flag():
    result = run("experiments.mnist", "--help")
    assert result.returncode == 0
    for flag in (
        "--out",
        "--data-dir",
        "--epochs",
        "--iterations",
        "--batch-size",
        "--learning-rate",
        "--momentum",
        "--weight-decay",
        "--seed",
        "--preset",
        "--resume",
        "--overwrite",
        "--checkpoint-every",
        "--idx-dir",
    ):
        assert flag in result.stdout


REAL = os.environ.get("JAXNET_DATA")


@pytest.mark.slow
def test_real_mnist_short_budget_above_95_percent(tmp_path):
    if not REAL:
        if os.environ.get("CI"):
            pytest.fail("JAXNET_DATA is not set in CI: the real-data test cannot run")
        pytest.skip("JAXNET_DATA is not set")
    out = tmp_path / "run"
    args = [
        "--data-dir",
        REAL,
        "--out",
        str(out),
        "--iterations",
        "600",
        "--batch-size",
        "64",
        "--schedule",
        "cosine",
        "--no-progress",
        "--eval-every",
        "600",
    ]
    assert mnist.run(args) == 0
    accuracy = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    assert accuracy > 0.95, accuracy
