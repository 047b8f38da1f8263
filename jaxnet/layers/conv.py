"""2-D convolution (cross-correlation) with zero padding and stride, and its analytic rule.

Layout: activations NHWC ``(N, H, W, C_in)``, kernels HWIO ``(KH, KW, C_in, C_out)`` (the seed's
``5x5x1x16``), bias ``(C_out,)``. The forward pass is the cross-correlation::

    y[n, i, j, o] = b[o] + sum_{u, v, c} xp[n, i*sh + u, j*sw + v, c] * w[u, v, c, o]

where ``xp`` is ``x`` zero-padded by ``(ph, pw)`` on each side. Output size per dimension:
``Ho = floor((H + 2 ph - KH) / sh) + 1``.

Where it runs. The rule's three kernels (forward, ``dL/dx``, ``dL/dw``) run on oneDNN in
float32 on the CPU when its extension is loaded (:func:`jaxnet.backends.onednn.pick`), and on
XLA's convolutions everywhere else; the autodiff twin :func:`conv2d_forward` always runs on XLA.
So in float32 on the CPU the rule's forward equals the twin's to float rounding (tested to
1e-5), not bit for bit; in float64, on GPU or TPU, under a mesh or without the extension it is
the twin's function itself.

On XLA's CPU backend the correlations go through :mod:`jaxnet.backends.xla_cpu`, which pads
zero channels (or images) where XLA's fast kernels need them: the forward pass of a
one-channel input (:func:`~jaxnet.backends.xla_cpu.correlate`, for the twin as well) and
``dL/dw`` at small batches (:func:`~jaxnet.backends.xla_cpu.weight_gradient`). What was
tried and measured: ``docs/performance.md``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxnet._validate import IntOrPair, int_pair, window_outputs
from jaxnet.backends import onednn, xla_cpu
from jaxnet.layers._checks import check_floats, check_rank, check_shape


def _checked(x, w, b, padding: tuple[int, int]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``x``, ``w`` and ``b`` as arrays (as custom_vjp makes NumPy input), checked."""
    x, w, b = jnp.asarray(x), jnp.asarray(w), jnp.asarray(b)
    check_floats(x=x, w=w, b=b)
    check_rank("x", x, 4, "(N, H, W, C_in)")
    check_rank("w", w, 4, "(KH, KW, C_in, C_out)")
    kh, kw, _, c_out = w.shape
    check_shape("w", w, (kh, kw, x.shape[3], c_out), "x", x)
    check_shape("b", b, (c_out,), "w", w)
    window_outputs("conv2d", x.shape[1:3], (kh, kw), padding)
    return x, w, b


def _pad_spatial(x: jax.Array, pads: list[tuple[int, int]], dilation=(1, 1)) -> jax.Array:
    """Zero-pad (a negative amount crops) the spatial axes of an NHWC array, after dilating them.

    ``pads`` is ``[(low_h, high_h), (low_w, high_w)]``; ``dilation`` ``(sh, sw)`` first puts
    ``s - 1`` zeros between neighbours.
    """
    spatial = [(lo, hi, s - 1) for (lo, hi), s in zip(pads, dilation, strict=True)]
    return lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *spatial, (0, 0, 0)])


def _conv(x, w, padding, stride):
    """The forward correlation: ``x`` zero-padded explicitly, then a VALID strided correlation.

    Padding outside the convolution, not in its window: XLA's algebraic simplifier aborts the
    process on some small strided convolutions whose window carries the padding (see
    ``docs/xla-aborts.md``); this formulation, and its derivative, compile for every shape.
    """
    xp = _pad_spatial(x, [(p, p) for p in padding])
    return xla_cpu.correlate(xp, w, stride)


def conv2d_forward(
    x: jax.Array, w: jax.Array, b: jax.Array, padding: IntOrPair = 0, stride: IntOrPair = 1
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
    padding, stride = int_pair("padding", padding, 0), int_pair("stride", stride, 1)
    x, w, b = _checked(x, w, b, padding)
    return _conv(x, w, padding, stride) + b


def conv2d(
    x: jax.Array, w: jax.Array, b: jax.Array, padding: IntOrPair = 0, stride: IntOrPair = 1
) -> jax.Array:
    """2-D convolution whose gradient is the analytic rule (transposed convolutions).

    Arguments, output shape and errors: as :func:`conv2d_forward`.
    """
    return _conv2d(x, w, b, int_pair("padding", padding, 0), int_pair("stride", stride, 1))


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv2d(x, w, b, padding, stride):
    """The rule's forward pass: the twin's correlation, or oneDNN's where it runs (float32 on
    the CPU: see the module docstring and :func:`jaxnet.backends.onednn.pick`)."""
    x, w, b = _checked(x, w, b, padding)
    return onednn.pick("forward", _conv, x, w, padding, stride) + b


def _conv2d_fwd(x, w, b, padding, stride):
    return _conv2d(x, w, b, padding, stride), (x, w)


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

    On the CPU in float32 oneDNN computes the same ``dL/dx`` and ``dL/dw``
    (:func:`jaxnet.backends.onednn.pick`).
    """
    x, w = residuals
    dx = onednn.pick("backward_data", _backward_data, g, w, x.shape, padding, stride)
    dw = onednn.pick("backward_weights", _backward_weights, x, g, w.shape, padding, stride)
    db = jnp.sum(g, axis=(0, 1, 2))
    return dx, dw, db


def _rest(size: int, k: int, p: int, s: int) -> int:
    """The rows (or columns) of the padded input the forward pass never reached."""
    return (size + 2 * p - k) % s


def _backward_data(g, w, x_shape, padding, stride):
    """``dL/dx`` (see :func:`_conv2d_bwd`), ``(N, H, W, C_in)`` for ``x_shape``."""
    k = w.shape[:2]
    rest = [_rest(x_shape[1 + d], k[d], padding[d], stride[d]) for d in range(2)]
    # Dilate g by s and pad it by (k-1-p, k-1-p+r) outside the convolution (a negative
    # amount crops), then a VALID correlation with the flipped, transposed kernel. Along a
    # strided axis the padding p is cropped from the result instead (the amount padded is then
    # k-1, never negative): with a dilated g, XLA aborts on the first form for some shapes.
    crop = [padding[d] if stride[d] > 1 else 0 for d in range(2)]
    pads = [(k[d] - 1 - padding[d] + crop[d],) * 2 for d in range(2)]
    g_dilated = _pad_spatial(g, [(lo, hi + rest[d]) for d, (lo, hi) in enumerate(pads)], stride)
    w_flipped = jnp.flip(w, axis=(0, 1)).transpose(0, 1, 3, 2)
    dx = xla_cpu.correlate(g_dilated, w_flipped, (1, 1))
    return dx[:, crop[0] : crop[0] + x_shape[1], crop[1] : crop[1] + x_shape[2]]


def _backward_weights(x, g, w_shape, padding, stride):
    """``dL/dw`` (see :func:`_conv2d_bwd`), ``(KH, KW, C_in, C_out)`` for ``w_shape``."""
    rest = [_rest(x.shape[1 + d], w_shape[d], padding[d], stride[d]) for d in range(2)]
    # x padded by (p, p - r) (the r unreached rows cropped), correlated with g dilated by s.
    x_padded = _pad_spatial(x, [(padding[d], padding[d] - rest[d]) for d in range(2)])
    return xla_cpu.weight_gradient(x_padded, g, stride)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
