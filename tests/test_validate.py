"""The one integer check: an int (not a bool) at least a minimum, alone or as a pair."""

from __future__ import annotations

import numpy as np
import pytest

from jaxnet._validate import int_at_least, int_pair, window_outputs


@pytest.mark.parametrize(
    ("value", "minimum", "expected"),
    [(1, 1, 1), (0, 0, 0), (7, 2, 7), (np.int64(3), 1, 3), (np.uint8(5), 5, 5)],
)
def test_int_at_least_accepts(value, minimum, expected):
    got = int_at_least("n", value, minimum)
    assert got == expected and type(got) is int


@pytest.mark.parametrize(
    ("value", "minimum", "error", "message"),
    [
        (True, 0, TypeError, "n must be an int, got True"),
        (2.0, 1, TypeError, "n must be an int, got 2.0"),
        ("3", 1, TypeError, "n must be an int, got '3'"),
        (np.array(3), 1, TypeError, "n must be an int, got array(3)"),
        (None, 1, TypeError, "n must be an int, got None"),
        (0, 1, ValueError, "n must be >= 1, got 0"),
        (-1, 0, ValueError, "n must be >= 0, got -1"),
        (1, 2, ValueError, "n must be >= 2, got 1"),
    ],
)
def test_int_at_least_rejects(value, minimum, error, message):
    with pytest.raises(error) as info:
        int_at_least("n", value, minimum)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("value", "minimum", "expected"),
    [(2, 1, (2, 2)), ((1, 3), 1, (1, 3)), ([0, 2], 0, (0, 2)), ((np.int32(2), 1), 1, (2, 1))],
)
def test_int_pair_accepts(value, minimum, expected):
    got = int_pair("stride", value, minimum)
    assert got == expected and all(type(v) is int for v in got)


@pytest.mark.parametrize(
    ("value", "minimum", "error", "message"),
    [
        ((1, 2, 3), 1, ValueError, "stride must be an int or a pair of ints, got (1, 2, 3)"),
        ((2,), 1, ValueError, "stride must be an int or a pair of ints, got (2,)"),
        ((), 1, ValueError, "stride must be an int or a pair of ints, got ()"),
        (1.0, 1, TypeError, "stride must be an int, got 1.0"),
        ((1, False), 0, TypeError, "stride must be an int, got False"),
        ((1, 0), 1, ValueError, "stride must be >= 1, got 0"),
        (-1, 0, ValueError, "stride must be >= 0, got -1"),
    ],
)
def test_int_pair_rejects(value, minimum, error, message):
    with pytest.raises(error) as info:
        int_pair("stride", value, minimum)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("size", "k", "padding", "stride", "expected"),
    [(28, 5, 2, 1, 28), (28, 2, 0, 2, 14), (7, 3, 1, 2, 4), (10, 2, 0, 3, 3), (3, 3, 0, 1, 1)],
)
def test_window_outputs_is_the_layers_output_size(size, k, padding, stride, expected):
    """The one formula: it agrees with a convolution XLA runs."""
    import jax.numpy as jnp
    from jax import lax

    x, w = jnp.zeros((1, size, size, 1)), jnp.zeros((k, k, 1, 1))
    y = lax.conv_general_dilated(
        x, w, (stride, stride), [(padding, padding)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    got = window_outputs("conv", (size, size), (k, k), (padding,) * 2, (stride,) * 2)
    assert got == (expected, expected) == y.shape[1:3]


def test_window_outputs_refuses_a_window_that_does_not_fit():
    with pytest.raises(ValueError) as info:
        window_outputs("layer 'c' (Conv)", (2, 9), (5, 5), (1, 1))
    assert str(info.value) == (
        "layer 'c' (Conv): its 5x5 window with padding (1, 1) leaves no output on a 2x9 input"
    )
    with pytest.raises(ValueError, match=r"^maxpool2d: its 3x3 window leaves no output on a 2x2"):
        window_outputs("maxpool2d", (2, 2), (3, 3))
