"""The seed's momentum scheme (report eqs. 30-31, with the assignment's weight decay) for optax.

Any other ``optax.GradientTransformation`` can be used in its place in
:func:`jaxnet.make_train_step`.
"""

from __future__ import annotations

import math
import numbers

import optax


def _real(name: str, value: object) -> float:
    """``value`` as a Python float: a Python, NumPy or 0-d array real number, not a bool."""
    is_scalar = isinstance(value, numbers.Real) or getattr(value, "shape", None) == ()
    if isinstance(value, bool) or not is_scalar:
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _non_negative(name: str, value: object) -> float:
    value = _real(name, value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite float >= 0, got {value}")
    return value


def momentum(
    learning_rate: float | optax.Schedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """The seed's momentum with weight decay, for every parameter ``w`` with gradient ``g``::

        m <- mu * m + (1 - mu) * g            (eq. 30: an exponential moving average, m_0 = 0)
        w <- w - alpha * (m + lambda * w)     (eq. 31, plus weight decay lambda)

    That is ``optax.chain(optax.ema(mu, debias=False), optax.add_decayed_weights(lambda),
    optax.scale_by_learning_rate(alpha))``; NOT ``optax.sgd(alpha, momentum=mu)``, which
    accumulates ``m = g + mu * m`` (no ``1 - mu`` factor: steps ``1 / (1 - mu)`` times larger).
    The hyperparameters are Python floats baked into the update (weakly typed, so they keep each
    parameter's dtype and never cause a retrace); a schedule is evaluated inside the jitted step
    from the step count held in the optimizer state, so a changing learning rate does not
    retrace either.

    Args:
        learning_rate: ``alpha``, a float >= 0, or an optax schedule ``step -> alpha`` (the
            count starts at 0 on the first update).
        momentum: ``mu`` in ``[0, 1)``; 0 gives plain SGD with weight decay.
        weight_decay: ``lambda`` >= 0, the L2 penalty's coefficient (decoupled from ``m``, as in
            the seed: it is added after the moving average).
        nesterov: step along the look-ahead ``mu m + (1 - mu) g`` (with the new ``m``) instead
            of ``m``: optax's ``trace(mu, nesterov=True)`` scaled by ``1 - mu`` (an option, not
            the seed's rule).

    Returns:
        An ``optax.GradientTransformation``. Its state holds one momentum array per parameter
        (same shapes and dtypes as the params), a step count, and (with a schedule) the
        schedule's count.

    Raises:
        ValueError: a negative or non-finite learning rate or weight decay, or a momentum
            outside ``[0, 1)``.
        TypeError: a hyperparameter that is not a real number (or, for the learning rate, a
            callable).
    """
    if not callable(learning_rate):
        learning_rate = _non_negative("learning_rate", learning_rate)
    mu = _real("momentum", momentum)
    if not 0.0 <= mu < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {mu}")
    average = (
        optax.chain(optax.trace(mu, nesterov=True), optax.scale(1 - mu))
        if nesterov
        else optax.ema(mu, debias=False)
    )
    return optax.chain(
        average,
        optax.add_decayed_weights(_non_negative("weight_decay", weight_decay)),
        optax.scale_by_learning_rate(learning_rate),
    )
