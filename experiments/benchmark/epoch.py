"""The ``fit()`` check: full MNIST epochs through :func:`jaxnet.training.fit` against steps x
step time."""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any

import jax
import numpy as np

from jaxnet import architectures

EPOCH_IMAGES = {False: 58000, True: 4096}  # MNIST's 60000 less a 2000-image validation split
STEPS_PER_CALL = 8  # the epoch check's second fit run: steps per compiled call


def _epoch_config(steps: int, epochs: int, batch: int):
    """The default MNIST experiment's settings for ``epochs + 1`` epochs of ``steps`` steps."""
    from jaxnet.training import FitConfig

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


def _random_training_set(arch: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` random uint8 images of ``arch``'s shape, random labels, and their mean."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, *arch.input_shape), dtype=np.uint8)
    labels = rng.integers(0, arch.num_classes, n).astype(np.int32)
    return images, labels, np.array([images.mean() / 255.0], np.float32)


def bench_epoch(
    quick: bool = False, batch: int = 64, epochs: int = 2, steps_per_call: int = STEPS_PER_CALL
) -> dict[str, Any]:
    """Full MNIST epochs through :func:`jaxnet.training.fit` against steps x step time.

    The settings are the default MNIST experiment's (batch 64, cosine schedule, random shifts
    of up to 2 pixels); the images are random uint8 of MNIST's shape (58000 training images,
    as after the experiment's 2000-image validation split; 4096 with ``quick``). ``fit`` runs
    ``epochs + 1`` epochs, logging once per epoch, and the last ``epochs`` are timed from its
    history (the first one holds the compilation). The step time comes from the same jitted
    fit step that ``fit`` builds, called in a tight loop for one epoch's worth of steps right
    before and right after the ``fit`` calls (so all see the same load). ``fit`` runs twice:
    one step per call, then ``steps_per_call`` steps per compiled call.

    Args:
        quick: a small data set.
        batch: images per step.
        epochs: timed epochs, >= 1.
        steps_per_call: the second ``fit`` run's steps per call (``fit(steps_per_call=)``).

    Returns:
        ``epoch_s`` (mean of the timed epochs, each in ``epochs_s``), ``steps``, ``step_ms``,
        ``steps_x_step_s`` and ``ratio`` (epoch time over steps x step time), and ``several``:
        the same for ``steps_per_call`` steps per call, with ``speedup`` (one step per call's
        epoch time over this one's).
    """
    from jaxnet.training import TrainData, fit, initial_state, make_fit_step
    from jaxnet.training.data import epoch_batches

    arch = architectures.mnist()
    n = EPOCH_IMAGES[quick]
    steps = n // batch
    images, labels, mean = _random_training_set(arch, n)
    config = _epoch_config(steps, epochs, batch)

    step = make_fit_step(arch, config, mean)
    images_dev, labels_dev = jax.device_put(images), jax.device_put(labels)
    order = jax.device_put(epoch_batches(n, batch, config.seed, 0))
    holder = {"state": initial_state(arch, config), "i": 0}

    def tight_loop(k: int) -> float:
        state, i = holder["state"], holder["i"]
        start = time.perf_counter()
        for _ in range(k):
            state = step(state, images_dev, labels_dev, order, np.int32(i))
            i += 1
        jax.block_until_ready(state)
        holder.update(state=state, i=i)
        return time.perf_counter() - start

    def fit_epochs(k: int) -> list[float]:
        no_images = np.zeros((0, *arch.input_shape), np.uint8)
        data = TrainData(images, labels, no_images, np.zeros(0, np.int32), mean)
        history = fit(arch, data, config, progress=False, steps_per_call=k).history
        elapsed = {round(row["iteration"]): row["elapsed_s"] for row in history}
        marks = [elapsed[e * steps] for e in range(1, epochs + 2)]
        return [b - a for a, b in itertools.pairwise(marks)]

    tight_loop(1)  # compile
    before = tight_loop(steps)
    epochs_s = fit_epochs(1)
    several_s = fit_epochs(steps_per_call)
    after = tight_loop(steps)

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
