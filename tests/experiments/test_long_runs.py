"""Long runs that survive: SIGKILL and resume, Ctrl-C, NaN guard, reproducibility.

These run the real command in subprocesses on a small data set in MNIST's idx format.
"""

from __future__ import annotations

import csv
import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from run_helpers import ROOT, command, env, run

pytestmark = pytest.mark.slow

FLAGS = (
    "--iterations",
    "120",
    "--batch-size",
    "16",
    "--val-size",
    "40",
    "--log-every",
    "10",
    "--eval-every",
    "40",
    "--checkpoint-every",
    "10",
    "--no-progress",
)


def params_of(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "params.npz") as f:
        return {k: f[k] for k in f.files}


def assert_bit_identical(a: Path, b: Path) -> None:
    pa, pb = params_of(a), params_of(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k].dtype == pb[k].dtype
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def history_without_time(out: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader((out / "history.csv").open()))
    for r in rows:
        r.pop("elapsed_s")
    return rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from run_helpers import make_idx_dir

    return make_idx_dir(tmp_path_factory.mktemp("idx"), n_train=300, n_test=60)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> Path:
    """An uninterrupted run, seed 0."""
    out = tmp_path_factory.mktemp("ref") / "run"
    result = mnist(data_dir, out, *FLAGS)
    assert result.returncode == 0, result.stderr
    return out


def mnist(data_dir: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    """``python -m experiments.mnist`` on the small idx set, writing to ``out``."""
    return run("experiments.mnist", "--idx-dir", str(data_dir), "--out", str(out), *flags)


def resume(data_dir: Path, out: Path) -> subprocess.CompletedProcess:
    """``python -m experiments.mnist --resume`` on the run in ``out``."""
    return mnist(data_dir, out, "--resume", "--no-progress")


def start(data_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = command(
        "experiments.mnist", "--idx-dir", str(data_dir), "--out", str(out), *FLAGS, *extra
    )
    return subprocess.Popen(
        args, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_checkpoints(out: Path, proc: subprocess.Popen, count: int) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if len(list((out / "checkpoints").glob("ckpt_*.npz"))) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its checkpoints: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint appeared in time")


def test_sigkill_then_resume_is_bit_identical(data_dir, reference, tmp_path):
    out = tmp_path / "run"
    proc = start(data_dir, out)
    wait_for_checkpoints(out, proc, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "params.npz").exists()  # it really died mid-run
    result = resume(data_dir, out)
    assert result.returncode == 0, result.stderr
    assert_bit_identical(out, reference)
    assert history_without_time(out) == history_without_time(reference)


def test_sigkill_before_any_checkpoint_then_resume(data_dir, reference, tmp_path):
    out = tmp_path / "run"
    proc = start(data_dir, out)
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = resume(data_dir, out)
    assert result.returncode == 0, result.stderr
    assert_bit_identical(out, reference)


def test_ctrl_c_saves_and_says_how_to_resume(data_dir, reference, tmp_path):
    out = tmp_path / "run"
    proc = start(data_dir, out)
    wait_for_checkpoints(out, proc, 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"--out {out} --resume" in err
    assert "Traceback" not in err
    result = resume(data_dir, out)
    assert result.returncode == 0, result.stderr
    assert_bit_identical(out, reference)


def test_same_seed_same_run_other_seed_differs(data_dir, reference, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    for out, seed in ((again, "0"), (other, "1")):
        result = mnist(
            data_dir,
            out,
            "--seed",
            seed,
            *FLAGS,
        )
        assert result.returncode == 0, result.stderr
    assert history_without_time(again) == history_without_time(reference)
    assert_bit_identical(again, reference)

    def metrics(out):
        m = json.loads((out / "metrics.json").read_text())
        for timing in ("train_time_s", "images_per_second", "peak_rss_mb"):
            m.pop(timing)
        return m

    assert metrics(again) == metrics(reference)
    assert history_without_time(other) != history_without_time(reference)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    result = mnist(
        data_dir,
        out,
        "--iterations",
        "50",
        "--batch-size",
        "16",
        "--val-size",
        "40",
        "--checkpoint-every",
        "1",
        "--learning-rate",
        "1e4",
        "--no-progress",
    )
    assert result.returncode == 1
    err = result.stderr.strip().splitlines()
    assert "NaN or infinite at iteration" in err[-1] and "lower the learning rate" in err[-1]
    assert "Traceback" not in result.stderr
    kept = sorted((out / "checkpoints").glob("ckpt_*.npz"))
    assert kept, "the last good checkpoint must be kept"
    digest = hashlib.sha256(kept[-1].read_bytes()).hexdigest()
    from jaxnet.checkpoint import read_metadata

    meta = read_metadata(kept[-1])
    bad = int(err[-1].split("iteration ")[1].split(":")[0])
    assert meta["iteration"] < bad
    assert hashlib.sha256(kept[-1].read_bytes()).hexdigest() == digest
    assert not (out / "params.npz").exists()


def test_two_devices_follow_one(data_dir, tmp_path):
    """--devices 2 (virtual CPU devices) trains like one device, up to float32 rounding."""
    runs = {}
    for devices in ("1", "2"):
        out = tmp_path / f"d{devices}"
        result = mnist(
            data_dir,
            out,
            "--devices",
            devices,
            "--iterations",
            "40",
            "--batch-size",
            "16",
            "--val-size",
            "40",
            "--no-progress",
        )
        assert result.returncode == 0, result.stderr
        runs[devices] = params_of(out)
    for key, value in runs["1"].items():
        np.testing.assert_allclose(runs["2"][key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_batch_that_does_not_divide_is_refused(data_dir, tmp_path):
    result = mnist(
        data_dir,
        tmp_path / "r",
        "--devices",
        "2",
        "--batch-size",
        "15",
        "--val-size",
        "40",
        "--no-progress",
    )
    assert result.returncode == 2
    assert "batch size 15 does not divide over 2 devices" in result.stderr
