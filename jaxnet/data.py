"""Real data: MNIST and CIFAR-10 from their official files, plus the starters' preprocessing.

Where the files are (:func:`data_root`): an explicit ``data_dir``, else ``$JAXNET_DATA``, else a
per-user cache folder (``$JAXNET_CACHE``, else ``pooch.os_cache("jaxnet")``). A data set lives in a
sub-folder named after it: ``<root>/mnist/``, ``<root>/cifar10/``.

What happens on a load:

1. Find the files. When they are missing, download them (MNIST from its maintained mirrors tried
   in turn, CIFAR-10's binary archive from its official host, then unpacked) with pooch: progress
   bar, md5 of what arrived, temporary file renamed into place only when complete.
2. Verify files with a published checksum (size, then md5) once: the md5 is remembered in
   ``<cache>/checksums.json``, keyed by absolute path, size and mtime, so later runs only ``stat``.
   The data folder may be read-only; nothing is ever written next to the data.
3. Parse with format checks: every malformed file raises :class:`DataError`, one line naming the
   file and what is wrong with it.
4. The gzip idx files are decompressed once; the decoded arrays are kept as ``.npy`` files in
   ``<cache>/decoded/`` (keyed by the source's path, size and mtime), so MNIST loads in
   milliseconds after the first run.

Every write into the cache goes to a temporary file in the same folder, then ``os.replace``: an
interrupted run never leaves a file that looks complete.

Images stay uint8 NHWC in host memory; :func:`preprocess` (scale, subtract the training mean) and
:func:`augment` (random crop and flip) are JAX functions meant to run inside the jitted train step.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import pickle
import re
import shutil
import struct
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pooch
from jax import lax

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

__all__ = [
    "CHECKSUMS",
    "CIFAR10_URL",
    "ENV_CACHE",
    "ENV_DATA",
    "MNIST_MIRRORS",
    "DataError",
    "Dataset",
    "FileSpec",
    "augment",
    "cache_dir",
    "channel_mean",
    "data_root",
    "epoch_batches",
    "file_md5",
    "load_cifar10",
    "load_idx_dir",
    "load_mnist",
    "preprocess",
    "train_val_split",
    "verify_file",
]

ENV_DATA = "JAXNET_DATA"
"""Environment variable naming the data root (the folder that holds ``mnist/``, ``cifar10/``)."""

ENV_CACHE = "JAXNET_CACHE"
"""Environment variable naming the writable cache folder (checksum memo, decoded arrays)."""


class Dataset(NamedTuple):
    """A data set's train and test split, as uint8 NHWC images and int32 labels.

    Attributes:
        train_images: uint8 ``(N, H, W, C)``.
        train_labels: int32 ``(N,)``, each in ``0 .. len(class_names) - 1``.
        test_images: uint8 ``(M, H, W, C)``.
        test_labels: int32 ``(M,)``.
        class_names: the name of each label, in label order.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]


