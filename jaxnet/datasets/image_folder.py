"""Your own pictures as a data set: a folder with one sub-folder per class.

The layout is the field's convention (torchvision's ``ImageFolder``, Keras'
``image_dataset_from_directory``)::

    DIR/cat/*.jpg  DIR/dog/*.png  ...              split here into train and test, or
    DIR/train/cat/...  DIR/test/cat/...            the test set given

Class names are the sub-folders' names in sorted order (label ``i`` is the ``i``-th name).
Every file under a class folder (at any depth; names starting with ``.`` are ignored) is read
with :func:`jaxnet.images.open_image` (PNG, JPEG, BMP, GIF's first frame, anything Pillow reads)
and converted once to the network's input by :mod:`jaxnet.images`: a plain anti-aliased resize
(:func:`~jaxnet.images.to_colour`, :func:`~jaxnet.images.to_grey`), or for digits MNIST's own
centring (:func:`~jaxnet.images.to_digit`) when asked. A file that is not a readable image is
skipped and counted.

The decoded arrays are kept in ``<cache>/image_folders/`` (:func:`jaxnet.datasets.cache_dir`),
keyed by every file's relative path, size and modification time and by the conversion; a
second load of an unchanged folder reads one file, and any change decodes the folder again.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from jaxnet._validate import int_pair
from jaxnet.datasets import files
from jaxnet.datasets.files import DataError, Dataset

_VERSION = 1  # bump when the cached layout or the conversion changes: old entries are ignored
_SHOWN = 3  # skipped files named in the message


class ImageFolderError(DataError):
    """An image folder that cannot be used as a data set: missing, empty, a single class, a
    class with no readable image, or a ``test/`` whose classes differ from ``train/``'s. The
    message is one line naming the folder."""


def _visible(entries: list[Path]) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def _classes(folder: Path) -> list[str]:
    """The class names (sorted sub-folder names) of ``folder``; errors for fewer than two."""
    if not folder.exists():
        raise ImageFolderError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ImageFolderError(f"{folder}: not a folder")
    try:
        entries = _visible(list(folder.iterdir()))
    except OSError as err:
        raise files.unreadable(folder, err) from None
    names = [p.name for p in entries if p.is_dir()]
    if not names:
        loose = f" (it holds {len(entries)} files but no sub-folder)" if entries else " (empty)"
        raise ImageFolderError(
            f"{folder}: no class sub-folders{loose}; put each class's images in its own "
            f"sub-folder, e.g. {folder / 'cat'}/*.png and {folder / 'dog'}/*.png"
        )
    if len(names) == 1:
        raise ImageFolderError(
            f"{folder}: only one class sub-folder ({names[0]}); a classifier needs at least two"
        )
    return names


def _layout(root: Path) -> tuple[Path, Path | None, list[str]]:
    """The train folder, the test folder (None: split), and the class names."""
    if (root / "train").is_dir():
        train, test = root / "train", root / "test"
        classes = _classes(train)
        if not test.exists():
            return train, None, classes
        test_classes = _classes(test)
        if test_classes != classes:
            missing = sorted(set(classes) - set(test_classes))
            extra = sorted(set(test_classes) - set(classes))
            diff = "; ".join(
                f"{what}: {', '.join(names)}"
                for what, names in (("missing", missing), ("not in train/", extra))
                if names
            )
            raise ImageFolderError(f"{test}: its classes differ from {train}'s ({diff})")
        return train, test, classes
    return root, None, _classes(root)


def _candidates(folder: Path) -> list[Path]:
    """Every visible file under ``folder``, at any depth, in sorted order."""
    found = []
    for here, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(here) / n for n in sorted(names) if not n.startswith(".")]
    return found


def _decode(
    paths: list[Path], convert: Callable, shape: tuple[int, ...], progress: bool, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    """The converted images and a mask of the files that were readable images."""
    from tqdm.auto import tqdm

    from jaxnet import images

    out = np.zeros((len(paths), *shape), np.uint8)
    ok = np.zeros(len(paths), bool)
    bar = tqdm(paths, desc=desc, unit="img", file=sys.stderr, disable=not progress, leave=False)
    for i, path in enumerate(bar):
        try:
            out[i] = convert(images.open_image(path))
            ok[i] = True
        except (images.ImageFileError, ValueError):  # ValueError: no digit in a flat image
            pass
    return out, ok


def _key(root: Path, paths: list[Path], conversion: str) -> str:
    """A hash of the conversion and every file's relative path, size and mtime."""
    digest = hashlib.sha1(f"{_VERSION}|{conversion}".encode())
    for path in paths:
        try:
            st = path.stat()
        except OSError as err:
            raise files.unreadable(path, err) from None
        digest.update(f"\n{path.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _split(labels: np.ndarray, k: int, fraction: float, seed: int) -> np.ndarray:
    """A stratified test mask: ``round(fraction * n_c)`` of each class's ``n_c`` images (at
    least one, and one left for training, where ``n_c >= 2``), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        n = len(members)
        n_test = min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0
        test[rng.permutation(members)[:n_test]] = True
    return test


def _list_files(parts: list[Path], classes: list[str]) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Every candidate file of each part (``train/``, ``test/``) and class, in sorted order,
    with its label and its part's index."""
    paths, labels, part = [], [], []
    for p, folder in enumerate(parts):
        for c, name in enumerate(classes):
            found = _candidates(folder / name)
            paths += found
            labels += [c] * len(found)
            part += [p] * len(found)
    return paths, np.asarray(labels, np.int32), np.asarray(part, np.int8)


def _refuse_unreadable_classes(
    parts: list[Path], classes: list[str], labels: np.ndarray, part: np.ndarray, ok: np.ndarray
) -> None:
    """ImageFolderError naming the first class folder with no readable image."""
    for p, folder in enumerate(parts):
        for c, name in enumerate(classes):
            mine = (labels == c) & (part == p)
            if not ok[mine].any():
                n = int(mine.sum())
                what = {0: "empty", 1: "its 1 file is not a readable image"}.get(
                    n, f"none of its {n} files is a readable image"
                )
                raise ImageFolderError(f"{folder / name}: no readable image ({what})")


def load_image_folder(
    path: str | os.PathLike,
    size: int | tuple[int, int],
    channels: int,
    *,
    centre: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Dataset:
    """Load a folder of images, one sub-folder per class, as a :class:`Dataset`.

    ``path`` holds ``train/`` (and ``test/``, with the same class sub-folders), or the class
    sub-folders themselves. Without a ``test/`` part, a stratified ``test_fraction`` of each
    class is drawn with ``seed`` as the test split (the same files for the same folder, fraction
    and seed). Images keep the sorted order of their paths within each split.

    Args:
        path: the folder.
        size: the side, or ``(height, width)``, of the converted images.
        channels: 1 (grey) or 3 (RGB).
        centre: for ``channels == 1``, MNIST's centring (:func:`jaxnet.images.to_digit`: light
            on dark, the digit in a 20/28 box, centred by mass) instead of a plain resize.
        test_fraction: the share of each class held out as the test split when there is no
            ``test/``; ``0 < test_fraction < 1``.
        seed: the seed of that split.
        progress: a tqdm bar on stderr while decoding.
        log: called with one line per finding (images per class and decoding speed, skipped
            files); default: print to stderr. Pass ``lambda line: None`` for silence.

    Returns:
        A :class:`Dataset`: uint8 images ``(N, H, W, C)`` and ``(M, H, W, C)``, int32 labels
        ``(N,)`` and ``(M,)``, and the class names (the sub-folders' names, sorted).

    Raises:
        ImageFolderError: the folder does not exist or is not a folder, holds no class
            sub-folder or just one, a class (in ``train/`` or ``test/``) has no readable image,
            or ``test/``'s classes differ from ``train/``'s. One line naming the folder.
        ValueError: ``size``, ``channels`` or ``test_fraction`` out of range.
        TypeError: ``size`` is not an int or a pair of ints.
    """
    height, width = int_pair("size", size, 1)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    say = log if log is not None else partial(print, file=sys.stderr)
    root = Path(path).expanduser().absolute()
    train_dir, test_dir, classes = _layout(root)
    parts = [train_dir] + ([test_dir] if test_dir is not None else [])
    paths, labels_a, part_a = _list_files(parts, classes)

    conversion = f"{height}x{width}x{channels}|centre={bool(centre and channels == 1)}"
    start = time.perf_counter()

    def decode() -> dict[str, np.ndarray]:
        from jaxnet.images import converter

        convert = converter((height, width, channels), centre=centre)
        images, ok = _decode(paths, convert, (height, width, channels), progress, root.name)
        return {"images": images, "ok": ok}

    version = _key(root, paths, conversion)
    arrays, hit = files.cached("image_folders", f"{root}|{conversion}", version, decode)
    images, ok, seconds = arrays["images"], arrays["ok"], time.perf_counter() - start
    if hit:
        how = f"read from the cache in {seconds:.1f} s"
    else:
        how = f"decoded in {seconds:.1f} s ({len(paths) / max(seconds, 1e-9):.0f} images/s)"

    _refuse_unreadable_classes(parts, classes, labels_a, part_a, ok)
    skipped = [paths[i] for i in np.flatnonzero(~ok)]
    if skipped:
        named = ", ".join(str(s.relative_to(root)) for s in skipped[:_SHOWN])
        more = f", and {len(skipped) - _SHOWN} more" if len(skipped) > _SHOWN else ""
        say(f"{root}: skipped {len(skipped)} file(s) that are not readable images: {named}{more}")
    images, labels_a, part_a = images[ok], labels_a[ok], part_a[ok]
    test = (
        part_a == 1 if test_dir is not None else _split(labels_a, len(classes), test_fraction, seed)
    )
    counts = np.bincount(labels_a, minlength=len(classes))
    per_class = ", ".join(f"{name} {n}" for name, n in zip(classes, counts, strict=True))
    say(
        f"{root}: {len(labels_a)} images in {len(classes)} classes ({per_class}); {how}; "
        f"{int((~test).sum())} for training, {int(test.sum())} for testing"
        + ("" if test_dir is not None else f" (a seeded {test_fraction:g} split)")
    )
    return Dataset(images[~test], labels_a[~test], images[test], labels_a[test], tuple(classes))
