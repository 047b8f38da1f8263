"""Classify your own image files with a trained run.

    python -m experiments.predict runs/mnist my_digit.png photo.jpg --top 3
    python -m experiments.predict runs/cifar10_modified cat.jpg --json
    python -m experiments.predict runs/mnist *.png --figure sheet.png --invert auto

The run folder is one written by ``python -m experiments.mnist`` or ``experiments.cifar10``
(:mod:`experiments.trained_run` reads it). Each image is converted the way the training data looks
(:mod:`jaxnet.images`), then prepared exactly as in training. One line per image gives the top
classes and their probabilities; ``--json`` prints a JSON list instead; ``--figure`` draws every
image as the network saw it, with its top class.

Errors are one line each on stderr and exit status 2: a run folder that cannot be used
(:func:`load_run` names the file and key), a file that is not an image. The other images in
the same call still get their answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from experiments.console import error, run_parser, say
from experiments.trained_run import RunError, load_run, probabilities


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
        from jaxnet.plots import plot_images

        answers = [results[i]["classes"][0] for i in good]
        try:
            plot_images(
                np.stack([converted[i] for i in good]),
                [f"{a['class']} ({a['probability']:.0%})" for a in answers],
                [args.images[i].name for i in good],
                args.figure,
                "As the network sees them, with its answer",
            )
        except OSError as err:  # found only when written: a full disk
            return error(f"--figure {args.figure}: {err.strerror or err}", 1)
    return 2 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
