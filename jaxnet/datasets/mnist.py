"""MNIST: its four official idx files as data, the idx parser, and any data set in idx layout."""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from jaxnet.datasets import files
from jaxnet.datasets.files import DataError, Dataset, FileSpec

NAME = "mnist"
"""The data set's sub-folder of the data root."""

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
"""Base URLs of maintained MNIST mirrors, tried in turn (the original host answers 403)."""

FILES = {  # the official gzip files, and their contents for uncompressed copies
    "train-images-idx3-ubyte.gz": FileSpec(9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte.gz": FileSpec(28881, "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte.gz": FileSpec(1648877, "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte.gz": FileSpec(4542, "ec29112dd5afa0611ce80d1b7f02629c"),
    "train-images-idx3-ubyte": FileSpec(47040016, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": FileSpec(60008, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": FileSpec(7840016, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": FileSpec(10008, "27ae3e4e09519cfbb04c329615203637"),
}

_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_KINDS = {"images": (0x00000803, 3), "labels": (0x00000801, 1)}  # magic number, dimensions


def _gunzip(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise DataError(
            f"{path}: truncated: the gzip stream ends before its end-of-stream marker "
            f"({len(raw)} bytes); delete it and download it again"
        ) from None
    except (OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: corrupt gzip data ({files.reason(err)})") from None


def _check_magic(magic: int, buf: bytes, path: Path, kind: str) -> None:
    expected = _IDX_KINDS[kind][0]
    if magic == expected:
        return
    other = next((k for k, (m, _) in _IDX_KINDS.items() if m == magic), None)
    hint = f" (that is an idx {other} file)" if other else ""
    if buf[:2] == b"\x1f\x8b":
        hint = " (the data is gzip-compressed: its name should end in .gz)"
    raise DataError(
        f"{path}: wrong magic number 0x{magic:08x}, expected 0x{expected:08x} "
        f"for an idx {kind} file{hint}"
    )


def _parse_idx(path: Path, kind: str) -> np.ndarray:
    """Read an idx3 image file or idx1 label file, gunzipped if its name ends in ``.gz``.

    Returns:
        uint8 ``(N, rows, cols, 1)`` for images, int32 ``(N,)`` for labels.
    """
    buf = _gunzip(files.read(path), path) if path.suffix == ".gz" else files.read(path)
    ndim = _IDX_KINDS[kind][1]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(
            f"{path}: truncated: {len(buf)} bytes, shorter than the {header}-byte header of an "
            f"idx {kind} file"
        )
    magic, *dims = struct.unpack(f">{1 + ndim}I", buf[:header])
    _check_magic(magic, buf, path, kind)
    if kind == "images" and 0 in dims[1:]:
        raise DataError(f"{path}: header gives an image size of {dims[1]}x{dims[2]}")
    need, have = int(np.prod(dims, dtype=np.int64)), len(buf) - header
    what = f"{dims[0]} images of {dims[1]}x{dims[2]}" if kind == "images" else f"{dims[0]} labels"
    if have < need:
        raise DataError(
            f"{path}: truncated: the header promises {what} ({need} bytes of data) but the file "
            f"holds {have}"
        )
    if have > need:
        raise DataError(
            f"{path}: header count disagrees with the data length: the header says {what} "
            f"({need} bytes of data) but the file holds {have} ({have - need} extra)"
        )
    array = np.frombuffer(buf, dtype=np.uint8, count=need, offset=header)
    return array.astype(np.int32) if kind == "labels" else array.reshape(*dims, 1).copy()


def _read_idx(path: Path, kind: str) -> np.ndarray:
    """One idx file; a gzip file is decoded once and then read from the decoded-array cache."""
    decode = functools.partial(_parse_idx, path, kind)
    return files.cached_array(path, decode) if path.suffix == ".gz" else decode()


def _find(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The four idx files in ``folder`` (gzip preferred) and the names of those missing."""
    found, missing = {}, []
    for part, stem in _STEMS.items():
        path = next((folder / n for n in (f"{stem}.gz", stem) if (folder / n).is_file()), None)
        if path is None:
            missing.append(f"{stem}.gz")
        else:
            found[part] = path
    return found, missing


def _read_set(found: dict[str, Path], num_classes: int) -> Dataset:
    """Read and cross-check the four idx files."""
    arrays = []
    for split in ("train", "test"):
        image_path, label_path = found[f"{split}_images"], found[f"{split}_labels"]
        images, labels = _read_idx(image_path, "images"), _read_idx(label_path, "labels")
        if len(images) != len(labels):
            raise DataError(
                f"{image_path}: holds {len(images)} images but {label_path} holds {len(labels)} "
                "labels; the two files do not belong together"
            )
        files.check_labels(labels, label_path, num_classes)
        arrays += [images, labels]
    (train_h, train_w), (test_h, test_w) = arrays[0].shape[1:3], arrays[2].shape[1:3]
    if (train_h, train_w) != (test_h, test_w):
        raise DataError(
            f"{found['test_images']}: images are {test_h}x{test_w} but "
            f"{found['train_images']} holds {train_h}x{train_w} images"
        )
    return Dataset(*arrays, tuple(str(i) for i in range(num_classes)))


def load_idx_dir(directory: str | os.PathLike, *, num_classes: int = 10) -> Dataset:
    """Load any data set in MNIST's idx layout from one folder, with format checks only.

    The folder holds ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, each gzip-compressed
    (``.gz``, preferred when both exist) or not. No checksum is known for such files, so none is
    checked; the format checks of :func:`load_mnist` all apply.

    Args:
        directory: the folder holding the four files.
        num_classes: labels must lie in ``0 .. num_classes - 1``; class names are ``"0"``, ...

    Returns:
        A :class:`Dataset` with uint8 images ``(N, H, W, 1)`` and ``(M, H, W, 1)`` and int32
        labels ``(N,)``, ``(M,)``.

    Raises:
        DataError: a file is missing, truncated or malformed, or the files disagree.
    """
    folder = Path(directory).expanduser().absolute()
    found, missing = _find(folder)
    if missing:
        raise DataError(
            f"{folder}: missing idx files: {', '.join(missing)} (each may also be uncompressed, "
            "without .gz)"
        )
    return _read_set(found, num_classes)


def load_mnist(
    data_dir: str | os.PathLike | None = None, *, verify: bool = True, download: bool = True
) -> Dataset:
    """Load MNIST from the four official idx files in ``<data root>/mnist/``.

    Files: ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` (uncompressed copies, without
    ``.gz``, are accepted too). Missing files are looked for in the cache folder too, then
    downloaded from :data:`MIRRORS` into the first writable of those folders.

    Args:
        data_dir: the data root; None means ``$JAXNET_DATA``, else the cache (:func:`data_root`).
        verify: check each file's size and md5 against the official ones (once per file version;
            the result is remembered in the cache).
        download: fetch missing files; when False, missing files raise at once.

    Returns:
        A :class:`Dataset`: train images uint8 ``(60000, 28, 28, 1)``, labels int32 ``(60000,)``;
        test images uint8 ``(10000, 28, 28, 1)``, labels int32 ``(10000,)``; class names
        ``("0", ..., "9")``.

    Raises:
        DataError: files are missing and cannot be downloaded, fail their checksum, or are
            truncated or malformed. The message names the file and the problem.
    """
    places = files.locations(data_dir, NAME)
    for folder in places:
        found, missing = _find(folder)
        if not missing:
            break
    else:
        dest = files.download_dir(places) if download else None
        missing, tried = _find(dest or places[0])[1], []
        if dest is not None:
            missing, tried = files.fetch(missing, MIRRORS, FILES, dest)
        if missing:
            raise files.missing_error("MNIST", missing, places, tried, download=download, dest=dest)
        found = _find(dest)[0]
    if verify:
        for path in found.values():
            files.verify_file(path, FILES[path.name])
    dataset = _read_set(found, 10)  # which checks that the test images are the train images' size
    height, width = dataset.train_images.shape[1:3]
    if (height, width) != (28, 28):
        raise DataError(
            f"{found['train_images']}: images are {height}x{width}, MNIST's are 28x28 "
            "(use load_idx_dir for other idx data sets)"
        )
    return dataset
