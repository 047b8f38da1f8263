"""A data set's files: where they are, checking them once, fetching them, the decoded cache.

Each data set lives in a sub-folder named after it (``<root>/mnist/``, ``<root>/cifar10/``) of the
data root (:func:`data_root`). Nothing is ever written next to the data: the md5 memo, the
decoded arrays and, when the root is read-only, the downloads go to the cache folder, each write
through :func:`jaxnet.io.atomic_write`; pooch downloads to a temporary file, checks its md5,
then renames it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pooch

from jaxnet._validate import out_of_range
from jaxnet.io import atomic_write

ENV_DATA = "JAXNET_DATA"  # names the data root, the folder holding mnist/, cifar10/
ENV_CACHE = "JAXNET_CACHE"  # names the writable cache folder
_DECODE_VERSION = 1  # bump when the decoded-array layout changes: old cache entries are ignored


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
    """A data file is missing, truncated, malformed or fails its checksum: one line naming the
    file and the problem, fit to print as it is (the commands print it with no traceback)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class FileSpec(NamedTuple):
    """The published size (bytes, or None where not published) and md5 of an official file."""

    size: int | None
    md5: str


def cache_dir() -> Path:
    """The writable per-user cache folder: ``$JAXNET_CACHE``, else ``pooch.os_cache("jaxnet")``."""
    return Path(os.environ.get(ENV_CACHE) or pooch.os_cache("jaxnet")).expanduser().absolute()


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding one sub-folder per data set: ``data_dir``, else ``$JAXNET_DATA``, else
    :func:`cache_dir` (it may not exist yet)."""
    root = os.environ.get(ENV_DATA) if data_dir is None else data_dir
    return Path(root).expanduser().absolute() if root else cache_dir()


def locations(data_dir: str | os.PathLike | None, name: str) -> list[Path]:
    """The folders searched for data set ``name``: under the data root, then under the cache."""
    places = [data_root(data_dir) / name, cache_dir() / name]
    return places[:1] if places[0] == places[1] else places


def is_writable(folder: Path) -> bool:
    """Whether ``folder`` exists or can be made, and files can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def download_dir(places: Sequence[Path]) -> Path | None:
    """The first of ``places`` that downloads can go to, or None."""
    return next((p for p in places if is_writable(p)), None)


def reason(err: BaseException, limit: int = 240) -> str:
    """A short one-line account of an exception, for a :class:`DataError` message."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unreadable(path: Path, err: OSError) -> DataError:
    return DataError(f"{path}: cannot read it ({err.strerror or err})")


def read(path: Path) -> bytes:
    """The file's bytes; a :class:`DataError` naming it if it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise unreadable(path, err) from None


def check_labels(labels: np.ndarray, path: Path, num_classes: int) -> None:
    """Raise :class:`DataError` naming ``path`` if a label is outside ``0 .. num_classes - 1``."""
    wrong = out_of_range(labels, num_classes)
    if wrong:
        raise DataError(f"{path}: label {wrong}")


def file_md5(path: str | os.PathLike) -> str:
    """The lowercase hex md5 of a file."""
    return pooch.file_hash(str(path), alg="md5")


def _cache_write(path: Path, write: Callable) -> None:
    """``write(f)`` into ``path`` atomically; a failure is a warning (the cache is optional)."""
    try:
        with atomic_write(path) as f:
            write(f)
    except OSError as err:
        message = f"could not write the cache file {path} ({err}); continuing without it"
        warnings.warn(f"jaxnet.datasets: {message}", RuntimeWarning, stacklevel=3)


def _stamp(path: Path) -> tuple[str, str, int]:
    """The absolute path; that with size and mtime (what a result is remembered by); the size."""
    try:
        st = path.stat()
    except OSError as err:
        raise unreadable(path, err) from None
    src = str(path.absolute())
    return src, f"{src}|{st.st_size}|{st.st_mtime_ns}", st.st_size


