"""The report's figures as PNG files: kernels, misclassified images, confusion matrix, curves.

Each function draws one figure and writes it to ``path`` (parent folders are created), then
returns ``path`` as a :class:`~pathlib.Path`:

- :func:`plot_kernels`: first-layer convolution kernels (report figs. 1 and 5).
- :func:`plot_misclassified`: a grid of misclassified test images, true and predicted class
  (figs. 2 and 6).
- :func:`plot_confusion_matrix`: the confusion matrix with the count in each cell (figs. 3, 7).
- :func:`plot_learning_curves`: loss and accuracy against iteration, train and validation
  (fig. 4).

No pyplot: each figure is a :class:`matplotlib.figure.Figure` given its own Agg canvas, so nothing
touches matplotlib's global state or needs a display, and figures are freed when they go out of
scope. Writes go through :func:`jaxnet.io.atomic_write`: an interrupted run leaves the old file or
none, never half a PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from jaxnet import metrics
from jaxnet._validate import int_at_least, out_of_range
from jaxnet.io import atomic_write

__all__ = [
    "plot_confusion_matrix",
    "plot_kernels",
    "plot_learning_curves",
    "plot_misclassified",
    "save_figure",
]

DPI = 120


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = DPI) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (:func:`jaxnet.io.atomic_write`)."""
    FigureCanvasAgg(fig)  # an Agg canvas of its own: no pyplot, no global backend switch
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=dpi)
    return Path(path)


def _grid(n: int) -> tuple[int, int]:
    """``(rows, cols)`` of a near-square grid holding ``n >= 1`` tiles."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


def plot_kernels(
    w: Any, path: str | os.PathLike[str], title: str = "First-layer convolution kernels"
) -> Path:
    """Draw first-layer convolution kernels as a grid of ``C_out`` tiles.

    - ``C_in == 1``: grayscale on **one shared, symmetric scale** ``[-m, m]``, ``m = max|w|``:
      mid-grey is 0, white the most positive weight, black the most negative, with a colour bar.
      Kernels are comparable with each other, and a dead (near-zero) kernel shows as flat grey.
    - ``C_in == 3``: RGB tiles, **each kernel min-max normalised** to ``[0, 1]`` on its own
      (over all three channels together, so its colour balance is kept); a constant kernel is
      mid-grey.

    Args:
        w: HWIO kernel ``(KH, KW, C_in, C_out)``, ``C_in`` 1 or 3; NumPy or JAX array.
        path: where to write the PNG.
        title: the figure's title; a line describing the shape and colour scale is added.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``w`` is not 4-d, has an empty axis, ``C_in`` is not 1 or 3, or ``w`` holds
            NaN or infinity.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"w must be an HWIO kernel (KH, KW, C_in, C_out), got shape {w.shape}")
    kh, kw, cin, cout = w.shape
    if min(w.shape) == 0:
        raise ValueError(f"w must have no empty axis, got shape {w.shape}")
    if cin not in (1, 3):
        raise ValueError(
            f"plot_kernels draws first-layer kernels: C_in must be 1 (grayscale) or 3 (RGB), "
            f"got C_in = {cin} (w shape {w.shape})"
        )
    if not np.all(np.isfinite(w)):
        raise ValueError(f"w holds {np.count_nonzero(~np.isfinite(w))} NaN or infinite weights")

    rows, cols = _grid(cout)
    tile = min(1.1, 9.0 / cols)
    fig = Figure(figsize=(max(cols * tile + (1.2 if cin == 1 else 0.3), 4.0), rows * tile + 1.1))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    if cin == 1:
        m = float(np.max(np.abs(w))) or 1.0
        scale = "grey scale shared by all kernels, mid-grey = 0"
    else:
        scale = "RGB, each kernel min-max normalised to [0, 1]"
    image = None
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= cout:
            ax.set_axis_off()
            continue
        if cin == 1:
            image = ax.imshow(w[:, :, 0, k], cmap="gray", vmin=-m, vmax=m, interpolation="nearest")
        else:
            tile_w = w[:, :, :, k]
            lo, hi = tile_w.min(), tile_w.max()
            rgb = (tile_w - lo) / (hi - lo) if hi > lo else np.full_like(tile_w, 0.5)
            ax.imshow(rgb, interpolation="nearest")
        ax.set_title(str(k), fontsize=8, pad=2)
    if cin == 1:
        fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    fig.suptitle(f"{title}\n{cout} kernels of {kh}×{kw}×{cin}; {scale}", fontsize=10)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Misclassified images
# ---------------------------------------------------------------------------------------------


