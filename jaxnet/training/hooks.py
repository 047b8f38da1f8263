"""What the loop does between steps, one small object per job, called in turn.

At a *sync point* (a multiple of some hook's ``every``, the run's last iteration, or a stop
signal, which :class:`StopSignals` turns into a request) the loop calls each hook with the
:class:`~jaxnet.training.state.Run`, and each hook checks whether the moment is its own.
:func:`jaxnet.training.fit` calls :class:`StopOnNaN` first, so that a diverged run never
overwrites its last good checkpoint, then :class:`Evaluation`, :class:`History`,
:class:`ProgressBar` and :class:`Checkpoints`.
"""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import jax

from jaxnet.checkpoint import CheckpointManager
from jaxnet.step import EvalResult
from jaxnet.training.config import FitConfig
from jaxnet.training.state import Run

HISTORY_FIELDS = (
    "iteration",
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "elapsed_s",
)
"""The columns of every history row (and of ``history.csv``), before the per-layer ones."""

AVERAGED_FIELDS = ("val_loss_averaged", "val_accuracy_averaged")
"""The validation columns of the weights' moving average, in rows of runs that keep one."""

DIAGNOSTICS = ("grad_norm", "update_ratio")
"""The per-layer columns, ``grad_norm/NAME`` and ``update_ratio/NAME`` for each parametrised
layer (:func:`jaxnet.step.layer_diagnostics`: the last step's values at that row)."""


class DivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration."""


class Hook:
    """One job between steps. ``every``: the loop syncs at its multiples (0: never for it)."""

    every = 0

    def start(self, run: Run) -> None:
        """Called once before the first step."""

    def __call__(self, run: Run, last: bool) -> None:
        """Called at each sync point; ``last``: the run's final iteration."""

    def close(self) -> None:
        """Called once when the loop ends, however it ends."""


class StopOnNaN(Hook):
    """Stop the run when a loss was not finite, naming the iteration and the kept checkpoint."""

    def __init__(self, learning_rate: float, checkpoints: CheckpointManager | None) -> None:
        self.learning_rate, self.checkpoints = learning_rate, checkpoints

    def __call__(self, run: Run, last: bool) -> None:
        bad = int(run.state.bad_iteration)
        if bad < 0:
            return
        kept = ""
        if self.checkpoints is not None and self.checkpoints.latest():
            kept = f"; the last good checkpoint is kept in {self.checkpoints.directory}"
        raise DivergedError(
            f"the loss became NaN or infinite at iteration {bad + 1}: lower the learning rate "
            f"(now {self.learning_rate:g}){kept}"
        )


class Evaluation(Hook):
    """Evaluate the validation set at history rows every ``eval_every`` iterations, and last.

    A run that keeps a moving average of its weights has both evaluated: the weights, then
    the average.
    """

    def __init__(
        self, evaluate: Callable[[Any], EvalResult], log_every: int, eval_every: int
    ) -> None:
        self.evaluate, self.log_every, self.eval_every = evaluate, log_every, eval_every
        self.latest: tuple[int, EvalResult, EvalResult | None] | None = None

    def __call__(self, run: Run, last: bool) -> None:
        i = run.iteration
        if last or (i % self.log_every == 0 and i % self.eval_every == 0):
            averaged = run.state.averaged_params
            self.latest = (
                i,
                self.evaluate(run.state.params),
                None if averaged is None else self.evaluate(averaged),
            )

    def result_at(self, iteration: int) -> tuple[EvalResult | None, EvalResult | None]:
        """The evaluations of the weights and of their average made at ``iteration``."""
        if self.latest and self.latest[0] == iteration:
            return self.latest[1], self.latest[2]
        return None, None


