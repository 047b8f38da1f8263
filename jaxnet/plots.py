"""The report's figures as PNG files: kernels (report figs. 1, 5), misclassified images (figs. 2,
6), the confusion matrix (figs. 3, 7), learning curves (fig. 4), per-layer gradients, and any grid
of images (:func:`plot_images`, also ``experiments.predict --figure``).

Each function draws one figure with the given ``title``, writes it to ``path`` (parent folders
are created) and returns ``path`` as a :class:`~pathlib.Path`. No pyplot: each figure is a
:class:`matplotlib.figure.Figure` given its own Agg canvas, so nothing touches matplotlib's global
state or needs a display. Writes go through :func:`jaxnet.io.atomic_write`: an interrupted run
leaves the old file or none, never half a PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    "draw_image",
    "plot_confusion_matrix",
    "plot_gradients",
    "plot_images",
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


def _tiles(
    n: int, tile: tuple[float, float], *, margin: tuple[float, float], min_width: float
) -> tuple[Figure, np.ndarray]:
    """A figure of ``n >= 1`` axes in a near-square grid, ``tile`` inches (width, height) each
    plus ``margin`` inches around; the grid's spare axes are hidden. Returns the figure and its
    ``(rows, cols)`` array of axes."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    width, height = cols * tile[0] + margin[0], rows * tile[1] + margin[1]
    fig = Figure(figsize=(max(width, min_width), height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes


def draw_image(ax: Any, image: np.ndarray) -> None:
    """Draw one ``(H, W, C)`` image in ``ax``, without ticks: ``C`` 1 in grey, 3 as RGB; uint8
    (0 .. 255) or float in ``[0, 1]``; each pixel a square of one colour."""
    if image.shape[-1] == 1:
        vmax = 255 if image.dtype == np.uint8 else 1.0
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


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
        title: the figure's title; a line describing the shape and colour scale is added.

    Raises:
        ValueError: ``w`` is not ``(KH, KW, 1 or 3, C_out)``, has an empty axis, NaN or infinity.
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

    tile = min(1.1, 9.0 / math.ceil(math.sqrt(cout)))
    margin = (1.2 if cin == 1 else 0.3, 1.1)
    fig, axes = _tiles(cout, (tile, tile), margin=margin, min_width=4.0)
    if cin == 1:
        m = float(np.max(np.abs(w))) or 1.0
        scale = "grey scale shared by all kernels, mid-grey = 0"
    else:
        scale = "RGB, each kernel min-max normalised to [0, 1]"
    for k, ax in zip(range(cout), axes.flat, strict=False):
        kernel = w[..., k]
        if cin == 1:
            image = ax.imshow(kernel[..., 0], cmap="gray", vmin=-m, vmax=m, interpolation="nearest")
        else:
            lo, hi = kernel.min(), kernel.max()
            draw_image(ax, (kernel - lo) / (hi - lo) if hi > lo else np.full_like(kernel, 0.5))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(str(k), fontsize=8, pad=2)
    if cin == 1:
        fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    fig.suptitle(f"{title}\n{cout} kernels of {kh}×{kw}×{cin}; {scale}", fontsize=10)
    return save_figure(fig, path)


def _classes(
    labels: Any, predictions: Any, class_names: Sequence[str], n: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The true and predicted classes of ``n`` images, checked against the names' count."""
    if isinstance(class_names, str):
        raise TypeError("class_names must be a sequence of names, got a single string")
    names = [str(c) for c in class_names]
    checked = []
    for name, x in (("labels", labels), ("predictions", predictions)):
        arr = np.asarray(x)
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) (one per image), got {arr.shape}")
        if n and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
        if wrong := out_of_range(arr, len(names)):
            raise ValueError(f"{name}: {wrong}, for {len(names)} class names")
        checked.append(arr.astype(np.int64))
    return checked[0], checked[1], names


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


def plot_images(
    images: Any,
    titles: Sequence[str],
    captions: Sequence[str],
    path: str | os.PathLike[str],
    title: str,
) -> Path:
    """Draw images in a near-square grid, each with a title above it and a caption below.

    Args:
        images: ``(N, H, W, C)``, ``N >= 1``, ``C`` 1 (grey) or 3 (RGB); uint8, or float in
            ``[0, 1]`` (:func:`draw_image`).
        titles: ``N`` titles, one per image.
        captions: ``N`` captions; one longer than 18 characters shows only its end.
    """
    fig, axes = _tiles(len(images), (1.7, 2.15), margin=(0.0, 0.6), min_width=4.5)
    for ax, image, above, below in zip(axes.flat, images, titles, captions, strict=False):
        draw_image(ax, image)
        ax.set_title(above, fontsize=8, pad=3)
        ax.set_xlabel(below if len(below) <= 18 else "…" + below[-17:], fontsize=7, labelpad=1)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


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
        max_images: at most this many images are drawn (``>= 1``).
        mean: ``None``, or the scalar / ``(C,)`` training mean that float ``images`` had
            subtracted (``jaxnet.training.data.channel_mean``).

    Raises:
        ValueError: a shape other than these, a class index outside ``[0, K)``,
            ``max_images < 1``, or a ``mean`` for uint8 images.
        TypeError: a dtype other than these, or ``max_images`` not an int.
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
        fig = Figure(figsize=(6.0, 2.5))
        ax = fig.add_subplot()
        ax.set_axis_off()
        text = f"No misclassified images:\nall {n} predictions are correct."
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=13, transform=ax.transAxes)
        fig.suptitle(f"{title}: 0 of {n} wrong", fontsize=11)
        return save_figure(fig, path)
    titles = [f"true: {names[y[i]]}\npred: {names[p[i]]}" for i in shown]
    more = f"; the first {shown.size} shown" if shown.size < wrong.size else ""
    title = f"{title}: {wrong.size} of {n} wrong ({wrong.size / n:.2%}){more}"
    return plot_images(shown_images, titles, [f"#{i}" for i in shown], path, title)


def plot_confusion_matrix(
    confusion: Any,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "Confusion matrix",
) -> Path:
    """Draw a ``(K, K)`` confusion matrix as an image with the count written in each cell.

    Rows are the true class (y axis, "true"), columns the predicted class (x axis,
    "predicted"), as :func:`jaxnet.metrics.confusion_matrix` returns it; ``class_names`` gives
    the ``K`` classes in index order. Colour is the count on a linear scale; the title adds the
    accuracy and the number of samples.

    Raises:
        ValueError, TypeError: as :func:`jaxnet.metrics.per_class_table`.
    """
    c = metrics._check_confusion(confusion)
    k = c.shape[0]
    names = metrics._check_names(class_names, k)
    acc = metrics.accuracy(c)
    total = c.sum()

    side = max(4.5, 0.55 * k + 2.5)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    vmax = float(c.max()) or 1.0
    image = ax.imshow(c, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="count")
    if k <= 40:
        size = max(5.0, min(10.0, 110.0 / k))
        for (i, j), v in np.ndenumerate(c):
            colour = "white" if v > 0.5 * vmax else "black"
            ax.text(j, i, metrics._count(v), ha="center", va="center", fontsize=size, color=colour)
    ax.set_xticks(range(k), names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc_text = "n/a" if math.isnan(acc) else f"{acc:.2%}"
    ax.set_title(f"{title} (accuracy {acc_text}, {metrics._count(total)} samples)", fontsize=11)
    return save_figure(fig, path)


def _as_float(key: str, index: int, value: Any) -> float:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"history row {index}: {key} must be a number (or empty/None/NaN), got {value!r}"
        ) from None


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """``key`` of every row as float64; a missing or empty value is NaN."""
    return np.array([_as_float(key, i, row.get(key)) for i, row in enumerate(rows)])


def _sorted_rows(
    history: Iterable[Mapping[str, Any]], required: tuple[str, ...] = ()
) -> list[Mapping[str, Any]]:
    """The rows of a ``history.csv``, checked (mappings, at least one, the ``required`` keys
    each in some row, every row with a finite iteration) and sorted by iteration."""
    rows = list(history)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"history row {i} must be a mapping, got {type(row).__name__}")
    if not rows:
        raise ValueError("history is empty: there is nothing to plot")
    for key in required:
        if all(key not in row for row in rows):
            raise ValueError(f"history has no {key!r} entries; each row needs {required}")
    iterations = _column(rows, "iteration")
    bad = np.flatnonzero(~np.isfinite(iterations))
    if bad.size:
        raise ValueError(f"history row {int(bad[0])} has no finite iteration")
    return [rows[i] for i in np.argsort(iterations, kind="stable")]


