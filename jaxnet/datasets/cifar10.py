"""CIFAR-10: its official files as data, the binary and python-pickle readers, the archive."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from jaxnet.datasets import files
from jaxnet.datasets.files import DataError, Dataset, FileSpec
from jaxnet.io import atomic_write

NAME = "cifar10"
"""The data set's sub-folder of the data root."""

MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
"""The official host; its ``cifar-10-binary.tar.gz`` unpacks to ``cifar-10-batches-bin/``."""

BIN, PY = "cifar-10-batches-bin", "cifar-10-batches-py"
ARCHIVES = {BIN: "cifar-10-binary.tar.gz", PY: "cifar-10-python.tar.gz"}
_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_NAMES = {
    BIN: (*(f"{b}.bin" for b in _BATCHES), "batches.meta.txt"),
    PY: (*_BATCHES, "batches.meta"),
}

FILES = {  # the published values (the python version's are torchvision's too)
    ARCHIVES[BIN]: FileSpec(None, "c32a1d4ab5d03f1284b67883e8d87530"),
    ARCHIVES[PY]: FileSpec(None, "c58f30108f718f92721af3b95e74349a"),
    f"{BIN}/data_batch_1.bin": FileSpec(30730000, "5dd7e06a14cb22eb9f671a540d1b7c25"),
    f"{BIN}/data_batch_2.bin": FileSpec(30730000, "5ea93a67294ea407fff1d09f752e9692"),
    f"{BIN}/data_batch_3.bin": FileSpec(30730000, "942cd6a4bcdd0dd3c604fbe906cb4421"),
    f"{BIN}/data_batch_4.bin": FileSpec(30730000, "ae636b3ba5c66a11e91e8cb52e771fcb"),
    f"{BIN}/data_batch_5.bin": FileSpec(30730000, "53f37980c15c3d472c316c40844f3f0d"),
    f"{BIN}/test_batch.bin": FileSpec(30730000, "803d5f7f4d78ea53de84dbe85f74fb6d"),
    f"{BIN}/batches.meta.txt": FileSpec(61, "728051cd483f366e254dddb25bead8b3"),
    f"{PY}/data_batch_1": FileSpec(31035704, "c99cafc152244af753f735de768cd75f"),
    f"{PY}/data_batch_2": FileSpec(31035320, "d4bba439e000b95fd0a9bffe97cbabec"),
    f"{PY}/data_batch_3": FileSpec(31035999, "54ebc095f3ab1f0389bbae665268c751"),
    f"{PY}/data_batch_4": FileSpec(31035696, "634d18415352ddfa80567beed471001a"),
    f"{PY}/data_batch_5": FileSpec(31035623, "482c414d41f54cd18b22e5b47cb7c3cb"),
    f"{PY}/test_batch": FileSpec(31035526, "40351d587109b95175f43aff81a1287e"),
    f"{PY}/batches.meta": FileSpec(158, "5ff9c542aee3614f3951f8cda6e48888"),
}
_RECORD = 1 + 3 * 32 * 32  # label byte + R, G, B planes of 32x32


def _extract(archive: Path, version: str, dest: Path) -> Path:
    """Unpack the needed members of ``archive`` into ``dest/<version>/``, all or nothing.

    One pass over the gzip stream; only the expected file names are written (so no path in the
    archive can escape), each atomically; on any failure those already written are removed.
    """
    target, wanted, written = dest / version, set(_NAMES[version]), []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                folder, _, name = member.name.removeprefix("./").partition("/")
                if folder != version or name not in wanted:
                    continue
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    raise DataError(f"{archive}: {member.name} is not a regular file")
                with atomic_write(target / name) as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
                written.append(target / name)
                wanted.discard(name)
        if wanted:
            lacking = ", ".join(f"{version}/{n}" for n in sorted(wanted))
            raise DataError(f"{archive}: the archive lacks {lacking}")
    except BaseException as err:
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(err, tarfile.TarError | EOFError | zlib.error):
            why = f"corrupt or truncated archive ({files.reason(err)})"
            raise DataError(f"{archive}: {why}") from None
        if isinstance(err, OSError):
            why = f"cannot unpack it into {target} ({files.reason(err)})"
            raise DataError(f"{archive}: {why}") from None
        raise
    return target


def _find_or_fetch(places: list[Path], verify: bool, download: bool) -> Path:
    """The folder holding a complete CIFAR-10 version, unpacking or downloading if needed."""
    for folder in places:
        for version, names in _NAMES.items():
            if all((folder / version / n).is_file() for n in names):
                return folder / version
    for folder in places:  # an archive the user put there, or an earlier run downloaded
        for version, name in ARCHIVES.items():
            if (folder / name).is_file():
                if verify:
                    files.verify_file(folder / name, FILES[name])
                target = folder if files.is_writable(folder) else files.download_dir(places)
                if target is not None:
                    return _extract(folder / name, version, target)
    dest = files.download_dir(places) if download else None
    tried = []
    if dest is not None:
        failed, tried = files.fetch([ARCHIVES[BIN]], MIRRORS, FILES, dest)
        if not failed:
            target = _extract(dest / ARCHIVES[BIN], BIN, dest)
            (dest / ARCHIVES[BIN]).unlink(missing_ok=True)
            return target
    missing = [f"{BIN}/{n}" for n in _NAMES[BIN]]
    shown = [n for n in missing if not (places[0] / n).is_file()] or missing
    error = files.missing_error("CIFAR-10", shown, places, tried, download=download, dest=dest)
    raise DataError(f"{error} (or the python version, {PY}/, or either official .tar.gz archive)")


