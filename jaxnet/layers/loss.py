"""Softmax cross-entropy loss with its analytic backward rule (report eqs. 26, 29).

With label smoothing ``eps`` the target of each row is ``t = (1 - eps) onehot(c) + eps / K``
instead of ``onehot(c)``: the loss is ``-sum_k t_k log softmax(x)_k`` and eq. 29 becomes
``(softmax(x) - t) / N``. ``eps = 0`` is the report's loss, computed exactly as before.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from jaxnet.layers._checks import check_float, check_int, check_rank, check_shape


def _log_softmax(logits: jax.Array) -> jax.Array:
    """Row-wise ``log softmax`` by the log-sum-exp trick: finite for logits of any size."""
    shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=1, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))


def _picked(log_p: jax.Array, labels: jax.Array) -> jax.Array:
    """``log_p[n, labels[n]]`` for each row; NaN for a label outside ``[0, K)``.

    A label out of range cannot raise inside ``jit`` (its value is not known at trace time), so
    it poisons the loss with NaN, which the training loop's NaN guard reports.
    """
    k = log_p.shape[1]
    valid = (labels >= 0) & (labels < k)
    picked = jnp.take_along_axis(log_p, jnp.clip(labels, 0, k - 1)[:, None], axis=1)[:, 0]
    return jnp.where(valid, picked, jnp.nan)


def _check_smoothing(smoothing: float) -> None:
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)):
        raise TypeError(f"smoothing must be a Python float in [0, 1), got {smoothing!r}")
    if not (0.0 <= smoothing < 1.0 and math.isfinite(smoothing)):
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")


def _loss_and_log_softmax(
    logits: jax.Array, labels: jax.Array, smoothing: float
) -> tuple[jax.Array, jax.Array]:
    """Check the arguments; return the mean loss and the ``(N, K)`` log-softmax it came from."""
    _check_smoothing(smoothing)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)  # as custom_vjp does with NumPy
    check_float("logits", logits)
    check_int("labels", labels)
    check_rank("logits", logits, 2, "(N, K)")
    check_rank("labels", labels, 1, "(N,)")
    check_shape("labels", labels, logits.shape[:1], "logits", logits)
    log_p = _log_softmax(logits)
    per_row = -_picked(log_p, labels)
    if smoothing:
        per_row = (1 - smoothing) * per_row - smoothing * jnp.mean(log_p, axis=1)
    return jnp.mean(per_row), log_p


def softmax_cross_entropy_forward(
    logits: jax.Array, labels: jax.Array, smoothing: float = 0.0
) -> jax.Array:
    """Mean over the batch of ``-log softmax(logits)[label]`` (eq. 26), with no custom rule.

    Args:
        logits: ``(N, K)`` floating point.
        labels: ``(N,)`` integer class indices in ``[0, K)``.
        smoothing: label smoothing ``eps`` in ``[0, 1)``, a Python float (0: none).

    Returns:
        The scalar mean loss, in the dtype of ``logits``. A label outside ``[0, K)`` gives NaN.

    Raises:
        ValueError: wrong ranks, ``labels`` does not have one entry per row of ``logits``, or
            ``smoothing`` outside ``[0, 1)``.
        TypeError: ``logits`` is not floating point or ``labels`` is not integer.
    """
    return _loss_and_log_softmax(logits, labels, smoothing)[0]


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, smoothing: float = 0.0
) -> jax.Array:
    """Softmax cross-entropy loss (eq. 26) whose gradient is eq. 29.

    Arguments, result and errors: as :func:`softmax_cross_entropy_forward`. Finite for logits
    up to 1e4 in float32.
    """
    return softmax_cross_entropy_forward(logits, labels, smoothing)


def _softmax_cross_entropy_fwd(logits, labels, smoothing):
    loss, log_p = _loss_and_log_softmax(logits, labels, smoothing)
    return loss, (log_p, labels)


def _softmax_cross_entropy_bwd(smoothing, residuals, g):
    """Backward rule, eq. 29: ``dL/dlogits = g * (softmax(logits) - t) / N``.

    ``t = onehot(labels)``, or ``(1 - eps) onehot(labels) + eps / K`` with label smoothing.
    ``g`` is the scalar cotangent of the mean loss. ``softmax`` is ``exp(log_softmax)``, kept
    from the forward pass, so no large exponent is ever formed. The labels are integers and get
    no cotangent (``None``).
    """
    log_p, labels = residuals
    n, k = log_p.shape
    target = jax.nn.one_hot(labels, k, dtype=log_p.dtype)
    if smoothing:
        target = (1 - smoothing) * target + smoothing / k
    return (g * (jnp.exp(log_p) - target) / n, None)


softmax_cross_entropy.defvjp(_softmax_cross_entropy_fwd, _softmax_cross_entropy_bwd)
