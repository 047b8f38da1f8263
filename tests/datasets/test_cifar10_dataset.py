"""Tests for jaxnet.datasets.cifar10: both versions, the archive, the download, bad files."""

from __future__ import annotations

import io
import pickle
from functools import partial

import numpy as np
import pytest
from data_files import BIN_NAMES, CIFAR_CLASSES, cifar_batches, real_data_root, write_cifar_bin
from dataset_helpers import (
    expected_cifar,
    files_under,
    make_tar,
    patch_checksums,
    py2_pickle,
    py_batch,
    refused,
    spec_of,
    write_cifar_py,
)

from jaxnet import datasets
from jaxnet.datasets import DataError, cifar10


def test_real_cifar10(real_cache, monkeypatch):
    real_root = real_data_root()
    monkeypatch.setenv("JAXNET_CACHE", str(real_cache))
    ds = datasets.load_cifar10(real_root)
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
        ds.train_images.mean(axis=(0, 1, 2)) / 255, [0.4914, 0.4822, 0.4465], atol=1e-4
    )


def test_download_cifar10(tmp_path, server, monkeypatch):
    batches = cifar_batches()
    src = write_cifar_bin(tmp_path / "src", batches)
    patch_checksums(monkeypatch, tmp_path / "src", cifar10)
    archive = server.root / "cifar-10-binary.tar.gz"
    make_tar(archive, src)
    monkeypatch.setitem(cifar10.FILES, "cifar-10-binary.tar.gz", spec_of(archive))
    monkeypatch.setattr(cifar10, "MIRRORS", (server.url,))
    ds = datasets.load_cifar10(tmp_path / "root")
    for got, want in zip(ds[:4], expected_cifar(batches), strict=True):
        np.testing.assert_array_equal(got, want)
    assert ds.class_names == CIFAR_CLASSES
    assert server.hits == ["/cifar-10-binary.tar.gz"]
    # Unpacked the needed files, deleted the archive, left no temporary file.
    assert files_under(tmp_path / "root" / "cifar10") == sorted(
        f"cifar-10-batches-bin/{n}" for n in [*BIN_NAMES, "batches.meta.txt"]
    )
    datasets.load_cifar10(tmp_path / "root")
    assert len(server.hits) == 1


def test_cifar10_offline_error(tmp_path):
    refused(
        lambda: datasets.load_cifar10(tmp_path / "root"),
        "CIFAR-10 files missing: cifar-10-batches-bin/data_batch_1.bin",
        str(tmp_path / "root" / "cifar10"),
        "JAXNET_DATA",
        cifar10.MIRRORS[0] + "cifar-10-binary.tar.gz",
        "cifar-10-batches-py",
    )


# ------------------------------------------------------------------------------------------
# CIFAR-10: binary and python versions, and bad files


def test_cifar10_binary(tmp_path, monkeypatch):
    batches = cifar_batches()
    write_cifar_bin(tmp_path / "root" / "cifar10", batches)
    with pytest.raises(DataError, match=r"data_batch_1\.bin: wrong size: 24584 bytes"):
        datasets.load_cifar10(tmp_path / "root")  # the official checksums
    patch_checksums(monkeypatch, tmp_path / "root" / "cifar10", cifar10)
    ds = datasets.load_cifar10(tmp_path / "root")
    for got, want in zip(ds[:4], expected_cifar(batches), strict=True):
        np.testing.assert_array_equal(got, want)
    assert ds.train_images.shape == (40, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32 and ds.train_images.flags.c_contiguous


def test_cifar10_python_version(tmp_path):
    batches = cifar_batches(seed=3)
    write_cifar_py(tmp_path / "root" / "cifar10", batches)
    ds = datasets.load_cifar10(tmp_path / "root", verify=False)
    for got, want in zip(ds[:4], expected_cifar(batches), strict=True):
        np.testing.assert_array_equal(got, want)
    assert ds.class_names == CIFAR_CLASSES


def test_cifar10_python_resaved_by_python3(tmp_path):
    """A batch re-saved by Python 3 (protocol 4, numpy 2 names) loads too."""
    batches = cifar_batches(seed=4)
    folder = write_cifar_py(tmp_path / "root" / "cifar10", batches)
    batch = py_batch(*batches[0])
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=4))
    ds = datasets.load_cifar10(tmp_path / "root", verify=False)
    np.testing.assert_array_equal(ds.train_images[:8], batches[0][0])


def test_cifar10_from_local_python_archive(tmp_path, monkeypatch):
    """An official archive the user put in cifar10/ is unpacked, with no network."""
    batches = cifar_batches(seed=5)
    src = write_cifar_py(tmp_path / "src", batches)
    archive = tmp_path / "root" / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    make_tar(archive, src)
    monkeypatch.setitem(cifar10.FILES, "cifar-10-python.tar.gz", spec_of(archive))
    patch_checksums(monkeypatch, tmp_path / "src", cifar10)
    ds = datasets.load_cifar10(tmp_path / "root")
    np.testing.assert_array_equal(ds.test_images, batches[5][0])
    assert archive.is_file()  # the user's own archive is kept
    assert (tmp_path / "root" / "cifar10" / "cifar-10-batches-py" / "batches.meta").is_file()


def test_cifar10_corrupt_archive(tmp_path, monkeypatch):
    archive = tmp_path / "root" / "cifar10" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir(parents=True)
    make_tar(archive, write_cifar_bin(tmp_path / "src", cifar_batches()))
    archive.write_bytes(archive.read_bytes()[:5000])
    load = partial(datasets.load_cifar10, tmp_path / "root", verify=False)
    refused(load, "corrupt or truncated archive", starts=archive)
    assert files_under(tmp_path / "root" / "cifar10") == ["cifar-10-binary.tar.gz"]


def test_cifar10_archive_missing_a_file(tmp_path):
    src = write_cifar_bin(tmp_path / "src", cifar_batches())
    (src / "test_batch.bin").unlink()
    archive = tmp_path / "root" / "cifar10" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir(parents=True)
    make_tar(archive, src)
    with pytest.raises(DataError, match=r"the archive lacks cifar-10-batches-bin/test_batch\.bin"):
        datasets.load_cifar10(tmp_path / "root", verify=False)
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
    refused(partial(datasets.load_cifar10, tmp_path / "root", verify=False), *fragments, starts=bad)


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
    load = partial(datasets.load_cifar10, tmp_path / "root", verify=False)
    refused(load, fragment, starts=folder / "data_batch_2")


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
    load = partial(datasets.load_cifar10, tmp_path / "root", verify=False)
    refused(load, "refused", "open", starts=folder / "test_batch")
    assert not marker.exists()


def test_meta_pickle_wrong_structure(tmp_path):
    folder = write_cifar_py(tmp_path / "root" / "cifar10", cifar_batches(n=4))
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": [b"cat", b"dog"]}))
    with pytest.raises(DataError, match="expected 10 class names in 'label_names', found 2"):
        datasets.load_cifar10(tmp_path / "root", verify=False)


def test_pickle_helper_matches_official_layout():
    """The hand-written py2 pickle is what Python 3 reads the official files as."""
    batch = _good_batch()
    loaded = pickle.loads(py2_pickle(batch), encoding="bytes")
    assert loaded[b"labels"] == batch[b"labels"] and loaded[b"batch_label"] == b"batch"
    np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])
    assert io.BytesIO(py2_pickle(batch)).read(2) == b"\x80\x02"
