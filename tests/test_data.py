"""Tests for jaxnet.data: loaders, downloads, verification, caches, bad files, transforms.

Format, error and download tests use small files the test makes (real idx, CIFAR binary and
python-pickle formats). The ``test_real_*`` tests read the real data sets from
``$JAXNET_DATA``; they skip when it is unset, and fail instead when ``$CI`` is set.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from data_files import (
    BIN_NAMES,
    CIFAR_CLASSES,
    MNIST_STEMS,
    cifar_batches,
    idx_bytes,
    write_cifar_bin,
    write_idx_dir,
)

from jaxnet import data
from jaxnet.data import DataError, FileSpec

REAL_DATA = os.environ.get("JAXNET_DATA")  # read before the autouse fixture clears it
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# ------------------------------------------------------------------------------------------
# Fixtures and file makers


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test gets its own cache, no data root, and mirrors that refuse connections."""
    monkeypatch.setenv("JAXNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXNET_DATA", raising=False)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    dead = f"http://127.0.0.1:{_closed_port()}/"
    monkeypatch.setattr(data, "MNIST_MIRRORS", (dead,))
    monkeypatch.setattr(data, "CIFAR10_URL", dead + "cifar-10-binary.tar.gz")
    return tmp_path


def mnist_arrays(n_train: int = 30, n_test: int = 12, size: int = 28, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def spec_of(path: Path) -> FileSpec:
    return FileSpec(path.stat().st_size, hashlib.md5(path.read_bytes()).hexdigest())


def patch_checksums(monkeypatch, folder: Path, prefix: str) -> None:
    """Make CHECKSUMS accept the test's own files found under ``folder``."""
    for path in folder.rglob("*"):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            monkeypatch.setitem(data.CHECKSUMS, f"{prefix}/{rel}", spec_of(path))


PY_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def py2_pickle(obj) -> bytes:
    """Pickle ``obj`` the way Python 2's cPickle wrote the official CIFAR-10 batches.

    Protocol 2; ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING); a uint8 ndarray as
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
            if 1 <= len(o) <= 3:
                for value in o:
                    emit(value)
                out.extend(b"\x85\x86\x87"[len(o) - 1 : len(o)])
            else:
                out.extend(b"(")
                for value in o:
                    emit(value)
                out.extend(b"t")
        elif o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            if 0 <= o < 256:
                out.extend(b"K" + bytes([o]))
            elif 0 <= o < 65536:
                out.extend(b"M" + struct.pack("<H", o))
            else:
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


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message.strip() == message
    return message


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


class Server(SimpleNamespace):
    url: str
    root: Path
    hits: list[str]


@pytest.fixture
def server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www; /cut/<name> sends half a file."""
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append(self.path)
            if self.path.startswith("/cut/"):
                body = (root / self.path.removeprefix("/cut/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield Server(url=f"http://127.0.0.1:{httpd.server_port}/", root=root, hits=hits)
    httpd.shutdown()
    httpd.server_close()


# ------------------------------------------------------------------------------------------
# Real data (JAXNET_DATA)


def real_data_root() -> Path:
    """The shared data folder; skip without it, but fail (not skip) when CI is set."""
    if REAL_DATA and Path(REAL_DATA).is_dir():
        return Path(REAL_DATA)
    message = "JAXNET_DATA is not set to the shared data folder"
    if os.environ.get("CI"):
        pytest.fail(f"{message}, and CI is set: the real-data tests must run in CI")
    pytest.skip(message)


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory) -> Path:
    """One cache for all real-data tests, so each file's md5 is computed once."""
    return tmp_path_factory.mktemp("real-cache")


def _fail(*args, **kwargs):
    raise AssertionError("should not be called on a cached load")


def test_real_mnist(real_cache, monkeypatch):
    real_root = real_data_root()
    monkeypatch.setenv("JAXNET_CACHE", str(real_cache))
    monkeypatch.setenv("JAXNET_DATA", str(real_root))  # the way CI points at it
    before = files_under(real_root)
    ds = data.load_mnist()
    assert ds.train_images.shape == (60000, 28, 28, 1)
    assert ds.test_images.shape == (10000, 28, 28, 1)
    assert ds.train_images.dtype == ds.test_images.dtype == np.uint8
    assert ds.train_labels.shape == (60000,) and ds.test_labels.shape == (10000,)
    assert ds.train_labels.dtype == ds.test_labels.dtype == np.int32
    assert np.bincount(ds.train_labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(ds.test_labels, minlength=10).sum() == 10000
    assert ds.class_names == tuple("0123456789")
    assert np.isclose(data.channel_mean(ds.train_images)[0], 0.1307, atol=1e-4)
    assert files_under(real_root) == before  # nothing written next to the data

    # After the first run: no md5 and no gunzip again, and well under a second.
    monkeypatch.setattr(data, "file_md5", _fail)
    monkeypatch.setattr(data, "_gunzip", _fail)
    start = time.perf_counter()
    again = data.load_mnist()
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"cached MNIST load took {elapsed:.2f} s"
    for a, b in zip(ds[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)


def test_real_checksums(real_cache, monkeypatch):
    real_root = real_data_root()
    monkeypatch.setenv("JAXNET_CACHE", str(real_cache))
    checked = 0
    for key, spec in data.CHECKSUMS.items():
        path = real_root / key
        if path.is_file():
            data.verify_file(path, spec)
            checked += 1
    assert checked >= 4 + 7  # the four MNIST .gz files and the CIFAR-10 binary version


def test_real_cifar10(real_cache, monkeypatch):
    real_root = real_data_root()
    monkeypatch.setenv("JAXNET_CACHE", str(real_cache))
    ds = data.load_cifar10(real_root)
    assert ds.train_images.shape == (50000, 32, 32, 3)
    assert ds.test_images.shape == (10000, 32, 32, 3)
    assert ds.train_images.dtype == ds.test_images.dtype == np.uint8
    assert ds.train_labels.dtype == ds.test_labels.dtype == np.int32
    assert np.bincount(ds.train_labels, minlength=10).tolist() == [5000] * 10
    assert np.bincount(ds.test_labels, minlength=10).tolist() == [1000] * 10
    assert ds.class_names == CIFAR_CLASSES
    # The first test record, decoded by hand: label byte, then the R, G and B planes.
    raw = (real_root / "cifar10/cifar-10-batches-bin/test_batch.bin").read_bytes()[:3073]
    assert ds.test_labels[0] == raw[0]
    planes = np.frombuffer(raw[1:], np.uint8).reshape(3, 32, 32)
    np.testing.assert_array_equal(ds.test_images[0], planes.transpose(1, 2, 0))
    np.testing.assert_allclose(
        data.channel_mean(ds.train_images), [0.4914, 0.4822, 0.4465], atol=1e-4
    )


# ------------------------------------------------------------------------------------------
# Where the data is


def test_data_root_order(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    assert data.data_root() == cache.absolute()  # nothing set: the cache
    monkeypatch.setenv("JAXNET_DATA", str(tmp_path / "env"))
    assert data.data_root() == (tmp_path / "env").absolute()
    assert data.data_root(tmp_path / "explicit") == (tmp_path / "explicit").absolute()
    monkeypatch.delenv("JAXNET_CACHE")
    monkeypatch.delenv("JAXNET_DATA")
    assert data.cache_dir().name == "jaxnet"  # the per-user default


# ------------------------------------------------------------------------------------------
# MNIST / idx: good files


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_dir(tmp_path, gz):
    arrays = mnist_arrays()
    write_idx_dir(tmp_path / "idx", arrays, gz=gz)
    ds = data.load_idx_dir(tmp_path / "idx")
    np.testing.assert_array_equal(ds.train_images, arrays["train_images"][..., None])
    np.testing.assert_array_equal(ds.test_images, arrays["test_images"][..., None])
    np.testing.assert_array_equal(ds.train_labels, arrays["train_labels"])
    np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])
    assert ds.train_images.dtype == np.uint8 and ds.train_images.shape == (30, 28, 28, 1)
    assert ds.train_labels.dtype == np.int32 and ds.class_names == tuple("0123456789")
    assert ds.train_images.flags.writeable


def test_load_idx_dir_other_sizes(tmp_path):
    """The generic reader takes any image size and class count the files agree on."""
    arrays = mnist_arrays(size=16)
    write_idx_dir(tmp_path / "root" / "mnist", arrays)
    ds = data.load_idx_dir(tmp_path / "root" / "mnist", num_classes=12)
    assert ds.train_images.shape == (30, 16, 16, 1) and len(ds.class_names) == 12
    with pytest.raises(DataError, match="MNIST's are 28x28"):
        data.load_mnist(tmp_path / "root", verify=False, download=False)


def test_load_mnist_from_folder_with_checksums(tmp_path, monkeypatch):
    arrays = mnist_arrays()
    folder = tmp_path / "root" / "mnist"
    write_idx_dir(folder, arrays)
    # The shipped checksums are the official ones: these test files fail them.
    with pytest.raises(DataError, match="wrong size") as err:
        data.load_mnist(tmp_path / "root")
    assert "-idx" in assert_one_line(err) and "the official file has" in str(err.value)
    patch_checksums(monkeypatch, folder, "mnist")
    ds = data.load_mnist(tmp_path / "root")
    np.testing.assert_array_equal(ds.train_labels, arrays["train_labels"])


def test_mixed_compressed_and_plain(tmp_path):
    arrays = mnist_arrays()
    paths = write_idx_dir(tmp_path / "idx", arrays)
    plain = paths["test_images"].with_suffix("")
    plain.write_bytes(gzip.decompress(paths["test_images"].read_bytes()))
    paths["test_images"].unlink()
    ds = data.load_idx_dir(tmp_path / "idx")
    np.testing.assert_array_equal(ds.test_images[..., 0], arrays["test_images"])


# ------------------------------------------------------------------------------------------
# MNIST / idx: bad files, each with its own message


def _rewrite(path: Path, raw: bytes) -> None:
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)


def _bad_truncated_gzip(paths, arrays):
    path = paths["train_images"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path, ["truncated", "gzip"]


def _bad_corrupt_gzip(paths, arrays):
    path = paths["train_labels"]
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    path.write_bytes(bytes(raw))
    return path, ["corrupt gzip"]


def _bad_short_header(paths, arrays):
    path = paths["test_labels"]
    _rewrite(path, b"\x00\x00\x08")
    return path, ["truncated", "header"]


def _bad_truncated_data(paths, arrays):
    path = paths["train_images"]
    _rewrite(path, idx_bytes(arrays["train_images"])[:-100])
    return path, ["truncated", "header promises 30 images of 28x28"]


def _bad_wrong_magic(paths, arrays):
    path = paths["train_images"]
    _rewrite(path, idx_bytes(arrays["train_images"], magic=0x00000801))
    return path, ["wrong magic number 0x00000801", "expected 0x00000803", "idx labels file"]


def _bad_extra_bytes(paths, arrays):
    path = paths["test_labels"]
    _rewrite(path, idx_bytes(arrays["test_labels"]) + b"\x00\x01\x02")
    return path, ["header count disagrees with the data length", "3 extra"]


def _bad_count_mismatch(paths, arrays):
    path = paths["train_labels"]
    _rewrite(path, idx_bytes(arrays["train_labels"][:-1]))
    return paths["train_images"], ["30 images", "29 labels", "train-labels-idx1-ubyte.gz"]


def _bad_label_range(paths, arrays):
    path = paths["test_labels"]
    labels = arrays["test_labels"].copy()
    labels[5] = 10
    _rewrite(path, idx_bytes(labels))
    return path, ["label 10 at index 5 is outside 0..9"]


def _bad_gzip_without_suffix(paths, arrays):
    path = paths["test_images"]
    plain = path.with_suffix("")
    plain.write_bytes(path.read_bytes())
    path.unlink()
    return plain, ["wrong magic number", "gzip-compressed"]


def _bad_test_size(paths, arrays):
    path = paths["test_images"]
    _rewrite(path, idx_bytes(np.zeros((12, 32, 32), np.uint8)))
    return path, ["images are 32x32", "28x28"]


BAD_IDX = [
    _bad_truncated_gzip,
    _bad_corrupt_gzip,
    _bad_short_header,
    _bad_truncated_data,
    _bad_wrong_magic,
    _bad_extra_bytes,
    _bad_count_mismatch,
    _bad_label_range,
    _bad_gzip_without_suffix,
    _bad_test_size,
]


@pytest.mark.parametrize("spoil", BAD_IDX, ids=lambda f: f.__name__.removeprefix("_bad_"))
@pytest.mark.parametrize("loader", ["idx_dir", "mnist"])
def test_bad_idx_file(tmp_path, spoil, loader):
    arrays = mnist_arrays()
    paths = write_idx_dir(tmp_path / "root" / "mnist", arrays)
    bad, fragments = spoil(paths, arrays)
    with pytest.raises(DataError) as err:
        if loader == "idx_dir":
            data.load_idx_dir(tmp_path / "root" / "mnist")
        else:
            data.load_mnist(tmp_path / "root", verify=False, download=False)
    message = assert_one_line(err)
    assert message.startswith(str(bad)), message
    for fragment in fragments:
        assert fragment in message
    assert not (tmp_path / "cache" / "decoded").exists() or all(
        not p.name.endswith(".part") for p in (tmp_path / "cache" / "decoded").iterdir()
    )


def test_checksum_mismatch(tmp_path, monkeypatch):
    folder = tmp_path / "root" / "mnist"
    paths = write_idx_dir(folder, mnist_arrays())
    patch_checksums(monkeypatch, folder, "mnist")
    key = "mnist/t10k-labels-idx1-ubyte.gz"
    monkeypatch.setitem(data.CHECKSUMS, key, data.CHECKSUMS[key]._replace(md5="0" * 32))
    with pytest.raises(DataError) as err:
        data.load_mnist(tmp_path / "root")
    message = assert_one_line(err)
    assert message.startswith(str(paths["test_labels"]))
    assert "checksum mismatch" in message and "0" * 32 in message and "verify=False" in message
    data.load_mnist(tmp_path / "root", verify=False)  # the escape hatch works


def test_missing_files_no_download(tmp_path):
    folder = tmp_path / "root" / "mnist"
    paths = write_idx_dir(folder, mnist_arrays())
    paths["train_labels"].unlink()
    with pytest.raises(DataError) as err:
        data.load_mnist(tmp_path / "root", download=False)
    message = assert_one_line(err)
    assert "MNIST files missing: train-labels-idx1-ubyte.gz;" in message
    assert str(folder) in message and str(tmp_path / "cache" / "mnist") in message
    assert "JAXNET_DATA" in message and "download=False" in message
    with pytest.raises(DataError, match=r"missing idx files: train-labels-idx1-ubyte\.gz"):
        data.load_idx_dir(folder)


# ------------------------------------------------------------------------------------------
# Verification memo and decoded cache


def test_md5_computed_once_and_remembered(tmp_path, monkeypatch):
    folder = tmp_path / "root" / "mnist"
    paths = write_idx_dir(folder, mnist_arrays())
    patch_checksums(monkeypatch, folder, "mnist")
    calls = []
    real_md5 = data.file_md5
    monkeypatch.setattr(data, "file_md5", lambda p: calls.append(Path(p).name) or real_md5(p))
    data.load_mnist(tmp_path / "root")
    assert len(calls) == 4
    data.load_mnist(tmp_path / "root")
    assert len(calls) == 4  # remembered
    memo = (tmp_path / "cache" / "checksums.json").read_text()
    assert str(paths["train_images"]) in memo
    # A new mtime means a possibly new file: checked again.
    os.utime(paths["test_labels"], ns=(1, 1_000_000_000))
    data.load_mnist(tmp_path / "root")
    assert calls[4:] == ["t10k-labels-idx1-ubyte.gz"]
    data.load_mnist(tmp_path / "root", verify=False)
    assert len(calls) == 5
    # A damaged memo is ignored and rewritten, never trusted.
    (tmp_path / "cache" / "checksums.json").write_text("{not json")
    data.load_mnist(tmp_path / "root")
    assert len(calls) == 9
    # Nothing was written next to the data.
    assert files_under(folder) == sorted(p.name for p in paths.values())


def test_decoded_cache(tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    arrays = mnist_arrays()
    paths = write_idx_dir(folder, arrays)
    first = data.load_idx_dir(folder)
    decoded = tmp_path / "cache" / "decoded"
    assert len(list(decoded.glob("*.npy"))) == 4
    with monkeypatch.context() as m:
        m.setattr(data, "_gunzip", _fail)
        again = data.load_idx_dir(folder)
    for a, b in zip(first[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    # The source changes: the stale entry is neither used nor kept.
    arrays2 = mnist_arrays(seed=1)
    _rewrite(paths["train_images"], idx_bytes(arrays2["train_images"]))
    os.utime(paths["train_images"], ns=(2, 2_000_000_000))
    changed = data.load_idx_dir(folder)
    np.testing.assert_array_equal(changed.train_images[..., 0], arrays2["train_images"])
    assert len(list(decoded.glob("*.npy"))) == 4
    # A damaged entry is re-decoded and rewritten.
    entry = next(decoded.glob("*train-images*.npy"))
    entry.write_bytes(entry.read_bytes()[:200])
    fixed = data.load_idx_dir(folder)
    np.testing.assert_array_equal(fixed.train_images[..., 0], arrays2["train_images"])
    assert entry.stat().st_size > 200


def test_cache_write_failure_leaves_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    arrays = mnist_arrays()
    write_idx_dir(folder, arrays)

    def half_save(f, arr, **kwargs):
        f.write(b"\x93NUMPY partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(data.np, "save", half_save)
    with pytest.warns(RuntimeWarning, match="could not write the cache"):
        ds = data.load_idx_dir(folder)
    np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train_images"])
    assert files_under(tmp_path / "cache") == []


# ------------------------------------------------------------------------------------------
# Downloads through a real local HTTP server


def serve_mnist(server: Server, arrays: dict, monkeypatch, sub: str = "mnist") -> Path:
    folder = server.root / sub
    write_idx_dir(folder, arrays)
    patch_checksums(monkeypatch, folder, "mnist")
    return folder


def test_download_mnist_tries_mirrors_in_turn(tmp_path, server, monkeypatch):
    arrays = mnist_arrays()
    serve_mnist(server, arrays, monkeypatch)
    dead = data.MNIST_MIRRORS[0]
    monkeypatch.setattr(data, "MNIST_MIRRORS", (dead, server.url + "mnist/"))
    asked = []
    real_download = data._download
    monkeypatch.setattr(
        data, "_download", lambda url, *a: asked.append(url) or real_download(url, *a)
    )
    ds = data.load_mnist(tmp_path / "root")
    assert sum(url.startswith(dead) for url in asked) == 1  # unreachable: not asked again
    np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])
    assert sorted(server.hits) == sorted(f"/mnist/{s}.gz" for s in MNIST_STEMS.values())
    assert files_under(tmp_path / "root" / "mnist") == sorted(
        f"{s}.gz" for s in MNIST_STEMS.values()
    )
    data.load_mnist(tmp_path / "root")
    assert len(server.hits) == 4  # nothing fetched again


def test_download_only_what_is_missing(tmp_path, server, monkeypatch):
    arrays = mnist_arrays()
    served = serve_mnist(server, arrays, monkeypatch)
    write_idx_dir(tmp_path / "root" / "mnist", arrays)
    (tmp_path / "root" / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    monkeypatch.setattr(data, "MNIST_MIRRORS", (server.url + served.name + "/",))
    data.load_mnist(tmp_path / "root")
    assert server.hits == ["/mnist/t10k-images-idx3-ubyte.gz"]


def test_download_http_error(tmp_path, server, monkeypatch):
    monkeypatch.setattr(data, "MNIST_MIRRORS", (server.url + "nothing-here/",))
    with pytest.raises(DataError) as err:
        data.load_mnist(tmp_path / "root")
    message = assert_one_line(err)
    assert "nothing-here/t10k-labels-idx1-ubyte.gz: HTTP 404" in message
    assert len(server.hits) == 4 and files_under(tmp_path / "root") == []


def test_download_bad_checksum_leaves_no_file(tmp_path, server, monkeypatch):
    served = serve_mnist(server, mnist_arrays(), monkeypatch)
    key = "mnist/train-labels-idx1-ubyte.gz"
    monkeypatch.setitem(data.CHECKSUMS, key, data.CHECKSUMS[key]._replace(md5="f" * 32))
    monkeypatch.setattr(data, "MNIST_MIRRORS", (server.url + served.name + "/",))
    with pytest.raises(DataError) as err:
        data.load_mnist(tmp_path / "root")
    message = assert_one_line(err)
    assert "MNIST files missing: train-labels-idx1-ubyte.gz;" in message
    assert "download failed" in message and "f" * 32 in message
    # The three good files arrived; of the bad one, not even a temporary file is left.
    assert files_under(tmp_path / "root" / "mnist") == sorted(
        f"{s}.gz" for k, s in MNIST_STEMS.items() if k != "train_labels"
    )


def test_interrupted_download_leaves_no_file(tmp_path, server, monkeypatch):
    served = serve_mnist(server, mnist_arrays(), monkeypatch)
    monkeypatch.setattr(data, "MNIST_MIRRORS", (server.url + "cut/" + served.name + "/",))
    with pytest.raises(DataError, match="download failed"):
        data.load_mnist(tmp_path / "root")
    assert len(server.hits) == 4
    assert files_under(tmp_path / "root" / "mnist") == []


def test_offline_error_says_what_and_where(tmp_path):
    with pytest.raises(DataError) as err:
        data.load_mnist(tmp_path / "root")
    message = assert_one_line(err)
    for stem in MNIST_STEMS.values():
        assert f"{stem}.gz" in message
    assert f"looked in {tmp_path / 'root' / 'mnist'} and {tmp_path / 'cache' / 'mnist'}" in message
    assert data.MNIST_MIRRORS[0] in message  # which host failed, and why
    assert "Put the official files in" in message and "JAXNET_DATA" in message
    assert files_under(tmp_path / "root") == []


def test_download_falls_back_to_cache_when_root_is_read_only(tmp_path, server, monkeypatch):
    arrays = mnist_arrays()
    served = serve_mnist(server, arrays, monkeypatch)
    monkeypatch.setattr(data, "MNIST_MIRRORS", (server.url + served.name + "/",))
    read_only = tmp_path / "shared"
    read_only.mkdir()
    monkeypatch.setattr(data, "_is_writable", lambda p: read_only not in Path(p).parents)
    ds = data.load_mnist(read_only)
    np.testing.assert_array_equal(ds.train_labels, arrays["train_labels"])
    assert len(files_under(tmp_path / "cache" / "mnist")) == 4
    assert files_under(read_only) == []
    data.load_mnist(read_only)  # found in the cache this time
    assert len(server.hits) == 4
    monkeypatch.setattr(data, "_is_writable", lambda p: False)
    monkeypatch.setenv("JAXNET_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(DataError, match="none of those folders is writable"):
        data.load_mnist(tmp_path / "elsewhere")


def test_download_cifar10(tmp_path, server, monkeypatch):
    batches = cifar_batches()
    src = write_cifar_bin(tmp_path / "src", batches)
    patch_checksums(monkeypatch, tmp_path / "src", "cifar10")
    archive = server.root / "cifar-10-binary.tar.gz"
    make_tar(archive, src)
    monkeypatch.setitem(data.CHECKSUMS, "cifar10/cifar-10-binary.tar.gz", spec_of(archive))
    monkeypatch.setattr(data, "CIFAR10_URL", server.url + archive.name)
    ds = data.load_cifar10(tmp_path / "root")
    for got, want in zip(ds[:4], expected_cifar(batches), strict=True):
        np.testing.assert_array_equal(got, want)
    assert ds.class_names == CIFAR_CLASSES
    assert server.hits == ["/cifar-10-binary.tar.gz"]
    # Unpacked the needed files, deleted the archive, left no temporary file.
    assert files_under(tmp_path / "root" / "cifar10") == sorted(
        f"cifar-10-batches-bin/{n}" for n in [*BIN_NAMES, "batches.meta.txt"]
    )
    data.load_cifar10(tmp_path / "root")
    assert len(server.hits) == 1


def test_cifar10_offline_error(tmp_path):
    with pytest.raises(DataError) as err:
        data.load_cifar10(tmp_path / "root")
    message = assert_one_line(err)
    assert "CIFAR-10 files missing: cifar-10-batches-bin/data_batch_1.bin" in message
    assert str(tmp_path / "root" / "cifar10") in message and "JAXNET_DATA" in message
    assert data.CIFAR10_URL in message and "cifar-10-batches-py" in message


# ------------------------------------------------------------------------------------------
# CIFAR-10: binary and python versions, and bad files


def test_cifar10_binary(tmp_path, monkeypatch):
    batches = cifar_batches()
    write_cifar_bin(tmp_path / "root" / "cifar10", batches)
    with pytest.raises(DataError, match=r"data_batch_1\.bin: wrong size: 24584 bytes"):
        data.load_cifar10(tmp_path / "root")  # the official checksums
    patch_checksums(monkeypatch, tmp_path / "root" / "cifar10", "cifar10")
    ds = data.load_cifar10(tmp_path / "root")
    for got, want in zip(ds[:4], expected_cifar(batches), strict=True):
        np.testing.assert_array_equal(got, want)
    assert ds.train_images.shape == (40, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32 and ds.train_images.flags.c_contiguous


def test_cifar10_python_version(tmp_path):
    batches = cifar_batches(seed=3)
    write_cifar_py(tmp_path / "root" / "cifar10", batches)
    ds = data.load_cifar10(tmp_path / "root", verify=False)
    for got, want in zip(ds[:4], expected_cifar(batches), strict=True):
        np.testing.assert_array_equal(got, want)
    assert ds.class_names == CIFAR_CLASSES


def test_cifar10_python_resaved_by_python3(tmp_path):
    """A batch re-saved by Python 3 (protocol 4, numpy 2 names) loads too."""
    batches = cifar_batches(seed=4)
    folder = write_cifar_py(tmp_path / "root" / "cifar10", batches)
    batch = py_batch(*batches[0])
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=4))
    ds = data.load_cifar10(tmp_path / "root", verify=False)
    np.testing.assert_array_equal(ds.train_images[:8], batches[0][0])


def test_cifar10_from_local_python_archive(tmp_path, monkeypatch):
    """An official archive the user put in cifar10/ is unpacked, with no network."""
    batches = cifar_batches(seed=5)
    src = write_cifar_py(tmp_path / "src", batches)
    archive = tmp_path / "root" / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    make_tar(archive, src)
    monkeypatch.setitem(data.CHECKSUMS, "cifar10/cifar-10-python.tar.gz", spec_of(archive))
    patch_checksums(monkeypatch, tmp_path / "src", "cifar10")
    ds = data.load_cifar10(tmp_path / "root")
    np.testing.assert_array_equal(ds.test_images, batches[5][0])
    assert archive.is_file()  # the user's own archive is kept
    assert (tmp_path / "root" / "cifar10" / "cifar-10-batches-py" / "batches.meta").is_file()


def test_cifar10_corrupt_archive(tmp_path, monkeypatch):
    archive = tmp_path / "root" / "cifar10" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir(parents=True)
    make_tar(archive, write_cifar_bin(tmp_path / "src", cifar_batches()))
    archive.write_bytes(archive.read_bytes()[:5000])
    with pytest.raises(DataError) as err:
        data.load_cifar10(tmp_path / "root", verify=False)
    message = assert_one_line(err)
    assert message.startswith(str(archive)) and "corrupt or truncated archive" in message
    assert files_under(tmp_path / "root" / "cifar10") == ["cifar-10-binary.tar.gz"]


def test_cifar10_archive_missing_a_file(tmp_path):
    src = write_cifar_bin(tmp_path / "src", cifar_batches())
    (src / "test_batch.bin").unlink()
    archive = tmp_path / "root" / "cifar10" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir(parents=True)
    make_tar(archive, src)
    with pytest.raises(DataError, match=r"the archive lacks cifar-10-batches-bin/test_batch\.bin"):
        data.load_cifar10(tmp_path / "root", verify=False)
    assert files_under(tmp_path / "root" / "cifar10") == ["cifar-10-binary.tar.gz"]


def _cifar_bin_truncated(folder, batches):
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-10])
    return path, ["truncated", "not a whole number of 3073-byte records"]


def _cifar_bin_label(folder, batches):
    path = folder / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[3 * 3073] = 10
    path.write_bytes(bytes(raw))
    return path, ["label 10 at index 3 is outside 0..9"]


def _cifar_bin_empty(folder, batches):
    path = folder / "data_batch_1.bin"
    path.write_bytes(b"")
    return path, ["truncated", "0 bytes"]


def _cifar_bin_meta(folder, batches):
    path = folder / "batches.meta.txt"
    path.write_text("\n".join(CIFAR_CLASSES[:9]))
    return path, ["expected 10 class names", "found 9"]


@pytest.mark.parametrize(
    "spoil",
    [_cifar_bin_truncated, _cifar_bin_label, _cifar_bin_empty, _cifar_bin_meta],
    ids=lambda f: f.__name__.removeprefix("_cifar_bin_"),
)
def test_bad_cifar_binary(tmp_path, spoil):
    batches = cifar_batches()
    folder = write_cifar_bin(tmp_path / "root" / "cifar10", batches)
    bad, fragments = spoil(folder, batches)
    with pytest.raises(DataError) as err:
        data.load_cifar10(tmp_path / "root", verify=False)
    message = assert_one_line(err)
    assert message.startswith(str(bad)), message
    for fragment in fragments:
        assert fragment in message


def _good_batch():
    images, labels = cifar_batches(n=4)[0]
    return py_batch(images, labels)


def _without(key):
    batch = _good_batch()
    del batch[key]
    return batch


def _with(key, value):
    batch = _good_batch()
    batch[key] = value
    return batch


BAD_PICKLES = {
    "a_list": (
        py2_pickle([b"data", b"labels"]),
        "expected a dict with keys data, labels, found list",
    ),
    "no_labels": (py2_pickle(_without(b"labels")), "the dict has no labels entry"),
    "no_data": (py2_pickle(_without(b"data")), "the dict has no data entry"),
    "data_not_array": (py2_pickle(_with(b"data", [1, 2, 3])), "found list"),
    "data_wrong_width": (
        py2_pickle(_with(b"data", np.zeros((4, 3000), np.uint8))),
        "shape (N, 3072), found uint8 array of shape (4, 3000)",
    ),
    "data_float": (
        pickle.dumps({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, protocol=4),
        "found float32 array",
    ),
    "labels_short": (py2_pickle(_with(b"labels", [1, 2, 3])), "holds 4 images but 3 labels"),
    "labels_not_ints": (py2_pickle(_with(b"labels", [b"cat"] * 4)), "'labels' must be a list"),
    "label_range": (py2_pickle(_with(b"labels", [0, 1, 10, 2])), "label 10 at index 2"),
    "truncated": (py2_pickle(_good_batch())[:-5000], "truncated: the pickle ends early"),
    "not_a_pickle": (b"this is not a pickle at all", "corrupt pickle"),
}


@pytest.mark.parametrize("case", list(BAD_PICKLES))
def test_bad_cifar_pickle(tmp_path, case):
    blob, fragment = BAD_PICKLES[case]
    folder = write_cifar_py(tmp_path / "root" / "cifar10", cifar_batches(n=4))
    (folder / "data_batch_2").write_bytes(blob)
    with pytest.raises(DataError) as err:
        data.load_cifar10(tmp_path / "root", verify=False)
    message = assert_one_line(err)
    assert message.startswith(str(folder / "data_batch_2")), message
    assert fragment in message


class _Evil:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_refused(tmp_path, protocol):
    folder = write_cifar_py(tmp_path / "root" / "cifar10", cifar_batches(n=4))
    marker = tmp_path / "pwned"
    evil = {"data": _Evil(str(marker)), "labels": [0]}  # str keys: open is the only global
    (folder / "test_batch").write_bytes(pickle.dumps(evil, protocol=protocol))
    with pytest.raises(DataError) as err:
        data.load_cifar10(tmp_path / "root", verify=False)
    message = assert_one_line(err)
    assert message.startswith(str(folder / "test_batch"))
    assert "refused" in message and "open" in message
    assert not marker.exists()


def test_meta_pickle_wrong_structure(tmp_path):
    folder = write_cifar_py(tmp_path / "root" / "cifar10", cifar_batches(n=4))
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": [b"cat", b"dog"]}))
    with pytest.raises(DataError, match="expected 10 class names in 'label_names', found 2"):
        data.load_cifar10(tmp_path / "root", verify=False)


# ------------------------------------------------------------------------------------------
# Split, shuffling, mean


def test_train_val_split():
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    labels = np.arange(100, dtype=np.int32)
    tx, ty, vx, vy = data.train_val_split(images, labels, 20, seed=0)
    assert tx.shape == (80, 2, 2, 3) and vx.shape == (20, 2, 2, 3)
    assert tx.dtype == np.uint8 and ty.dtype == np.int32
    assert sorted([*ty, *vy]) == list(range(100))  # disjoint and complete
    assert (np.diff(ty) > 0).all() and (np.diff(vy) > 0).all()  # original order kept
    np.testing.assert_array_equal(tx[:, 0, 0, 0], ty)  # images follow their labels
    again = data.train_val_split(images, labels, 20, seed=0)
    np.testing.assert_array_equal(again[3], vy)
    assert not np.array_equal(data.train_val_split(images, labels, 20, seed=1)[3], vy)
    with pytest.raises(ValueError, match="n_val"):
        data.train_val_split(images, labels, 100, seed=0)
    with pytest.raises(ValueError, match="labels has 99"):
        data.train_val_split(images, labels[:99], 10, seed=0)


def test_epoch_batches():
    order = data.epoch_batches(103, 10, seed=7, epoch=0)
    assert order.shape == (10, 10) and order.dtype == np.int32
    assert len(np.unique(order)) == 100 and order.max() < 103
    np.testing.assert_array_equal(order, data.epoch_batches(103, 10, seed=7, epoch=0))
    assert not np.array_equal(order, data.epoch_batches(103, 10, seed=7, epoch=1))
    assert not np.array_equal(order, data.epoch_batches(103, 10, seed=8, epoch=0))
    with pytest.raises(ValueError, match="batch_size"):
        data.epoch_batches(5, 6, seed=0, epoch=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_channel_mean(channels):
    images = np.random.default_rng(0).integers(0, 256, (17, 5, 6, channels), dtype=np.uint8)
    mean = data.channel_mean(images)
    assert mean.shape == (channels,) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, images.astype(np.float64).mean(axis=(0, 1, 2)) / 255, 1e-6)
    with pytest.raises(TypeError, match="uint8"):
        data.channel_mean(images.astype(np.float32))
    with pytest.raises(ValueError, match="N, H, W, C"):
        data.channel_mean(images[0])


# ------------------------------------------------------------------------------------------
# preprocess and augment (JAX, on device)


def test_preprocess():
    images = np.random.default_rng(1).integers(0, 256, (4, 3, 5, 3), dtype=np.uint8)
    mean = np.array([0.1, 0.2, 0.3], np.float32)
    out = jax.jit(data.preprocess)(images, mean)
    assert out.shape == images.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, images / np.float32(255) - mean, rtol=0, atol=1e-6)
    scalar = data.preprocess(images[..., :1], np.float32(0.5))
    np.testing.assert_allclose(scalar, images[..., :1] / np.float32(255) - 0.5, atol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        data.preprocess(images.astype(np.float32), mean)
    with pytest.raises(ValueError, match=r"mean must have shape \(3,\)"):
        data.preprocess(images, mean[:2])
    with pytest.raises(ValueError, match="N, H, W, C"):
        data.preprocess(images[0], mean)


def _candidates(image: np.ndarray, pad: int) -> list[np.ndarray]:
    h, w = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    crops = [padded[y : y + h, x : x + w] for y in range(2 * pad + 1) for x in range(2 * pad + 1)]
    return crops + [c[:, ::-1] for c in crops]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("pad", [0, 2])
def test_augment_is_a_crop_and_flip(dtype, pad):
    images = np.random.default_rng(2).integers(1, 256, (6, 7, 5, 3)).astype(dtype)
    out = jax.jit(data.augment, static_argnames="pad")(jax.random.key(0), images, pad=pad)
    assert out.shape == images.shape and out.dtype == dtype
    out = np.asarray(out)
    for image, result in zip(images, out, strict=True):
        assert any(np.array_equal(result, c) for c in _candidates(image, pad))


def test_augment_seeded_and_varied():
    images = np.random.default_rng(3).integers(1, 256, (256, 8, 8, 3), dtype=np.uint8)
    aug = jax.jit(data.augment)
    a = np.asarray(aug(jax.random.key(1), images))
    np.testing.assert_array_equal(a, np.asarray(aug(jax.random.key(1), images)))
    assert not np.array_equal(a, np.asarray(aug(jax.random.key(2), images)))
    # Over 256 images: about half are flipped, and the crop offsets cover the 9x9 choices.
    picks = []
    for result, image in zip(a, images, strict=True):
        matches = [np.array_equal(result, c) for c in _candidates(image, 4)]
        assert sum(matches) == 1
        picks.append(matches.index(True))
    picks = np.array(picks)
    assert 0.35 < (picks >= 81).mean() < 0.65
    assert len(np.unique(picks % 81)) > 60
    with pytest.raises(ValueError, match="pad"):
        data.augment(jax.random.key(0), images, pad=-1)
    with pytest.raises(ValueError, match="N, H, W, C"):
        data.augment(jax.random.key(0), images[0])


def test_dataset_is_a_namedtuple():
    ds = data.Dataset(*(np.zeros(1),) * 4, ("a",))
    assert ds._fields == (
        "train_images",
        "train_labels",
        "test_images",
        "test_labels",
        "class_names",
    )
    assert isinstance(DataError("x\ny"), Exception) and str(DataError("x\n  y")) == "x y"


def test_pickle_helper_matches_official_layout():
    """The hand-written py2 pickle is what Python 3 reads the official files as."""
    batch = _good_batch()
    loaded = pickle.loads(py2_pickle(batch), encoding="bytes")
    assert loaded[b"labels"] == batch[b"labels"] and loaded[b"batch_label"] == b"batch"
    np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])
    assert io.BytesIO(py2_pickle(batch)).read(2) == b"\x80\x02"
