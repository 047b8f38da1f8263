"""experiments.explain: the printed table, the figure, the command and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_files import write_idx_dir
from PIL import Image
from run_folders import image_for, write_run
from run_helpers import learnable_digits

from experiments import explain, trained_run, walk

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", params=["mnist", "cifar10_modified"])
def run(request, tmp_path_factory) -> trained_run.TrainedRun:
    folder = tmp_path_factory.mktemp(request.param) / "run"
    return trained_run.load_run(write_run(folder, request.param))


def test_table_walks_forward_then_back(run):
    expl = walk.explain(run, image_for(run.arch), label=0)
    table = explain.format_table(expl, "title")
    names = [layer.name for layer in run.arch.layers]
    forward, backward = table.split("\nbackward ")
    rows = [line.split()[0] for line in forward.splitlines()[4:-1]]
    assert rows == ["input", *names]
    rows = [line.split()[0] for line in backward.splitlines()[2:-1]]
    assert rows == ["loss", *reversed(names)]
    assert f"class {run.class_names[0]}" in backward


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
    """A data root with small MNIST-format files (loaded with --no-verify)."""
    train, train_labels = learnable_digits(40, 1)
    test, test_labels = learnable_digits(12, 2)
    arrays = {
        "train_images": train,
        "train_labels": train_labels,
        "test_images": test,
        "test_labels": test_labels,
    }
    write_idx_dir(tmp_path / "data" / "mnist", arrays)
    return tmp_path / "data"


def test_command_on_a_test_image(tmp_path, mnist_dir, capsys):
    folder = write_run(tmp_path / "run", "mnist")
    argv = [str(folder), "--index", "3", "--data-dir", str(mnist_dir), "--no-verify"]
    assert explain.main(argv) == 0
    out = capsys.readouterr().out
    label = int(learnable_digits(12, 2)[1][3])
    assert f"test image #3 (true class {label})" in out
    assert f"backward from the loss of class {label} " in out
    figure = folder / "explain-3.png"
    assert figure.read_bytes().startswith(PNG)
    assert out.strip().endswith(f"figure: {figure}")


@pytest.mark.parametrize("label", ["cat", "3"])
def test_command_on_an_image_file_with_a_class(tmp_path, capsys, label):
    folder = write_run(tmp_path / "run", "cifar10_baseline")
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(path)
    out = tmp_path / "figs" / "fig.png"
    assert explain.main([str(folder), str(path), "--class", label, "--out", str(out)]) == 0
    assert "backward from the loss of class cat " in capsys.readouterr().out
    assert out.read_bytes().startswith(PNG)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{run}", "--index", "12", "--data-dir", "{data}", "--no-verify"], "outside the test set"),
        (["{run}", "--index", "0", "--class", "dog", "--data-dir", "{data}"], "not one of"),
        (["{run}", "{tmp}/missing.png"], "no such file"),
        (["{tmp}/nowhere", "--index", "0"], "no such run folder"),
    ],
)
def test_command_errors_are_one_line_and_status_2(tmp_path, mnist_dir, capsys, argv, message):
    folder = write_run(tmp_path / "run", "mnist")
    fields = {"run": folder, "data": mnist_dir, "tmp": tmp_path}
    assert explain.main([a.format(**fields) for a in argv]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line


def test_missing_data_is_status_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAXNET_CACHE", str(tmp_path / "cache"))
    folder = write_run(tmp_path / "run", "mnist")
    (tmp_path / "empty").mkdir()
    from jaxnet.datasets import mnist

    monkeypatch.setattr(mnist, "MIRRORS", ("http://127.0.0.1:1/",))  # refused at once
    argv = [str(folder), "--index", "0", "--data-dir", str(tmp_path / "empty")]
    assert explain.main(argv) == 1
    # pooch may log its download attempt first, depending on when its logger bound stderr
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "MNIST files missing" in lines[-1]
    assert sum(line.startswith("error") for line in lines) == 1


@pytest.mark.parametrize("argv", [["{run}"], ["{run}", "x.png", "--index", "1"]])
def test_one_image_exactly(tmp_path, argv):
    folder = write_run(tmp_path / "run", "mnist")
    with pytest.raises(SystemExit) as info:
        explain.main([a.format(run=folder) for a in argv])
    assert info.value.code == 2


def test_a_reader_that_goes_early_costs_no_traceback_and_the_figure_is_written(tmp_path, mnist_dir):
    # `python -m experiments.explain RUN --index 0 | head -1`: the table's write meets a closed
    # pipe; the command drops the rest of its output and still writes its figure.
    import subprocess

    from run_helpers import ROOT, command, env

    folder = write_run(tmp_path / "run", "mnist")
    argv = [str(folder), "--index", "0", "--data-dir", str(mnist_dir), "--no-verify"]
    proc = subprocess.Popen(
        command("experiments.explain", *argv),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before the first line
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr
    assert (folder / "explain-0.png").read_bytes().startswith(PNG)
