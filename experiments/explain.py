"""Backpropagation made visible: one image walked through a trained network, layer by layer.

    python -m experiments.explain runs/mnist --index 0            # test image 0
    python -m experiments.explain runs/mnist my_digit.png --class 7
    python -m experiments.explain runs/cifar10_modified --index 3 --out cat.png

As the seed's MATLAB ``evaluate(..., verbose)`` does, it prints each layer's output forward,
then, backward from the loss of the true label (``--class`` for another; for an image file, the
network's answer), the gradient each layer receives (dL/dy) and passes on (dL/dx) through the
analytic rules, beside their worst difference from JAX autodiff of the same forward functions. It
draws the same in one figure, with the saliency map ``max over channels |dL/dx|``; ``--html``
also writes a page to step through (:mod:`experiments.explain_page`). The table, the figure and
the page come from one :class:`~experiments.walk.Explanation` (:mod:`experiments.walk`: every
layer's dL/dy from one ``jax.grad`` call), and the page's numbers are the printed table's.

By default the walk runs in float64 (the trained float32 parameters are widened), so the
difference column shows the rules' exactness rather than float32 rounding; ``--float32`` runs
it as trained. Test images come from the project's data loaders (``--data-dir``, else
``$JAXNET_DATA``, else the per-user cache, as the training commands look for them); for a run
on ``--image-dir``, from that folder's test split as ``config.json`` records it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.console import DATA_FLAGS, error, run_parser, say
from experiments.trained_run import RunError, TrainedRun, load_run
from experiments.walk import Explanation, Table, explain, table

CHANNELS = 4  # channels drawn per layer
POSITIVE, NEGATIVE = "#b2182b", "#2166ac"  # the ends of RdBu_r, for bars too
FORWARD = "  {:<9}{:<26}{:<11}{:>10}{:>10}"  # the printed tables' columns: the header's and rows'
BACKWARD = "  {:<9}{:<16}{:>11}  {:<17}{:>11}{:>11}{:>11}"


def format_table(expl: Explanation, title: str, rows: Table | None = None) -> str:
    """The forward and backward tables, as the command prints them, under ``title``; ``rows``
    is :func:`table` of ``expl`` if already computed (the page shows the same rows)."""
    rows = table(expl) if rows is None else rows
    lines = [title, "", "forward", FORWARD.format("layer", "type", "output", "min", "max")]
    lines += [FORWARD.format(*r) for r in rows.forward]
    lines += [f"  softmax: {rows.answer}", ""]
    lines.append(
        f"backward from the loss of class {expl.run.class_names[expl.label]} "
        f"(L = {expl.analytic.loss:.4g}): analytic "
        f"rules, and their worst difference from autodiff ({expl.dtype})"
    )
    header = ("layer", "receives dL/dy", "max|dL/dy|", "passes on dL/dx", "max|dL/dx|")
    lines.append(BACKWARD.format(*header, "abs diff", "rel diff"))
    lines += [BACKWARD.format(*r) for r in rows.backward]
    lines.append(
        "  diff: over what the layer's rule computes, dL/dx (and dL/dW, dL/db for conv and "
        "dense); relative to max |autodiff|"
    )
    return "\n".join(lines)


def _channels(y: np.ndarray) -> np.ndarray:
    """The (up to) CHANNELS channels of an ``(H, W, C)`` output with the most energy, in order."""
    energy = np.square(y).sum(axis=(0, 1))
    return np.sort(np.argsort(-energy, kind="stable")[:CHANNELS])


def _mosaic(y: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """Channels of ``(H, W, C)`` tiled two by two, NaN between them (drawn blank)."""
    h, w, _ = y.shape
    cols = 1 if len(channels) == 1 else 2
    rows = -(-len(channels) // cols)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for k, c in enumerate(channels):
        r, q = divmod(k, cols)
        out[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = y[..., c]
    return out


def _rotation(names: Sequence[str]) -> int:
    """Tick labels upright for digits, slanted for words."""
    return 0 if max(map(len, names)) <= 2 else 60


def _draw(
    ax: Any, y: np.ndarray, *, signed: bool = False, labels: Any = None, cmap: str = "viridis"
) -> None:
    """A vector as bars, red > 0 and blue < 0; an ``(H, W)`` array as an image, ``signed`` on a
    diverging map centred on zero."""
    ax.set_xticks([])
    ax.set_yticks([])
    if y.ndim == 1:
        colours = np.where(y >= 0, POSITIVE, NEGATIVE)
        ax.bar(np.arange(len(y)), y, color=colours, width=0.8)
        ax.axhline(0, color="black", lw=0.5)
        if labels is not None and len(y) <= 10:
            ax.set_xticks(np.arange(len(y)), labels, fontsize=6, rotation=_rotation(labels))
        ax.tick_params(axis="y", labelsize=6)
    elif signed:
        m = float(np.nanmax(np.abs(y))) or 1.0
        ax.imshow(y, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
    else:
        ax.imshow(y, cmap=cmap, interpolation="nearest")


def plot_explanation(expl: Explanation, title: str, path: str | Path) -> Path:
    """Write the figure, titled ``title``, as a PNG to ``path`` (returned as a Path): input,
    saliency and answer; each layer's output; each layer's dL/dy."""
    from matplotlib.figure import Figure

    from jaxnet.plots import draw_image, save_figure

    arch, a = expl.run.arch, expl.analytic
    names = expl.run.class_names
    n = len(arch.layers)
    fig = Figure(figsize=(max(1.45 * n, 7.5), 7.6), layout="constrained")
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=(1.25, 1.0, 1.0))

    ax_image, ax_saliency, ax_probs = top.subplots(1, 3, width_ratios=(1, 1, 1.6))
    draw_image(ax_image, expl.image)
    ax_image.set_title("input, as the network sees it", fontsize=8)
    _draw(ax_saliency, np.abs(a.dinput[0]).max(axis=-1), cmap="magma")
    ax_saliency.set_title("saliency: max over channels |dL/dx|", fontsize=8)
    k = len(names)
    ax_probs.bar(np.arange(k), expl.probabilities, color="C0")
    ax_probs.bar([expl.label], [expl.probabilities[expl.label]], color="C1")
    ax_probs.set_xticks(np.arange(k), names, fontsize=7, rotation=_rotation(names))
    ax_probs.set_ylim(0, 1)
    ax_probs.tick_params(axis="y", labelsize=7)
    ax_probs.set_title(f"softmax; orange: class {names[expl.label]}, L = {a.loss:.3g}", fontsize=8)
    fig.suptitle(title, fontsize=10)

    fwd_axes = middle.subplots(1, n, squeeze=False)[0]
    bwd_axes = bottom.subplots(1, n, squeeze=False)[0]
    for i, layer in enumerate(arch.layers):
        y, dy = a.outputs[i][0], a.dy[i][0]
        title = f"{layer.name}  {'x'.join(map(str, y.shape))}"
        bwd_axes[i].set_title(f"{layer.name}: max {np.abs(dy).max():.1e}", fontsize=7)
        if y.ndim == 3:  # an image output: its strongest channels, the same ones both ways
            channels = _channels(y)
            title += "\nch " + " ".join(map(str, channels))
            y, dy = _mosaic(y, channels), _mosaic(dy, channels)
        fwd_axes[i].set_title(title, fontsize=7)
        labels = names if i == n - 1 else None
        _draw(fwd_axes[i], y, labels=labels)
        _draw(bwd_axes[i], dy, signed=True, labels=labels)
    middle.suptitle("forward: each layer's output (logits as bars)", fontsize=9)
    bottom.suptitle(
        "backward: the gradient dL/dy each layer receives (analytic rules; red > 0, blue < 0)",
        fontsize=9,
    )
    return save_figure(fig, path, dpi=100)


def _class_index(text: str, names: tuple[str, ...]) -> int:
    if text in names:
        return names.index(text)
    if text.isdigit() and int(text) < len(names):
        return int(text)
    raise ValueError(f"--class {text!r} is not one of the classes ({', '.join(names)})")


def build_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    from jaxnet.images import INVERT

    p = run_parser("experiments.explain", __doc__)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--index", type=int, help="a test-set image, by index")
    which.add_argument(
        "image", type=Path, nargs="?", metavar="IMAGE", help="an image file (PNG, JPEG)"
    )
    p.add_argument(
        "--class",
        dest="label",
        metavar="C",
        help="the class whose loss is differentiated, by name or index (default: "
        "the true label of a test image, the network's answer for a file)",
    )
    figure = "the figure (default: RUN_DIR/explain-<index or file name>.png)"
    p.add_argument("--out", type=Path, metavar="PATH", help=figure)
    p.add_argument(
        "--html",
        type=Path,
        nargs="?",
        const=True,
        metavar="PATH",
        help="also write a page to step through in a browser (experiments.explain_page), one "
        "self-contained HTML file; PATH defaults to the figure's with .html",
    )
    for flag, kwargs in DATA_FLAGS.items():
        p.add_argument(flag, **kwargs)
    invert = "for a digit image file: light on dark (see experiments.predict)"
    p.add_argument("--invert", choices=INVERT, default="auto", help=invert)
    p.add_argument(
        "--float32",
        action="store_true",
        help="walk in float32, as trained (default float64: the differences then "
        "show the rules' exactness, not float32 rounding)",
    )
    return p


def _test_image(run: TrainedRun, args: argparse.Namespace) -> tuple[np.ndarray, int]:
    """Test image ``args.index`` and its label, through the project's data loaders."""
    from jaxnet import datasets

    folder = run.image_folder
    if folder is not None:  # a run on --image-dir: its test split, as it was drawn
        split = {key: folder[key] for key in ("centre", "test_fraction", "seed")}
        shape = (folder["path"], folder["size"], folder["channels"])
        dataset = datasets.load_image_folder(*shape, **split, progress=False, log=lambda _: None)
    else:
        load = datasets.load_mnist if run.arch.input_shape[2] == 1 else datasets.load_cifar10
        dataset = load(args.data_dir, verify=not args.no_verify)
    n = len(dataset.test_labels)
    if not 0 <= args.index < n:
        raise ValueError(f"--index {args.index} is outside the test set's 0 .. {n - 1}")
    return dataset.test_images[args.index], int(dataset.test_labels[args.index])


