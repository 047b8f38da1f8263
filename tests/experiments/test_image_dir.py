"""--image-dir on experiments.mnist and experiments.cifar10, as a user runs them: bad folders,
a round trip through training and predict, train/ and test/, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from run_helpers import run as run_command

from experiments import cifar10, explain, mnist, predict, run_folder

QUICK = ("--batch-size", "16", "--val-size", "12", "--no-progress")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXNET_CACHE", str(tmp_path / "cache"))


def shape(kind: str, seed: int, size: int) -> np.ndarray:
    """A dark-background picture of a light bar, cross or ring, jittered and noisy."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 40, (size, size)).astype(np.uint8)
    c, r, w = size // 2 + rng.integers(-2, 3), size // 3, max(2, size // 10)
    if kind in ("bar", "cross"):
        a[c - w : c + w, c - r : c + r] = 255
    if kind == "cross":
        a[c - r : c + r, c - w : c + w] = 255
    if kind == "ring":
        y, x = np.mgrid[:size, :size]
        d = np.hypot(y - c, x - c)
        a[(d > r - w) & (d < r + w)] = 255
    return a


def shapes_folder(root: Path, per_class: int = 24, colour: bool = False) -> Path:
    """``root/{bar,cross,ring}/`` of PNG and JPEG shapes at mixed sizes (and tints)."""
    for k, kind in enumerate(("bar", "cross", "ring")):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            grey = shape(kind, 100 * k + i, (28, 40, 56)[i % 3])
            image = Image.fromarray(grey)
            if colour:
                tint = np.asarray([(1.0, 0.6, 0.6), (0.6, 1.0, 0.6), (0.6, 0.6, 1.0)][i % 3])
                image = Image.fromarray((grey[..., None] * tint).astype(np.uint8))
            if i % 2:
                image.save(root / kind / f"{i:02d}.jpg", quality=95)
            else:
                image.save(root / kind / f"{i:02d}.png")
    return root


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def _bad(root: Path, case: str) -> str:
    if case == "missing":
        return "no such folder"
    root.mkdir()
    if case == "empty":
        return "no class sub-folders"
    if case == "one class":
        shapes_folder(root)
        for kind in ("cross", "ring"):
            for f in (root / kind).iterdir():
                f.unlink()
            (root / kind).rmdir()
        return "only one class sub-folder (bar)"
    if case == "class with no readable image":
        shapes_folder(root, per_class=2)
        (root / "dots").mkdir()
        (root / "dots" / "notes.txt").write_text("not an image")
        return "dots: no readable image"
    if case == "test classes differ":
        shapes_folder(root / "train", per_class=2)
        shapes_folder(root / "test", per_class=1)
        (root / "test" / "bar").rename(root / "test" / "bars")
        return "classes differ from"
    raise AssertionError(case)


BAD = ["missing", "empty", "one class", "class with no readable image", "test classes differ"]


