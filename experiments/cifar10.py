"""Train the report's CIFAR-10 networks and write everything the report shows.

    python -m experiments.cifar10 --arch modified                # our schedule (Table 3 net)
    python -m experiments.cifar10 --arch modified --preset long  # 75 epochs: about 28 minutes
    python -m experiments.cifar10 --arch modified --preset seed  # the report's settings
    python -m experiments.cifar10 --arch baseline --preset seed  # the assignment's starter
    python -m experiments.cifar10 --image-dir DIR                # your own photos, by class

Outputs go to ``runs/cifar10_<arch>`` (``runs/cifar10_<arch>_<preset>`` for ``seed`` and
``long``; ``--out``), as for ``experiments.mnist``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from experiments import image_dir
from experiments.cli import main
from experiments.command import Experiment, Preset
from experiments.report import SEED_ACCURACY


def _our_schedule(epochs: int, warmup: int, **extra: Any) -> Preset:
    """Our schedule for either network: warm-up then cosine decay, crops and flips, and each
    test image classified with its mirror image (``flip_test``)."""
    return Preset(
        fit={
            "batch_size": 64,
            "learning_rate": 0.05,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "warmup": warmup,
            "augment": True,
            "flip_test": True,
            **extra,
        },
        epochs=epochs,
        val_size=2000,
    )


def _the_seeds(batch: int, lr: float, iterations: int, **extra: Any) -> Preset:
    """The seed's settings for either network: momentum 0.95, weight decay 0.001."""
    fit = {"batch_size": batch, "learning_rate": lr, "momentum": 0.95, "weight_decay": 1e-3}
    limit = extra.pop("train_limit", None)
    return Preset(fit={**fit, **extra}, iterations=iterations, train_limit=limit)


PRESETS = {
    "baseline": {
        "best": _our_schedule(epochs=10, warmup=200),
        "seed": _the_seeds(16, 1e-3, 5000, pixel_scale=1.0, conv_init_gain=0.1, train_limit=20000),
    },
    "modified": {
        "best": _our_schedule(epochs=22, warmup=300, eval_every=1000),
        "long": _our_schedule(epochs=75, warmup=500, weight_average=0.999, eval_every=2500),
        "seed": _the_seeds(32, 1e-2, 6000),
    },
}


def _load(args: argparse.Namespace):
    from jaxnet import datasets

    loaded = image_dir.load(args, 32, 3)
    if loaded is not None:
        return loaded
    return datasets.load_cifar10(args.data_dir, verify=not args.no_verify), {}


def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch",
        choices=sorted(PRESETS),
        default="modified",
        help="baseline: the assignment's starter network; modified: the report's Table 3 network",
    )
    image_dir.add_flags(parser, parser, digits=False)


def experiment(arch: str) -> Experiment:
    """The CIFAR-10 experiment for ``arch`` ("baseline" or "modified")."""
    return Experiment(
        name=f"cifar10_{arch}",
        architecture=f"cifar10_{arch}",
        presets=PRESETS[arch],
        load=_load,
        module=f"experiments.cifar10 --arch {arch}",
        seed_accuracy=SEED_ACCURACY[f"cifar10_{arch}"],
        extra_args=_extra_args,
    )


def run(argv: list[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--arch", choices=sorted(PRESETS), default="modified")
    known, _ = pre.parse_known_args(argv)
    return main(
        experiment(known.arch), argv, "python -m experiments.cifar10", __doc__.split("\n\n")[0]
    )


if __name__ == "__main__":
    sys.exit(run())
