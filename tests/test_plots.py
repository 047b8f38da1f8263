"""Tests for jaxnet.plots: every figure is a valid PNG, also in the edge cases."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from jaxnet import plots
from jaxnet.metrics import confusion_matrix

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = [f"class {i}" for i in range(10)]


def check_png(path: Path, returned: Path) -> np.ndarray:
    """``path`` is a complete PNG that matplotlib reads back; no temp file is left beside it."""
    assert returned == Path(path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert 150 <= image.shape[0] <= 3000 and 150 <= image.shape[1] <= 3000
    assert image.std() > 0.01  # not a blank canvas
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    return image


@pytest.mark.parametrize("cin", [1, 3])
def test_plot_kernels(tmp_path, cin):
    w = np.random.default_rng(0).normal(size=(5, 5, cin, 16)).astype(np.float32)
    path = tmp_path / f"kernels{cin}.png"
    check_png(path, plots.plot_kernels(w, path))


def test_plot_kernels_odd_count_and_constant_kernel(tmp_path):
    w = np.random.default_rng(0).normal(size=(3, 3, 3, 7))
    w[..., 0] = 0.5  # constant kernel: drawn mid-grey, no division by zero
    path = tmp_path / "sub" / "dir" / "k.png"  # parents are created
    check_png(path, plots.plot_kernels(w, str(path)))


def test_plot_kernels_all_zero(tmp_path):
    path = tmp_path / "zero.png"
    check_png(path, plots.plot_kernels(np.zeros((5, 5, 1, 4)), path))


@pytest.mark.parametrize(
    ("shape", "match"),
    [((5, 5, 16), "HWIO"), ((5, 5, 2, 4), "C_in must be 1"), ((5, 5, 1, 0), "empty")],
)
def test_plot_kernels_rejects_bad_shapes(tmp_path, shape, match):
    with pytest.raises(ValueError, match=match):
        plots.plot_kernels(np.zeros(shape), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_plot_kernels_rejects_nan(tmp_path):
    w = np.zeros((3, 3, 1, 2))
    w[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        plots.plot_kernels(w, tmp_path / "x.png")


def _predictions(n: int, k: int, wrong: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    preds = labels.copy()
    preds[:wrong] = (labels[:wrong] + 1) % k
    return labels, preds


@pytest.mark.parametrize("channels", [1, 3])
def test_plot_misclassified_uint8(tmp_path, channels):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 28, 28, channels), dtype=np.uint8)
    labels, preds = _predictions(40, 10, wrong=30)
    path = tmp_path / "mis.png"
    check_png(path, plots.plot_misclassified(images, labels, preds, NAMES, path, max_images=12))


def test_plot_misclassified_preprocessed_float_with_mean(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(6, 32, 32, 3)).astype(np.float32) / 255.0
    mean = np.array([0.49, 0.48, 0.45], np.float32)
    labels, preds = _predictions(6, 10, wrong=3)
    path = tmp_path / "mis.png"
    returned = plots.plot_misclassified(raw - mean, labels, preds, NAMES, path, mean=mean)
    check_png(path, returned)


def test_plot_misclassified_none_wrong(tmp_path):
    images = np.zeros((5, 28, 28, 1), np.uint8)
    labels = np.arange(5)
    path = tmp_path / "none.png"
    check_png(path, plots.plot_misclassified(images, labels, labels, NAMES, path))


def test_plot_misclassified_validation(tmp_path):
    images = np.zeros((4, 8, 8, 1), np.uint8)
    ok = np.array([0, 1, 2, 3])
    with pytest.raises(ValueError, match="NHWC"):
        plots.plot_misclassified(images[..., 0], ok, ok, NAMES, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        plots.plot_misclassified(images, ok[:3], ok, NAMES, tmp_path / "x.png")
    out_of_range = (
        r"predictions: 12 at index 1 is outside 0\.\.9 \(1 out of range\), for 10 class names"
    )
    with pytest.raises(ValueError, match=out_of_range):
        plots.plot_misclassified(images, ok, [0, 12, 2, 3], NAMES, tmp_path / "x.png")
    with pytest.raises(ValueError, match="mean is for preprocessed"):
        plots.plot_misclassified(images, ok, ok, NAMES, tmp_path / "x.png", mean=0.1)
    with pytest.raises(ValueError, match="max_images"):
        plots.plot_misclassified(images, ok, ok, NAMES, tmp_path / "x.png", max_images=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("dtype", "channels"), [(np.uint8, 3), (np.float32, 1)])
def test_plot_images_uint8_or_float_with_long_captions(tmp_path, dtype, channels):
    images = np.random.default_rng(0).integers(0, 256, (5, 20, 30, channels)).astype(dtype)
    if dtype == np.float32:
        images /= 255.0
    captions = ["a.png", "a_file_name_longer_than_eighteen_characters.png", "c", "d", "e"]
    path = tmp_path / "sheet.png"
    titles = [f"class {i}" for i in range(5)]
    check_png(path, plots.plot_images(images, titles, captions, path, "As the network sees them"))


def test_plot_confusion_matrix(tmp_path):
    labels, preds = _predictions(500, 10, wrong=120)
    c = confusion_matrix(labels, preds, 10)
    path = tmp_path / "conf.png"
    check_png(path, plots.plot_confusion_matrix(c, NAMES, path))


def test_plot_confusion_matrix_validation(tmp_path):
    with pytest.raises(ValueError, match="names"):
        plots.plot_confusion_matrix(np.eye(3, dtype=int), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="square"):
        plots.plot_confusion_matrix(np.zeros((2, 3)), ["a", "b"], tmp_path / "x.png")


def _history(n: int = 30, val_every: int = 5) -> list[dict]:
    rows = []
    for i in range(n):
        row = {
            "iteration": 100 * (i + 1),
            "train_loss": 2.3 * math.exp(-i / 8) + 0.05,
            "train_accuracy": 1 - 0.9 * math.exp(-i / 8),
            "val_loss": math.nan,
            "val_accuracy": math.nan,
        }
        if (i + 1) % val_every == 0:
            row["val_loss"] = row["train_loss"] * 1.1
            row["val_accuracy"] = row["train_accuracy"] - 0.02
        rows.append(row)
    return rows


def test_plot_learning_curves_rows_with_nan_validation(tmp_path):
    path = tmp_path / "curves.png"
    check_png(path, plots.plot_learning_curves(_history(), path))


def test_plot_learning_curves_missing_validation(tmp_path):
    keys = ("iteration", "train_loss", "train_accuracy")
    rows = [{key: row[key] for key in keys} for row in _history()]
    path = tmp_path / "curves.png"  # no val_* keys at all
    check_png(path, plots.plot_learning_curves(rows, path))


def test_plot_learning_curves_from_csv_rows(tmp_path):
    # history.csv as written, read back with DictReader: strings, empty cells, extra columns
    rows = _history(12, val_every=4)
    csv_path = tmp_path / "history.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, [*rows[0], "learning_rate"])
        writer.writeheader()
        for row in rows:
            out = {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            writer.writerow({**out, "learning_rate": 0.1})
    with open(csv_path, newline="") as f:
        read = list(csv.DictReader(f))
    del read[0]["val_loss"]  # and a row missing the key entirely
    path = tmp_path / "curves.png"
    check_png(path, plots.plot_learning_curves(read, path))


def test_plot_learning_curves_single_row_and_zero_loss(tmp_path):
    row = {"iteration": 1, "train_loss": 0.0, "train_accuracy": 1.0, "val_loss": None}
    path = tmp_path / "one.png"
    check_png(path, plots.plot_learning_curves([row], path))


@pytest.mark.parametrize(
    ("history", "err", "match"),
    [
        ([], ValueError, "empty"),
        ([{"iteration": 1, "train_loss": 1.0}], ValueError, "train_accuracy"),
        ([{"iteration": 1, "train_loss": "x", "train_accuracy": 1}], ValueError, "row 0"),
        ([{"iteration": None, "train_loss": 1, "train_accuracy": 1}], ValueError, "iteration"),
        ([(1, 2, 3)], TypeError, "mapping"),
    ],
)
def test_plot_learning_curves_validation(tmp_path, history, err, match):
    with pytest.raises(err, match=match):
        plots.plot_learning_curves(history, tmp_path / "x.png")


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "conf.png"
    plots.plot_confusion_matrix(np.eye(2, dtype=int), ["a", "b"], path)
    before = path.read_bytes()

    def crash(self, fname, **kwargs):
        fname.write(b"\x89PNG half")  # a partial write, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", crash)
    with pytest.raises(KeyboardInterrupt):
        plots.plot_confusion_matrix(np.eye(2, dtype=int) * 3, ["a", "b"], path)
    assert path.read_bytes() == before  # the old figure is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf.png"]  # no temp file left


def _gradient_history(n: int = 6) -> list[dict[str, float]]:
    return [
        {
            "iteration": 10 * (i + 1),
            "train_loss": 1.0,
            "train_accuracy": 0.5,
            "grad_norm/conv1": 0.5 / (i + 1),
            "grad_norm/dense1": 2.0 * (i + 1),
            "update_ratio/conv1": 1e-3,
            "update_ratio/dense1": 0.0 if i == 0 else 1e-2,  # a zero is left off the log axis
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [1, 6])
def test_plot_gradients_two_log_panels(tmp_path, n):
    path = tmp_path / "gradients.png"
    check_png(path, plots.plot_gradients(_gradient_history(n), path))


def test_plot_gradients_from_csv_strings(tmp_path):
    rows = [{k: str(v) for k, v in row.items()} for row in _gradient_history()]
    rows[2]["grad_norm/conv1"] = ""  # an empty cell (a row from an older history)
    path = tmp_path / "gradients.png"
    check_png(path, plots.plot_gradients(rows[::-1], path))


@pytest.mark.parametrize(
    ("history", "err", "match"),
    [
        ([], ValueError, "empty"),
        ([{"iteration": 1, "grad_norm/a": 1.0}], ValueError, "update_ratio"),
        ([{"iteration": 1, "update_ratio/a": 1.0}], ValueError, "grad_norm"),
        ([{"iteration": None, "grad_norm/a": 1, "update_ratio/a": 1}], ValueError, "iteration"),
        ([{"iteration": 1, "grad_norm/a": "x", "update_ratio/a": 1}], ValueError, "row 0"),
        ([(1, 2)], TypeError, "mapping"),
    ],
)
def test_plot_gradients_validation(tmp_path, history, err, match):
    with pytest.raises(err, match=match):
        plots.plot_gradients(history, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_learning_curves_draws_the_averaged_weights_beside(tmp_path, monkeypatch):
    drawn = []
    real_save = plots.save_figure
    monkeypatch.setattr(
        plots, "save_figure", lambda fig, path: drawn.append(fig) or real_save(fig, path)
    )
    rows = _history(12, val_every=4)
    path = tmp_path / "curves.png"
    check_png(path, plots.plot_learning_curves(rows, path))
    for row in rows:
        row["val_loss_averaged"] = row["val_loss"] * 0.9
        row["val_accuracy_averaged"] = row["val_accuracy"] + 0.01
    check_png(path, plots.plot_learning_curves(rows, path))
    plain, averaged = (
        [t.get_text() for ax in f.axes for t in ax.get_legend().get_texts()] for f in drawn
    )
    assert "validation, averaged weights" not in plain
    assert averaged.count("validation, averaged weights") == 2
