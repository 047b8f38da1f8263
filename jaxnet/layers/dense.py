"""Fully connected layer: ``y = x W^T + b`` with its analytic backward rule.

The report writes one sample as ``y = W x + b`` with ``W`` of shape ``(M, D)`` (eq. 1). A batch
stacks samples as rows, so ``Y = X W^T + b`` and the three gradients are (eqs. 17, 21, 24, the
batch form of 5, 9, 13)::

    dL/dX = dL/dY W          (N, D)
    dL/dW = dL/dY^T X        (M, D)
    dL/db = dL/dY^T 1        (M,)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxnet.layers._checks import check_floats, check_shape


def dense_forward(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Forward pass of the dense layer, with no custom rule (JAX can differentiate it).

    Args:
        x: input ``(N, ...)``, flattened to ``(N, D)``; floating point.
        w: weights ``(M, D)``, the seed's layout.
        b: bias ``(M,)``.

    Returns:
        ``x @ w.T + b`` of shape ``(N, M)``.

    Raises:
        ValueError: ``x`` has rank 0, or its flattened size, ``w`` or ``b`` disagree.
        TypeError: an argument is not floating point, or the dtypes differ.
    """
    x, w, b = jnp.asarray(x), jnp.asarray(w), jnp.asarray(b)  # as custom_vjp does with NumPy
    check_floats(x=x, w=w, b=b)
    if x.ndim < 1:
        raise ValueError(f"x must have shape (N, ...), got a scalar of shape {tuple(x.shape)}")
    if w.ndim != 2:
        raise ValueError(f"w must have shape (M, D), got shape {tuple(w.shape)}")
    d = math.prod(x.shape[1:])  # D, the features of one sample
    check_shape("w", w, (w.shape[0], d), "x", x)
    check_shape("b", b, w.shape[:1], "w", w)
    return x.reshape(x.shape[0], d) @ w.T + b


@jax.custom_vjp
def dense(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Dense layer ``x @ w.T + b`` whose gradient is the analytic rule (eqs. 17, 21, 24).

    Arguments, output and errors: as :func:`dense_forward`. The gradient with respect to ``x``
    has the shape of ``x``.
    """
    return dense_forward(x, w, b)


def _dense_fwd(x, w, b):
    return dense_forward(x, w, b), (x, w)


def _dense_bwd(residuals, g):
    """Backward rule of the dense layer.

    With ``Y = X W^T + b`` and ``g = dL/dY`` of shape ``(N, M)``:

    - eq. 17: ``dL/dX = g W``, shape ``(N, D)``, reshaped back to the input's ``(N, ...)``;
    - eq. 21: ``dL/dW = g^T X``, shape ``(M, D)`` (sum over the batch of outer products);
    - eq. 24: ``dL/db = g^T 1``, shape ``(M,)`` (sum of ``g`` over the batch).
    """
    x, w = residuals
    x2 = x.reshape(x.shape[0], -1)
    dx = (g @ w).reshape(x.shape)
    dw = g.T @ x2
    db = jnp.sum(g, axis=0)
    return dx, dw, db


dense.defvjp(_dense_fwd, _dense_bwd)
