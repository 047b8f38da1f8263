"""XLA CPU tuning: the zero-padded convolutions equal the plain ones, on every path they take."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax import lax

from jaxnet.backends import xla_cpu


def plain_correlate(x, w, stride):
    return lax.conv_general_dilated(x, w, stride, "VALID", dimension_numbers=xla_cpu._NHWC)


def plain_weight_gradient(x, g, stride):
    dims = ("CHWN", "IHWO", "HWNC")
    return lax.conv_general_dilated(
        x, g, (1, 1), "VALID", rhs_dilation=stride, dimension_numbers=dims
    )


def arrays(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


@pytest.mark.parametrize(
    ("c_in", "c_out", "stride"),
    [(1, 16, (1, 1)), (1, 3, (2, 1)), (1, 17, (1, 1)), (2, 8, (1, 1)), (4, 24, (2, 2))],
)
def test_correlate_equals_the_plain_correlation(c_in, c_out, stride):
    """One input channel and <= 16 outputs is the padded path; the others are plain."""
    x, w = arrays((3, 9, 8, c_in), (3, 3, c_in, c_out))
    got = jax.jit(xla_cpu.correlate, static_argnums=2)(x, w, stride)
    np.testing.assert_allclose(got, plain_correlate(x, w, stride), rtol=1e-5, atol=1e-5)
    assert got.shape == plain_correlate(x, w, stride).shape


@pytest.mark.parametrize(
    ("n", "c_out", "stride"),
    [
        (16, 4, (1, 1)),
        (16, 4, (2, 2)),
        (5, 3, (1, 1)),
        (5, 3, (2, 1)),
        (17, 2, (1, 1)),
        (2, 17, (1, 1)),
    ],
)
def test_weight_gradient_equals_the_plain_one(n, c_out, stride):
    """Batch 16 pads the images to 20; a smaller one pads C_out to 17; 17 or more is plain."""
    kh, kw, c_in = 3, 2, 3
    ho, wo = 4, 5
    h, w_ = (ho - 1) * stride[0] + kh, (wo - 1) * stride[1] + kw
    x, g = arrays((n, h, w_, c_in), (n, ho, wo, c_out), seed=1)
    got = jax.jit(xla_cpu.weight_gradient, static_argnums=2)(x, g, stride)
    expected = plain_weight_gradient(x, g, stride)
    assert got.shape == (kh, kw, c_in, c_out) == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_weight_gradient_is_the_sum_over_the_batch_and_positions():
    """The definition in the docstring, summed in NumPy."""
    x, g = arrays((16, 5, 5, 2), (16, 3, 3, 4), seed=2)
    expected = np.zeros((3, 3, 2, 4), np.float32)
    for u in range(3):
        for v in range(3):
            expected[u, v] = np.einsum("nijc,nijo->co", x[:, u : u + 3, v : v + 3], g)
    got = xla_cpu.weight_gradient(x, g, (1, 1))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
