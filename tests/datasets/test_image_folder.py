"""jaxnet.datasets.load_image_folder: layouts, formats, modes, the split, bad folders, the cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxnet import images
from jaxnet.datasets import DataError, ImageFolderError, image_folder, load_image_folder

QUIET = {"progress": False, "log": lambda line: None}


def picture(seed: int, size: tuple[int, int] = (20, 20), mode: str = "RGB") -> Image.Image:
    """A random picture of ``size`` (width, height) in ``mode``."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        grey = np.asarray(rgb.convert("L"), np.uint16) * 257
        return Image.fromarray(grey)  # uint16: mode I;16
    return rgb.convert(mode) if mode != "P" else rgb.quantize(16)


def make_folder(root: Path, counts: dict[str, int], ext: str = ".png", seed: int = 0) -> Path:
    """``root/<class>/<i><ext>`` random pictures of mixed sizes, ``counts[class]`` of each."""
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            size = (16 + 7 * (i % 3), 20 + 5 * (i % 2))
            picture(1000 * c + i + seed, size).save(root / name / f"{i:03d}{ext}")
    return root


def test_formats_modes_and_sizes_each_converted_once(tmp_path):
    root = tmp_path / "pics"
    files = {
        "cat/a.png": picture(1, (40, 30), "RGB"),
        "cat/b.jpg": picture(2, (9, 13), "RGB"),
        "cat/c.bmp": picture(3, (28, 28), "L"),
        "cat/d.png": picture(4, (50, 10), "RGBA"),
        "dog/e.png": picture(5, (33, 33), "P"),
        "dog/f.png": picture(6, (64, 64), "I;16"),
        "dog/g.jpeg": picture(7, (100, 80), "L"),
        "dog/sub/h.PNG": picture(8, (12, 12), "LA"),
    }
    for name, im in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        im.save(root / name, **({"quality": 95} if name.endswith(("jpg", "jpeg")) else {}))
    for channels, convert in ((1, images.to_grey), (3, images.to_colour)):
        d = load_image_folder(root, 28, channels, test_fraction=0.5, **QUIET)
        assert d.class_names == ("cat", "dog")
        assert d.train_images.dtype == np.uint8 and d.train_labels.dtype == np.int32
        assert d.train_images.shape == (4, 28, 28, channels)
        assert d.test_images.shape == (4, 28, 28, channels)
        assert sorted(np.bincount(d.test_labels)) == [2, 2]
        every = np.concatenate([d.train_images, d.test_images])
        expected = [convert(images.open_image(root / n), size=(28, 28)) for n in files]
        for e in expected:  # the one preprocessing of jaxnet.images, nothing else
            assert any(np.array_equal(e, x) for x in every)


def test_gif_first_frame_and_rectangular_size(tmp_path):
    root = tmp_path / "gifs"
    for name, first in (("bright", 255), ("dark", 0)):
        (root / name).mkdir(parents=True)
        frames = [Image.new("L", (10, 10), first), Image.new("L", (10, 10), 255 - first)]
        frames[0].save(root / name / "x.gif", save_all=True, append_images=frames[1:])
        frames[0].save(root / name / "y.gif", save_all=True, append_images=frames[1:])
    d = load_image_folder(root, (6, 8), 1, **QUIET)
    assert d.train_images.shape[1:] == (6, 8, 1)
    for x, y in zip(d.train_images, d.train_labels, strict=True):
        assert np.all(x == (255 if y == 0 else 0))


def test_train_test_layout(tmp_path):
    make_folder(tmp_path / "d" / "train", {"b": 5, "a": 3})
    make_folder(tmp_path / "d" / "test", {"a": 2, "b": 1}, ext=".jpg", seed=7)
    d = load_image_folder(tmp_path / "d", 16, 3, **QUIET)
    assert d.class_names == ("a", "b")
    assert d.train_labels.tolist() == [0] * 3 + [1] * 5
    assert d.test_labels.tolist() == [0, 0, 1]


def test_train_without_test_is_split(tmp_path):
    make_folder(tmp_path / "d" / "train", {"a": 5, "b": 10})
    d = load_image_folder(tmp_path / "d", 8, 1, test_fraction=0.4, **QUIET)
    assert d.class_names == ("a", "b")
    assert np.bincount(d.test_labels).tolist() == [2, 4]


def test_split_is_stratified_seeded_and_reproducible(tmp_path):
    root = make_folder(tmp_path / "d", {"x": 10, "y": 20, "z": 30})
    a = load_image_folder(root, 8, 1, test_fraction=0.2, seed=3, **QUIET)
    assert np.bincount(a.test_labels).tolist() == [2, 4, 6]
    assert np.bincount(a.train_labels).tolist() == [8, 16, 24]
    b = load_image_folder(root, 8, 1, test_fraction=0.2, seed=3, **QUIET)
    c = load_image_folder(root, 8, 1, test_fraction=0.2, seed=4, **QUIET)
    assert np.array_equal(a.test_images, b.test_images)
    assert not np.array_equal(a.test_images, c.test_images)
    tiny = load_image_folder(make_folder(tmp_path / "t", {"p": 2, "q": 3}), 8, 1, **QUIET)
    assert np.bincount(tiny.test_labels).tolist() == [1, 1]  # one each, one left to train on


