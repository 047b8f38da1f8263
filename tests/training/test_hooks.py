"""Each hook of the loop on its own, called with a hand-made Run (the loop: test_loop.py)."""

from __future__ import annotations

import math
import os
import signal

import jax.numpy as jnp
import numpy as np
import pytest
from parallel_worker import tiny

from jaxnet.checkpoint import CheckpointManager
from jaxnet.step import EvalResult
from jaxnet.training import DivergedError, FitConfig, hooks, initial_state
from jaxnet.training.state import Run

CONFIG = FitConfig(
    iterations=40, learning_rate=0.1, batch_size=4, log_every=10, eval_every=20, checkpoint_every=20
)


def a_run(iteration: int = 10, **state_fields) -> Run:
    state = initial_state(tiny(), CONFIG)._replace(**state_fields)
    return Run(state, iteration)


def result(accuracy: float) -> EvalResult:
    return EvalResult(np.zeros(4, np.int64), loss=1.0 - accuracy, accuracy=accuracy)


def accuracies(pair: tuple) -> tuple:
    return tuple(None if r is None else r.accuracy for r in pair)


def test_stop_on_nan_names_the_iteration_and_the_learning_rate():
    hooks.StopOnNaN(0.05, None)(a_run(), last=False)  # bad_iteration -1: nothing happens
    with pytest.raises(
        DivergedError,
        match=r"^the loss became NaN or infinite at iteration 8: "
        r"lower the learning rate \(now 0.05\)$",
    ):
        hooks.StopOnNaN(0.05, None)(a_run(bad_iteration=jnp.int32(7)), last=False)


def test_stop_on_nan_says_where_the_last_good_checkpoint_is(tmp_path):
    manager = CheckpointManager(tmp_path / "ck")
    manager.save(5, {"w": np.zeros(2)})
    with pytest.raises(DivergedError, match=r"the last good checkpoint is kept in .*ck$"):
        hooks.StopOnNaN(0.1, manager)(a_run(bad_iteration=jnp.int32(9)), last=False)
    assert [p.name for p in manager.directory.iterdir()] == [manager.latest().name]


def test_evaluation_runs_at_rows_that_are_multiples_of_eval_every_and_last():
    calls = []
    evaluation = hooks.Evaluation(
        lambda p: calls.append(p) or result(0.5), log_every=10, eval_every=20
    )
    for i, last in ((10, False), (15, False), (20, False), (35, True)):
        evaluation(a_run(i), last)
    assert len(calls) == 2  # iterations 20 and 35 (the last)
    assert accuracies(evaluation.result_at(35)) == (0.5, None)
    assert evaluation.result_at(20) == (None, None)  # only the latest is kept


def test_evaluation_evaluates_the_average_after_the_weights():
    seen = []
    evaluation = hooks.Evaluation(lambda p: seen.append(p) or result(len(seen) / 4), 10, 10)
    averaged = {"marker": jnp.ones(1)}
    evaluation(a_run(10, averaged_params=averaged), last=False)
    assert seen[1] is averaged
    assert accuracies(evaluation.result_at(10)) == (0.25, 0.5)


def test_history_rows_have_every_column_and_reach_the_callback():
    evaluation = hooks.Evaluation(lambda p: result(0.75), log_every=10, eval_every=20)
    received = []
    history = hooks.History(CONFIG, 5, evaluation, received.append, layer_names=("conv1", "dense1"))
    run = a_run(20)
    run.train_time_s = 3.5
    evaluation(run, last=False)
    history(run, last=False)
    history(a_run(15), last=False)  # not a row
    (row,) = run.history
    assert list(row)[: len(hooks.HISTORY_FIELDS)] == list(hooks.HISTORY_FIELDS)
    assert (row["iteration"], row["epoch"], row["elapsed_s"]) == (20, 4.0, 3.5)
    assert (row["val_accuracy"], row["val_loss"]) == (0.75, 0.25)
    per_layer = [k for k in row if "/" in k]
    assert per_layer == [
        f"{k}/{n}" for k in ("grad_norm", "update_ratio") for n in ("conv1", "dense1")
    ]
    assert row["learning_rate"] == pytest.approx(float(CONFIG.learning_rate_schedule()(19)))
    assert received == [run.history]


def test_history_without_evaluation_has_nan_validation_and_averaged_columns():
    history = hooks.History(CONFIG, 5, None, layer_names=("conv1", "dense1"))
    run = a_run(10, averaged_params=initial_state(tiny(), CONFIG).params)
    history(run, last=False)
    row = run.history[0]
    assert math.isnan(row["val_accuracy"]) and math.isnan(row["val_loss"])
    assert all(math.isnan(row[k]) for k in hooks.AVERAGED_FIELDS)


def test_progress_bar_moves_to_the_latest_row(capsys):
    bar = hooks.ProgressBar(total=40, every=10, enabled=True)
    run = a_run(0)
    bar.start(run)
    run.iteration = 10
    run.history.append(
        {"iteration": 10, "train_loss": 0.5, "train_accuracy": 0.25, "val_accuracy": math.nan}
    )
    bar(run, last=False)
    assert bar.bar.n == 10
    assert bar.bar.postfix == "loss=0.500, acc=0.250"
    run.iteration = 12  # no row for 12: the bar waits
    bar(run, last=False)
    assert bar.bar.n == 10
    bar.close()
    assert "10/40" in capsys.readouterr().err


def test_checkpoints_save_at_their_multiples_last_and_on_ctrl_c_then_restore(tmp_path):
    manager = CheckpointManager(tmp_path, keep=10)
    hook = hooks.Checkpoints(manager, CONFIG)
    for i, last, interrupted in ((10, False, 0), (20, False, 0), (23, False, 2), (31, True, 0)):
        run = a_run(i)
        run.interrupted, run.history, run.train_time_s = interrupted, [{"iteration": i}], 2.0
        hook(run, last)
    assert [step for step, _ in manager.checkpoints()] == [20, 23, 31]
    restored = hook.restore(a_run(0))
    assert restored.iteration == 31 and restored.train_time_s == 2.0
    assert restored.history == [{"iteration": 31}]


def test_checkpoints_restore_without_a_checkpoint_starts_fresh(tmp_path, capsys):
    fresh = a_run(0)
    assert hooks.Checkpoints(CheckpointManager(tmp_path), CONFIG).restore(fresh) is fresh
    assert "no checkpoint in" in capsys.readouterr().err


@pytest.mark.parametrize(
    "first, second",
    [
        (signal.SIGINT, signal.SIGINT),
        (signal.SIGTERM, signal.SIGTERM),
        (signal.SIGTERM, signal.SIGINT),
    ],
)
def test_a_stop_signal_is_a_request_the_second_one_stops_and_the_handlers_are_restored(
    first, second
):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with hooks.StopSignals() as stop:
        assert stop.signal == 0
        os.kill(os.getpid(), first)
        assert stop.signal == first
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), second)
        assert stop.signal == first
    assert {s: signal.getsignal(s) for s in before} == before
