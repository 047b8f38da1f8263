"""Independent NumPy references for every layer: the defining sums, forward and backward.

Nothing here calls JAX: these are the definitions written out with loops over kernel or window
offsets, in float64, so a test that compares a layer with them compares two independent codes.
"""

from __future__ import annotations

import numpy as np


def pair(v):
    """An int ``k`` as ``(k, k)``; a pair as a tuple."""
    return (v, v) if isinstance(v, int) else tuple(v)


def _windows(size: int, k: int, s: int) -> int:
    return (size - k) // s + 1


def conv(x, w, b, padding, stride):
    """``y[n, i, j, o] = b[o] + sum_{u,v,c} xp[n, i*sh + u, j*sw + v, c] w[u, v, c, o]``."""
    x, w, b = (np.asarray(a, np.float64) for a in (x, w, b))
    (ph, pw), (sh, sw) = pair(padding), pair(stride)
    kh, kw = w.shape[:2]
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    ho, wo = _windows(xp.shape[1], kh, sh), _windows(xp.shape[2], kw, sw)
    y = np.zeros((x.shape[0], ho, wo, w.shape[3])) + b
    for u in range(kh):
        for v in range(kw):
            y += xp[:, u : u + (ho - 1) * sh + 1 : sh, v : v + (wo - 1) * sw + 1 : sw, :] @ w[u, v]
    return y


def conv_vjp(x, w, g, padding, stride):
    """``(dL/dx, dL/dw, dL/db)`` of :func:`conv` for the cotangent ``g``, by scattering."""
    x, w, g = (np.asarray(a, np.float64) for a in (x, w, g))
    (ph, pw), (sh, sw) = pair(padding), pair(stride)
    kh, kw = w.shape[:2]
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    ho, wo = g.shape[1:3]
    for u in range(kh):
        for v in range(kw):
            rows = slice(u, u + (ho - 1) * sh + 1, sh)
            cols = slice(v, v + (wo - 1) * sw + 1, sw)
            dxp[:, rows, cols, :] += g @ w[u, v].T
            dw[u, v] = np.einsum("nijc,nijo->co", xp[:, rows, cols, :], g)
    dx = dxp[:, ph : ph + x.shape[1], pw : pw + x.shape[2], :]
    return dx, dw, g.sum(axis=(0, 1, 2))


def maxpool(x, window, stride):
    """Window maxima and, for each window, the row-major offset of its first maximum."""
    x = np.asarray(x, np.float64)
    (kh, kw), (sh, sw) = pair(window), pair(stride)
    n, h, w_, c = x.shape
    ho, wo = _windows(h, kh, sh), _windows(w_, kw, sw)
    y = np.empty((n, ho, wo, c))
    first = np.empty((n, ho, wo, c), np.int64)
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :].reshape(n, kh * kw, c)
            y[:, i, j] = patch.max(axis=1)
            first[:, i, j] = patch.argmax(axis=1)  # numpy's argmax returns the first maximum
    return y, first


def maxpool_vjp(x, g, window, stride):
    """``dL/dx`` of :func:`maxpool`: each window's ``g`` added at its first maximum."""
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    kw, (sh, sw) = pair(window)[1], pair(stride)
    _, first = maxpool(x, window, stride)
    dx = np.zeros_like(x)
    n, ho, wo, c = g.shape
    nn, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    for i in range(ho):
        for j in range(wo):
            u, v = np.divmod(first[:, i, j], kw)
            np.add.at(dx, (nn, i * sh + u, j * sw + v, cc), g[:, i, j])
    return dx


def dense(x, w, b):
    """``x`` flattened to ``(N, D)``, times ``w.T``, plus ``b``."""
    x, w, b = (np.asarray(a, np.float64) for a in (x, w, b))
    return x.reshape(x.shape[0], -1) @ w.T + b


def dense_vjp(x, w, g):
    """Eqs. 17, 21, 24: ``(g W, g^T X, g^T 1)``, ``dL/dx`` in the shape of ``x``."""
    x, w, g = (np.asarray(a, np.float64) for a in (x, w, g))
    x2 = x.reshape(x.shape[0], -1)
    return (g @ w).reshape(x.shape), g.T @ x2, g.sum(axis=0)


def softmax_cross_entropy(logits, labels, smoothing=0.0):
    """Mean over the batch of ``-sum_k t_k log softmax(logits)_k``, and the softmax itself.

    ``t = (1 - smoothing) onehot(label) + smoothing / K``: the report's loss for smoothing 0.
    """
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    t = _targets(z.shape, labels, smoothing)
    return -(t * log_p).sum(axis=1).mean(), np.exp(log_p)


def _targets(shape, labels, smoothing):
    n, k = shape
    t = np.full((n, k), smoothing / k)
    t[np.arange(n), np.asarray(labels)] += 1.0 - smoothing
    return t


def softmax_cross_entropy_grad(logits, labels, smoothing=0.0):
    """Eq. 29: ``(softmax(z) - t) / N``, ``t`` the (smoothed) one-hot targets."""
    _, p = softmax_cross_entropy(logits, labels)
    return (p - _targets(p.shape, labels, smoothing)) / p.shape[0]