def test_centre_gives_mnist_digits(tmp_path):
    root = tmp_path / "digits"
    for name in ("one", "two"):
        (root / name).mkdir(parents=True)
        a = np.full((60, 40), 255, np.uint8)
        a[10:50, 15:22] = 0  # a dark stroke on white paper
        Image.fromarray(a).save(root / name / "s.png")
        Image.fromarray(a).save(root / name / "t.png")
    d = load_image_folder(root, 28, 1, centre=True, **QUIET)
    expected = images.to_digit(images.open_image(root / "one" / "s.png"))
    assert np.array_equal(d.train_images[0], expected)
    assert d.train_images[0][0, 0, 0] == 0  # light on dark


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 4, "b": 4})
    for i in range(5):
        (root / "a" / f"junk{i}.txt").write_text("not an image")
    (root / "b" / "cut.png").write_bytes((root / "b" / "000.png").read_bytes()[:40])
    (root / "b" / ".hidden.png").write_text("ignored")
    lines: list[str] = []
    d = load_image_folder(root, 8, 3, progress=False, log=lines.append)
    assert len(d.train_labels) + len(d.test_labels) == 8
    skipped = [line for line in lines if "skipped" in line]
    assert len(skipped) == 1
    assert "skipped 6 file(s)" in skipped[0] and "a/junk0.txt" in skipped[0]
    assert "and 3 more" in skipped[0] and ".hidden" not in skipped[0]
    found = [line for line in lines if "images in 2 classes" in line]
    assert found and "a 4, b 4" in found[0] and "images/s" in found[0]


def _bad(tmp_path: Path, case: str) -> tuple[Path, str]:
    root = tmp_path / "d"
    if case == "missing":
        return root, "no such folder"
    if case == "a file":
        root.write_text("x")
        return root, "not a folder"
    if case == "empty":
        root.mkdir()
        return root, "no class sub-folders (empty)"
    if case == "loose files":
        root.mkdir()
        picture(0).save(root / "x.png")
        return root, "holds 1 files but no sub-folder"
    if case == "one class":
        make_folder(root, {"only": 3})
        return root, "only one class sub-folder (only)"
    if case == "empty class":
        make_folder(root, {"a": 3})
        (root / "b").mkdir()
        return root / "b", "no readable image (empty)"
    if case == "unreadable class":
        make_folder(root, {"a": 3})
        (root / "b").mkdir()
        (root / "b" / "x.png").write_text("no")
        return root / "b", "no readable image (its 1 file is not a readable image)"
    if case == "test classes differ":
        make_folder(root / "train", {"a": 3, "b": 3})
        make_folder(root / "test", {"a": 1, "c": 1})
        return root / "test", "classes differ from"
    if case == "empty test class":
        make_folder(root / "train", {"a": 3, "b": 3})
        make_folder(root / "test", {"a": 1, "b": 0})
        return root / "test" / "b", "no readable image (empty)"
    raise AssertionError(case)


BAD = [
    "missing",
    "a file",
    "empty",
    "loose files",
    "one class",
    "empty class",
    "unreadable class",
    "test classes differ",
    "empty test class",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_folders_are_one_line_naming_the_folder(tmp_path, case):
    where, what = _bad(tmp_path, case)
    with pytest.raises(ImageFolderError) as info:
        load_image_folder(tmp_path / "d", 8, 1, **QUIET)
    message = str(info.value)
    assert isinstance(info.value, DataError)
    assert "\n" not in message and message.startswith(str(where.absolute()))
    assert what in message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "size must be"),
        ({"size": (3, 4, 5)}, "size must be"),
        ({"channels": 2}, "channels must be 1"),
        ({"test_fraction": 1.0}, "test_fraction must be"),
        ({"test_fraction": 0.0}, "test_fraction must be"),
    ],
)
def test_bad_arguments_are_value_errors(tmp_path, kwargs, message):
    args = {"size": 8, "channels": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        load_image_folder(make_folder(tmp_path / "d", {"a": 2, "b": 2}), **args, **QUIET)


def test_cache_hit_then_refresh_on_size_and_mtime(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", {"a": 3, "b": 3})
    calls: list[int] = []
    decode = image_folder._decode

    def counting(paths, *args):
        calls.append(len(paths))
        return decode(paths, *args)

    monkeypatch.setattr(image_folder, "_decode", counting)
    first = load_image_folder(root, 8, 3, **QUIET)
    assert calls == [6]
    lines: list[str] = []
    again = load_image_folder(root, 8, 3, progress=False, log=lines.append)
    assert calls == [6] and "read from the cache" in lines[-1]
    assert np.array_equal(first.train_images, again.train_images)
    load_image_folder(root, 8, 1, **QUIET)  # another conversion: its own entry
    assert calls == [6, 6]

    target = root / "a" / "000.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(target)  # new content and size
    changed = load_image_folder(root, 8, 3, **QUIET)
    assert calls == [6, 6, 6]
    every = np.concatenate([changed.train_images, changed.test_images])
    assert any(np.all(x == [255, 0, 0]) for x in every)

    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: mtime alone
    load_image_folder(root, 8, 3, **QUIET)
    assert calls == [6, 6, 6, 6]
    (root / "b" / "new.png").write_bytes(target.read_bytes())  # a file added
    load_image_folder(root, 8, 3, **QUIET)
    assert calls == [6, 6, 6, 6, 7]
    entries = list((tmp_path / "cache" / "image_folders").glob("*.npz"))
    assert len(entries) == 2  # the stale entries replaced: one per conversion
