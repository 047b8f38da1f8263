"""Rectified linear unit with its analytic backward rule (report eq. 25)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet.layers._checks import check_float


def relu_forward(x: jax.Array) -> jax.Array:
    """Forward pass ``max(x, 0)``, elementwise, with no custom rule.

    Written as ``where(x > 0, x, 0)``, not ``maximum(x, 0)``: JAX differentiates ``maximum`` at a
    tie as 0.5 (half to each side), while the analytic rule (eq. 25) takes ``step(0) = 0``. With
    ``where`` the derivative JAX finds is 1 for ``x > 0`` and 0 elsewhere, exactly the rule's, so
    the autodiff twin agrees with it on real images, whose convolutions give exact zeros.

    Args:
        x: floating-point array of any shape.

    Returns:
        ``max(x, 0)``, the shape and dtype of ``x``.

    Raises:
        TypeError: ``x`` is not floating point.
    """
    x = jnp.asarray(x)  # as custom_vjp does with NumPy input
    check_float("x", x)
    return jnp.where(x > 0, x, jnp.zeros((), x.dtype))


@jax.custom_vjp
def relu(x: jax.Array) -> jax.Array:
    """ReLU ``max(x, 0)`` whose gradient is ``dL/dy * step(x)`` with ``step(0) = 0`` (eq. 25).

    Argument, output and error: as :func:`relu_forward`.
    """
    return relu_forward(x)


def _relu_fwd(x):
    return relu_forward(x), x


def _relu_bwd(x, g):
    """Backward rule of ReLU, eq. 25: ``dL/dx = dL/dy * step(x)``.

    ``step(x)`` is 1 where ``x > 0`` and 0 elsewhere; at ``x = 0`` the derivative is taken as 0
    (a subgradient), which is also what the seed's code does.
    """
    return (jnp.where(x > 0, g, jnp.zeros((), g.dtype)),)


relu.defvjp(_relu_fwd, _relu_bwd)