def _read_memo(memo_path: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        memo = json.loads(memo_path.read_text())
        return memo if isinstance(memo, dict) else {}
    return {}


def verify_file(path: str | os.PathLike, spec: FileSpec) -> None:
    """Check a file's size and md5 against the published ones. The md5 is computed once per
    (absolute path, size, mtime) and remembered in ``<cache>/checksums.json``.

    Raises:
        DataError: the file is missing, has the wrong size, or its md5 differs.
    """
    path = Path(path)
    src, key, size = _stamp(path)
    fix = (
        "delete it to download it again, or pass --no-verify (verify=False in Python) to skip "
        "the check"
    )
    if spec.size is not None and size != spec.size:
        raise DataError(
            f"{path}: wrong size: {size} bytes, the official file has {spec.size} "
            f"(truncated or not the official file); {fix}"
        )
    memo_path = cache_dir() / "checksums.json"
    md5 = _read_memo(memo_path).get(key)
    if not isinstance(md5, str):
        md5 = file_md5(path)
        memo = {k: v for k, v in _read_memo(memo_path).items() if not k.startswith(src + "|")}
        text = json.dumps({**memo, key: md5}, indent=1)  # read again: others may have added
        _cache_write(memo_path, lambda f: f.write(text.encode()))
    if md5 != spec.md5:
        raise DataError(
            f"{path}: checksum mismatch: md5 {md5}, the official file has {spec.md5} "
            f"(corrupt or not the official file); {fix}"
        )


def cached(
    folder: str, source: str, version: str, decode: Callable[[], dict[str, np.ndarray]]
) -> tuple[dict[str, np.ndarray], bool]:
    """``decode()``'s arrays, kept in ``<cache>/<folder>/``; and whether they came from there.

    An entry is keyed by its ``source`` (a file, a folder and its conversion) and that source's
    ``version`` (sizes and mtimes): a new version replaces the source's older entries, and a
    damaged entry is decoded again.
    """
    who, what = (hashlib.sha1(key.encode()).hexdigest()[:12] for key in (source, version))
    entry = cache_dir() / folder / f"{who}-{what}.npz"
    with contextlib.suppress(OSError, ValueError, EOFError, zipfile.BadZipFile):
        with np.load(entry, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}, True
    arrays = decode()
    for old in entry.parent.glob(f"{who}-*.npz"):
        old.unlink(missing_ok=True)
    _cache_write(entry, lambda f: np.savez(f, **arrays))
    return arrays, False


def cached_array(path: Path, decode: Callable[[], np.ndarray]) -> np.ndarray:
    """``decode()`` of the file ``path``, :func:`cached` by its absolute path, size and mtime."""
    src, key, _ = _stamp(path)
    version = f"{_DECODE_VERSION}|{key}"
    return cached("decoded", src, version, lambda: {"array": decode()})[0]["array"]


def download(url: str, dest: Path, md5: str) -> None:
    """Fetch ``url`` into ``dest`` with pooch: progress bar, md5 check, rename when complete."""
    downloader = pooch.HTTPDownloader(progressbar=True, timeout=(15, 60))
    pooch.retrieve(url, f"md5:{md5}", fname=dest.name, path=dest.parent, downloader=downloader)


def _download_reason(err: BaseException) -> str:
    """Why a download failed, in a few words (``requests`` messages run to several lines)."""
    import requests  # pooch's own dependency; only failures need it

    if isinstance(err, requests.exceptions.HTTPError) and err.response is not None:
        return f"HTTP {err.response.status_code} {err.response.reason}"
    if isinstance(err, requests.exceptions.Timeout):
        return "timed out"
    if isinstance(err, requests.exceptions.ConnectionError):
        found = re.search(r"\[Errno -?\d+\][^'\")]*", str(err))
        return "cannot connect" + (f" ({found.group(0).strip()})" if found else "")
    return reason(err)


def fetch(
    names: Sequence[str], mirrors: Sequence[str], specs: Mapping[str, FileSpec], dest: Path
) -> tuple[list[str], list[str]]:
    """Download each of ``names`` into ``dest``, trying ``mirrors`` (base URLs) in turn. A
    mirror that cannot be reached is not asked again: offline, each costs one attempt.

    Returns:
        The names that could not be fetched, and one ``"<url>: <why>"`` per failed attempt.
    """
    import requests

    unreachable = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    mirrors, failed, tried = list(mirrors), [], []
    for name in names:
        for mirror in list(mirrors):
            url = mirror.rstrip("/") + "/" + name
            try:
                download(url, dest / name, specs[name].md5)
                break
            except Exception as err:
                tried.append(f"{url}: {_download_reason(err)}")
                if isinstance(err, unreachable):
                    mirrors.remove(mirror)
        else:
            failed.append(name)
    return failed, tried


def missing_error(
    what: str,
    missing: Sequence[str],
    places: Sequence[Path],
    tried: Sequence[str],
    *,
    download: bool,
    dest: Path | None,
) -> DataError:
    """The error for files neither found nor fetched: which, where, why and what to do."""
    if not download:
        why = "downloads are off (download=False)"
    elif dest is None:
        why = "none of those folders is writable, so nothing could be downloaded"
    else:
        why = "download failed" + (": " + "; ".join(tried) if tried else "")
    return DataError(
        f"{what} files missing: {', '.join(missing)}; looked in "
        f"{' and '.join(map(str, places))}; {why}. Put the official files in {places[0]}, or "
        f"set {ENV_DATA} (or pass data_dir / --data-dir) to a folder whose {places[0].name}/ "
        "sub-folder holds them"
    )