class DataError(Exception):
    """A data file is missing, truncated, malformed or fails its checksum.

    The message is a single line that names the file and what is wrong with it, fit to print as
    it is (the experiment command lines catch this and print it, with no traceback).
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class FileSpec(NamedTuple):
    """The published size and md5 of one official file.

    Attributes:
        size: size in bytes, or None where it is not published.
        md5: lowercase hex md5 digest.
    """

    size: int | None
    md5: str


# Keyed by "<data set folder>/<path inside it>". MNIST gzip and CIFAR-10 binary values are the
# official ones listed in shared/data/SOURCES.md. The uncompressed MNIST values are those of the
# official gzip files' contents; the CIFAR-10 python-version values are the published ones
# (the same as torchvision's).
CHECKSUMS: dict[str, FileSpec] = {
    "mnist/train-images-idx3-ubyte.gz": FileSpec(9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "mnist/train-labels-idx1-ubyte.gz": FileSpec(28881, "d53e105ee54ea40749a09fcbcd1e9432"),
    "mnist/t10k-images-idx3-ubyte.gz": FileSpec(1648877, "9fb629c4189551a2d022fa330f9573f3"),
    "mnist/t10k-labels-idx1-ubyte.gz": FileSpec(4542, "ec29112dd5afa0611ce80d1b7f02629c"),
    "mnist/train-images-idx3-ubyte": FileSpec(47040016, "6bbc9ace898e44ae57da46a324031adb"),
    "mnist/train-labels-idx1-ubyte": FileSpec(60008, "a25bea736e30d166cdddb491f175f624"),
    "mnist/t10k-images-idx3-ubyte": FileSpec(7840016, "2646ac647ad5339dbf082846283269ea"),
    "mnist/t10k-labels-idx1-ubyte": FileSpec(10008, "27ae3e4e09519cfbb04c329615203637"),
    "cifar10/cifar-10-binary.tar.gz": FileSpec(None, "c32a1d4ab5d03f1284b67883e8d87530"),
    "cifar10/cifar-10-python.tar.gz": FileSpec(None, "c58f30108f718f92721af3b95e74349a"),
    "cifar10/cifar-10-batches-bin/data_batch_1.bin": FileSpec(
        30730000, "5dd7e06a14cb22eb9f671a540d1b7c25"
    ),
    "cifar10/cifar-10-batches-bin/data_batch_2.bin": FileSpec(
        30730000, "5ea93a67294ea407fff1d09f752e9692"
    ),
    "cifar10/cifar-10-batches-bin/data_batch_3.bin": FileSpec(
        30730000, "942cd6a4bcdd0dd3c604fbe906cb4421"
    ),
    "cifar10/cifar-10-batches-bin/data_batch_4.bin": FileSpec(
        30730000, "ae636b3ba5c66a11e91e8cb52e771fcb"
    ),
    "cifar10/cifar-10-batches-bin/data_batch_5.bin": FileSpec(
        30730000, "53f37980c15c3d472c316c40844f3f0d"
    ),
    "cifar10/cifar-10-batches-bin/test_batch.bin": FileSpec(
        30730000, "803d5f7f4d78ea53de84dbe85f74fb6d"
    ),
    "cifar10/cifar-10-batches-bin/batches.meta.txt": FileSpec(
        61, "728051cd483f366e254dddb25bead8b3"
    ),
    "cifar10/cifar-10-batches-py/data_batch_1": FileSpec(
        31035704, "c99cafc152244af753f735de768cd75f"
    ),
    "cifar10/cifar-10-batches-py/data_batch_2": FileSpec(
        31035320, "d4bba439e000b95fd0a9bffe97cbabec"
    ),
    "cifar10/cifar-10-batches-py/data_batch_3": FileSpec(
        31035999, "54ebc095f3ab1f0389bbae665268c751"
    ),
    "cifar10/cifar-10-batches-py/data_batch_4": FileSpec(
        31035696, "634d18415352ddfa80567beed471001a"
    ),
    "cifar10/cifar-10-batches-py/data_batch_5": FileSpec(
        31035623, "482c414d41f54cd18b22e5b47cb7c3cb"
    ),
    "cifar10/cifar-10-batches-py/test_batch": FileSpec(
        31035526, "40351d587109b95175f43aff81a1287e"
    ),
    "cifar10/cifar-10-batches-py/batches.meta": FileSpec(158, "5ff9c542aee3614f3951f8cda6e48888"),
}

MNIST_MIRRORS: Sequence[str] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
"""Base URLs of maintained MNIST mirrors, tried in turn (the original host answers 403)."""

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
"""The official CIFAR-10 binary archive; it unpacks to ``cifar-10-batches-bin/``."""

_MNIST_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MNIST_CLASSES = tuple(str(d) for d in range(10))

_CIFAR_BIN = "cifar-10-batches-bin"
_CIFAR_PY = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_FILES = {
    _CIFAR_BIN: (*(f"{b}.bin" for b in _CIFAR_TRAIN), "test_batch.bin", "batches.meta.txt"),
    _CIFAR_PY: (*_CIFAR_TRAIN, "test_batch", "batches.meta"),
}
_CIFAR_ARCHIVES = {_CIFAR_BIN: "cifar-10-binary.tar.gz", _CIFAR_PY: "cifar-10-python.tar.gz"}
_CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + R, G, B planes of 32x32

_DECODE_VERSION = 1  # bump when the decoded-array layout changes: old cache entries are ignored
_MEMO_NAME = "checksums.json"


# --------------------------------------------------------------------------------------------
# Where the files are


def cache_dir() -> Path:
    """The writable per-user cache folder: ``$JAXNET_CACHE``, else ``pooch.os_cache("jaxnet")``.

    Holds the checksum memo, the decoded arrays, and downloads when no data folder is named.

    Returns:
        The folder's absolute path (it may not exist yet).
    """
    env = os.environ.get(ENV_CACHE)
    path = Path(env) if env else Path(pooch.os_cache("jaxnet"))
    return path.expanduser().absolute()


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds one sub-folder per data set (``mnist/``, ``cifar10/``).

    Args:
        data_dir: an explicit folder; when None, ``$JAXNET_DATA``, else :func:`cache_dir`.

    Returns:
        The root's absolute path (it may not exist yet).
    """
    if data_dir is None:
        env = os.environ.get(ENV_DATA)
        return Path(env).expanduser().absolute() if env else cache_dir()
    return Path(data_dir).expanduser().absolute()


