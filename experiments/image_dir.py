"""``--image-dir``: train a command's network on one's own images, one sub-folder per class.

Shared by ``experiments.mnist`` (28x28 grey) and ``experiments.cifar10`` (32x32 RGB): the
flags, the run's name, and the loading (:func:`jaxnet.datasets.load_image_folder`) with what
``config.json`` records of it (``image_folder``: the folder, the conversion, the split's seed
and fraction, the images per class), so that ``--resume``, ``experiments.predict`` and
``experiments.explain`` read the folder the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from experiments.command import Experiment, Refused, unchangeable

DEFAULT_TEST_FRACTION = 0.2


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {value:g}")
    return value


def add_flags(
    parser: argparse.ArgumentParser, group: argparse._ActionsContainer, *, digits: bool
) -> None:
    """``--image-dir`` (in ``group``, exclusive with the command's other data sources),
    ``--test-fraction``, and for the digit network ``--centre``."""
    shape = "28x28 grey" if digits else "32x32 RGB"
    group.add_argument(
        "--image-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="train on your own images: DIR holds one sub-folder per class (DIR/cat/*.jpg, "
        "DIR/dog/*.png), or DIR/train/ and DIR/test/ with the same class sub-folders; any size "
        f"and mode, each converted once to {shape} (anti-aliased resize) and cached",
    )
    parser.add_argument(
        "--test-fraction",
        type=_fraction,
        default=None,
        metavar="F",
        help="with --image-dir and no DIR/test/: the share of each class held out as the "
        f"test set, drawn with --seed (default {DEFAULT_TEST_FRACTION})",
    )
    if digits:
        parser.add_argument(
            "--centre",
            action="store_true",
            help="with --image-dir: MNIST's centring (light on dark, the digit scaled into "
            "20x20 and centred by mass, as experiments.predict does) instead of a plain resize",
        )


def named(exp: Experiment, args: argparse.Namespace) -> Experiment:
    """``exp``, or for ``--image-dir DIR`` the same experiment named ``<name>_<DIR's name>``
    (its default run folder) with no seed report to compare with. (A resumed run keeps the
    name its ``config.json`` records: :func:`experiments.cli.main` sees to that.)"""
    if args.image_dir is None:
        return exp
    name = f"{exp.name}_{args.image_dir.expanduser().absolute().name}"
    return dataclasses.replace(exp, name=name, seed_accuracy=None)


def _centre(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "centre", False))


def _conversion_and_split(args: argparse.Namespace, saved: dict | None) -> tuple[float, int, bool]:
    """``(test fraction, seed, centre)``: a resumed run's own, refusing other values given;
    else the flags'."""
    from jaxnet.training.config import FitConfig

    if not saved:
        fraction = args.test_fraction or DEFAULT_TEST_FRACTION
        return fraction, getattr(args, "seed", FitConfig.seed), _centre(args)
    for flag, value, was in (
        ("--test-fraction", args.test_fraction, saved["test_fraction"]),
        ("--centre", _centre(args) or None, saved["centre"]),
    ):
        if value is not None and value != was:
            raise unchangeable(flag, was, value)
    return saved["test_fraction"], saved["seed"], saved["centre"]


def load(args: argparse.Namespace, size: int, channels: int) -> tuple[Any, dict] | None:
    """The run's image folder as a :class:`jaxnet.datasets.Dataset` and what ``config.json``
    records of it, or None if the run has none.

    The folder is ``--image-dir``, else (``--resume``) the one the run's ``config.json`` names;
    a resumed run reads it with its own conversion, fraction and seed. The record is
    ``{"image_folder": {path, layout, size, channels, centre, test_fraction, seed,
    train_per_class, test_per_class}}``.

    Raises:
        jaxnet.datasets.ImageFolderError: the folder is not usable, or has changed since the
            resumed run started (other images per class).
        experiments.command.Refused: ``--test-fraction`` or ``--centre`` without an image folder, or
            given with ``--resume`` with another value than the run's.
    """
    from jaxnet.datasets import ImageFolderError, load_image_folder

    saved = args.saved.image_folder if args.saved is not None else None
    folder = args.image_dir if args.image_dir is not None else saved and Path(saved["path"])
    if not folder:
        given = [
            f
            for f, v in (("--test-fraction", args.test_fraction), ("--centre", _centre(args)))
            if v
        ]
        if given:
            raise Refused(f"{' and '.join(given)} need --image-dir")
        return None
    fraction, seed, centre = _conversion_and_split(args, saved)
    dataset = load_image_folder(
        folder,
        size,
        channels,
        centre=centre,
        test_fraction=fraction,
        seed=seed,
        progress=not args.no_progress,
    )
    names = dataset.class_names

    def per_class(labels: np.ndarray) -> dict[str, int]:
        counts = np.bincount(labels, minlength=len(names))
        return {n: int(c) for n, c in zip(names, counts, strict=True)}

    folder = Path(folder).expanduser().absolute()
    given_test = (folder / "train").is_dir() and (folder / "test").is_dir()
    record = {
        "path": str(folder),
        "layout": "train/ and test/" if given_test else "split here",
        "size": size,
        "channels": channels,
        "centre": bool(centre),
        "test_fraction": fraction,
        "seed": seed,
        "train_per_class": per_class(dataset.train_labels),
        "test_per_class": per_class(dataset.test_labels),
    }
    if saved and any(saved.get(k) != record[k] for k in ("train_per_class", "test_per_class")):
        raise ImageFolderError(
            f"{folder}: its images per class differ from those the run in {args.out} started "
            "with (the folder changed): train again with --overwrite or another --out"
        )
    return dataset, {"image_folder": record}
