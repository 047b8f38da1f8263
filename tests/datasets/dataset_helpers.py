"""File makers and checks shared by the data set tests (real idx, CIFAR binary and pickle files).

The ``test_real_*`` tests read the real data sets from ``$JAXNET_DATA``; they skip when it is
unset, and fail instead when ``$CI`` is set.
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import struct
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from data_files import CIFAR_CLASSES

from jaxnet.datasets import DataError, FileSpec


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mnist_arrays(n_train: int = 30, n_test: int = 12, size: int = 28, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def rewrite(path: Path, raw: bytes) -> None:
    """Replace an idx file's contents, gzip-compressed when its name ends in .gz."""
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)


def spec_of(path: Path) -> FileSpec:
    return FileSpec(path.stat().st_size, hashlib.md5(path.read_bytes()).hexdigest())


def patch_checksums(monkeypatch, folder: Path, module) -> None:
    """Make ``module.FILES`` accept the test's own files found under ``folder``."""
    for path in folder.rglob("*"):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            monkeypatch.setitem(module.FILES, rel, spec_of(path))


PY_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def py2_pickle(obj) -> bytes:
    """Pickle ``obj`` the way Python 2's cPickle wrote the official CIFAR-10 batches.

    Protocol 2 (every int a BININT, every tuple MARK ... TUPLE: the reader cares not which
    opcodes); ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING); a uint8 ndarray as
    ``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b')`` plus its state, the dtype as
    ``numpy.dtype('u1', 0, 1)`` plus its state. Python 3 cannot write this itself: its protocol-2
    ``bytes`` go through ``_codecs.encode``, which the safe loader rightly refuses.
    """
    out = bytearray(b"\x80\x02")

    def emit(o) -> None:
        if isinstance(o, dict):
            out.extend(b"}")
            if o:
                out.extend(b"(")
                for key, value in o.items():
                    emit(key)
                    emit(value)
                out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"]")
            if o:
                out.extend(b"(")
                for value in o:
                    emit(value)
                out.extend(b"e")
        elif isinstance(o, tuple):
            out.extend(b"(")
            for value in o:
                emit(value)
            out.extend(b"t")
        elif o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, bytes):
            if len(o) < 256:
                out.extend(b"U" + bytes([len(o)]) + o)
            else:
                out.extend(b"T" + struct.pack("<I", len(o)) + o)
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            emit((0,))
            emit(b"b")
            out.extend(b"\x87R(")
            emit(1)
            emit(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\n")
            emit((b"u1", 0, 1))
            out.extend(b"R")
            emit((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")
            emit(False)
            emit(o.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def py_batch(images: np.ndarray, labels: np.ndarray, name: bytes = b"batch") -> dict:
    return {
        b"batch_label": name,
        b"labels": [int(v) for v in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072).copy(),
        b"filenames": [b"img_%d.png" % i for i in range(len(images))],
    }


def write_cifar_py(folder: Path, batches) -> Path:
    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in zip(PY_NAMES, batches, strict=True):
        (out / name).write_bytes(py2_pickle(py_batch(images, labels, name.encode())))
    meta = {
        b"num_cases_per_batch": 10000,
        b"label_names": [c.encode() for c in CIFAR_CLASSES],
        b"num_vis": 3072,
    }
    (out / "batches.meta").write_bytes(py2_pickle(meta))
    return out


def make_tar(archive: Path, folder: Path) -> None:
    """A .tar.gz holding ``folder/`` under its own name, as the official archives do."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)


def expected_cifar(batches) -> tuple[np.ndarray, ...]:
    train_x = np.concatenate([b[0] for b in batches[:5]])
    train_y = np.concatenate([b[1] for b in batches[:5]]).astype(np.int32)
    return train_x, train_y, batches[5][0], batches[5][1].astype(np.int32)


def refused(load, *fragments: str, starts: Path | str = "") -> str:
    """The message of the :class:`DataError` that ``load()`` raises, checked: one line,
    starting with ``starts`` (the file at fault) and holding every fragment."""
    with pytest.raises(DataError) as err:
        load()
    message = str(err.value)
    assert "\n" not in message and message.strip() == message
    assert message.startswith(str(starts)), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


class Server(SimpleNamespace):
    url: str
    root: Path
    hits: list[str]


def fail_if_called(*args, **kwargs):
    raise AssertionError("should not be called on a cached load")
