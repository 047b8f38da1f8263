"""The one check of an integer argument: an int (a bool is not one) at least some minimum.

Used wherever a Python int enters the library (layer specs, the layers' padding, stride and
window), so every such mistake reads alike: ``TypeError`` for a value that is not an int,
``ValueError`` for one that is too small, each naming the argument and what it got. Also the
one search for class labels out of range (:func:`out_of_range`), for data files and metrics,
and the one output size of a sliding window, with its check (:func:`window_outputs`), for the
layer specs, the convolution and pooling layers and the oneDNN kernels.
"""

from __future__ import annotations

import numbers

import numpy as np

IntOrPair = int | tuple[int, int]
"""An int ``k`` (meaning ``(k, k)``) or a pair: padding, stride, a window."""


def out_of_range(values: np.ndarray, num_classes: int) -> str | None:
    """``None`` if every value is in ``0 .. num_classes - 1``; else what is wrong, for a message.

    The text names the first bad value and its index and counts the bad ones:
    ``"12 at index 3 is outside 0..9 (2 out of range)"``.
    """
    bad = np.flatnonzero((values < 0) | (values >= num_classes))
    if not bad.size:
        return None
    i = int(bad[0])
    return (
        f"{int(values[i])} at index {i} is outside 0..{num_classes - 1} ({bad.size} out of range)"
    )


def int_at_least(name: str, value: object, minimum: int) -> int:
    """``value`` as a Python int, checked to be an integer (not a bool) and ``>= minimum``.

    Args:
        name: the argument as the message should name it (``"Conv 'c1': kh"``).
        value: a Python or NumPy integer.
        minimum: the smallest value allowed.

    Returns:
        ``int(value)``.

    Raises:
        TypeError: ``value`` is a bool, a float, a string, an array, ...
        ValueError: ``value < minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def int_pair(name: str, value: object, minimum: int) -> tuple[int, int]:
    """An int ``k`` or a pair ``(k1, k2)`` (tuple or list) as a pair of Python ints ``>= minimum``.

    Args:
        name: the argument as the message should name it (``"stride"``).
        value: an integer, or a tuple or list of two integers.
        minimum: the smallest entry allowed.

    Returns:
        ``(k, k)`` or ``(k1, k2)``.

    Raises:
        TypeError: an entry that is not an integer (a bool, a float, an array).
        ValueError: a tuple or list of length other than 2, or an entry below ``minimum``.
    """
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return (int_at_least(name, items[0], minimum), int_at_least(name, items[1], minimum))


def window_outputs(
    what: str,
    size: tuple[int, int],
    window: tuple[int, int],
    padding: tuple[int, int] = (0, 0),
    stride: tuple[int, int] = (1, 1),
) -> tuple[int, int]:
    """The output ``(Ho, Wo)`` of a convolution or a pooling layer on an input ``size`` ``(H, W)``.

    Per axis ``floor((size + 2 padding - k) / stride) + 1``: the places a window of ``k`` takes
    sliding by ``stride`` over the input zero-padded by ``padding`` on each side. ValueError,
    naming the layer as ``what`` (``"conv2d"``, ``"layer 'conv1' (Conv)"``), where the padded
    input is smaller than the window on some axis (no output).
    """
    if any(s + 2 * p < k for s, k, p in zip(size, window, padding, strict=True)):
        padded = f" with padding {padding}" if any(padding) else ""
        raise ValueError(
            f"{what}: its {window[0]}x{window[1]} window{padded} leaves no output on a "
            f"{size[0]}x{size[1]} input"
        )
    return tuple(
        (s + 2 * p - k) // st + 1 for s, k, p, st in zip(size, window, padding, stride, strict=True)
    )
