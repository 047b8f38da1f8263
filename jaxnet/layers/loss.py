"""Softmax cross-entropy loss with its analytic backward rule (report eqs. 26, 29)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet.layers._checks import check_float, check_int, check_rank


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


def _loss_and_log_softmax(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Check the arguments; return the mean loss and the ``(N, K)`` log-softmax it came from."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)  # as custom_vjp does with NumPy
    check_float("logits", logits)
    check_int("labels", labels)
    check_rank("logits", logits, 2, "(N, K)")
    check_rank("labels", labels, 1, "(N,)")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must have shape ({logits.shape[0]},) to match logits of shape "
            f"{tuple(logits.shape)}, got shape {tuple(labels.shape)}"
        )
    log_p = _log_softmax(logits)
    return -jnp.mean(_picked(log_p, labels)), log_p


def softmax_cross_entropy_forward(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean over the batch of ``-log softmax(logits)[label]`` (eq. 26), with no custom rule.

    Args:
        logits: ``(N, K)`` floating point.
        labels: ``(N,)`` integer class indices in ``[0, K)``.

    Returns:
        The scalar mean loss, in the dtype of ``logits``. A label outside ``[0, K)`` gives NaN.

    Raises:
        ValueError: wrong ranks, or ``labels`` does not have one entry per row of ``logits``.
        TypeError: ``logits`` is not floating point or ``labels`` is not integer.
    """
    return _loss_and_log_softmax(logits, labels)[0]


@jax.custom_vjp
def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy loss (eq. 26) whose gradient is eq. 29.

    Args:
        logits: ``(N, K)`` floating point.
        labels: ``(N,)`` integer class indices in ``[0, K)``.

    Returns:
        The scalar mean loss over the batch. Finite for logits up to 1e4 in float32.
    """
    return softmax_cross_entropy_forward(logits, labels)


def _softmax_cross_entropy_fwd(logits, labels):
    loss, log_p = _loss_and_log_softmax(logits, labels)
    return loss, (log_p, labels)


def _softmax_cross_entropy_bwd(residuals, g):
    """Backward rule, eq. 29: ``dL/dlogits = g * (softmax(logits) - onehot(labels)) / N``.

    ``g`` is the scalar cotangent of the mean loss. ``softmax`` is ``exp(log_softmax)``, kept
    from the forward pass, so no large exponent is ever formed. The labels are integers and get
    no cotangent (``None``).
    """
    log_p, labels = residuals
    n, k = log_p.shape
    onehot = jax.nn.one_hot(labels, k, dtype=log_p.dtype)
    return (g * (jnp.exp(log_p) - onehot) / n, None)


softmax_cross_entropy.defvjp(_softmax_cross_entropy_fwd, _softmax_cross_entropy_bwd)
