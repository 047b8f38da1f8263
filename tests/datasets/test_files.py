"""Tests for jaxnet.datasets.files: where data is, the md5 memo, the decoded cache, downloads.

Downloads go to a real HTTP server on 127.0.0.1 (the ``server`` fixture); every other mirror
refuses connections (the autouse ``isolated`` fixture).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from data_files import MNIST_STEMS, idx_bytes, real_data_root, write_idx_dir
from dataset_helpers import (
    Server,
    fail_if_called,
    files_under,
    mnist_arrays,
    patch_checksums,
    refused,
    rewrite,
)

from jaxnet import datasets
from jaxnet.datasets import DataError, cifar10, files, mnist


def test_real_checksums(real_cache, monkeypatch):
    real_root = real_data_root()
    monkeypatch.setenv("JAXNET_CACHE", str(real_cache))
    checked = 0
    for module in (mnist, cifar10):
        for name, spec in module.FILES.items():
            path = real_root / module.NAME / name
            if path.is_file():
                datasets.verify_file(path, spec)
                checked += 1
    assert checked >= 4 + 7  # the four MNIST .gz files and the CIFAR-10 binary version


# ------------------------------------------------------------------------------------------
# Where the data is


def test_data_root_order(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    assert datasets.data_root() == cache.absolute()  # nothing set: the cache
    monkeypatch.setenv("JAXNET_DATA", str(tmp_path / "env"))
    assert datasets.data_root() == (tmp_path / "env").absolute()
    assert datasets.data_root(tmp_path / "explicit") == (tmp_path / "explicit").absolute()
    monkeypatch.delenv("JAXNET_CACHE")
    monkeypatch.delenv("JAXNET_DATA")
    assert datasets.cache_dir().name == "jaxnet"  # the per-user default


# ------------------------------------------------------------------------------------------
# Verification memo and decoded cache


def test_md5_computed_once_and_remembered(tmp_path, monkeypatch):
    folder = tmp_path / "root" / "mnist"
    paths = write_idx_dir(folder, mnist_arrays())
    patch_checksums(monkeypatch, folder, mnist)
    calls = []
    real_md5 = files.file_md5
    monkeypatch.setattr(files, "file_md5", lambda p: calls.append(Path(p).name) or real_md5(p))
    datasets.load_mnist(tmp_path / "root")
    assert len(calls) == 4
    datasets.load_mnist(tmp_path / "root")
    assert len(calls) == 4  # remembered
    memo = (tmp_path / "cache" / "checksums.json").read_text()
    assert str(paths["train_images"]) in memo
    # A new mtime means a possibly new file: checked again.
    os.utime(paths["test_labels"], ns=(1, 1_000_000_000))
    datasets.load_mnist(tmp_path / "root")
    assert calls[4:] == ["t10k-labels-idx1-ubyte.gz"]
    datasets.load_mnist(tmp_path / "root", verify=False)
    assert len(calls) == 5
    # A damaged memo is ignored and rewritten, never trusted.
    (tmp_path / "cache" / "checksums.json").write_text("{not json")
    datasets.load_mnist(tmp_path / "root")
    assert len(calls) == 9
    # Nothing was written next to the data.
    assert files_under(folder) == sorted(p.name for p in paths.values())


def test_decoded_cache(tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    arrays = mnist_arrays()
    paths = write_idx_dir(folder, arrays)
    first = datasets.load_idx_dir(folder)
    decoded = tmp_path / "cache" / "decoded"
    assert len(list(decoded.glob("*.npz"))) == 4
    with monkeypatch.context() as m:
        m.setattr(mnist, "_gunzip", fail_if_called)
        again = datasets.load_idx_dir(folder)
    for a, b in zip(first[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    # The source changes: the stale entry is neither used nor kept.
    arrays2 = mnist_arrays(seed=1)
    rewrite(paths["train_images"], idx_bytes(arrays2["train_images"]))
    os.utime(paths["train_images"], ns=(2, 2_000_000_000))
    changed = datasets.load_idx_dir(folder)
    np.testing.assert_array_equal(changed.train_images[..., 0], arrays2["train_images"])
    assert len(list(decoded.glob("*.npz"))) == 4
    # Damaged entries are re-decoded and rewritten.
    entries = list(decoded.glob("*.npz"))
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:200])
    fixed = datasets.load_idx_dir(folder)
    np.testing.assert_array_equal(fixed.train_images[..., 0], arrays2["train_images"])
    assert all(entry.stat().st_size > 200 for entry in entries)


def test_cache_write_failure_leaves_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    arrays = mnist_arrays()
    write_idx_dir(folder, arrays)

    def half_save(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(files.np, "savez", half_save)
    with pytest.warns(RuntimeWarning, match="could not write the cache"):
        ds = datasets.load_idx_dir(folder)
    np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train_images"])
    assert files_under(tmp_path / "cache") == []


# ------------------------------------------------------------------------------------------
# Downloads through a real local HTTP server


def serve_mnist(server: Server, arrays: dict, monkeypatch, sub: str = "mnist") -> Path:
    folder = server.root / sub
    write_idx_dir(folder, arrays)
    patch_checksums(monkeypatch, folder, mnist)
    return folder


def test_download_mnist_tries_mirrors_in_turn(tmp_path, server, monkeypatch):
    arrays = mnist_arrays()
    serve_mnist(server, arrays, monkeypatch)
    dead = mnist.MIRRORS[0]
    monkeypatch.setattr(mnist, "MIRRORS", (dead, server.url + "mnist/"))
    asked = []
    real_download = files.download
    monkeypatch.setattr(
        files, "download", lambda url, *a: asked.append(url) or real_download(url, *a)
    )
    ds = datasets.load_mnist(tmp_path / "root")
    assert sum(url.startswith(dead) for url in asked) == 1  # unreachable: not asked again
    np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])
    assert sorted(server.hits) == sorted(f"/mnist/{s}.gz" for s in MNIST_STEMS.values())
    assert files_under(tmp_path / "root" / "mnist") == sorted(
        f"{s}.gz" for s in MNIST_STEMS.values()
    )
    datasets.load_mnist(tmp_path / "root")
    assert len(server.hits) == 4  # nothing fetched again


def test_download_only_what_is_missing(tmp_path, server, monkeypatch):
    arrays = mnist_arrays()
    served = serve_mnist(server, arrays, monkeypatch)
    write_idx_dir(tmp_path / "root" / "mnist", arrays)
    (tmp_path / "root" / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    monkeypatch.setattr(mnist, "MIRRORS", (server.url + served.name + "/",))
    datasets.load_mnist(tmp_path / "root")
    assert server.hits == ["/mnist/t10k-images-idx3-ubyte.gz"]


def test_download_http_error(tmp_path, server, monkeypatch):
    monkeypatch.setattr(mnist, "MIRRORS", (server.url + "nothing-here/",))
    load = partial(datasets.load_mnist, tmp_path / "root")
    refused(load, "nothing-here/t10k-labels-idx1-ubyte.gz: HTTP 404")
    assert len(server.hits) == 4 and files_under(tmp_path / "root") == []


def test_download_bad_checksum_leaves_no_file(tmp_path, server, monkeypatch):
    served = serve_mnist(server, mnist_arrays(), monkeypatch)
    key = "train-labels-idx1-ubyte.gz"
    monkeypatch.setitem(mnist.FILES, key, mnist.FILES[key]._replace(md5="f" * 32))
    monkeypatch.setattr(mnist, "MIRRORS", (server.url + served.name + "/",))
    load = partial(datasets.load_mnist, tmp_path / "root")
    refused(load, "MNIST files missing: train-labels-idx1-ubyte.gz;", "download failed", "f" * 32)
    # The three good files arrived; of the bad one, not even a temporary file is left.
    assert files_under(tmp_path / "root" / "mnist") == sorted(
        f"{s}.gz" for k, s in MNIST_STEMS.items() if k != "train_labels"
    )


def test_interrupted_download_leaves_no_file(tmp_path, server, monkeypatch):
    served = serve_mnist(server, mnist_arrays(), monkeypatch)
    monkeypatch.setattr(mnist, "MIRRORS", (server.url + "cut/" + served.name + "/",))
    with pytest.raises(DataError, match="download failed"):
        datasets.load_mnist(tmp_path / "root")
    assert len(server.hits) == 4
    assert files_under(tmp_path / "root" / "mnist") == []


def test_offline_error_says_what_and_where(tmp_path):
    refused(
        partial(datasets.load_mnist, tmp_path / "root"),
        *(f"{stem}.gz" for stem in MNIST_STEMS.values()),
        f"looked in {tmp_path / 'root' / 'mnist'} and {tmp_path / 'cache' / 'mnist'}",
        mnist.MIRRORS[0],  # which host failed, and why
        "Put the official files in",
        "JAXNET_DATA",
    )
    assert files_under(tmp_path / "root") == []


def test_download_falls_back_to_cache_when_root_is_read_only(tmp_path, server, monkeypatch):
    arrays = mnist_arrays()
    served = serve_mnist(server, arrays, monkeypatch)
    monkeypatch.setattr(mnist, "MIRRORS", (server.url + served.name + "/",))
    read_only = tmp_path / "shared"
    read_only.mkdir()
    monkeypatch.setattr(files, "is_writable", lambda p: read_only not in Path(p).parents)
    ds = datasets.load_mnist(read_only)
    np.testing.assert_array_equal(ds.train_labels, arrays["train_labels"])
    assert len(files_under(tmp_path / "cache" / "mnist")) == 4
    assert files_under(read_only) == []
    datasets.load_mnist(read_only)  # found in the cache this time
    assert len(server.hits) == 4
    monkeypatch.setattr(files, "is_writable", lambda p: False)
    monkeypatch.setenv("JAXNET_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(DataError, match="none of those folders is writable"):
        datasets.load_mnist(tmp_path / "elsewhere")


def test_dataset_is_a_namedtuple():
    ds = datasets.Dataset(*(np.zeros(1),) * 4, ("a",))
    assert ds._fields == (
        "train_images",
        "train_labels",
        "test_images",
        "test_labels",
        "class_names",
    )
    assert isinstance(DataError("x\ny"), Exception) and str(DataError("x\n  y")) == "x y"
