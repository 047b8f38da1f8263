"""Small learnable data sets in the real file formats, and helpers to run experiment commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from data_files import cifar_batches, write_cifar_bin, write_idx_dir

ROOT = Path(__file__).resolve().parents[2]


def learnable_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images whose class is a bright bar at a class-dependent place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        row = 2 + 2 * int(c)
        images[i, row : row + 3, 4:24] = 255
    return images, labels


def make_idx_dir(folder: Path, n_train: int = 400, n_test: int = 100) -> Path:
    """The four MNIST-format files of a small learnable set, in ``folder``."""
    train_images, train_labels = learnable_digits(n_train, 1)
    test_images, test_labels = learnable_digits(n_test, 2)
    arrays = {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }
    write_idx_dir(folder, arrays)
    return folder


def command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def env() -> dict[str, str]:
    """The environment for experiment subprocesses: this checkout first on the path."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("JAX_PLATFORMS", "cpu")
    return e


def run(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(module, *args), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout
    )


def make_cifar_dir(root: Path, per_batch: int = 40) -> Path:
    """A small CIFAR-10 binary version (5 train batches and a test batch) under ``root``."""
    write_cifar_bin(root / "cifar10", cifar_batches(per_batch, seed=0))
    return root
