"""Tuning for XLA's CPU convolution kernels, applied on the CPU backend only.

XLA (jax 0.10) runs a CPU convolution on its fast YNNPACK kernels only when
``max(C_in, C_out) > 16`` (its two feature axes), else on a generic Eigen kernel. Zero channels
(or zero images) that add nothing to the result get a small convolution there where that was
measured to pay (figures: ``docs/performance.md``):

- a correlation with one input channel and at most 16 outputs gets ``C_out`` padded to 17
  (3-4x faster; the MNIST network's first layer);
- the weight gradient, a correlation with the batch as its feature axis, gets a batch of 16
  padded to 20 images, or a smaller batch's ``C_out`` padded to 17.

On any other backend each function is the plain correlation: the choice is made by
:func:`jax.lax.platform_dependent` when the program is lowered, so a GPU or TPU never sees the
padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")
YNNPACK_MIN_FEATURES = 17  # XLA CPU's YNNPACK convolutions need max(C_in, C_out) > 16


def _pad_axis(a: jax.Array, axis: int, size: int) -> jax.Array:
    """``a`` with zeros appended along ``axis`` up to ``size`` entries."""
    pads = [(0, 0)] * a.ndim
    pads[axis] = (0, size - a.shape[axis])
    return jnp.pad(a, pads)


def correlate(x: jax.Array, w: jax.Array, stride: tuple[int, int]) -> jax.Array:
    """VALID strided correlation of NHWC ``x`` with HWIO ``w``: ``(N, Ho, Wo, C_out)``."""

    def plain(x, w):
        return lax.conv_general_dilated(x, w, stride, "VALID", dimension_numbers=_NHWC)

    c_in, c_out = w.shape[2:]
    if c_in != 1 or c_out >= YNNPACK_MIN_FEATURES:
        return plain(x, w)

    def padded(x, w):
        return plain(x, _pad_axis(w, 3, YNNPACK_MIN_FEATURES))[..., :c_out]

    return lax.platform_dependent(x, w, cpu=padded, default=plain)


def weight_gradient(x: jax.Array, g: jax.Array, stride: tuple[int, int]) -> jax.Array:
    """``dL/dw[u, v, c, o] = sum_{n,i,j} x[n, i*sh + u, j*sw + v, c] g[n, i, j, o]``.

    Args:
        x: the input, already padded (and cropped to the rows the forward pass reached),
            ``(N, H', W', C_in)``.
        g: ``dL/dy``, ``(N, Ho, Wo, C_out)``.
        stride: ``(sh, sw)``, applied as the dilation of ``g``.

    Returns:
        ``(KH, KW, C_in, C_out)`` with ``KH = H' - (Ho - 1) * sh``.
    """

    def plain(x, g):
        # One correlation with C_in as its batch and N as its feature axis.
        dims = ("CHWN", "IHWO", "HWNC")
        return lax.conv_general_dilated(
            x, g, (1, 1), "VALID", rhs_dilation=stride, dimension_numbers=dims
        )

    n, c_out = g.shape[0], g.shape[3]
    if max(n, c_out) >= YNNPACK_MIN_FEATURES:
        return plain(x, g)

    def padded(x, g):
        if n == 16:  # 20 images were measured faster than 17 channels at batch 16
            return plain(_pad_axis(x, 0, 20), _pad_axis(g, 0, 20))
        return plain(x, _pad_axis(g, 3, YNNPACK_MIN_FEATURES))[..., :c_out]

    return lax.platform_dependent(x, g, cpu=padded, default=plain)
