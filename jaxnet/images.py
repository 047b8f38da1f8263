"""Image files turned into uint8 arrays shaped like the training data (MNIST digits, CIFAR-10).

:func:`read` opens a file (:func:`open_image`) and converts it as the network's input shape calls
for (:func:`converter`): :func:`to_digit` (one digit as MNIST shows digits), :func:`to_colour`
(CIFAR-10's RGB) or :func:`to_grey` (a plain grey resize). The result is uint8, exactly what the
data loaders give, so the network's own preprocessing (:func:`jaxnet.step.preprocess`, with the
run's scale and mean) applies unchanged.

MNIST's own preprocessing (LeCun, Cortes and Burges, "The MNIST database of handwritten
digits"): the NIST binary digits were size-normalised to fit a 20x20 box keeping their aspect
ratio, anti-aliased (hence grey levels), and centred in 28x28 by their centre of mass. In the
test set every digit's non-zero pixels span 20 pixels along the longer side (all but 3 of
10000) and the centre of mass lies within half a pixel of pixel (14, 14) (row, column,
0-based), so :func:`to_digit` puts it there with a whole-pixel shift. On an MNIST image itself
the crop is the 20-pixel box, the resize keeps its size, and the shift puts every pixel back
where it was: the digit comes out unchanged except that the brightest pixel is made 255.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "INVERT",
    "ImageFileError",
    "converter",
    "open_image",
    "read",
    "to_colour",
    "to_digit",
    "to_grey",
]

INVERT = ("auto", "yes", "no")
"""The choices for ``invert``: decide from the image, always, never."""

_RESAMPLE = Image.Resampling.LANCZOS  # anti-aliased at any scale factor


class ImageFileError(Exception):
    """A file that cannot be read as an image, or holds no digit; the message names the file."""


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image file whole (PNG, JPEG, any format Pillow reads): decoded, turned upright by
    its EXIF orientation tag, in the file's own mode (``L``, ``RGB``, ``RGBA``, ``P``, ...).

    Raises:
        ImageFileError: one line naming the file and why: missing, a folder, refused by the
            system (its reason), not an image, damaged or truncated, or too large to read safely.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # decode now: a truncated file fails here, not later
                return ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise ImageFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageFileError(f"{path}: is a folder, not an image file") from None
    except Image.UnidentifiedImageError:
        raise ImageFileError(f"{path}: not an image (Pillow cannot identify its format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageFileError(f"{path}: too large to read safely ({err})") from None
    except OSError as err:
        if err.strerror:  # the system refused the file: a symlink loop, permission denied, ...
            raise ImageFileError(f"{path}: cannot be read ({err.strerror})") from None
        raise ImageFileError(f"{path}: damaged or truncated image ({err})") from None
    except (ValueError, SyntaxError) as err:  # Pillow's decoders on damaged data
        raise ImageFileError(f"{path}: damaged or truncated image ({err})") from None


def _eight_bit(image: Image.Image) -> Image.Image:
    """``image`` with 8 bits per channel: 16- and 32-bit grey is scaled (Pillow would clip)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        grey = np.asarray(image, np.float64) / 257.0  # 65535 -> 255
    elif image.mode == "F":
        grey = np.nan_to_num(np.asarray(image, np.float64))
        if grey.size and grey.max() <= 1.0:
            grey = grey * 255.0
    else:
        return image
    return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L")


def _opaque(image: Image.Image) -> Image.Image:
    """``image`` in ``L`` or ``RGB``, any transparency laid over the background it implies.

    Transparent pixels become black when the visible strokes are light, white when they are
    dark, so a drawing on a transparent canvas keeps its contrast either way.
    """
    image = _eight_bit(image)
    if image.mode in ("L", "RGB"):
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba, np.float64)[..., 3] / 255.0
    luma = np.asarray(rgba.convert("L"), np.float64)
    weight = alpha.sum()
    light_strokes = weight > 0 and (luma * alpha).sum() / weight > 127.5
    background = Image.new("RGBA", rgba.size, "black" if light_strokes else "white")
    return Image.alpha_composite(background, rgba).convert("RGB")


def _frame(a: np.ndarray) -> np.ndarray:
    """The pixels of the outer frame of a 2-D array, ``max(1, 5%)`` of the shorter side wide."""
    h, w = a.shape
    k = max(1, round(0.05 * min(h, w)))
    if 2 * k >= min(h, w):
        return a.ravel()
    return np.concatenate(
        [a[:k].ravel(), a[-k:].ravel(), a[k:-k, :k].ravel(), a[k:-k, -k:].ravel()]
    )


