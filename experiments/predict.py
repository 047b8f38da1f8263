"""Classify your own image files with a trained run.

    python -m experiments.predict runs/mnist my_digit.png photo.jpg --top 3
    python -m experiments.predict runs/cifar10_modified cat.jpg --json
    python -m experiments.predict runs/mnist *.png --figure sheet.png --invert auto

The run folder is one written by ``python -m experiments.mnist`` or ``experiments.cifar10`` (on
their data sets or on ``--image-dir``): its ``config.json`` names the network, the input scale
and mean the network was trained with and the class names (its number of outputs);
``params.npz`` holds the trained parameters. Each image is converted the way the training data
looks (:mod:`jaxnet.images`: an MNIST digit centred in 28x28, light on dark; a CIFAR-10 picture
resized to 32x32 RGB), then prepared exactly as in training (:func:`jaxnet.step.preprocess`).
One line per image gives the top classes and their probabilities; ``--json`` prints a JSON list
instead; ``--figure`` draws every image as the network saw it, with its top class.

Errors are one line each on stderr and exit status 2: a missing run folder or params file, a
``config.json`` value that is missing or wrong (each is checked once, in :func:`load_run`, and
the line names its key), a params file that does not fit the network ``config.json`` names, a
file that is not an image.
The other images in the same call still get their answers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:  # jax loads only when a command needs it: --help stays fast
    from jaxnet.network import Architecture

BATCH = 500  # images per forward call: bounds memory for long lists of files


class RunError(Exception):
    """A run folder that cannot be used; the message names the file and what is wrong."""


class TrainedRun(NamedTuple):
    """A finished run folder, read back to classify images (a training in progress is
    :class:`jaxnet.training.Run`).

    Attributes:
        folder: the run folder.
        arch: the network (``jaxnet.architectures.get`` of ``config.json``'s architecture).
        params: the trained parameters, ``{layer: {"w", "b"}}`` as float32 jax arrays.
        scale: uint8 pixels are multiplied by this (1/255, or 1 for raw values) ...
        mean: ... and this float32 ``(C,)`` training mean is subtracted.
        class_names: the ``K`` class names, in label order.
        flip: the run was evaluated with flip test-time augmentation (``flip_test``), and so
            are its predictions.
        image_folder: for a run trained on ``--image-dir``, what ``config.json`` records of
            the folder (its path, conversion and split); None for MNIST and CIFAR-10.
    """

    folder: Path
    arch: Architecture
    params: dict
    scale: float
    mean: np.ndarray
    class_names: tuple[str, ...]
    flip: bool = False
    image_folder: dict | None = None

    @property
    def centre(self) -> bool:
        """One-channel images are read as MNIST digits (centred), unless the run was trained
        on an image folder with a plain resize."""
        return self.image_folder is None or bool(self.image_folder.get("centre", True))


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not folder.is_dir():
        raise RunError(f"{folder}: no such run folder")
    if not path.is_file():
        raise RunError(
            f"{folder}: no config.json (not a run folder of experiments.mnist or "
            "experiments.cifar10)"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(config, dict):
        raise RunError(f"{path}: not a run's config (a JSON object is expected)")
    return config


def load_run(folder: str | os.PathLike[str]) -> TrainedRun:
    """Read a finished run folder: its network, parameters, input preparation and class names.

    Args:
        folder: a folder written by ``python -m experiments.mnist`` or ``experiments.cifar10``.

    Returns:
        The :class:`TrainedRun`.

    Raises:
        RunError: the folder, ``config.json`` or ``params.npz`` is missing or unreadable,
            a value ``config.json`` holds is missing or of the wrong kind (an unknown network,
            no input scale and mean, a scale or mean that is not finite, a ``flip_test`` that
            is not true or false, ...), or ``params.npz`` does not fit the network (another
            architecture). Each value is checked here, once: the message names the key.
    """
    import jax

    from jaxnet import architectures, checkpoint, network

    folder = Path(folder)
    config = _read_config(folder)
    where = folder / "config.json"
    names = _class_names(config, where)
    try:
        arch = architectures.get(config.get("architecture"), num_classes=len(names))
    except ValueError as err:
        raise RunError(f"{where}: {err}") from None
    scale, mean = _input(config, where, arch)
    flip = _flip_test(config, where)
    image_folder = _image_folder(config, where)

    path = folder / "params.npz"
    if not path.is_file():
        raise RunError(f"{folder}: no params.npz (the run has not finished)")
    template = jax.eval_shape(lambda: network.init(arch, jax.random.PRNGKey(0)))
    try:
        params, _ = checkpoint.load_pytree(path, like=template)
    except checkpoint.CheckpointMismatchError as err:
        detail = str(err).split(": ", 1)[-1]
        raise RunError(
            f"{path} does not fit the {arch.name!r} network that config.json names ({detail})"
        ) from None
    except (checkpoint.CheckpointError, OSError) as err:
        raise RunError(str(err)) from None
    return TrainedRun(folder, arch, params, scale, mean, names, flip, image_folder)


def _class_names(config: dict[str, Any], where: Path) -> tuple[str, ...]:
    """``class_names``: a list of at least two strings (the network's ``K`` outputs)."""
    names = config.get("class_names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise RunError(
            f"{where}: class_names must list the network's classes (two or more strings), "
            f"got {names!r}"
        )
    return tuple(names)


def _input(config: dict[str, Any], where: Path, arch: Architecture) -> tuple[float, np.ndarray]:
    """``input``'s ``scale`` (a finite number > 0) and ``mean`` (finite, one per channel)."""
    record = config.get("input")
    if not isinstance(record, dict) or "mean" not in record or "scale" not in record:
        raise RunError(
            f"{where} records no input scale and mean (a run made before they were recorded): "
            "train it again"
        )
    scale, mean = record["scale"], record["mean"]
    if not (_finite_number(scale) and scale > 0):
        raise RunError(f"{where}: input scale must be a finite number > 0, got {scale!r}")
    channels = arch.input_shape[2]
    numbers = mean if isinstance(mean, list) else [mean]  # one number: every channel's
    if (isinstance(mean, list) and len(mean) != channels) or not all(
        _finite_number(m) for m in numbers
    ):
        raise RunError(
            f"{where}: input mean must be a list of {channels} finite number(s) (one per "
            f"channel of {arch.name}), got {mean!r}"
        )
    return float(scale), np.asarray(mean, np.float32)


def _finite_number(value: Any) -> bool:
    """A JSON number that is not NaN or infinite (Python's json reads both; a bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _flip_test(config: dict[str, Any], where: Path) -> bool:
    """``fit.flip_test``: true or false (false when the run records no ``fit``)."""
    fit = config.get("fit", {})
    if not isinstance(fit, dict):
        raise RunError(f"{where}: fit must be a JSON object of the run's settings, got {fit!r}")
    flip = fit.get("flip_test", False)
    if not isinstance(flip, bool):
        raise RunError(f"{where}: fit.flip_test must be true or false, got {flip!r}")
    return flip


_IMAGE_FOLDER_KEYS = {
    "path": ((str,), "a string"),
    "size": ((int,), "an integer"),
    "channels": ((int,), "an integer"),
    "centre": ((bool,), "true or false"),
    "test_fraction": ((int, float), "a number"),
    "seed": ((int,), "an integer"),
}
"""What explain reads of ``image_folder`` (to draw the run's test split again), and its types."""


def _image_folder(config: dict[str, Any], where: Path) -> dict | None:
    """``image_folder`` (a run on ``--image-dir``), with every key explain reads; or None."""
    record = config.get("image_folder")
    if record is None:
        return None
    if not isinstance(record, dict):
        raise RunError(f"{where}: image_folder must be a JSON object, got {record!r}")
    for key, (kinds, expected) in _IMAGE_FOLDER_KEYS.items():
        value = record.get(key)
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if not isinstance(value, kinds) or wrong_bool:
            raise RunError(f"{where}: image_folder.{key} must be {expected}, got {value!r}")
    return record


def network_input(run: TrainedRun, images: np.ndarray, dtype: Any = np.float32) -> Any:
    """uint8 images prepared as in training: ``images * scale - mean`` (``jaxnet.step.preprocess``).

    Args:
        run: the run.
        images: uint8 ``(N, H, W, C)``, ``(H, W, C) == run.arch.input_shape``.
        dtype: the floating dtype of the result.

    Returns:
        A jax array ``(N, H, W, C)`` of ``dtype``.
    """
    import jax.numpy as jnp

    from jaxnet.step import preprocess

    return preprocess(jnp.asarray(images), run.mean, run.scale, dtype)


def probabilities(run: TrainedRun, images: np.ndarray) -> np.ndarray:
    """The softmax of the network's logits for each image (with the run's flip averaging).

    Args:
        run: the run.
        images: uint8 ``(N, H, W, C)`` shaped like the training data.

    Returns:
        float64 ``(N, K)``, each row summing to 1.
    """
    import jax

    from jaxnet.step import predict_logits

    rows = []
    for start in range(0, len(images), BATCH):
        x = network_input(run, images[start : start + BATCH])
        logits = predict_logits(run.arch, run.params, x, flip=run.flip)
        rows.append(np.asarray(jax.nn.softmax(logits), np.float64))
    return np.concatenate(rows) if rows else np.zeros((0, run.arch.num_classes))


def contact_sheet(
    images: np.ndarray, titles: Sequence[str], labels: Sequence[str], path: str | os.PathLike[str]
) -> Path:
    """Draw each image as the network sees it, titled with its answer, in a near-square grid.

    Args:
        images: uint8 ``(N, H, W, C)``, ``C`` 1 (grey) or 3 (RGB), ``N >= 1``.
        titles: ``N`` titles (the top class and its probability).
        labels: ``N`` captions under the tiles (the file names).
        path: the PNG to write.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.figure import Figure

    from jaxnet.plots import save_figure

    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(max(1.6 * cols, 3.0), 1.95 * rows + 0.4))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    for ax, image, title, label in zip(axes.flat, images, titles, labels, strict=False):
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9, pad=3)
        ax.set_xlabel(label if len(label) <= 18 else "…" + label[-17:], fontsize=7, labelpad=2)
    fig.suptitle("As the network sees them, with its answer", fontsize=10)
    return save_figure(fig, path)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The parser of a command on a finished run (predict, explain): its ``RUN_DIR`` argument."""
    p = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run folder")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    from jaxnet.images import INVERT

    p = run_parser("experiments.predict", __doc__)
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument("--top", type=_positive_int, default=3, help="classes shown per image")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of lines")
    p.add_argument(
        "--figure", type=Path, default=None, metavar="PATH", help="write a contact sheet PNG here"
    )
    p.add_argument(
        "--invert",
        choices=INVERT,
        default="auto",
        help="digits: make dark ink on a light background light on dark (auto: when the "
        "image's border is brighter than the image)",
    )
    return p


def error(message: str, status: int = 2) -> int:
    """One line on stderr, ``error: message``; returns ``status`` (every command's error line)."""
    print(f"error: {message}", file=sys.stderr)
    return status


def say(text: str) -> None:
    """Print ``text``; if the reader has gone (``... | head``), the rest of the output is dropped
    without a traceback and the command carries on (its figure is still written)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)

    from jaxnet import images as image_files
    from jaxnet.io import check_writable

    try:
        run = load_run(args.run_dir)
        if args.figure is not None:
            check_writable(args.figure, "--figure")
    except (RunError, ValueError) as err:
        return error(str(err))
    converted: dict[int, np.ndarray] = {}
    failures: dict[int, str] = {}
    for i, path in enumerate(args.images):
        try:
            converted[i] = image_files.read(path, run.arch.input_shape, args.invert, run.centre)
        except image_files.ImageFileError as err:
            failures[i] = str(err)
    good = sorted(converted)
    probs = probabilities(run, np.stack([converted[i] for i in good])) if good else None
    k = min(args.top, run.arch.num_classes)
    results: list[dict[str, Any]] = []
    for i, path in enumerate(args.images):
        if i in failures:
            error(failures[i])
            results.append({"image": str(path), "error": failures[i]})
            continue
        p = probs[good.index(i)]
        top = np.argsort(-p, kind="stable")[:k]
        classes = [
            {"class": run.class_names[c], "index": int(c), "probability": float(p[c])} for c in top
        ]
        results.append({"image": str(path), "classes": classes})
        if not args.json:
            answer = ", ".join(f"{c['class']} {c['probability']:.1%}" for c in classes)
            say(f"{path}: {answer}")
    if args.json:
        say(json.dumps(results, indent=2))
    if args.figure is not None and good:
        answers = [results[i]["classes"][0] for i in good]
        try:
            contact_sheet(
                np.stack([converted[i] for i in good]),
                [f"{a['class']} ({a['probability']:.0%})" for a in answers],
                [args.images[i].name for i in good],
                args.figure,
            )
        except OSError as err:  # found only when written: a full disk
            return error(f"--figure {args.figure}: {err.strerror or err}", 1)
    return 2 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