def _int_vector(name: str, x: Any, n: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one per image), got {arr.shape}")
    if n and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _classes(
    labels: Any, predictions: Any, class_names: Sequence[str], n: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The true and predicted classes of ``n`` images, checked against the names' count."""
    if isinstance(class_names, str):
        raise TypeError("class_names must be a sequence of names, got a single string")
    names = [str(c) for c in class_names]
    y, p = _int_vector("labels", labels, n), _int_vector("predictions", predictions, n)
    for name, arr in (("labels", y), ("predictions", p)):
        if wrong := out_of_range(arr, len(names)):
            raise ValueError(f"{name}: {wrong}, for {len(names)} class names")
    return y, p, names


def _displayable(images: np.ndarray, mean: Any) -> np.ndarray:
    """Images as float ``[0, 1]`` for ``imshow``, from uint8, or from ``x / 255 - mean``."""
    if images.dtype == np.uint8:
        if mean is not None:
            raise ValueError(
                "mean is for preprocessed float images (x / 255 - mean); got uint8 images, "
                "which are shown as they are: pass mean=None"
            )
        return images.astype(np.float32) / 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"images must be uint8 or float, got dtype {images.dtype}")
    out = images.astype(np.float32)
    if mean is not None:
        m = np.asarray(mean, dtype=np.float32)
        if m.shape not in ((), (images.shape[-1],)):
            raise ValueError(
                f"mean must be a scalar or have shape ({images.shape[-1]},), got {m.shape}"
            )
        out = out + m
    return np.clip(np.nan_to_num(out), 0.0, 1.0)


def _nothing_wrong(n: int, title: str) -> Figure:
    """The misclassified-images figure when every prediction is right: a line that says so."""
    fig = Figure(figsize=(6.0, 2.5))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        f"No misclassified images:\nall {n} predictions are correct.",
        ha="center",
        va="center",
        fontsize=13,
        transform=ax.transAxes,
    )
    fig.suptitle(f"{title}: 0 of {n} wrong", fontsize=11)
    return fig