def to_digit(image: Image.Image, invert: str = "auto", size: int = 28, box: int = 20) -> np.ndarray:
    """One digit, as MNIST shows digits: light on dark, in a ``box`` square, centred by mass.

    Steps:

    1. grey (ITU-R 601 luma; transparency over the background it implies);
    2. light on dark: ``invert="auto"`` inverts when the frame (the outer 5% of the shorter
       side, at least 1 pixel) is brighter on average than the whole image, i.e. when the
       background is lighter than the ink; ``"yes"`` and ``"no"`` force it;
    3. the background is taken away: ink is how much a pixel rises above the frame's median,
       kept only where it rises above the frame's noise (3 robust standard deviations, from
       the frame's median absolute deviation), then stretched so the brightest pixel is 255;
    4. cropped to the bounding box of the ink, resized with an anti-aliasing (Lanczos) filter
       so its longer side is ``box`` pixels, keeping the aspect ratio;
    5. pasted into a ``size x size`` black image by a whole-pixel shift that brings its centre
       of mass nearest to pixel ``(size // 2, size // 2)``, as far as the box stays inside.

    Args:
        image: a Pillow image of any size and mode (grey, RGB, with or without alpha).
        invert: ``"auto"``, ``"yes"`` or ``"no"``.
        size: the output side (MNIST: 28).
        box: the side of the box the digit is scaled into (MNIST: 20), ``1 <= box <= size``.

    Returns:
        uint8 ``(size, size, 1)``, light digit on a black background.

    Raises:
        ValueError: ``invert`` is not one of :data:`INVERT`, ``box`` is out of range, or the
            image holds no ink (it is one flat colour).
    """
    if invert not in INVERT:
        raise ValueError(f"invert must be one of {INVERT}, got {invert!r}")
    if not 1 <= box <= size:
        raise ValueError(f"box must be in [1, size = {size}], got {box}")
    grey = np.asarray(_opaque(image).convert("L"), np.float64)
    if invert == "yes" or (invert == "auto" and _frame(grey).mean() > grey.mean()):
        grey = 255.0 - grey

    frame = _frame(grey)
    background = np.median(frame)
    noise = 3.0 * 1.4826 * np.median(np.abs(frame - background))
    ink = np.where(grey - background > noise, grey - background, 0.0)
    if not ink.max() > 0:
        raise ValueError("no digit found: the image is one flat colour")
    ink *= 255.0 / ink.max()

    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = box / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    scaled = Image.fromarray(crop.astype(np.float32), "F").resize((new_w, new_h), _RESAMPLE)
    digit = np.clip(np.asarray(scaled, np.float64), 0.0, 255.0)  # Lanczos may overshoot

    mass = digit.sum()  # > 0: the filter's weights sum to 1, so some output keeps the ink
    com_y = (digit.sum(axis=1) @ np.arange(new_h)) / mass
    com_x = (digit.sum(axis=0) @ np.arange(new_w)) / mass
    top = min(max(math.floor(size // 2 - com_y + 0.5), 0), size - new_h)
    left = min(max(math.floor(size // 2 - com_x + 0.5), 0), size - new_w)
    out = np.zeros((size, size), np.uint8)
    out[top : top + new_h, left : left + new_w] = np.rint(digit).astype(np.uint8)
    return out[..., None]


def to_colour(image: Image.Image, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """An RGB picture resized to the network's input, as CIFAR-10's images are: uint8
    ``(height, width, 3)`` for ``size = (height, width)``.

    The whole picture (a Pillow image of any size and mode) is resized (anti-aliased, Lanczos),
    its aspect ratio not kept; grey pictures get three equal channels, transparency is laid over
    the background it implies (see :func:`to_digit`).
    """
    return _resized(image, size, "RGB")


def to_grey(image: Image.Image, size: tuple[int, int] = (28, 28)) -> np.ndarray:
    """A grey picture resized to the network's input, uint8 ``(height, width, 1)``:
    :func:`to_colour`'s plain resize, one channel (ITU-R 601 luma), with no digit centring (that
    is :func:`to_digit`)."""
    return _resized(image, size, "L")[..., None]


def _resized(image: Image.Image, size: tuple[int, int], mode: str) -> np.ndarray:
    """``image`` opaque, in ``mode`` (``L`` or ``RGB``), resized (Lanczos) to ``size`` (h, w)."""
    picture = _opaque(image).convert(mode)
    height, width = size
    if picture.size != (width, height):
        picture = picture.resize((width, height), _RESAMPLE)
    return np.asarray(picture, np.uint8).copy()


def converter(
    input_shape: tuple[int, int, int], invert: str = "auto", centre: bool = True
) -> Callable[[Image.Image], np.ndarray]:
    """The conversion for a network of ``input_shape`` ``(H, W, C)``: :func:`to_colour` for
    ``C = 3``; for ``C = 1`` :func:`to_digit` (MNIST's centring in a box ``20/28`` of the side,
    ``H == W``; ``invert`` is for digits only) or, with ``centre=False``, :func:`to_grey`. Every
    caller that turns a picture into a network's input (:func:`read`,
    :func:`jaxnet.datasets.load_image_folder`) takes it from here.

    Raises:
        ValueError: a bad ``invert`` or an input shape none of the three makes.
    """
    if invert not in INVERT:
        raise ValueError(f"invert must be one of {INVERT}, got {invert!r}")
    h, w, c = input_shape
    if c == 1 and not centre:
        return partial(to_grey, size=(h, w))
    if c == 1 and h == w:
        return partial(to_digit, invert=invert, size=h, box=max(1, round(h * 20 / 28)))
    if c == 3:
        return partial(to_colour, size=(h, w))
    raise ValueError(
        f"images can be converted for inputs (S, S, 1) (digits) or (H, W, 3) (colour), got "
        f"{tuple(input_shape)}"
    )


def read(
    path: str | os.PathLike[str],
    input_shape: tuple[int, int, int],
    invert: str = "auto",
    centre: bool = True,
) -> np.ndarray:
    """Read an image file and convert it for a network of ``input_shape`` (:func:`converter`
    of ``input_shape``, ``invert`` and ``centre``); returns uint8 of shape ``input_shape``.

    Raises:
        ImageFileError: the file is not a readable image, or it holds no digit.
        ValueError: a bad ``input_shape`` or ``invert`` (checked before the file is read).
    """
    convert = converter(input_shape, invert, centre)
    image = open_image(path)
    try:
        return convert(image)
    except ValueError as err:  # the options are checked: what is left is the picture's content
        raise ImageFileError(f"{path}: {err}") from None