def main(argv: list[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)

    from experiments import explain_page
    from jaxnet import images
    from jaxnet.datasets import DataError
    from jaxnet.io import check_writable

    try:
        run = load_run(args.run_dir)
        label = None if args.label is None else _class_index(args.label, run.class_names)
        stem = args.index if args.index is not None else args.image.stem
        out = args.out if args.out is not None else run.folder / f"explain-{stem}.png"
        check_writable(out, "--out")
        page = None
        if args.html is not None:
            page = out.with_suffix(".html") if args.html is True else args.html
            check_writable(page, "--html")
        if args.index is not None:
            image, true = _test_image(run, args)
            label = true if label is None else label
            what = f"test image #{args.index} (true class {run.class_names[true]})"
        else:
            image = images.read(args.image, run.arch.input_shape, args.invert, run.centre)
            what = str(args.image)
    except (RunError, ValueError, images.ImageFileError) as err:
        return error(str(err))
    except DataError as err:
        return error(str(err), 1)

    expl = explain(run, image, label, np.float32 if args.float32 else np.float64)
    title = f"{run.folder}: {what}"
    rows = table(expl)
    text = format_table(expl, title, rows)
    say(text)
    try:
        plot_explanation(expl, title, out)
    except OSError as err:
        return error(f"--out {out}: {err.strerror or err}", 1)
    say(f"figure: {out}")
    if page is not None:
        try:
            explain_page.write_page(expl, title, page, rows=rows, text=text)
        except OSError as err:
            return error(f"--html {page}: {err.strerror or err}", 1)
        say(f"page: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