@pytest.mark.parametrize("command", [mnist, cifar10])
@pytest.mark.parametrize("case", BAD)
def test_a_bad_folder_is_one_line_status_2_and_writes_nothing(tmp_path, capsys, command, case):
    folder, out = tmp_path / "pics", tmp_path / "out"
    what = _bad(folder, case)
    assert command.run(["--image-dir", str(folder), "--out", str(out), *QUICK]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(folder) in line and what in line, line
    assert not out.exists()


def test_as_a_process_a_bad_folder_is_status_2_without_traceback(tmp_path):
    result = run_command("experiments.mnist", "--image-dir", str(tmp_path / "no"), *QUICK)
    assert result.returncode == 2
    assert one_error_line(result.stderr).endswith("no such folder")


def test_image_dir_and_idx_dir_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        mnist.run(["--image-dir", str(tmp_path), "--idx-dir", str(tmp_path)])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("fraction", ["0", "1", "x"])
def test_a_bad_test_fraction_is_refused(tmp_path, capsys, fraction):
    with pytest.raises(SystemExit) as info:
        mnist.run(["--image-dir", str(tmp_path), "--test-fraction", fraction])
    assert info.value.code == 2
    assert "--test-fraction" in capsys.readouterr().err


def test_round_trip_train_then_predict_answers_with_folder_names(tmp_path, capsys):
    folder, out = shapes_folder(tmp_path / "shapes"), tmp_path / "run"
    (folder / "bar" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    argv = ["--image-dir", str(folder), "--out", str(out), "--iterations", "300", *QUICK]
    assert mnist.run([*argv, "--eval-every", "100"]) == 0
    captured = capsys.readouterr()
    assert "72 images in 3 classes (bar 24, cross 24, ring 24)" in captured.err
    assert "skipped 1 file(s) that are not readable images: bar/broken.png" in captured.err
    assert "mnist_shapes: test accuracy" in captured.out and "seed report" not in captured.out
    for name in run_folder.OUTPUT_FILES:
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == ["bar", "cross", "ring"]
    record = config["image_folder"]
    assert record["layout"] == "split here" and record["test_fraction"] == 0.2
    assert record["test_per_class"] == {"bar": 5, "cross": 5, "ring": 5}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"bar", "cross", "ring"}
    assert metrics["test_accuracy"] >= 0.8, metrics["test_accuracy"]
    assert "| ring |" in (out / "per_class.md").read_text()

    files = [folder / "bar" / "00.png", folder / "cross" / "01.jpg", folder / "ring" / "02.png"]
    assert predict.main([str(out), *map(str, files), "--top", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    answers = [line.split(": ", 1)[1].split()[0] for line in lines]
    assert answers == ["bar", "cross", "ring"], lines

    assert explain.main([str(out), "--index", "0", "--out", str(tmp_path / "e.png")]) == 0
    assert "true class bar" in capsys.readouterr().out

    # resume reads the run's own folder, split and seed, without --image-dir
    assert mnist.run(["--out", str(out), "--resume", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "read from the cache" in captured.err
    assert "mnist_shapes: test accuracy" in captured.out and "seed report" not in captured.out
    with pytest.raises(SystemExit) as refused:  # the split is the run's: not to be changed
        mnist.run(["--out", str(out), "--resume", "--test-fraction", "0.5", "--no-progress"])
    assert refused.value.code == 2
    assert "--resume cannot change --test-fraction (the run has 0.2, given 0.5)" in (
        capsys.readouterr().err
    )
    shape_image = Image.fromarray(shape("ring", 999, 28))
    shape_image.save(folder / "ring" / "extra.png")
    assert mnist.run(["--out", str(out), "--resume", "--no-progress"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after what it found there
    assert "images per class differ" in line and str(folder) in line


def test_cifar10_train_and_test_folders_colour(tmp_path, capsys):
    root = tmp_path / "photos"
    shapes_folder(root / "train", per_class=20, colour=True)
    shapes_folder(root / "test", per_class=4, colour=True)
    out = tmp_path / "run"
    argv = ["--arch", "baseline", "--image-dir", str(root), "--out", str(out), *QUICK]
    assert cifar10.run([*argv, "--iterations", "40"]) == 0
    assert "cifar10_baseline_photos: test accuracy" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == "cifar10_baseline_photos"
    assert config["image_folder"]["layout"] == "train/ and test/"
    assert config["image_folder"]["test_per_class"] == {"bar": 4, "cross": 4, "ring": 4}
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.asarray(metrics["confusion_matrix"]).shape == (3, 3)
    assert metrics["parameter_count"] == 1216 + 6416 + 16 * 16 * 16 * 3 + 3
    assert predict.main([str(out), str(root / "test" / "ring" / "00.png"), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)[0]["classes"]
    assert {c["class"] for c in answer} == {"bar", "cross", "ring"}


@pytest.mark.parametrize("flags", [["--test-fraction", "0.3"], ["--centre"]])
def test_folder_options_need_an_image_dir(idx_dir, tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as info:
        mnist.run(["--idx-dir", str(idx_dir), "--out", str(tmp_path / "r"), *flags, *QUICK])
    assert info.value.code == 2
    assert f"{flags[0]} need --image-dir" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
