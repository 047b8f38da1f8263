"""The fit loop: the data set on the device, one compiled step per call, hooks between steps.

The training set stays on the device as uint8 and each epoch's seeded order
(:func:`jaxnet.training.data.epoch_batches`) is uploaded once, so the host does nothing per
step beyond the call; the hooks (:mod:`jaxnet.training.hooks`) run only at sync points. The data
order and augmentation depend only on the seed and the iteration, so a resumed run continues
bit-identically.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxnet import parallel
from jaxnet.checkpoint import CheckpointManager
from jaxnet.network import Architecture
from jaxnet.step import evaluate, train_step
from jaxnet.training import hooks as hooks_lib
from jaxnet.training.config import FitConfig, positive_int
from jaxnet.training.data import TrainData, augment, epoch_batches
from jaxnet.training.state import Run, TrainState, initial_state


def make_fit_step(
    arch: Architecture,
    config: FitConfig,
    mean: np.ndarray,
    *,
    mesh: Mesh | None = None,
    steps: int = 1,
    diagnostics: bool = False,
) -> Callable:
    """The jitted ``step(state, images, labels, batches, iteration) -> state``.

    ``batches`` is the epoch's ``(steps_per_epoch, batch_size)`` index array and ``iteration``
    the global iteration (an int32 scalar): the step takes row ``iteration % steps_per_epoch``,
    gathers those images from the device-resident set, augments them if asked, and calls
    :func:`jaxnet.step.train_step`. ``state`` is donated. With a ``mesh`` the gathered batch is
    split over its devices (everything else replicated).

    With ``steps = K > 1`` one call takes the ``K`` iterations ``iteration, ...,
    iteration + K - 1`` (the caller keeps them inside one epoch), unrolled in one compiled
    program (XLA's CPU backend runs a rolled loop's body much slower: ``docs/performance.md``),
    equal to ``K`` single calls up to float rounding.

    With ``diagnostics`` the step also computes :func:`jaxnet.step.layer_diagnostics` into
    ``state.diagnostics`` (otherwise carried unchanged): a separate step, used only just before
    each history row, as computing them slows every step that does (``docs/performance.md``).
    """
    optimizer = config.optimizer()
    aug_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x61756720)

    def one(state: TrainState, images, labels, batches, iteration) -> TrainState:
        index = batches[iteration % batches.shape[0]]
        x, y = images[index], labels[index]
        if mesh is not None:
            x, y = jax.lax.with_sharding_constraint((x, y), parallel.batch_sharding(mesh))
        if config.augment:
            key = jax.random.fold_in(aug_key, iteration)
            x = augment(key, x, config.crop_pad, config.flip, config.cutout)
        params, opt_state, metrics = train_step(
            arch,
            state.params,
            state.opt_state,
            x,
            y,
            optimizer=optimizer,
            rules=config.rules,
            mean=mean,
            scale=config.pixel_scale,
            label_smoothing=config.label_smoothing,
            diagnostics=diagnostics,
        )
        return state.advance(
            params,
            opt_state,
            metrics,
            iteration,
            decay=config.ema_decay,
            weight_average=config.weight_average,
        )

    def several(state: TrainState, images, labels, batches, iteration) -> TrainState:
        def body(state, offset):
            return one(state, images, labels, batches, iteration + offset), None

        offsets = jnp.arange(steps, dtype=jnp.int32)
        return jax.lax.scan(body, state, offsets, unroll=steps)[0]

    fn = one if steps == 1 else several
    return jax.jit(fn if mesh is None else parallel.partitionable(fn), donate_argnums=(0,))


def _call_length(iteration: int, steps_per_call: int, boundaries: Sequence[int]) -> int:
    """Iterations for the next call: ``steps_per_call`` if that crosses no boundary, else 1.

    ``boundaries``: the next iterations at which the loop must stop (the epoch's end, the hooks'
    next multiples, the end of the run). A resumed run splits its iterations as before.
    """
    if steps_per_call > 1 and min(boundaries) - iteration >= steps_per_call:
        return steps_per_call
    return 1


def fit(
    arch: Architecture,
    data: TrainData,
    config: FitConfig,
    checkpoints: CheckpointManager | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    on_log: Callable[[list[dict[str, float]]], None] | None = None,
    mesh: Mesh | int | None = None,
    steps_per_call: int = 1,
) -> Run:
    """Train ``arch`` on ``data`` with ``config``: history, validation, checkpoints, NaN stop.

    Args:
        data: training and validation arrays (uint8 images) and the mean to subtract.
        config: the run's settings (checked when it was made).
        checkpoints: where to save the run (``None``: no checkpoints).
        resume: continue from the newest checkpoint in ``checkpoints``; with none there yet
            (a run killed before its first checkpoint), start from the beginning.
        progress: show a tqdm progress bar with the moving-average loss and accuracy.
        on_log: called with the whole history each time a row is added (to write history.csv).
        mesh: train data-parallel over this mesh (or this many devices): each batch is split
            over the devices, the data set, params and optimizer state are replicated.
        steps_per_call: optimizer steps per compiled call (:func:`make_fit_step`), where no
            epoch end, history row or checkpoint falls inside them (single steps fill the
            rest): the same training up to float rounding.

    Returns:
        The :class:`~jaxnet.training.state.Run`: ``params``, ``history``, ``train_time_s``,
        ``interrupted`` (Ctrl-C stopped it early, after saving a checkpoint).

    Raises:
        DivergedError: the loss became NaN or infinite.
        ValueError: a batch larger than the training set, a bad ``steps_per_call``, a batch
            that does not divide over the mesh, or ``resume`` without a checkpoint folder.
    """
    positive_int("steps-per-call", steps_per_call)
    mesh = None if mesh is None else parallel.as_mesh(mesh)
    config.check_data(len(data.train_labels), devices=1 if mesh is None else mesh.size)
    if resume and checkpoints is None:
        raise ValueError("resume needs a checkpoint folder")
    steps_per_epoch = len(data.train_labels) // config.batch_size
    validate = partial(
        evaluate,
        arch,
        x=data.val_images,
        y=data.val_labels,
        mesh=mesh,
        batch_size=config.eval_batch_size,
        mean=data.mean,
        scale=config.pixel_scale,
        flip=config.flip_test,
    )
    evaluation = None
    if len(data.val_labels):
        evaluation = hooks_lib.Evaluation(validate, config.log_every, config.eval_every)
    saver = None if checkpoints is None else hooks_lib.Checkpoints(checkpoints, config)
    names = [layer.name for layer in arch.parametrised]
    hooks = [
        hooks_lib.StopOnNaN(config.learning_rate, checkpoints),
        evaluation,
        hooks_lib.History(config, steps_per_epoch, evaluation, on_log, names),
        hooks_lib.ProgressBar(config.iterations, config.log_every, progress),
        saver,
    ]
    hooks = [hook for hook in hooks if hook is not None]
    run = Run(initial_state(arch, config))
    if resume:
        run = saver.restore(run)
    return train(arch, data, config, run, hooks, mesh=mesh, steps_per_call=steps_per_call)


def train(
    arch: Architecture,
    data: TrainData,
    config: FitConfig,
    run: Run,
    hooks: Sequence[hooks_lib.Hook],
    *,
    mesh: Mesh | None = None,
    steps_per_call: int = 1,
) -> Run:
    """The loop itself: steps until ``config.iterations``, the hooks at every sync point.

    Its callers have checked the arguments (:func:`fit` does).
    """
    put = jax.device_put if mesh is None else partial(parallel.replicate, mesh=mesh)
    images, labels = put(data.train_images), put(np.asarray(data.train_labels, np.int32))
    run.state = put(run.state)
    step = make_fit_step(arch, config, data.mean, mesh=mesh)
    several = make_fit_step(arch, config, data.mean, mesh=mesh, steps=steps_per_call)
    logged = make_fit_step(arch, config, data.mean, mesh=mesh, diagnostics=True)  # each row
    n, per_epoch = len(labels), len(labels) // config.batch_size
    intervals = [per_epoch] + [h.every for h in hooks if h.every]
    session_start, time_before = time.perf_counter(), run.train_time_s
    epoch, batches = -1, None
    for hook in hooks:
        hook.start(run)
    try:
        with hooks_lib.StopSignals() as stop:
            while run.iteration < config.iterations:
                if run.iteration // per_epoch != epoch:
                    epoch = run.iteration // per_epoch
                    batches = put(epoch_batches(n, config.batch_size, config.seed, epoch))
                ends = [(run.iteration // k + 1) * k for k in intervals] + [config.iterations]
                row = min((run.iteration // config.log_every + 1) * config.log_every, ends[-1])
                if run.iteration + 1 == row:  # the step whose diagnostics the row reports
                    k, call = 1, logged
                else:
                    k = _call_length(run.iteration, steps_per_call, [*ends, row - 1])
                    call = step if k == 1 else several
                run.state = call(run.state, images, labels, batches, np.int32(run.iteration))
                run.iteration += k
                last = run.iteration == config.iterations
                at_sync = last or any(run.iteration % k == 0 for k in intervals[1:])
                stopping = parallel.stop_signal(stop.signal, at_sync)
                if at_sync or stopping:
                    run.train_time_s = time_before + time.perf_counter() - session_start
                    run.interrupted = 0 if last else stopping
                    for hook in hooks:
                        hook(run, last)
                    if run.interrupted:
                        break
    finally:
        for hook in hooks:
            hook.close()
    return run
