"""Train the report's MNIST network (Table 1) and write everything the report shows.

    python -m experiments.mnist                  # our schedule: about 99.3% test accuracy
    python -m experiments.mnist --preset seed    # the assignment's starter settings
    python -m experiments.mnist --idx-dir DIR    # any data set in MNIST's idx format
    python -m experiments.mnist --image-dir DIR  # your own images, one sub-folder per class

Outputs go to ``runs/mnist`` (``runs/mnist_seed`` with ``--preset seed``; ``--out``): the
files :mod:`experiments.run_folder` names (config.json, history.csv, metrics.json, params.npz,
its five figures and two tables) and checkpoints/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments import image_dir
from experiments.cli import main
from experiments.command import Experiment, Preset
from experiments.report import SEED_ACCURACY

PRESETS = {
    "best": Preset(
        fit={
            "batch_size": 64,
            "learning_rate": 0.2,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "warmup": 200,
            "augment": True,
            "crop_pad": 2,
            "flip": False,
            "eval_every": 1000,
        },
        epochs=24,
        val_size=2000,
    ),
    "seed": Preset(
        fit={
            "batch_size": 16,
            "learning_rate": 0.1,
            "momentum": 0.9,
            "weight_decay": 0.005,
        },
        iterations=3000,
        val_size=2000,
    ),
}


def _load(args: argparse.Namespace):
    from jaxnet import datasets

    loaded = image_dir.load(args, 28, 1)
    if loaded is not None:
        return loaded
    # A resumed run reads the idx folder it was started on, unless another is named.
    saved = args.saved.idx_dir if args.saved is not None else None
    idx_dir = args.idx_dir if args.idx_dir is not None else saved
    if idx_dir is not None:
        return datasets.load_idx_dir(idx_dir), {"idx_dir": str(idx_dir)}
    return datasets.load_mnist(args.data_dir, verify=not args.no_verify), {}


def _extra_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--idx-dir",
        type=Path,
        default=None,
        help="train on the four {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] "
        "files in this folder instead of MNIST (28x28 images, 10 classes; "
        "format checks only, no checksum)",
    )
    image_dir.add_flags(parser, source, digits=True)


EXPERIMENT = Experiment(
    name="mnist",
    architecture="mnist",
    presets=PRESETS,
    load=_load,
    module="experiments.mnist",
    seed_accuracy=SEED_ACCURACY["mnist"],
    extra_args=_extra_args,
)


def run(argv: list[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    return main(EXPERIMENT, argv, "python -m experiments.mnist", __doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(run())
