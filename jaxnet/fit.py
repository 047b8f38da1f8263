"""The fit loop: device-resident data, one jitted step per batch, logging, checkpoints, resume.

Everything a long run needs to survive lives here, apart from the command-line glue:

- The training set stays on the device as uint8; each epoch's seeded order
  (:func:`jaxnet.data.epoch_batches`) is uploaded once, and the jitted step gathers its batch,
  augments it (optional, seeded by the iteration), scales it, and takes one optimizer step. The
  host does nothing per step beyond the call, so the device stays busy.
- Moving averages of the batch loss and accuracy (the starters print these) and the first
  iteration whose loss was not finite are kept on the device, inside the step: no host sync
  per step.
- Every ``log_every`` iterations a history row is read back (and the validation set evaluated
  every ``eval_every``); every ``checkpoint_every`` iterations, at Ctrl-C and at the end, the
  whole state is checkpointed atomically. The data order depends only on the seed and the
  iteration, so a run resumed from a checkpoint continues bit-identically.
- A loss that becomes NaN or infinite stops the run with :class:`DivergedError`, naming the
  iteration; no checkpoint is written after it, so the last good one is kept untouched.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxnet import data as data_lib
from jaxnet import parallel
from jaxnet.checkpoint import CheckpointManager
from jaxnet.network import Architecture, Conv, init
from jaxnet.optim import momentum
from jaxnet.train import evaluate, loss_and_logits, prepare_images

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


def _check_positive_int(name: str, value: object) -> None:
    """ValueError naming ``name`` unless ``value`` is an int >= 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")