class History(Hook):
    """Append a history row every ``every`` iterations and last; hand the history to a callback.

    ``layer_names``: the parametrised layers, in the order of ``state.diagnostics``' columns.
    """

    def __init__(
        self,
        config: FitConfig,
        steps_per_epoch: int,
        evaluation: Evaluation | None,
        on_row: Callable[[list[dict[str, float]]], None] | None = None,
        layer_names: Sequence[str] = (),
    ) -> None:
        self.every, self.config, self.steps_per_epoch = config.log_every, config, steps_per_epoch
        self.evaluation, self.on_row = evaluation, on_row
        self.layer_names = tuple(layer_names)
        self.schedule = config.learning_rate_schedule()

    def __call__(self, run: Run, last: bool) -> None:
        i = run.iteration
        if not (last or i % self.every == 0):
            return
        loss, accuracy = run.state.averages(i, self.config.ema_decay)
        val, averaged = self.evaluation.result_at(i) if self.evaluation else (None, None)
        learning_rate = float(self.schedule(i - 1))
        values = (i, i / self.steps_per_epoch, loss, accuracy, *_loss_and_accuracy(val))
        row = dict(zip(HISTORY_FIELDS, (*values, learning_rate, run.train_time_s), strict=True))
        if run.state.averaged_params is not None:
            row.update(zip(AVERAGED_FIELDS, _loss_and_accuracy(averaged), strict=True))
        diagnostics = jax.device_get(run.state.diagnostics).tolist()
        for kind, per_layer in zip(DIAGNOSTICS, diagnostics, strict=True):
            row.update(zip([f"{kind}/{name}" for name in self.layer_names], per_layer, strict=True))
        run.history.append(row)
        if self.on_row is not None:
            self.on_row(run.history)


def _loss_and_accuracy(result: EvalResult | None) -> tuple[float, float]:
    return (result.loss, result.accuracy) if result else (math.nan, math.nan)


class ProgressBar(Hook):
    """A tqdm bar over the iterations, with the latest row's averages and validation accuracy."""

    def __init__(self, total: int, every: int, enabled: bool = True) -> None:
        self.total, self.every, self.enabled = total, every, enabled
        self.bar: Any = None

    def start(self, run: Run) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=self.total,
            initial=run.iteration,
            disable=not self.enabled,
            unit="it",
            dynamic_ncols=True,
        )

    def __call__(self, run: Run, last: bool) -> None:
        if not run.history or run.history[-1]["iteration"] != run.iteration:
            return
        row = run.history[-1]
        postfix = {"loss": f"{row['train_loss']:.3f}", "acc": f"{row['train_accuracy']:.3f}"}
        if not math.isnan(row["val_accuracy"]):
            postfix["val_acc"] = f"{row['val_accuracy']:.3f}"
        if not math.isnan(row.get("val_accuracy_averaged", math.nan)):
            postfix["val_acc_avg"] = f"{row['val_accuracy_averaged']:.3f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(run.iteration - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Checkpoints(Hook):
    """Save the whole run every ``every`` iterations, at the end and at a stop signal; resume.

    In a multi-process run only process 0 saves; every process restores from the same folder
    (on a file system they share).
    """

    def __init__(self, manager: CheckpointManager, config: FitConfig) -> None:
        self.manager, self.every, self.config = manager, config.checkpoint_every, config

    def __call__(self, run: Run, last: bool) -> None:
        if jax.process_index() != 0:  # in a multi-process run, process 0 alone writes
            return
        if last or run.interrupted or run.iteration % self.every == 0:
            info = {
                "iteration": run.iteration,
                "history": run.history,
                "train_time_s": run.train_time_s,
                "fit_config": asdict(self.config),
            }
            self.manager.save(run.iteration, jax.device_get(run.state), info)

    def restore(self, fresh: Run) -> Run:
        """The run saved in the newest checkpoint, or ``fresh`` when there is none yet."""
        restored = self.manager.restore(fresh.state)
        if restored is None:
            print(
                f"note: no checkpoint in {self.manager.directory} yet: starting from iteration 0",
                file=sys.stderr,
            )
            return fresh
        state, saved = restored
        history = list(saved["history"])
        return Run(state, int(saved["iteration"]), history, float(saved.get("train_time_s", 0)))


class StopSignals:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a request the loop honours after its step.

    SIGTERM, what a scheduler (SLURM, Kubernetes, a preemptible VM) sends before it kills, is
    treated as Ctrl-C is. :attr:`signal` records which came first (the command exits with
    ``128 + signal``: 130 for SIGINT, 143 for SIGTERM). A second signal stops at once
    (``KeyboardInterrupt``); files are written atomically (:mod:`jaxnet.io`), so a save it cuts
    short leaves the older checkpoints intact.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal = 0  # none yet
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        def handler(signum: int, frame: Any) -> None:
            if self.signal:  # a second signal: stop at once
                raise KeyboardInterrupt
            self.signal = signum

        try:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread: no handler, signals behave as usual
            self._previous = {}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
