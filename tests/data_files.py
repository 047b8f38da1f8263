"""Small data sets in the real file formats (MNIST idx, CIFAR-10 binary), written by tests.

Used by ``tests/datasets/`` (the loaders, bad files, downloads) and by the experiment
tests' ``run_helpers`` (whole commands on small data sets).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

REAL_DATA = os.environ.get("JAXNET_DATA")  # read at import, before any fixture clears it

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
MNIST_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An idx file: big-endian magic 0x0000080<ndim>, the dims, then the uint8 data."""
    magic = 0x800 + array.ndim if magic is None else magic
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes()


def write_idx_dir(folder: Path, arrays: dict, gz: bool = True) -> dict[str, Path]:
    """The four MNIST files (gzip or plain) of ``arrays`` (keys as MNIST_STEMS), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part, stem in MNIST_STEMS.items():
        raw = idx_bytes(arrays[part])
        path = folder / (stem + ".gz" if gz else stem)
        path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
        paths[part] = path
    return paths


def cifar_batches(n: int = 8, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Six batches (5 train, 1 test) of n NHWC uint8 images and their labels."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, n, dtype=np.uint8),
        )
        for _ in range(6)
    ]


def cifar_record_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10 binary records: per image a label byte, then planar R, G, B rows."""
    planar = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    return np.concatenate([labels[:, None].astype(np.uint8), planar], axis=1).tobytes()


BIN_NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def write_cifar_bin(folder: Path, batches) -> Path:
    """The binary version's six batch files and class names under ``folder``; returns its folder."""
    out = folder / "cifar-10-batches-bin"
    out.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in zip(BIN_NAMES, batches, strict=True):
        (out / name).write_bytes(cifar_record_bytes(images, labels))
    (out / "batches.meta.txt").write_text("\n".join(CIFAR_CLASSES) + "\n\n")
    (out / "readme.html").write_text("<meta http-equiv='refresh' content='0; url=...'>\n")
    return out


def real_data_root() -> Path:
    """The shared data folder; skip without it, but fail (not skip) when CI is set."""
    if REAL_DATA and Path(REAL_DATA).is_dir():
        return Path(REAL_DATA)
    message = "JAXNET_DATA is not set to the shared data folder"
    if os.environ.get("CI"):
        pytest.fail(f"{message}, and CI is set: the real-data tests must run in CI")
    pytest.skip(message)
