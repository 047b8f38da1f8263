"""Tests for jaxnet.datasets.mnist: the idx reader, MNIST's files, and each bad file's message."""

from __future__ import annotations

import gzip
import time
from functools import partial

import numpy as np
import pytest
from data_files import idx_bytes, real_data_root, write_idx_dir
from dataset_helpers import (
    fail_if_called,
    files_under,
    mnist_arrays,
    patch_checksums,
    refused,
    rewrite,
)

from jaxnet import datasets
from jaxnet.datasets import DataError, files, mnist

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_real_mnist(real_cache, monkeypatch):
    real_root = real_data_root()
    monkeypatch.setenv("JAXNET_CACHE", str(real_cache))
    monkeypatch.setenv("JAXNET_DATA", str(real_root))  # the way CI points at it
    before = files_under(real_root)
    ds = datasets.load_mnist()
    assert ds.train_images.shape == (60000, 28, 28, 1)
    assert ds.test_images.shape == (10000, 28, 28, 1)
    assert ds.train_images.dtype == ds.test_images.dtype == np.uint8
    assert ds.train_labels.shape == (60000,) and ds.test_labels.shape == (10000,)
    assert ds.train_labels.dtype == ds.test_labels.dtype == np.int32
    assert np.bincount(ds.train_labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(ds.test_labels, minlength=10).sum() == 10000
    assert ds.class_names == tuple("0123456789")
    assert np.isclose(ds.train_images.mean() / 255, 0.1307, atol=1e-4)
    assert files_under(real_root) == before  # nothing written next to the data

    # After the first run: no md5 and no gunzip again, and well under a second.
    monkeypatch.setattr(files, "file_md5", fail_if_called)
    monkeypatch.setattr(mnist, "_gunzip", fail_if_called)
    start = time.perf_counter()
    again = datasets.load_mnist()
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"cached MNIST load took {elapsed:.2f} s"
    for a, b in zip(ds[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------
# MNIST / idx: good files


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_dir(tmp_path, gz):
    arrays = mnist_arrays()
    write_idx_dir(tmp_path / "idx", arrays, gz=gz)
    ds = datasets.load_idx_dir(tmp_path / "idx")
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
    ds = datasets.load_idx_dir(tmp_path / "root" / "mnist", num_classes=12)
    assert ds.train_images.shape == (30, 16, 16, 1) and len(ds.class_names) == 12
    with pytest.raises(DataError, match="MNIST's are 28x28"):
        datasets.load_mnist(tmp_path / "root", verify=False, download=False)


def test_load_mnist_from_folder_with_checksums(tmp_path, monkeypatch):
    arrays = mnist_arrays()
    folder = tmp_path / "root" / "mnist"
    write_idx_dir(folder, arrays)
    # The shipped checksums are the official ones: these test files fail them.
    refused(
        lambda: datasets.load_mnist(tmp_path / "root"), "wrong size", "-idx", "official file has"
    )
    patch_checksums(monkeypatch, folder, mnist)
    ds = datasets.load_mnist(tmp_path / "root")
    np.testing.assert_array_equal(ds.train_labels, arrays["train_labels"])


def test_mixed_compressed_and_plain(tmp_path):
    arrays = mnist_arrays()
    paths = write_idx_dir(tmp_path / "idx", arrays)
    plain = paths["test_images"].with_suffix("")
    plain.write_bytes(gzip.decompress(paths["test_images"].read_bytes()))
    paths["test_images"].unlink()
    ds = datasets.load_idx_dir(tmp_path / "idx")
    np.testing.assert_array_equal(ds.test_images[..., 0], arrays["test_images"])


# ------------------------------------------------------------------------------------------
# MNIST / idx: bad files, each with its own message


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
    rewrite(path, b"\x00\x00\x08")
    return path, ["truncated", "header"]


def _bad_truncated_data(paths, arrays):
    path = paths["train_images"]
    rewrite(path, idx_bytes(arrays["train_images"])[:-100])
    return path, ["truncated", "header promises 30 images of 28x28"]


def _bad_wrong_magic(paths, arrays):
    path = paths["train_images"]
    rewrite(path, idx_bytes(arrays["train_images"], magic=0x00000801))
    return path, ["wrong magic number 0x00000801", "expected 0x00000803", "idx labels file"]


def _bad_extra_bytes(paths, arrays):
    path = paths["test_labels"]
    rewrite(path, idx_bytes(arrays["test_labels"]) + b"\x00\x01\x02")
    return path, ["header count disagrees with the data length", "3 extra"]


def _bad_count_mismatch(paths, arrays):
    path = paths["train_labels"]
    rewrite(path, idx_bytes(arrays["train_labels"][:-1]))
    return paths["train_images"], ["30 images", "29 labels", "train-labels-idx1-ubyte.gz"]


def _bad_label_range(paths, arrays):
    path = paths["test_labels"]
    labels = arrays["test_labels"].copy()
    labels[5] = 10
    rewrite(path, idx_bytes(labels))
    return path, ["label 10 at index 5 is outside 0..9"]


def _bad_gzip_without_suffix(paths, arrays):
    path = paths["test_images"]
    plain = path.with_suffix("")
    plain.write_bytes(path.read_bytes())
    path.unlink()
    return plain, ["wrong magic number", "gzip-compressed"]


def _bad_test_size(paths, arrays):
    path = paths["test_images"]
    rewrite(path, idx_bytes(np.zeros((12, 32, 32), np.uint8)))
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
    if loader == "idx_dir":
        refused(lambda: datasets.load_idx_dir(tmp_path / "root" / "mnist"), *fragments, starts=bad)
    else:
        load = partial(datasets.load_mnist, tmp_path / "root", verify=False, download=False)
        refused(load, *fragments, starts=bad)
    assert not (tmp_path / "cache" / "decoded").exists() or all(
        not p.name.endswith(".tmp") for p in (tmp_path / "cache" / "decoded").iterdir()
    )


def test_checksum_mismatch(tmp_path, monkeypatch):
    folder = tmp_path / "root" / "mnist"
    paths = write_idx_dir(folder, mnist_arrays())
    patch_checksums(monkeypatch, folder, mnist)
    key = "t10k-labels-idx1-ubyte.gz"
    monkeypatch.setitem(mnist.FILES, key, mnist.FILES[key]._replace(md5="0" * 32))
    refused(
        lambda: datasets.load_mnist(tmp_path / "root"),
        "checksum mismatch",
        "0" * 32,
        "pass --no-verify (verify=False in Python)",
        starts=paths["test_labels"],
    )
    datasets.load_mnist(tmp_path / "root", verify=False)  # the escape hatch works


def test_missing_files_no_download(tmp_path):
    folder = tmp_path / "root" / "mnist"
    paths = write_idx_dir(folder, mnist_arrays())
    paths["train_labels"].unlink()
    refused(
        lambda: datasets.load_mnist(tmp_path / "root", download=False),
        "MNIST files missing: train-labels-idx1-ubyte.gz;",
        str(folder),
        str(tmp_path / "cache" / "mnist"),
        "JAXNET_DATA",
        "download=False",
    )
    with pytest.raises(DataError, match=r"missing idx files: train-labels-idx1-ubyte\.gz"):
        datasets.load_idx_dir(folder)
