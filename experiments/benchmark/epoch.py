"""The ``fit()`` check: full MNIST epochs through :func:`jaxnet.training.fit` against steps x
step time."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

import jax
import numpy as np

from experiments.benchmark.timing import repeat, seconds
from jaxnet import architectures
from jaxnet.training import FitConfig, TrainData, fit, initial_state, make_fit_step
from jaxnet.training.data import epoch_batches

EPOCH_IMAGES = {False: 58000, True: 4096}  # MNIST's 60000 less a 2000-image validation split
STEPS_PER_CALL = 8  # the epoch check's second fit run: steps per compiled call


def _fit_config(batch: int, steps: int, epochs: int) -> FitConfig:
    """The default MNIST experiment's settings (batch 64, cosine schedule, random shifts of up to
    2 pixels) at ``batch``, for ``epochs + 1`` epochs of ``steps`` steps, a history row each."""
    return FitConfig(
        iterations=(epochs + 1) * steps,
        batch_size=batch,
        learning_rate=0.2,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        warmup=min(200, steps),
        augment=True,
        crop_pad=2,
        flip=False,
        log_every=steps,
        eval_every=steps,
        checkpoint_every=(epochs + 2) * steps,
    )


def bench_epoch(
    quick: bool = False, batch: int = 64, epochs: int = 2, steps_per_call: int = STEPS_PER_CALL
) -> dict[str, Any]:
    """Full MNIST epochs through :func:`jaxnet.training.fit` against steps x step time.

    :func:`_fit_config`'s settings on random uint8 images of MNIST's shape
    (``EPOCH_IMAGES[quick]`` of them). ``fit`` runs ``epochs + 1`` epochs; the last ``epochs``
    are timed from its history (the first holds the compilation). It runs twice: one step per
    call, then ``steps_per_call`` steps per compiled call. The step time is that of the jitted
    fit step ``fit`` builds, called in a tight loop for one epoch's worth of steps right before
    and right after the ``fit`` runs (so all see the same load).

    Returns:
        ``epoch_s`` (mean of the timed epochs, each in ``epochs_s``), ``steps``, ``step_ms``,
        ``steps_x_step_s`` and ``ratio`` (epoch time over steps x step time), and ``several``:
        the same for ``steps_per_call`` steps per call, with ``speedup`` (one step per call's
        epoch time over this one's).
    """
    arch = architectures.mnist()
    n = EPOCH_IMAGES[quick]
    steps = n // batch
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, *arch.input_shape), dtype=np.uint8)
    labels = rng.integers(0, arch.num_classes, n).astype(np.int32)
    mean = np.array([images.mean() / 255.0], np.float32)
    config = _fit_config(batch, steps, epochs)
    step, state, i = make_fit_step(arch, config, mean), initial_state(arch, config), 0
    on_device = jax.device_put((images, labels, epoch_batches(n, batch, config.seed, 0)))

    def call() -> Any:
        nonlocal state, i
        state, i = step(state, *on_device, np.int32(i)), i + 1
        return state

    def fit_epochs(k: int) -> list[float]:
        no_images = np.zeros((0, *arch.input_shape), np.uint8)
        data = TrainData(images, labels, no_images, np.zeros(0, np.int32), mean)
        history = fit(arch, data, config, progress=False, steps_per_call=k).history
        elapsed = {round(row["iteration"]): row["elapsed_s"] for row in history}
        marks = [elapsed[e * steps] for e in range(1, epochs + 2)]
        return [b - a for a, b in itertools.pairwise(marks)]

    tight_loop = repeat(call, jax.block_until_ready)
    tight_loop(1)  # compile
    before = seconds(tight_loop, steps)
    epochs_s, several_s = fit_epochs(1), fit_epochs(steps_per_call)
    after = seconds(tight_loop, steps)

    epoch_s, several_epoch_s = statistics.mean(epochs_s), statistics.mean(several_s)
    step_s = (before + after) / (2 * steps)
    return {
        "net": arch.name,
        "batch": batch,
        "train_images": n,
        "steps": steps,
        "epoch_s": epoch_s,
        "epochs_s": epochs_s,
        "step_ms": step_s * 1e3,
        "steps_x_step_s": steps * step_s,
        "tight_loop_s": [before, after],
        "ratio": epoch_s / (steps * step_s),
        "several": {
            "steps_per_call": steps_per_call,
            "epoch_s": several_epoch_s,
            "epochs_s": several_s,
            "ratio": several_epoch_s / (steps * step_s),
            "speedup": epoch_s / several_epoch_s,
        },
    }
