"""2-D max pooling (NHWC, no padding) with its analytic backward rule.

Ties: the gradient of a window goes to its *first* maximum in row-major order within the window
(top row first, left to right), as the seed's MATLAB code and PyTorch do. After a ReLU many
windows hold several zeros, so this choice matters; it is the same in the forward pass (the
autodiff twin routes ties the same way) and in the custom rule.

Speed: when the windows tile the input (``window == stride``, the seed's 2x2/2), the windows
are read from one reshape to ``(N, Ho, kh, Wo, kw, C)`` and the backward rule is a single
broadcast compare-and-select back into that shape: no strided slices, no ``lax.pad`` per
window offset. The residual is the int32 index of each window's first maximum. Other windows
keep the general path (strided views, one ``lax.pad`` per offset).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxnet._validate import IntOrPair, int_pair, window_outputs
from jaxnet.layers._checks import check_float, check_rank


def _check_pool(x, window: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """Check ``x``; the output ``(Ho, Wo)``."""
    check_float("x", x)
    check_rank("x", x, 4, "(N, H, W, C)")
    return window_outputs("maxpool2d", x.shape[1:3], window, stride=stride)


def _window_slices(x, window, stride, out):
    """The ``KH * KW`` strided views ``x[:, u::sh, v::sw]`` (each ``(N, Ho, Wo, C)``), row-major.

    Tiling windows (``window == stride``) are cut from one reshape of ``x`` (rows and columns
    past the last whole window dropped); others are strided slices.
    """
    n, _, _, c = x.shape
    (kh, kw), (sh, sw) = window, stride
    if window == stride:
        tiles = x[:, : out[0] * kh, : out[1] * kw, :].reshape(n, out[0], kh, out[1], kw, c)
        return [tiles[:, :, u, :, v, :] for u in range(kh) for v in range(kw)]
    views = []
    for u in range(kh):
        for v in range(kw):
            start = (0, u, v, 0)
            limit = (n, u + (out[0] - 1) * sh + 1, v + (out[1] - 1) * sw + 1, c)
            views.append(lax.slice(x, start, limit, (1, sh, sw, 1)))
    return views


def _max_and_argmax(x, window, stride):
    """Window maxima ``(N, Ho, Wo, C)`` and the row-major index of each window's first maximum.

    A later element replaces the running maximum only when strictly greater, so the first of
    equal maxima wins.
    """
    x = jnp.asarray(x)  # as custom_vjp does with NumPy input
    out = _check_pool(x, window, stride)
    views = _window_slices(x, window, stride, out)
    best = views[0]
    index = jnp.zeros(best.shape, jnp.int32)
    for k, view in enumerate(views[1:], start=1):
        greater = view > best
        best = jnp.where(greater, view, best)
        index = jnp.where(greater, k, index)
    return best, index


def maxpool2d_forward(x: jax.Array, window: IntOrPair = 2, stride: IntOrPair = 2) -> jax.Array:
    """Forward pass of max pooling, with no custom rule (JAX can differentiate it).

    Args:
        x: input ``(N, H, W, C)``, floating point.
        window: window size, an int or ``(kh, kw)``, each >= 1.
        stride: an int or ``(sh, sw)``, each >= 1.

    Returns:
        ``(N, Ho, Wo, C)`` with ``Ho = (H - kh) // sh + 1`` (likewise ``Wo``); rows and
        columns past the last whole window are dropped.

    Raises:
        ValueError: ``x`` not of rank 4, window or stride < 1, or a window larger than ``x``.
        TypeError: ``x`` not floating point, or a non-int window or stride.
    """
    return _max_and_argmax(x, int_pair("window", window, 1), int_pair("stride", stride, 1))[0]


def maxpool2d(x: jax.Array, window: IntOrPair = 2, stride: IntOrPair = 2) -> jax.Array:
    """Max pooling whose gradient goes to the first maximum of each window (row-major).

    Arguments, output shape and errors: as :func:`maxpool2d_forward`.
    """
    return _maxpool2d(x, int_pair("window", window, 1), int_pair("stride", stride, 1))


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _maxpool2d(x, window, stride):
    return maxpool2d_forward(x, window, stride)


def _maxpool2d_fwd(x, window, stride):
    y, index = _max_and_argmax(x, window, stride)
    return y, (index, x.shape)


def _maxpool2d_bwd(window, stride, residuals, g):
    """Backward rule of max pooling: route each window's ``dL/dy`` to its first maximum.

    ``dL/dx[n, i*sh + u, j*sw + v, c] += g[n, i, j, c]`` where ``(u, v)`` is the position of the
    window's first maximum, 0 elsewhere.

    - Tiling windows (``window == stride``): every input element lies in at most one window,
      so ``dL/dx`` viewed as ``(N, Ho, kh, Wo, kw, C)`` is ``g`` broadcast over ``(kh, kw)``
      where ``index == u * kw + v`` and 0 elsewhere; rows and columns past the last window
      get 0.
    - Otherwise each window offset ``k = u * kw + v`` contributes ``g`` masked by
      ``index == k``, spread back to the input grid by ``lax.pad`` (``s - 1`` zeros between
      entries, offset ``(u, v)``); overlapping windows (stride < window) add up.
    """
    index, x_shape = residuals
    n, h, w, c = x_shape
    (kh, kw), (sh, sw) = window, stride
    out = g.shape[1:3]
    zero = jnp.zeros((), g.dtype)
    if window == stride:
        shape = (1, 1, kh, 1, kw, 1)
        offset = lax.broadcasted_iota(jnp.int32, shape, 2) * kw
        offset = offset + lax.broadcasted_iota(jnp.int32, shape, 4)
        hit = index[:, :, None, :, None, :] == offset
        dx = jnp.where(hit, g[:, :, None, :, None, :], zero)
        dx = dx.reshape(n, out[0] * kh, out[1] * kw, c)
        config = ((0, 0, 0), (0, h - out[0] * kh, 0), (0, w - out[1] * kw, 0), (0, 0, 0))
        return (lax.pad(dx, zero, config),)
    dx = jnp.zeros(x_shape, g.dtype)
    for u in range(kh):
        for v in range(kw):
            picked = jnp.where(index == u * kw + v, g, zero)
            config = (
                (0, 0, 0),
                (u, h - u - (out[0] - 1) * sh - 1, sh - 1),
                (v, w - v - (out[1] - 1) * sw - 1, sw - 1),
                (0, 0, 0),
            )
            dx = dx + lax.pad(picked, zero, config)
    return (dx,)


_maxpool2d.defvjp(_maxpool2d_fwd, _maxpool2d_bwd)
