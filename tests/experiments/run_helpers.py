"""Small data sets in the real file formats, and helpers to run experiment commands."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzip idx file: magic, dimensions, data, big-endian."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0))


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
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = learnable_digits(n, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
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


CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def make_cifar_dir(root: Path, per_batch: int = 40) -> Path:
    """A small CIFAR-10 binary version (5 train batches and a test batch) under ``root``."""
    folder = root / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)  # planar R, G, B
        labels = rng.integers(0, 10, per_batch, dtype=np.uint8)
        records = np.concatenate([labels[:, None], images.reshape(per_batch, 3072)], axis=1)
        (folder / name).write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR_CLASSES) + "\n\n")
    return root