def plot_misclassified(
    images: Any,
    labels: Any,
    predictions: Any,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    max_images: int = 25,
    mean: Any = None,
    title: str = "Misclassified test images",
) -> Path:
    """Draw a grid of the misclassified images, each titled with its true and predicted class.

    The first ``max_images`` misclassified images in index order are shown (deterministic), each
    titled ``true: X`` over ``pred: Y`` and labelled with its index in ``images``. The figure's
    title gives how many of the ``N`` images are wrong. With none wrong, the figure says so.

    Args:
        images: NHWC ``(N, H, W, C)``, ``C`` 1 (grayscale) or 3 (RGB): uint8 as loaded (shown as
            is), or float in ``[0, 1]``, or float preprocessed as ``x / 255 - mean`` when ``mean``
            is given (the mean is added back; the result is clipped to ``[0, 1]``).
        labels: int ``(N,)``, the true classes.
        predictions: int ``(N,)``, the predicted classes.
        class_names: ``K`` names, in class-index order.
        path: where to write the PNG.
        max_images: at most this many images are drawn (``>= 1``).
        mean: ``None``, or the scalar / ``(C,)`` training mean that float ``images`` had
            subtracted (``jaxnet.training.data.channel_mean``).
        title: the figure's title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``images`` is not ``(N, H, W, 1 or 3)``, ``labels`` or ``predictions`` is not
            ``(N,)``, a class index is outside ``[0, K)``, ``max_images < 1``, or ``mean`` is
            given for uint8 images or has the wrong shape.
        TypeError: ``images`` is neither uint8 nor float, a class array is not integer, or
            ``max_images`` is not an int.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be NHWC (N, H, W, C) with C 1 or 3, got {images.shape}")
    n = images.shape[0]
    y, p, names = _classes(labels, predictions, class_names, n)
    max_images = int_at_least("max_images", max_images, 1)
    wrong = np.flatnonzero(y != p)
    shown = wrong[:max_images]
    shown_images = _displayable(images[shown], mean)  # only those drawn: the test set may be big
    if wrong.size == 0:
        return save_figure(_nothing_wrong(n, title), path)

    rows, cols = _grid(shown.size)
    tile = 1.7
    fig = Figure(figsize=(max(cols * tile, 4.5), rows * (tile + 0.45) + 0.6))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, i, img in zip(axes.flat, shown, shown_images, strict=False):
        if img.shape[-1] == 1:
            ax.imshow(img[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(img, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"true: {names[y[i]]}\npred: {names[p[i]]}", fontsize=8, pad=3)
        ax.set_xlabel(f"#{i}", fontsize=7, labelpad=1)
    for ax in list(axes.flat)[shown.size :]:
        ax.set_axis_off()
    more = f"; the first {shown.size} shown" if shown.size < wrong.size else ""
    fig.suptitle(f"{title}: {wrong.size} of {n} wrong ({wrong.size / n:.2%}){more}", fontsize=11)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Confusion matrix
# ---------------------------------------------------------------------------------------------


def plot_confusion_matrix(
    confusion: Any,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "Confusion matrix",
) -> Path:
    """Draw the confusion matrix as an image with the count written in each cell.

    Rows are the true class (y axis, "true"), columns the predicted class (x axis,
    "predicted"), as :func:`jaxnet.metrics.confusion_matrix` returns it. Colour is the count on a
    linear scale; the title adds the accuracy and the number of samples.

    Args:
        confusion: ``(K, K)`` counts, rows = true class, columns = predicted class.
        class_names: ``K`` names, in class-index order.
        path: where to write the PNG.
        title: the figure's title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``confusion`` is not ``(K, K)`` finite non-negative counts, or
            ``class_names`` does not have ``K`` entries.
        TypeError: ``confusion`` is not numeric, or ``class_names`` is a single string.
    """
    c = metrics._check_confusion(confusion)
    k = c.shape[0]
    names = metrics._check_names(class_names, k)
    acc = metrics.accuracy(c)
    total = c.sum()

    side = max(4.5, 0.55 * k + 2.5)
    fig = Figure(figsize=(side + 1.0, side))
    fig.set_layout_engine("constrained")
    ax = fig.add_subplot()
    vmax = float(c.max()) or 1.0
    image = ax.imshow(c, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="count")
    if k <= 40:
        fontsize = max(5.0, min(10.0, 110.0 / k))
        for i in range(k):
            for j in range(k):
                v = c[i, j]
                ax.text(
                    j,
                    i,
                    metrics._count(v),
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if v > 0.5 * vmax else "black",
                )
    ax.set_xticks(range(k), names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc_text = "n/a" if math.isnan(acc) else f"{acc:.2%}"
    ax.set_title(f"{title} (accuracy {acc_text}, {metrics._count(total)} samples)", fontsize=11)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Learning curves
# ---------------------------------------------------------------------------------------------


def _plain(value: float, _pos: int | None = None) -> str:
    return f"{value:g}"


_REQUIRED = ("iteration", "train_loss", "train_accuracy")
_OPTIONAL = ("val_loss", "val_accuracy", "val_loss_averaged", "val_accuracy_averaged")


def _as_float(key: str, index: int, value: Any) -> float:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"history row {index}: {key} must be a number (or empty/None/NaN), got {value!r}"
        ) from None


def _history_columns(history: Iterable[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The history's rows as float64 columns sorted by iteration; missing values are NaN."""
    rows = list(history)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"history row {i} must be a mapping, got {type(row).__name__}")
    for key in _REQUIRED:
        if rows and all(key not in row for row in rows):
            raise ValueError(f"history has no {key!r} entries; each row needs {_REQUIRED}")
    if not rows:
        raise ValueError("history is empty: there is nothing to plot")
    cols = {
        key: np.array([_as_float(key, i, row.get(key)) for i, row in enumerate(rows)])
        for key in (*_REQUIRED, *_OPTIONAL)
    }
    bad = np.flatnonzero(~np.isfinite(cols["iteration"]))
    if bad.size:
        raise ValueError(f"history row {int(bad[0])} has no finite iteration")
    order = np.argsort(cols["iteration"], kind="stable")
    return {key: col[order] for key, col in cols.items()}


