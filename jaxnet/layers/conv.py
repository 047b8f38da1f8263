"""2-D convolution (cross-correlation) with zero padding and stride, and its analytic rule.

Layout: activations NHWC ``(N, H, W, C_in)``, kernels HWIO ``(KH, KW, C_in, C_out)`` (the seed's
``5x5x1x16``), bias ``(C_out,)``. The forward pass is the cross-correlation::

    y[n, i, j, o] = b[o] + sum_{u, v, c} xp[n, i*sh + u, j*sw + v, c] * w[u, v, c, o]

where ``xp`` is ``x`` zero-padded by ``(ph, pw)`` on each side. Output size per dimension:
``Ho = floor((H + 2 ph - KH) / sh) + 1``.

Speed (CPU). XLA (jax 0.10) runs a convolution on its YNNPACK kernels only when
``max(C_in, C_out) > 16`` (its feature axes), else on its generic Eigen kernel. Two places
pad with zeros, which adds nothing to the results, to get there where that was measured to
pay: the forward pass of a one-channel input (``C_out`` to 17; 3-4x faster, for the autodiff
twin as well), and ``dL/dw`` at batch <= 16 (see :func:`_conv2d_bwd`). Padding the other
forward passes too was faster for the analytic rules but slowed the autodiff twin's derived
backward by up to 1.5x (odd-channel convolutions), so it was left out. Figures and
everything else tried: ``experiments/benchmark.py``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxnet.layers._checks import check_float, check_rank, check_same_dtype, pair

_NHWC = ("NHWC", "HWIO", "NHWC")


def _check_conv(x, w, b, padding: tuple[int, int], stride: tuple[int, int]) -> None:
    for name, a in (("x", x), ("w", w), ("b", b)):
        check_float(name, a)
    check_same_dtype(x=x, w=w, b=b)
    check_rank("x", x, 4, "(N, H, W, C_in)")
    check_rank("w", w, 4, "(KH, KW, C_in, C_out)")
    if w.shape[2] != x.shape[3]:
        raise ValueError(
            f"w must have C_in = {x.shape[3]} input channels to match x of shape "
            f"{tuple(x.shape)}, got w of shape {tuple(w.shape)}"
        )
    if b.shape != (w.shape[3],):
        raise ValueError(
            f"b must have shape ({w.shape[3]},) to match w of shape {tuple(w.shape)}, "
            f"got shape {tuple(b.shape)}"
        )
    for dim, size, k, p in (
        ("H", x.shape[1], w.shape[0], padding[0]),
        ("W", x.shape[2], w.shape[1], padding[1]),
    ):
        if size + 2 * p < k:
            raise ValueError(
                f"padding {padding} leaves no output: x has {dim} = {size}, padded to "
                f"{size + 2 * p}, smaller than the kernel's {k}"
            )


def _conv(x, w, padding, stride):
    """The forward correlation; a one-channel input gets ``C_out`` padded to 17 (YNNPACK)."""
    c_out = w.shape[3]
    if w.shape[2] == 1 and c_out <= 16:
        w = jnp.pad(w, ((0, 0), (0, 0), (0, 0), (0, 17 - c_out)))
    y = lax.conv_general_dilated(
        x, w, window_strides=stride, padding=[(p, p) for p in padding], dimension_numbers=_NHWC
    )
    return y[..., :c_out] if y.shape[3] != c_out else y


def conv2d_forward(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array,
    padding: int | tuple[int, int] = 0,
    stride: int | tuple[int, int] = 1,
) -> jax.Array:
    """Forward pass of the convolution, with no custom rule (JAX can differentiate it).

    Args:
        x: input ``(N, H, W, C_in)``, floating point.
        w: kernel ``(KH, KW, C_in, C_out)``.
        b: bias ``(C_out,)``.
        padding: zeros added on each side, an int or ``(ph, pw)``, each >= 0.
        stride: an int or ``(sh, sw)``, each >= 1.

    Returns:
        ``(N, Ho, Wo, C_out)`` with ``Ho = (H + 2 ph - KH) // sh + 1`` (likewise ``Wo``).

    Raises:
        ValueError: wrong ranks, channels of ``w`` and ``x`` or ``b`` and ``w`` disagree,
            negative padding, stride < 1, or padding that leaves no output.
        TypeError: a float where an int is required (padding, stride) or an integer array.
    """
    padding = pair("padding", padding, 0)
    stride = pair("stride", stride, 1)
    x, w, b = jnp.asarray(x), jnp.asarray(w), jnp.asarray(b)  # as custom_vjp does with NumPy
    _check_conv(x, w, b, padding, stride)
    return _conv(x, w, padding, stride) + b


def conv2d(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array,
    padding: int | tuple[int, int] = 0,
    stride: int | tuple[int, int] = 1,
) -> jax.Array:
    """2-D convolution whose gradient is the analytic rule (transposed convolutions).

    Args:
        x: input ``(N, H, W, C_in)``, floating point.
        w: kernel ``(KH, KW, C_in, C_out)``.
        b: bias ``(C_out,)``.
        padding: zeros added on each side, an int or ``(ph, pw)``.
        stride: an int or ``(sh, sw)``.

    Returns:
        ``(N, Ho, Wo, C_out)``; see :func:`conv2d_forward` for sizes and errors.
    """
    return _conv2d(x, w, b, pair("padding", padding, 0), pair("stride", stride, 1))


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv2d(x, w, b, padding, stride):
    return conv2d_forward(x, w, b, padding, stride)


def _conv2d_fwd(x, w, b, padding, stride):
    return conv2d_forward(x, w, b, padding, stride), (x, w)


def _conv2d_bwd(padding, stride, residuals, g):
    """Backward rule of the convolution; ``g = dL/dy`` has shape ``(N, Ho, Wo, C_out)``.

    Per spatial dimension let ``k`` be the kernel size, ``p`` the padding, ``s`` the stride and
    ``r = (H + 2p - k) mod s`` the rows the forward pass never reached.

    - ``dL/dx`` is the transposed convolution: ``g`` dilated by ``s`` (``s - 1`` zeros between
      its entries), padded by ``(k - 1 - p, k - 1 - p + r)``, correlated with the kernel flipped
      in both spatial axes and with ``C_in`` and ``C_out`` swapped. Shape ``(N, H, W, C_in)``.
    - ``dL/dw[u, v, c, o] = sum_{n,i,j} xp[n, i*s + u, j*s + v, c] g[n, i, j, o]``: the
      correlation of the padded input with ``g`` dilated by ``s``, the batch axis contracted.
      Done as one convolution with ``C_in`` as its batch and ``N`` as its feature axis; the far
      padding ``p - r`` drops the ``r`` unreached rows. Shape ``(KH, KW, C_in, C_out)``.
    - ``dL/db[o] = sum_{n,i,j} g[n, i, j, o]``. Shape ``(C_out,)``.
    """
    x, w = residuals
    ks = w.shape[:2]
    rest = [(x.shape[1 + d] + 2 * padding[d] - ks[d]) % stride[d] for d in range(2)]
    w_flipped = jnp.flip(w, axis=(0, 1)).transpose(0, 1, 3, 2)
    dx = lax.conv_general_dilated(
        g,
        w_flipped,
        window_strides=(1, 1),
        padding=[(ks[d] - 1 - padding[d], ks[d] - 1 - padding[d] + rest[d]) for d in range(2)],
        lhs_dilation=stride,
        dimension_numbers=_NHWC,
    )
    # XLA runs this correlation on YNNPACK only if max(N, C_out) > 16 (N is its feature
    # axis). Below that, zero images pad a batch of 16 to 20 (the fastest there), and zero
    # channels pad a smaller batch's C_out to 17; neither adds anything to dw.
    n, c_out = g.shape[0], g.shape[3]
    x_dw, g_dw = x, g
    if max(n, c_out) <= 16 and n == 16:
        x_dw = jnp.pad(x, [(0, 20 - n)] + [(0, 0)] * 3)
        g_dw = jnp.pad(g, [(0, 20 - n)] + [(0, 0)] * 3)
    elif max(n, c_out) <= 16:
        g_dw = jnp.pad(g, [(0, 0)] * 3 + [(0, 17 - c_out)])
    dw = lax.conv_general_dilated(
        x_dw,
        g_dw,
        window_strides=(1, 1),
        padding=[(padding[d], padding[d] - rest[d]) for d in range(2)],
        rhs_dilation=stride,
        dimension_numbers=("CHWN", "IHWO", "HWNC"),
    )[..., :c_out]
    db = jnp.sum(g, axis=(0, 1, 2))
    return dx, dw, db


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
