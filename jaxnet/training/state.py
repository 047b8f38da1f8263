"""What a training run carries: the arrays the step updates, and where the run stands."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet.network import Architecture, init
from jaxnet.training.config import FitConfig


class TrainState(NamedTuple):
    """Everything the jitted step carries from one iteration to the next (all arrays).

    Attributes:
        params: the network's parameters.
        opt_state: the optimizer's state.
        ema: ``(2,)`` moving averages of the batch loss and accuracy (not yet debiased).
        bad_iteration: ``()`` int32, the first iteration whose loss was not finite, or -1.
        diagnostics: ``(2, L)`` float32, the gradient norms (row 0) and update-to-weight
            ratios (row 1) of the ``L`` parametrised layers (:func:`jaxnet.step.layer_diagnostics`)
            at the last step before a history row; NaN before the first.
        averaged_params: the moving average of ``params`` (``config.weight_average``), or
            ``None`` when the run keeps none.
    """

    params: Any
    opt_state: Any
    ema: jax.Array
    bad_iteration: jax.Array
    diagnostics: jax.Array
    averaged_params: Any = None

    def advance(
        self,
        params: Any,
        opt_state: Any,
        metrics: dict,
        iteration: jax.Array,
        *,
        decay: float,
        weight_average: float = 0.0,
    ) -> TrainState:
        """The state after one step: its new arrays, the averages and NaN watch updated.

        The weights' average uses decay ``min(weight_average, (1 + t) / (10 + t))`` at
        iteration ``t`` (as TensorFlow's ``ExponentialMovingAverage(num_updates=t)``), so the
        early average is not dominated by the initial weights.
        """
        batch = jnp.stack([metrics["loss"], metrics["accuracy"]]).astype(jnp.float32)
        ema = decay * self.ema + (1 - decay) * batch
        first_bad = (self.bad_iteration < 0) & ~jnp.isfinite(metrics["loss"])
        bad = jnp.where(first_bad, iteration, self.bad_iteration).astype(jnp.int32)
        diagnostics = self.diagnostics
        if "grad_norm" in metrics:
            diagnostics = jnp.stack([metrics["grad_norm"], metrics["update_ratio"]])
        averaged = self.averaged_params
        if averaged is not None:
            t = iteration.astype(jnp.float32)
            d = jnp.minimum(weight_average, (1 + t) / (10 + t))
            averaged = jax.tree.map(
                lambda a, p: d.astype(p.dtype) * a + (1 - d).astype(p.dtype) * p, averaged, params
            )
        return TrainState(params, opt_state, ema, bad, diagnostics.astype(jnp.float32), averaged)

    def averages(self, iterations_done: int, decay: float) -> tuple[float, float]:
        """The debiased moving averages ``(loss, accuracy)`` after ``iterations_done`` steps.

        ``m_t / (1 - decay**t)``: the first value is the first batch's, and every value a
        weighted mean of the batches seen, so early rows are not pulled towards 0.
        """
        ema = np.asarray(self.ema, np.float64) / (1.0 - decay**iterations_done)
        return float(ema[0]), float(ema[1])


def initial_state(arch: Architecture, config: FitConfig) -> TrainState:
    """A fresh :class:`TrainState` for ``arch``, seeded by ``config.seed``."""
    params = init(arch, jax.random.PRNGKey(config.seed))
    if config.conv_init_gain != 1.0:
        convs = {layer.name for layer in arch.parametrised if layer.kind == "conv"}
        params = {
            name: {**p, "w": p["w"] * config.conv_init_gain} if name in convs else p
            for name, p in params.items()
        }
    return TrainState(
        params=params,
        opt_state=config.optimizer().init(params),
        ema=jnp.zeros(2, jnp.float32),
        bad_iteration=jnp.array(-1, jnp.int32),
        diagnostics=jnp.full((2, len(arch.parametrised)), jnp.nan, jnp.float32),
        # a copy: the step donates the state, and one buffer cannot be donated twice
        averaged_params=jax.tree.map(jnp.copy, params) if config.weight_average > 0 else None,
    )


@dataclass
class Run:
    """Where a run stands: what the loop advances and its hooks read (and what ``fit`` returns).

    Attributes:
        state: the arrays, on the device while training.
        iteration: optimizer steps done.
        history: one dict per history row (see :data:`jaxnet.training.hooks.HISTORY_FIELDS`).
        train_time_s: seconds spent training, over every session of a resumed run.
        interrupted: the signal that stopped the run early (``signal.SIGINT``, Ctrl-C, or
            ``signal.SIGTERM``; a checkpoint was saved first), 0 if none did.
    """

    state: TrainState
    iteration: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    interrupted: int = 0

    @property
    def params(self) -> Any:
        """The network's parameters."""
        return self.state.params

    @property
    def reported_params(self) -> Any:
        """The weights the run reports: the moving average if it keeps one, else ``params``."""
        averaged = self.state.averaged_params
        return self.state.params if averaged is None else averaged