def plot_learning_curves(
    history: Iterable[Mapping[str, Any]],
    path: str | os.PathLike[str],
    title: str = "Learning curves",
) -> Path:
    """Draw loss and accuracy against iteration, train and validation, in two panels.

    ``history`` is a list of rows, one dict per logging interval, exactly as ``history.csv``
    holds them, so ``list(csv.DictReader(f))`` can be passed straight in (numeric strings are
    parsed). Keys: ``iteration``, ``train_loss``, ``train_accuracy`` (the moving averages),
    ``val_loss``, ``val_accuracy``, and, for a run that averages its weights,
    ``val_loss_averaged`` and ``val_accuracy_averaged`` (drawn beside); other keys are ignored.
    A validation value may be NaN, ``None``, ``""`` or missing on rows where no validation ran:
    validation is drawn as markers joined through the rows where it exists. Accuracy is plotted
    as given (a fraction in ``[0, 1]`` from :func:`jaxnet.step.evaluate`). The loss axis is
    logarithmic when every loss is positive, so late progress stays visible.

    Args:
        history: ``T >= 1`` rows (``Iterable[Mapping]``); unsorted iterations are sorted.
        path: where to write the PNG.
        title: the figure's title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: the history is empty, lacks ``iteration``/``train_loss``/``train_accuracy``
            entirely, a row has no finite iteration, or a value is not a number.
        TypeError: a row is not a mapping.
    """
    cols = _history_columns(history)
    it = cols["iteration"]
    fig = Figure(figsize=(11.0, 4.2))
    fig.set_layout_engine("constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    panels = (
        (ax_loss, "train_loss", "val_loss", "loss"),
        (ax_acc, "train_accuracy", "val_accuracy", "accuracy"),
    )
    for ax, train_key, val_key, name in panels:
        train, val, averaged = cols[train_key], cols[val_key], cols[val_key + "_averaged"]
        ok_train, ok_val, ok_avg = np.isfinite(train), np.isfinite(val), np.isfinite(averaged)
        ax.plot(it[ok_train], train[ok_train], color="C0", lw=1.2, label="train (moving average)")
        if ok_val.any():
            ax.plot(it[ok_val], val[ok_val], "o-", color="C1", ms=4, lw=1.2, label="validation")
        else:
            ax.plot([], [], "o-", color="C1", label="validation (none)")
        if ok_avg.any():
            label = "validation, averaged weights"
            ax.plot(it[ok_avg], averaged[ok_avg], "s-", color="C2", ms=3, lw=1.2, label=label)
        ax.set_xlabel("iteration")
        ylabel = name
        if name == "loss":
            values = np.concatenate([train[ok_train], val[ok_val], averaged[ok_avg]])
            if values.size and np.all(values > 0):
                ax.set_yscale("log")
                # ticks at 1, 2, 5 x 10^n, labelled as plain numbers (0.05, 0.1, 0.2, ...)
                ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
                ax.yaxis.set_major_formatter(FuncFormatter(_plain))
                ax.yaxis.set_minor_formatter(FuncFormatter(_plain))
                ylabel = "loss (log scale)"
        ax.set_ylabel(ylabel)
        ax.set_title(name.capitalize())
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(loc="best", fontsize=9)
    fig.suptitle(title, fontsize=12)
    return save_figure(fig, path)


_GRADIENT_PANELS = (
    ("grad_norm", "Gradient norm ||dL/dw||"),
    ("update_ratio", "Update-to-weight ratio ||delta w|| / ||w||"),
)


def plot_gradients(
    history: Iterable[Mapping[str, Any]],
    path: str | os.PathLike[str],
    title: str = "Gradients",
) -> Path:
    """Draw each layer's gradient norm and update-to-weight ratio against iteration, log scale.

    ``history`` is the rows of ``history.csv`` (as :func:`plot_learning_curves` takes them):
    ``iteration`` and, per parametrised layer ``NAME``, ``grad_norm/NAME`` and
    ``update_ratio/NAME`` (:func:`jaxnet.step.layer_diagnostics`). One line per layer in each of
    two panels; values that are missing, not finite or not positive are left out (a log axis).
    Vanishing gradients show as a layer's line sinking decades below the others, exploding ones
    as lines climbing; update ratios far from about ``1e-3`` per step hint at a learning rate
    that is too high or too low for that layer.

    Args:
        history: ``T >= 1`` rows (``Iterable[Mapping]``); unsorted iterations are sorted.
        path: where to write the PNG.
        title: the figure's title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: the history is empty, has no ``grad_norm/...`` or ``update_ratio/...``
            columns, a row has no finite iteration, or a value is not a number.
        TypeError: a row is not a mapping.
    """
    rows = list(history)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"history row {i} must be a mapping, got {type(row).__name__}")
    if not rows:
        raise ValueError("history is empty: there is nothing to plot")
    keys = list(dict.fromkeys(key for row in rows for key in row))
    layers = {
        kind: [k.split("/", 1)[1] for k in keys if k.startswith(kind + "/")]
        for kind, _ in _GRADIENT_PANELS
    }
    for kind, names in layers.items():
        if not names:
            raise ValueError(f"history has no {kind}/NAME columns (one per parametrised layer)")
    it = np.array([_as_float("iteration", i, row.get("iteration")) for i, row in enumerate(rows)])
    bad = np.flatnonzero(~np.isfinite(it))
    if bad.size:
        raise ValueError(f"history row {int(bad[0])} has no finite iteration")
    order = np.argsort(it, kind="stable")
    fig = Figure(figsize=(11.0, 4.2))
    fig.set_layout_engine("constrained")
    for ax, (kind, label) in zip(fig.subplots(1, 2), _GRADIENT_PANELS, strict=True):
        for n, name in enumerate(layers[kind]):
            key = f"{kind}/{name}"
            values = np.array([_as_float(key, i, row.get(key)) for i, row in enumerate(rows)])
            x, y = it[order], values[order]
            ok = np.isfinite(y) & (y > 0)
            ax.plot(x[ok], y[ok], color=f"C{n % 10}", lw=1.2, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"{kind.replace('_', ' ')} (log scale)")
        ax.set_title(label)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(title, fontsize=12)
    return save_figure(fig, path)