def _read_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch: uint8 rows ``(n, 3072)``, the R, G, B planes of each image, and labels ``(n,)``
    (as ``_read_py`` returns them too)."""
    raw = np.frombuffer(files.read(path), dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise DataError(
            f"{path}: truncated: {raw.size} bytes is not a whole number of {_RECORD}-byte "
            "records (1 label byte, then 3072 pixel bytes)"
        )
    records = raw.reshape(-1, _RECORD)
    return records[:, 1:], records[:, 0].astype(np.int32)


def _read_meta_txt(path: Path) -> list[str]:
    try:
        text = files.read(path).decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: cannot read it as text ({files.reason(err)})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


_PICKLE_GLOBALS = {  # all the globals the official batches name, as numpy 1 and 2 call them
    ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _Refused(pickle.UnpicklingError):
    pass


class _Unpickler(pickle.Unpickler):
    """Only plain containers, bytes, numbers and numpy arrays: any global but numpy's array
    reconstructor, ``ndarray`` and ``dtype`` (``os.system``, ``builtins.eval``, ...) is refused
    before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def _unpickle(path: Path, needed: tuple[str, ...]) -> dict[str, Any]:
    """A pickled dict with (bytes or str) keys ``needed``, the keys as str."""
    raw = files.read(path)
    try:
        obj = _Unpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as err:
        raise DataError(
            f"{path}: refused: the pickle asks for {err}, which no CIFAR-10 batch contains "
            "(only dicts, lists, bytes, numbers and numpy arrays are allowed)"
        ) from None
    except Exception as err:
        if isinstance(err, EOFError) or "truncated" in str(err):
            raise DataError(f"{path}: truncated: the pickle ends early") from None
        raise DataError(
            f"{path}: corrupt pickle ({type(err).__name__}: {files.reason(err)})"
        ) from None
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


def _read_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path, ("data", "labels"))
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or (data.dtype, data.shape[1:]) != (np.uint8, (3072,)):
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
    if len(labels) != len(data):
        raise DataError(
            f"{path}: holds {len(data)} images but {len(labels)} labels; they must match"
        )
    return data, np.asarray(labels, dtype=np.int64)


def _read_meta_py(path: Path) -> list[str]:
    names = _unpickle(path, ("label_names",))["label_names"]
    if not isinstance(names, list | tuple) or not all(isinstance(n, bytes | str) for n in names):
        raise DataError(f"{path}: wrong structure: 'label_names' must be a list of strings")
    return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]


def _stack(paths: list[Path], read) -> tuple[np.ndarray, np.ndarray]:
    """Read batches and interleave their planar rows into one NHWC array (total, 32, 32, 3).

    Copying one colour plane at a time is about twice as fast as a 4-d transpose.
    """
    parts = [read(path) for path in paths]
    for path, (_, labels) in zip(paths, parts, strict=True):
        files.check_labels(labels, path, 10)
    images = np.empty((sum(len(y) for _, y in parts), 32, 32, 3), dtype=np.uint8)
    pixels = images.reshape(len(images), 1024, 3)
    start = 0
    for rows, _ in parts:
        for channel in range(3):
            plane = rows[:, 1024 * channel : 1024 * (channel + 1)]
            pixels[start : start + len(rows), :, channel] = plane
        start += len(rows)
    return images, np.concatenate([y for _, y in parts]).astype(np.int32)


def load_cifar10(
    data_dir: str | os.PathLike | None = None, *, verify: bool = True, download: bool = True
) -> Dataset:
    """Load CIFAR-10 from ``<data root>/cifar10/``, binary or python version.

    Looks for ``cifar-10-batches-bin/`` (``data_batch_1..5.bin``, ``test_batch.bin``,
    ``batches.meta.txt``), else ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``,
    ``batches.meta``; unpickled with an allow-list: only numpy arrays and plain containers), in
    the data root and then in the cache folder. Failing that it unpacks an official archive found
    there (``cifar-10-binary.tar.gz`` or ``cifar-10-python.tar.gz``), or downloads the binary
    archive from :data:`MIRRORS`, unpacks it and deletes it.

    Args:
        data_dir, verify, download: as :func:`~jaxnet.datasets.load_mnist` (here ``download``
            fetches the archive).

    Returns:
        A :class:`Dataset`: train images uint8 ``(50000, 32, 32, 3)``, labels int32 ``(50000,)``;
        test images uint8 ``(10000, 32, 32, 3)``, labels int32 ``(10000,)``; the 10 class names
        in label order (``airplane``, ..., ``truck``).

    Raises:
        DataError: files are missing and cannot be downloaded, fail their checksum, are truncated
            or malformed, or a pickle holds anything but the official structure.
    """
    folder = _find_or_fetch(files.locations(data_dir, NAME), verify, download)
    paths = [folder / name for name in _NAMES[folder.name]]
    if verify:
        for path in paths:
            files.verify_file(path, FILES[f"{folder.name}/{path.name}"])
    binary = folder.name == BIN
    read, read_meta = (_read_bin, _read_meta_txt) if binary else (_read_py, _read_meta_py)
    train, test = _stack(paths[:5], read), _stack(paths[5:6], read)
    names = read_meta(paths[6])
    if len(names) != 10:
        where = ", one per line" if binary else " in 'label_names'"
        raise DataError(f"{paths[6]}: expected 10 class names{where}, found {len(names)}")
    return Dataset(*train, *test, tuple(names))