@dataclass(frozen=True)
class FitConfig:
    """Every setting of a training run (saved in ``config.json`` and in each checkpoint).

    Attributes:
        iterations: optimizer steps in all.
        batch_size: images per step.
        learning_rate: the peak step size ``alpha``.
        momentum: ``mu`` in ``m = mu*m + (1-mu)*g``.
        weight_decay: ``lambda`` in ``w -= alpha*(m + lambda*w)``.
        schedule: ``"constant"`` (the seed's) or ``"cosine"`` (linear warm-up, then cosine
            decay to zero).
        warmup: warm-up iterations for ``"cosine"``.
        augment: random crop with zero padding ``crop_pad`` (and, if ``flip``, a random
            horizontal flip) of each training image, on the device.
        crop_pad: padding of the random crop, in pixels.
        flip: mirror half of the augmented images left-right (not for digits).
        pixel_scale: uint8 pixels are multiplied by this before the mean is subtracted: 1/255
            gives ``[0, 1]`` (the MNIST starter), 1 raw values (the CIFAR-10 starter).
        conv_init_gain: convolution kernels start at this times He's scale (the CIFAR-10
            starter draws them at 0.1 times; dense layers always at He's scale).
        seed: initialisation, data order, validation split and augmentation all follow it.
        rules: ``"analytic"`` or ``"autodiff"``.
        log_every: iterations between history rows.
        eval_every: iterations between validation evaluations (a multiple of ``log_every``).
        checkpoint_every: iterations between checkpoints.
        ema_decay: decay of the moving averages of the batch loss and accuracy.
        eval_batch_size: batch size for evaluation.
    """

    iterations: int
    batch_size: int
    learning_rate: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup: int = 0
    augment: bool = False
    crop_pad: int = 4
    flip: bool = True
    pixel_scale: float = 1 / 255
    conv_init_gain: float = 1.0
    seed: int = 0
    rules: str = "analytic"
    log_every: int = 100
    eval_every: int = 500
    checkpoint_every: int = 1000
    ema_decay: float = 0.99
    eval_batch_size: int = 1000

    def validate(self, n_train: int | None = None) -> None:
        """Raise ValueError with a one-line message for the first bad setting."""
        positive = (
            "iterations",
            "batch_size",
            "log_every",
            "eval_every",
            "checkpoint_every",
            "eval_batch_size",
        )
        for name in positive:
            _check_positive_int(name.replace("_", "-"), getattr(self, name))
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning-rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"weight-decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if not 0 <= self.warmup < self.iterations:
            raise ValueError(f"warmup must be in [0, iterations), got {self.warmup}")
        if (
            isinstance(self.crop_pad, bool)
            or not isinstance(self.crop_pad, int)
            or self.crop_pad < 0
        ):
            raise ValueError(f"crop-pad must be an integer >= 0, got {self.crop_pad}")
        for name in ("pixel_scale", "conv_init_gain"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {value}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema-decay must be in (0, 1), got {self.ema_decay}")
        if n_train is not None and self.batch_size > n_train:
            raise ValueError(
                f"batch-size {self.batch_size} is larger than the training set ({n_train} images)"
            )

    def learning_rate_schedule(self) -> optax.Schedule:
        """The step size as a function of the iteration (an optax schedule)."""
        if self.schedule == "constant":
            return optax.constant_schedule(self.learning_rate)
        return optax.warmup_cosine_decay_schedule(
            0.0, self.learning_rate, max(self.warmup, 1), self.iterations, 0.0
        )

    def input_mean(self, mean: np.ndarray) -> np.ndarray:
        """The training mean of ``images / 255`` in the units the network sees (float32)."""
        return (np.asarray(mean, np.float64) * 255.0 * self.pixel_scale).astype(np.float32)

    def optimizer(self) -> optax.GradientTransformation:
        """The seed's momentum scheme (:func:`jaxnet.momentum`) with this run's schedule."""
        return momentum(self.learning_rate_schedule(), self.momentum, self.weight_decay)


class TrainData(NamedTuple):
    """What :func:`fit` trains and validates on.

    Attributes:
        train_images: uint8 ``(N, H, W, C)``.
        train_labels: int ``(N,)``.
        val_images: uint8 ``(V, H, W, C)``; ``V`` may be 0 (no validation).
        val_labels: int ``(V,)``.
        mean: float32 ``(C,)``, the training split's mean of ``images / 255``.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    mean: np.ndarray


class TrainState(NamedTuple):
    """Everything the jitted step carries from one iteration to the next (all arrays).

    Attributes:
        params: the network's parameters.
        opt_state: the optimizer's state.
        ema: ``(2,)`` moving averages of the batch loss and accuracy (not yet debiased).
        bad_iteration: ``()`` int32, the first iteration whose loss was not finite, or -1.
    """

    params: Any
    opt_state: Any
    ema: jax.Array
    bad_iteration: jax.Array


class FitResult(NamedTuple):
    """What :func:`fit` returns: final params, history rows, seconds spent training."""

    params: Any
    history: list[dict[str, float]]
    train_time_s: float
    interrupted: bool


class DivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration."""


def initial_state(arch: Architecture, config: FitConfig) -> TrainState:
    """A fresh :class:`TrainState` for ``arch``, seeded by ``config.seed``."""
    params = init(arch, jax.random.PRNGKey(config.seed))
    if config.conv_init_gain != 1.0:
        convs = {layer.name for layer in arch.layers if isinstance(layer, Conv)}
        params = {
            name: {**p, "w": p["w"] * config.conv_init_gain} if name in convs else p
            for name, p in params.items()
        }
    return TrainState(
        params=params,
        opt_state=config.optimizer().init(params),
        ema=jnp.zeros(2, jnp.float32),
        bad_iteration=jnp.array(-1, jnp.int32),
    )


def make_fit_step(
    arch: Architecture,
    config: FitConfig,
    mean: np.ndarray,
    mesh: Mesh | None = None,
    steps: int = 1,
) -> Callable:
    """The jitted ``step(state, images, labels, batches, iteration) -> state``.

    ``batches`` is the epoch's ``(steps_per_epoch, batch_size)`` index array and ``iteration``
    the global iteration (an int32 scalar): the step takes row ``iteration % steps_per_epoch``,
    gathers those images from the device-resident set, augments them (seeded by the
    iteration) if asked, scales them (``x * pixel_scale - mean``, ``mean`` in scaled units),
    and applies one optimizer step. ``state`` is donated. With a ``mesh`` the gathered batch
    is split over its devices (everything else replicated) and XLA reduces the gradient
    across them.

    With ``steps = K > 1`` one call takes the ``K`` iterations ``iteration, ...,
    iteration + K - 1`` (the caller keeps them inside one epoch): the same step, unrolled
    ``K`` times in one compiled program, so the host launches one program per ``K`` steps.
    The result equals ``K`` single calls up to float rounding (XLA may fuse across the steps).
    The loop is unrolled because XLA's CPU backend runs a rolled loop's body about 10x slower
    (measured: MNIST, batch 16-256, ``lax.scan`` with ``unroll=1``).
    """
    _check_positive_int("steps", steps)
    optimizer = config.optimizer()
    aug_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x61756720)
    decay = config.ema_decay

    def one(state: TrainState, images, labels, batches, iteration):
        index = batches[iteration % batches.shape[0]]
        x, y = images[index], labels[index]
        if mesh is not None:
            x, y = jax.lax.with_sharding_constraint((x, y), parallel.batch_sharding(mesh))
        if config.augment:
            x = data_lib.augment(
                jax.random.fold_in(aug_key, iteration), x, config.crop_pad, config.flip
            )
        x = prepare_images(x, mean, jnp.float32, config.pixel_scale)
        (loss, logits), grads = jax.value_and_grad(
            lambda p: loss_and_logits(arch, p, x, y, config.rules), has_aux=True
        )(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
        ema = decay * state.ema + (1 - decay) * jnp.stack([loss, accuracy]).astype(jnp.float32)
        finite = jnp.isfinite(loss)
        bad = jnp.where((state.bad_iteration < 0) & ~finite, iteration, state.bad_iteration)
        return TrainState(params, opt_state, ema, bad.astype(jnp.int32))

    if steps == 1:
        return jax.jit(one, donate_argnums=(0,))

    def several(state: TrainState, images, labels, batches, iteration):
        def body(state, offset):
            return one(state, images, labels, batches, iteration + offset), None

        offsets = jnp.arange(steps, dtype=jnp.int32)
        return jax.lax.scan(body, state, offsets, unroll=steps)[0]

    return jax.jit(several, donate_argnums=(0,))


def _call_length(iteration: int, steps_per_call: int, boundaries: tuple[int, ...]) -> int:
    """Iterations for the next call: ``steps_per_call`` if that crosses no boundary, else 1.

    ``boundaries`` are the next iterations at which the loop must stop (the epoch's end, the
    next history row, the next checkpoint, the end of the run). The choice depends only on
    ``iteration``, so a resumed run splits its iterations into calls exactly as before.
    """
    if steps_per_call > 1 and min(boundaries) - iteration >= steps_per_call:
        return steps_per_call
    return 1


def _debiased(ema: np.ndarray, iterations_done: int, decay: float) -> np.ndarray:
    return ema / (1.0 - decay**iterations_done)


class _StopRequest:
    """Turns the first Ctrl-C into a request the loop honours after the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopRequest:
        def handler(signum, frame):
            if self.requested:  # a second Ctrl-C: stop at once
                raise KeyboardInterrupt
            self.requested = True

        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            self._previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def fit(
    arch: Architecture,
    data: TrainData,
    config: FitConfig,
    checkpoints: CheckpointManager | None = None,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    on_log: Callable[[list[dict[str, float]]], None] | None = None,
    mesh: Mesh | int | None = None,
    steps_per_call: int = 1,
) -> FitResult:
    """Train ``arch`` on ``data`` with ``config``; checkpoint, resume, guard against NaN.

    Args:
        arch: the network.
        data: device-bound training and validation arrays (uint8 images).
        config: the run's settings.
        checkpoints: where to save the training state (``None``: no checkpoints).
        resume: continue from the newest checkpoint in ``checkpoints``; with none there yet
            (a run killed before its first checkpoint), start from the beginning.
        metadata: saved in each checkpoint beside the state (e.g. the run's config).
        progress: show a tqdm progress bar with the moving-average loss and accuracy.
        on_log: called with the whole history each time a row is added (to write history.csv).
        mesh: train data-parallel over this mesh (or this many devices): each batch is split
            over the devices, the data set, params and optimizer state are replicated.
        steps_per_call: optimizer steps per compiled call (see :func:`make_fit_step`): 1, or
            ``K`` to launch one program per ``K`` steps wherever no epoch end, history row or
            checkpoint falls inside them (single steps fill the rest). The same training up to
            float rounding. On a 2-core CPU an MNIST epoch at batch 64 ran 1.04-1.20x as fast
            with 8 steps per call (four runs of ``experiments.benchmark``); compiling takes
            ``K`` times as long.

    Returns:
        A :class:`FitResult`. ``interrupted`` is True when Ctrl-C stopped the run early (a
        checkpoint was saved first).

    Raises:
        DivergedError: the loss became NaN or infinite.
        ValueError: a bad setting, or ``resume`` without a checkpoint to resume from.
    """
    from tqdm.auto import tqdm

    n = data.train_images.shape[0]
    config.validate(n)
    _check_positive_int("steps-per-call", steps_per_call)
    state = initial_state(arch, config)
    history: list[dict[str, float]] = []
    start = 0
    elapsed_before = 0.0
    if resume:
        if checkpoints is None:
            raise ValueError("resume needs a checkpoint folder")
        restored = checkpoints.restore(state)
        if restored is None:
            print(
                f"note: no checkpoint in {checkpoints.directory} yet: starting from iteration 0",
                file=sys.stderr,
            )
        else:
            state, saved = restored
            start = int(saved["iteration"])
            history = list(saved["history"])
            elapsed_before = float(saved.get("train_time_s", 0.0))

    mean = config.input_mean(data.mean)
    if mesh is not None:
        mesh = parallel.as_mesh(mesh)
        parallel.check_batch(config.batch_size, mesh)
        parallel.check_batch(config.eval_batch_size, mesh)
        state = parallel.replicate(state, mesh)
    step = make_fit_step(arch, config, mean, mesh)
    several = (
        make_fit_step(arch, config, mean, mesh, steps_per_call) if steps_per_call > 1 else None
    )
    images, labels = data.train_images, np.asarray(data.train_labels, np.int32)
    put = jax.device_put if mesh is None else partial(parallel.replicate, mesh=mesh)
    images, labels = put(images), put(labels)
    steps_per_epoch = n // config.batch_size
    schedule = config.learning_rate_schedule()
    extra = dict(metadata or {})

    def save(iteration: int, train_time: float) -> None:
        if checkpoints is None:
            return
        host_state = jax.device_get(state)
        info = {
            "iteration": iteration,
            "history": history,
            "train_time_s": train_time,
            "fit_config": asdict(config),
            **extra,
        }
        checkpoints.save(iteration, host_state, info)

    def make_row(iteration: int, train_time: float) -> dict[str, float]:
        ema = _debiased(np.asarray(state.ema, np.float64), iteration, config.ema_decay)
        row = {
            "iteration": iteration,
            "epoch": iteration / steps_per_epoch,
            "train_loss": float(ema[0]),
            "train_accuracy": float(ema[1]),
            "val_loss": math.nan,
            "val_accuracy": math.nan,
            "learning_rate": float(schedule(iteration - 1)),
            "elapsed_s": train_time,
        }
        if (iteration % config.eval_every == 0 or iteration == config.iterations) and len(
            data.val_labels
        ):
            result = evaluate(
                arch,
                state.params,
                data.val_images,
                data.val_labels,
                config.eval_batch_size,
                mean,
                mesh=mesh,
                scale=config.pixel_scale,
            )
            row["val_loss"], row["val_accuracy"] = result.loss, result.accuracy
        return row

    bar = tqdm(
        total=config.iterations, initial=start, disable=not progress, unit="it", dynamic_ncols=True
    )
    interrupted = False
    clock = time.perf_counter()
    train_time = elapsed_before
    iteration = start
    epoch = -1
    batches = None
    try:
        with _StopRequest() as stop:
            while iteration < config.iterations:
                if iteration // steps_per_epoch != epoch:
                    epoch = iteration // steps_per_epoch
                    order = data_lib.epoch_batches(n, config.batch_size, config.seed, epoch)
                    batches = put(order)
                k = 1
                if several is not None:  # one step per call needs no look ahead
                    boundaries = (
                        (epoch + 1) * steps_per_epoch,
                        (iteration // config.log_every + 1) * config.log_every,
                        (iteration // config.checkpoint_every + 1) * config.checkpoint_every,
                        config.iterations,
                    )
                    k = _call_length(iteration, steps_per_call, boundaries)
                run = step if k == 1 else several
                state = run(state, images, labels, batches, np.int32(iteration))
                iteration += k
                log_now = iteration % config.log_every == 0 or iteration == config.iterations
                ckpt_now = iteration % config.checkpoint_every == 0
                if log_now or ckpt_now or stop.requested:
                    bad = int(state.bad_iteration)  # host sync
                    train_time = elapsed_before + time.perf_counter() - clock
                    if bad >= 0:
                        raise DivergedError(
                            f"the loss became NaN or infinite at iteration {bad + 1}: lower "
                            f"the learning rate (now {config.learning_rate:g})"
                            + (
                                f"; the last good checkpoint is kept in {checkpoints.directory}"
                                if checkpoints is not None and checkpoints.latest()
                                else ""
                            )
                        )
                if log_now:
                    row = make_row(iteration, train_time)
                    history.append(row)
                    if on_log is not None:
                        on_log(history)
                    postfix = {
                        "loss": f"{row['train_loss']:.3f}",
                        "acc": f"{row['train_accuracy']:.3f}",
                    }
                    if not math.isnan(row["val_accuracy"]):
                        postfix["val_acc"] = f"{row['val_accuracy']:.3f}"
                    bar.set_postfix(postfix, refresh=False)
                    bar.update(iteration - bar.n)
                if ckpt_now or iteration == config.iterations:
                    save(iteration, train_time)
                if stop.requested and iteration < config.iterations:
                    save(iteration, train_time)
                    interrupted = True
                    break
    finally:
        bar.close()
    return FitResult(state.params, history, train_time, interrupted)


def history_to_csv(history: list[dict[str, float]], path: str | Path) -> None:
    """Write history rows as CSV with :data:`HISTORY_FIELDS` as the header, atomically."""
    import csv
    import io
    import os

    buf = io.StringIO()
    writer = csv.DictWriter(buf, HISTORY_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)