def _against_iteration(
    title: str,
    panels: Iterable[tuple[str, str]],
    draw: Callable[[Any, str], str],
    legend_size: float,
) -> Figure:
    """Two panels side by side against iteration: ``draw(ax, key)`` plots each, then the axes
    get ``draw``'s y label, the panel's title, a grid and a legend."""
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    for ax, (key, panel_title) in zip(fig.subplots(1, 2), panels, strict=True):
        ylabel = draw(ax, key)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(loc="best", fontsize=legend_size)
    fig.suptitle(title, fontsize=12)
    return fig


def plot_learning_curves(
    history: Iterable[Mapping[str, Any]],
    path: str | os.PathLike[str],
    title: str = "Learning curves",
) -> Path:
    """Draw loss and accuracy against iteration, train and validation, in two panels.

    ``history`` is ``T >= 1`` rows, one mapping per logging interval in any order, exactly as
    ``history.csv`` holds them, so ``list(csv.DictReader(f))`` can be passed straight in (numeric
    strings are parsed). Keys: ``iteration``, ``train_loss``, ``train_accuracy`` (the moving
    averages), ``val_loss``, ``val_accuracy``, and, for a run that averages its weights,
    ``val_loss_averaged`` and ``val_accuracy_averaged`` (drawn beside); other keys are ignored.
    A validation value may be NaN, ``None``, ``""`` or missing on rows where no validation ran:
    validation is drawn as markers joined through the rows where it exists. Accuracy is plotted
    as given (a fraction in ``[0, 1]`` from :func:`jaxnet.step.evaluate`). The loss axis is
    logarithmic when every loss is positive, so late progress stays visible.

    Raises:
        ValueError: the history is empty, lacks ``iteration``/``train_loss``/``train_accuracy``
            entirely, a row has no finite iteration, or a value is not a number.
        TypeError: a row is not a mapping.
    """
    rows = _sorted_rows(history, required=("iteration", "train_loss", "train_accuracy"))
    it = _column(rows, "iteration")

    def draw(ax: Any, name: str) -> str:
        keys = (f"train_{name}", f"val_{name}", f"val_{name}_averaged")
        train, val, averaged = (_column(rows, key) for key in keys)
        ok_train, ok_val, ok_avg = np.isfinite(train), np.isfinite(val), np.isfinite(averaged)
        ax.plot(it[ok_train], train[ok_train], color="C0", lw=1.2, label="train (moving average)")
        if ok_val.any():
            ax.plot(it[ok_val], val[ok_val], "o-", color="C1", ms=4, lw=1.2, label="validation")
        else:
            ax.plot([], [], "o-", color="C1", label="validation (none)")
        if ok_avg.any():
            label = "validation, averaged weights"
            ax.plot(it[ok_avg], averaged[ok_avg], "s-", color="C2", ms=3, lw=1.2, label=label)
        values = np.concatenate([train[ok_train], val[ok_val], averaged[ok_avg]])
        if name != "loss" or not values.size or np.any(values <= 0):
            return name
        ax.set_yscale("log")
        # ticks at 1, 2, 5 x 10^n, labelled as plain numbers (0.05, 0.1, 0.2, ...)
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        return "loss (log scale)"

    panels = (("loss", "Loss"), ("accuracy", "Accuracy"))
    return save_figure(_against_iteration(title, panels, draw, legend_size=9), path)


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

    ``history`` is the rows of ``history.csv``, as :func:`plot_learning_curves` takes them:
    ``iteration`` and, per parametrised layer ``NAME``, ``grad_norm/NAME`` and
    ``update_ratio/NAME`` (:func:`jaxnet.step.layer_diagnostics`). One line per layer in each of
    two panels; values that are missing, not finite or not positive are left out (a log axis).
    Vanishing gradients show as a layer's line sinking decades below the others, exploding ones
    as lines climbing; update ratios far from about ``1e-3`` per step hint at a learning rate
    that is too high or too low for that layer.

    Raises:
        ValueError: the history is empty, has no ``grad_norm/...`` or ``update_ratio/...``
            columns, a row has no finite iteration, or a value is not a number.
        TypeError: a row is not a mapping.
    """
    rows = _sorted_rows(history)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    layers = {
        kind: [k.split("/", 1)[1] for k in keys if k.startswith(kind + "/")]
        for kind, _ in _GRADIENT_PANELS
    }
    for kind, names in layers.items():
        if not names:
            raise ValueError(f"history has no {kind}/NAME columns (one per parametrised layer)")
    it = _column(rows, "iteration")

    def draw(ax: Any, kind: str) -> str:
        for n, name in enumerate(layers[kind]):
            values = _column(rows, f"{kind}/{name}")
            ok = np.isfinite(values) & (values > 0)
            ax.plot(it[ok], values[ok], color=f"C{n % 10}", lw=1.2, label=name)
        ax.set_yscale("log")
        return f"{kind.replace('_', ' ')} (log scale)"

    return save_figure(_against_iteration(title, _GRADIENT_PANELS, draw, legend_size=8), path)