def _locations(root: Path, name: str) -> list[Path]:
    """Folders searched for data set ``name``: under ``root``, then under the cache."""
    places = [root / name]
    fallback = cache_dir() / name
    if fallback != places[0]:
        places.append(fallback)
    return places


def _is_writable(folder: Path) -> bool:
    """Whether ``folder`` exists or can be made, and files can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _download_dir(locations: Sequence[Path]) -> Path | None:
    """The first searched folder that downloads can go to, or None."""
    return next((p for p in locations if _is_writable(p)), None)


def _where(locations: Sequence[Path]) -> str:
    return " and ".join(str(p) for p in locations)


# --------------------------------------------------------------------------------------------
# Atomic writes and the checksum memo


@contextlib.contextmanager
def _atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the body succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _warn_cache(path: Path, err: Exception) -> None:
    warnings.warn(
        f"jaxnet.data: could not write the cache file {path} ({err}); continuing without it",
        RuntimeWarning,
        stacklevel=3,
    )


def file_md5(path: str | os.PathLike) -> str:
    """The md5 of a file, read in 1 MiB chunks.

    Args:
        path: the file.

    Returns:
        The lowercase hex digest (32 characters).
    """
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _memo_path() -> Path:
    return cache_dir() / _MEMO_NAME


def _read_memo() -> dict[str, Any]:
    try:
        memo = json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _md5_remembered(path: Path, st: os.stat_result) -> str:
    """The file's md5, from the memo when its size and mtime are unchanged, else computed."""
    key = str(path.absolute())
    entry = _read_memo().get(key)
    if (
        isinstance(entry, dict)
        and entry.get("size") == st.st_size
        and entry.get("mtime_ns") == st.st_mtime_ns
        and isinstance(entry.get("md5"), str)
    ):
        return entry["md5"]
    md5 = file_md5(path)
    memo = _read_memo()  # re-read: another process may have added entries meanwhile
    memo[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": md5}
    dest = _memo_path()
    try:
        with _atomic_path(dest) as tmp:
            tmp.write_text(json.dumps(memo, indent=1, sort_keys=True))
    except OSError as err:
        _warn_cache(dest, err)
    return md5


def verify_file(path: str | os.PathLike, spec: FileSpec) -> None:
    """Check a file's size and md5 against its published values.

    The md5 is computed once per (absolute path, size, mtime) and remembered in
    ``<cache>/checksums.json``; later calls only ``stat`` the file.

    Args:
        path: the file.
        spec: its published size and md5.

    Raises:
        DataError: the file is missing, has the wrong size, or its md5 differs.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None
    fix = "delete it to download it again, or pass verify=False to skip the check"
    if spec.size is not None and st.st_size != spec.size:
        raise DataError(
            f"{path}: wrong size: {st.st_size} bytes, the official file has {spec.size} "
            f"(truncated or not the official file); {fix}"
        )
    md5 = _md5_remembered(path, st)
    if md5 != spec.md5:
        raise DataError(
            f"{path}: checksum mismatch: md5 {md5}, the official file has {spec.md5} "
            f"(corrupt or not the official file); {fix}"
        )


# --------------------------------------------------------------------------------------------
# Downloads


def _download(url: str, dest: Path, md5: str) -> None:
    """Fetch ``url`` into ``dest`` and check its md5 (tests replace this function).

    pooch streams into a temporary file beside ``dest`` with a progress bar, checks the md5, and
    only then renames it to ``dest``; on any failure the temporary file is removed.

    Args:
        url: where to fetch from.
        dest: the file to create.
        md5: the expected lowercase hex md5.

    Raises:
        Exception: whatever the transfer raised (``requests`` errors, ``ValueError`` for a hash
            mismatch); callers turn it into a :class:`DataError`.
    """
    downloader = pooch.HTTPDownloader(progressbar=True, timeout=(15, 60))
    pooch.retrieve(
        url, known_hash=f"md5:{md5}", fname=dest.name, path=dest.parent, downloader=downloader
    )


def _reason(err: BaseException, limit: int = 240) -> str:
    """A short one-line account of an exception, for a DataError message."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _download_reason(err: BaseException) -> str:
    """Why a download failed, in a few words (``requests`` messages run to several lines)."""
    import requests  # pooch's own dependency; imported here as only failures need it

    if isinstance(err, requests.exceptions.HTTPError) and err.response is not None:
        return f"HTTP {err.response.status_code} {err.response.reason}"
    if isinstance(err, requests.exceptions.Timeout):
        return "timed out"
    if isinstance(err, requests.exceptions.ConnectionError):
        found = re.search(r"\[Errno -?\d+\][^'\")]*", str(err))
        return "cannot connect" + (f" ({found.group(0).strip()})" if found else "")
    return _reason(err)


# --------------------------------------------------------------------------------------------
# idx files (MNIST layout)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in ``.gz``."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None
    if path.suffix != ".gz":
        return raw
    return _gunzip(raw, path)


def _gunzip(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise DataError(
            f"{path}: truncated: the gzip stream ends before its end-of-stream marker "
            f"({len(raw)} bytes); delete it and download it again"
        ) from None
    except (OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: corrupt gzip data ({_reason(err)})") from None


_IDX_KINDS = {"images": (0x00000803, 3), "labels": (0x00000801, 1)}


def _parse_idx(buf: bytes, path: Path, kind: str) -> np.ndarray:
    """Parse an idx3 image file or idx1 label file.

    Returns:
        uint8 ``(N, rows, cols, 1)`` for images, int32 ``(N,)`` for labels.
    """
    magic_expected, ndim = _IDX_KINDS[kind]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(
            f"{path}: truncated: {len(buf)} bytes, shorter than the {header}-byte header of an "
            f"idx {kind} file"
        )
    magic, *dims = struct.unpack(f">{1 + ndim}I", buf[:header])
    if magic != magic_expected:
        hint = ""
        if buf[:2] == b"\x1f\x8b":
            hint = " (the data is gzip-compressed: its name should end in .gz)"
        else:
            other = next((k for k, (m, _) in _IDX_KINDS.items() if m == magic), None)
            if other is not None:
                hint = f" (that is an idx {other} file)"
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x}, expected 0x{magic_expected:08x} "
            f"for an idx {kind} file{hint}"
        )
    count = dims[0]
    if kind == "images" and (dims[1] == 0 or dims[2] == 0):
        raise DataError(f"{path}: header gives an image size of {dims[1]}x{dims[2]}")
    need = int(np.prod(dims, dtype=np.int64))
    have = len(buf) - header
    what = f"{count} images of {dims[1]}x{dims[2]}" if kind == "images" else f"{count} labels"
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
    arr = np.frombuffer(buf, dtype=np.uint8, count=need, offset=header)
    if kind == "labels":
        return arr.astype(np.int32)
    return arr.reshape(count, dims[1], dims[2], 1).copy()


def _decoded_path(path: Path, st: os.stat_result) -> tuple[Path, str]:
    """Cache file for the decoded array of ``path``, and the prefix shared by its old versions."""
    src = str(path.absolute())
    who = hashlib.sha1(src.encode()).hexdigest()[:12]
    state = f"{_DECODE_VERSION}|{src}|{st.st_size}|{st.st_mtime_ns}"
    key = hashlib.sha1(state.encode()).hexdigest()[:12]
    prefix = f"{who}-"
    return cache_dir() / "decoded" / f"{prefix}{key}-{path.name}.npy", prefix


def _load_idx_file(path: Path, kind: str) -> np.ndarray:
    """Read one idx file, through the decoded-array cache when it is gzip-compressed."""
    if path.suffix != ".gz":
        return _parse_idx(_read_bytes(path), path, kind)
    try:
        st = path.stat()
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None
    cached, prefix = _decoded_path(path, st)
    ndim = 4 if kind == "images" else 1
    dtype = np.uint8 if kind == "images" else np.int32
    with contextlib.suppress(OSError, ValueError, EOFError):
        arr = np.load(cached, allow_pickle=False)
        if arr.dtype == dtype and arr.ndim == ndim:
            return arr
    arr = _parse_idx(_read_bytes(path), path, kind)
    try:
        with _atomic_path(cached) as tmp, open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        for old in cached.parent.glob(f"{prefix}*-{path.name}.npy"):
            if old != cached:
                with contextlib.suppress(OSError):
                    old.unlink()
    except OSError as err:
        _warn_cache(cached, err)
    return arr


def _find_idx(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The four idx files in ``folder`` (gzip preferred) and the names of those missing."""
    found, missing = {}, []
    for part, stem in _MNIST_STEMS.items():
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                found[part] = folder / name
                break
        else:
            missing.append(f"{stem}.gz")
    return found, missing


def _check_labels(labels: np.ndarray, path: Path, num_classes: int) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{path}: label {int(labels[i])} at index {i} is outside 0..{num_classes - 1} "
            f"({bad.size} labels out of range)"
        )


def _read_idx_set(files: dict[str, Path], num_classes: int) -> tuple[np.ndarray, ...]:
    """Read and cross-check the four idx files: train/test images (N,H,W,1) and labels (N,)."""
    arrays = {}
    for split in ("train", "test"):
        img_path, lbl_path = files[f"{split}_images"], files[f"{split}_labels"]
        images = _load_idx_file(img_path, "images")
        labels = _load_idx_file(lbl_path, "labels")
        if len(images) != len(labels):
            raise DataError(
                f"{img_path}: holds {len(images)} images but {lbl_path} holds {len(labels)} "
                "labels; the two files do not belong together"
            )
        _check_labels(labels, lbl_path, num_classes)
        arrays[split] = (images, labels)
    train_hw, test_hw = arrays["train"][0].shape[1:3], arrays["test"][0].shape[1:3]
    if train_hw != test_hw:
        raise DataError(
            f"{files['test_images']}: images are {test_hw[0]}x{test_hw[1]} but "
            f"{files['train_images']} holds {train_hw[0]}x{train_hw[1]} images"
        )
    return (*arrays["train"], *arrays["test"])


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
    found, missing = _find_idx(folder)
    if missing:
        raise DataError(
            f"{folder}: missing idx files: {', '.join(missing)} (each may also be uncompressed, "
            "without .gz)"
        )
    return Dataset(*_read_idx_set(found, num_classes), tuple(str(i) for i in range(num_classes)))


def _fetch_mnist(dest: Path, missing: list[str], tried: list[str]) -> list[str]:
    """Download the named gzip files into ``dest``; return those that could not be fetched.

    Mirrors are tried in turn. One that cannot be reached is not asked again for the remaining
    files, so with no network each mirror costs one connection attempt, not one per file.
    """
    import requests  # pooch's own dependency

    unreachable = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    mirrors = list(MNIST_MIRRORS)
    failed = []
    for name in missing:
        spec = CHECKSUMS[f"mnist/{name}"]
        for mirror in list(mirrors):
            url = mirror.rstrip("/") + "/" + name
            try:
                _download(url, dest / name, spec.md5)
                break
            except Exception as err:
                tried.append(f"{url}: {_download_reason(err)}")
                if isinstance(err, unreachable):
                    mirrors.remove(mirror)
        else:
            failed.append(name)
    return failed


def load_mnist(
    data_dir: str | os.PathLike | None = None, *, verify: bool = True, download: bool = True
) -> Dataset:
    """Load MNIST from the four official idx files in ``<data root>/mnist/``.

    Files: ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` (uncompressed copies, without
    ``.gz``, are accepted too). Missing files are looked for in the cache folder too, then
    downloaded from :data:`MNIST_MIRRORS` into the first writable of those folders.

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
    locations = _locations(data_root(data_dir), "mnist")
    found: dict[str, Path] = {}
    for folder in locations:
        found, missing = _find_idx(folder)
        if not missing:
            break
    else:
        dest = _download_dir(locations) if download else None
        missing = _find_idx(dest or locations[0])[1]
        tried: list[str] = []
        if dest is not None:
            missing = _fetch_mnist(dest, missing, tried)
        if missing:
            raise DataError(_missing_message("MNIST", missing, locations, tried, download, dest))
        found = _find_idx(dest)[0]
    if verify:
        for path in found.values():
            verify_file(path, CHECKSUMS[f"mnist/{path.name}"])
    dataset = Dataset(*_read_idx_set(found, 10), _MNIST_CLASSES)
    for images, part in (
        (dataset.train_images, "train_images"),
        (dataset.test_images, "test_images"),
    ):
        if images.shape[1:3] != (28, 28):
            raise DataError(
                f"{found[part]}: images are {images.shape[1]}x{images.shape[2]}, MNIST's are "
                "28x28 (use load_idx_dir for other idx data sets)"
            )
    return dataset


def _missing_message(
    what: str,
    missing: Sequence[str],
    locations: Sequence[Path],
    tried: Sequence[str],
    download: bool,
    dest: Path | None,
) -> str:
    sub = locations[0].name
    if not download:
        why = "downloads are off (download=False)"
    elif dest is None:
        why = "none of those folders is writable, so nothing could be downloaded"
    else:
        why = "download failed: " + "; ".join(tried) if tried else "download failed"
    return (
        f"{what} files missing: {', '.join(missing)}; looked in {_where(locations)}; {why}. "
        f"Put the official files in {locations[0]}, or set {ENV_DATA} (or pass data_dir / "
        f"--data-dir) to a folder whose {sub}/ sub-folder holds them"
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10


def _cifar_complete(folder: Path) -> str | None:
    """Which complete CIFAR-10 version (binary preferred) ``folder`` holds, if any."""
    for version, names in _CIFAR_FILES.items():
        if all((folder / version / n).is_file() for n in names):
            return version
    return None


def _extract_cifar(archive: Path, version: str, dest: Path) -> None:
    """Unpack the needed members of a CIFAR-10 archive into ``dest/<version>/``, all or nothing.

    Members are read in archive order (one pass over the gzip stream) into a hidden staging
    folder beside the target; only when every expected file has arrived are they renamed into
    place. Only the expected file names are written, so no path in the archive can escape.
    """
    target = dest / version
    wanted = set(_CIFAR_FILES[version])
    try:
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target, prefix=".unpack-"))
    except OSError as err:
        raise DataError(f"{archive}: cannot unpack it into {target} ({_reason(err)})") from None
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                folder, _, name = member.name.removeprefix("./").partition("/")
                if folder != version or name not in wanted:
                    continue
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    raise DataError(f"{archive}: {member.name} is not a regular file")
                with open(staging / name, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                wanted.discard(name)
        if wanted:
            lacking = ", ".join(f"{version}/{n}" for n in sorted(wanted))
            raise DataError(f"{archive}: the archive lacks {lacking}")
        for name in _CIFAR_FILES[version]:
            os.replace(staging / name, target / name)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise DataError(f"{archive}: corrupt or truncated archive ({_reason(err)})") from None
    except OSError as err:
        raise DataError(f"{archive}: cannot unpack it into {target} ({_reason(err)})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _find_or_fetch_cifar(locations: list[Path], verify: bool, download: bool) -> Path:
    """The folder holding a complete CIFAR-10 version, unpacking or downloading if needed."""
    for folder in locations:
        version = _cifar_complete(folder)
        if version is not None:
            return folder / version
    # An archive the user put there, or one a previous interrupted run downloaded.
    for folder in locations:
        for version, name in _CIFAR_ARCHIVES.items():
            archive = folder / name
            if archive.is_file():
                if verify:
                    verify_file(archive, CHECKSUMS[f"cifar10/{name}"])
                target = folder if _is_writable(folder) else _download_dir(locations)
                if target is not None:
                    _extract_cifar(archive, version, target)
                    return target / version
    dest = _download_dir(locations) if download else None
    tried: list[str] = []
    if dest is not None:
        archive = dest / _CIFAR_ARCHIVES[_CIFAR_BIN]
        try:
            _download(CIFAR10_URL, archive, CHECKSUMS[f"cifar10/{archive.name}"].md5)
        except Exception as err:
            tried.append(f"{CIFAR10_URL}: {_download_reason(err)}")
        else:
            _extract_cifar(archive, _CIFAR_BIN, dest)
            with contextlib.suppress(OSError):
                archive.unlink()
            return dest / _CIFAR_BIN
    missing = [f"{_CIFAR_BIN}/{n}" for n in _CIFAR_FILES[_CIFAR_BIN]]
    shown = [n for n in missing if not (locations[0] / n).is_file()] or missing
    raise DataError(
        _missing_message("CIFAR-10", shown, locations, tried, download, dest)
        + f" (or the python version, {_CIFAR_PY}/, or either official .tar.gz archive)"
    )


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch: uint8 planar images (n, 3, 1024) and int32 labels (n,)."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise DataError(
            f"{path}: truncated: {raw.size} bytes is not a whole number of {_CIFAR_RECORD}-byte "
            "records (1 label byte, then 3072 pixel bytes)"
        )
    records = raw.reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int32)
    _check_labels(labels, path, 10)
    return records[:, 1:].reshape(-1, 3, 1024), labels


def _read_meta_txt(path: Path) -> tuple[str, ...]:
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read it as text ({_reason(err)})") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 10:
        raise DataError(f"{path}: expected 10 class names, one per line, found {len(names)}")
    return names


class _RefusedGlobal(pickle.UnpicklingError):
    pass


_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only plain containers, bytes, numbers and numpy arrays.

    The official CIFAR-10 python batches are dicts of lists, bytes, ints and one uint8 array;
    the only globals they name are numpy's array reconstructor, ``ndarray`` and ``dtype``. Any
    other global (``os.system``, ``builtins.eval``, ...) is refused before it is looked up.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _load_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="bytes").load()
    except _RefusedGlobal as err:
        raise DataError(
            f"{path}: refused: the pickle asks for {err}, which no CIFAR-10 batch contains "
            "(only dicts, lists, bytes, numbers and numpy arrays are allowed)"
        ) from None
    except EOFError:
        raise DataError(f"{path}: truncated: the pickle ends early") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None
    except Exception as err:
        if "truncated" in str(err):  # UnpicklingError: pickle data was truncated
            raise DataError(f"{path}: truncated: the pickle ends early") from None
        raise DataError(f"{path}: corrupt pickle ({type(err).__name__}: {_reason(err)})") from None


def _str_keys(obj: Any, path: Path, needed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: wrong structure: expected a dict with keys {', '.join(needed)}, found "
            f"{type(obj).__name__}"
        )
    table = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    absent = [k for k in needed if k not in table]
    if absent:
        raise DataError(f"{path}: wrong structure: the dict has no {', '.join(absent)} entry")
    return table


def _read_cifar_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: uint8 planar images (n, 3, 1024) and int32 labels (n,)."""
    batch = _str_keys(_load_pickle(path), path, ("data", "labels"))
    data, labels = batch["data"], batch["labels"]
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3072
    ):
        found = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DataError(
            f"{path}: wrong structure: 'data' must be a uint8 array of shape (N, 3072), "
            f"found {found}"
        )
    if not isinstance(labels, list | tuple | np.ndarray) or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in labels
    ):
        raise DataError(f"{path}: wrong structure: 'labels' must be a list of ints")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(data):
        raise DataError(
            f"{path}: holds {len(data)} images but {len(labels)} labels; they must match"
        )
    _check_labels(labels, path, 10)
    return data.reshape(-1, 3, 1024), labels.astype(np.int32)


def _read_meta_py(path: Path) -> tuple[str, ...]:
    names = _str_keys(_load_pickle(path), path, ("label_names",))["label_names"]
    if not isinstance(names, list | tuple) or not all(isinstance(n, bytes | str) for n in names):
        raise DataError(f"{path}: wrong structure: 'label_names' must be a list of strings")
    if len(names) != 10:
        raise DataError(f"{path}: expected 10 class names in 'label_names', found {len(names)}")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in names)


def _stack(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Interleave planar batches (n, 3, 1024) into one contiguous NHWC array (total, 32, 32, 3).

    Copying one colour plane at a time is about twice as fast as a 4-d transpose.
    """
    total = sum(len(labels) for _, labels in parts)
    images = np.empty((total, 32, 32, 3), dtype=np.uint8)
    labels = np.empty((total,), dtype=np.int32)
    start = 0
    for batch_images, batch_labels in parts:
        stop = start + len(batch_labels)
        pixels = images[start:stop].reshape(-1, 1024, 3)
        for channel in range(3):
            pixels[:, :, channel] = batch_images[:, channel, :]
        labels[start:stop] = batch_labels
        start = stop
    return images, labels


def load_cifar10(
    data_dir: str | os.PathLike | None = None, *, verify: bool = True, download: bool = True
) -> Dataset:
    """Load CIFAR-10 from ``<data root>/cifar10/``, binary or python version.

    Looks for ``cifar-10-batches-bin/`` (``data_batch_1..5.bin``, ``test_batch.bin``,
    ``batches.meta.txt``), else ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``,
    ``batches.meta``; unpickled with an allow-list: only numpy arrays and plain containers), in
    the data root and then in the cache folder. Failing that it unpacks an official archive found
    there (``cifar-10-binary.tar.gz`` or ``cifar-10-python.tar.gz``), or downloads the binary
    archive from :data:`CIFAR10_URL`, unpacks it and deletes it.

    Args:
        data_dir: the data root; None means ``$JAXNET_DATA``, else the cache (:func:`data_root`).
        verify: check each file's size and md5 against the official ones (once per file version;
            the result is remembered in the cache).
        download: fetch the archive when no files are found; when False, raise at once.

    Returns:
        A :class:`Dataset`: train images uint8 ``(50000, 32, 32, 3)``, labels int32 ``(50000,)``;
        test images uint8 ``(10000, 32, 32, 3)``, labels int32 ``(10000,)``; the 10 class names
        in label order (``airplane``, ..., ``truck``).

    Raises:
        DataError: files are missing and cannot be downloaded, fail their checksum, are truncated
            or malformed, or a pickle holds anything but the official structure.
    """
    folder = _find_or_fetch_cifar(_locations(data_root(data_dir), "cifar10"), verify, download)
    version = folder.name
    names = _CIFAR_FILES[version]
    if verify:
        for name in names:
            verify_file(folder / name, CHECKSUMS[f"cifar10/{version}/{name}"])
    read, read_meta = (
        (_read_cifar_bin, _read_meta_txt)
        if version == _CIFAR_BIN
        else (_read_cifar_py, _read_meta_py)
    )
    train = _stack([read(folder / n) for n in names[:5]])
    test = _stack([read(folder / names[5])])
    return Dataset(*train, *test, read_meta(folder / names[6]))


# --------------------------------------------------------------------------------------------
# Splits, statistics and the in-step transforms


def train_val_split(
    images: np.ndarray, labels: np.ndarray, n_val: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out ``n_val`` examples, chosen by a seeded permutation, for validation.

    Both parts keep the original relative order (shuffling is done per epoch by the caller).

    Args:
        images: ``(N, ...)`` any dtype.
        labels: ``(N,)``.
        n_val: number held out, ``0 <= n_val < N`` (the starters hold out 2000).
        seed: seed of ``np.random.default_rng``; the same seed gives the same split.

    Returns:
        ``(train_images (N - n_val, ...), train_labels (N - n_val,), val_images (n_val, ...),
        val_labels (n_val,))``, new arrays of the input dtypes.

    Raises:
        ValueError: lengths differ or ``n_val`` is out of range.
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"images has {n} examples but labels has {len(labels)}")
    if not 0 <= n_val < n:
        raise ValueError(f"n_val must be in [0, {n}) for {n} examples, got {n_val}")
    order = np.random.default_rng(seed).permutation(n)
    val_idx = np.sort(order[:n_val])
    train_idx = np.sort(order[n_val:])
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """A seeded shuffle of ``range(n)`` for one epoch, cut into full batches.

    The permutation depends on ``(seed, epoch)`` only, so a resumed run sees the same order.
    The last ``n % batch_size`` indices of the permutation are dropped (a different set each
    epoch), so every batch has the same shape and the train step never recompiles.

    Args:
        n: number of training examples.
        batch_size: examples per batch, ``1 <= batch_size <= n``.
        seed: run seed.
        epoch: epoch number.

    Returns:
        int32 ``(n // batch_size, batch_size)`` indices into the training arrays.

    Raises:
        ValueError: ``batch_size`` out of range.
    """
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}] for {n} examples, got {batch_size}")
    order = np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)
    steps = n // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size)


def channel_mean(images: np.ndarray) -> np.ndarray:
    """Per-channel mean of ``images / 255``; call it on the training split only.

    Summed exactly in integers (a histogram per channel), so the result does not depend on
    summation order.

    Args:
        images: uint8 ``(N, H, W, C)``.

    Returns:
        float32 ``(C,)``: the scalar mean for MNIST (``C = 1``), the RGB means for CIFAR-10.

    Raises:
        ValueError: ``images`` is not 4-d or is empty.
        TypeError: ``images`` is not uint8.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, C) array, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    pixels = images.reshape(-1, images.shape[-1])
    levels = np.arange(256, dtype=np.float64)
    sums = [np.bincount(pixels[:, c], minlength=256) @ levels for c in range(pixels.shape[1])]
    return (np.asarray(sums) / (pixels.shape[0] * 255.0)).astype(np.float32)


def preprocess(images: jax.Array | np.ndarray, mean: jax.Array | np.ndarray) -> jax.Array:
    """Scale uint8 images to [0, 1] and subtract the training mean; jax-traceable.

    Meant to run inside the jitted train step, so images stay uint8 in memory until then.

    Args:
        images: uint8 ``(N, H, W, C)``.
        mean: float ``(C,)`` (or a scalar), from :func:`channel_mean` on the training split.

    Returns:
        float32 ``(N, H, W, C)``: ``images / 255 - mean``.

    Raises:
        ValueError: ``images`` is not 4-d, or ``mean`` is neither ``(C,)`` nor a scalar.
        TypeError: ``images`` is not uint8 (scaling a float image twice is a silent bug).
    """
    images = jnp.asarray(images)
    mean = jnp.asarray(mean, dtype=jnp.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    if images.dtype != jnp.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    if mean.shape not in ((), (images.shape[-1],)):
        raise ValueError(
            f"mean must have shape ({images.shape[-1]},) or (), got {mean.shape} for images of "
            f"shape {images.shape}"
        )
    return images.astype(jnp.float32) / 255.0 - mean


def augment(
    key: jax.Array, images: jax.Array | np.ndarray, pad: int = 4, flip: bool = True
) -> jax.Array:
    """Random crop with zero padding and random horizontal flip, per image; jit-able.

    Each image is zero-padded by ``pad`` pixels on every side, cropped back to ``H x W`` at an
    offset drawn uniformly from ``0 .. 2 * pad`` in each direction, then mirrored left-right with
    probability 1/2 if ``flip`` (not for digits, whose mirror images are not digits). The same
    key gives the same result.

    Args:
        key: a JAX PRNG key.
        images: ``(N, H, W, C)``, uint8 or float.
        pad: padding in pixels, a Python int ``>= 0`` (static under ``jit``).
        flip: whether to mirror half of the images left-right (static under ``jit``).

    Returns:
        ``(N, H, W, C)``, the dtype of ``images``.

    Raises:
        ValueError: ``images`` is not 4-d, or ``pad`` is negative or not an int.
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    n, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(flip_key, 0.5 if flip else 0.0, (n,))
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(image: jax.Array, offset: jax.Array, flip: jax.Array) -> jax.Array:
        crop = lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(flip, crop[:, ::-1, :], crop)

    return jax.vmap(one)(padded, offsets, flips)
