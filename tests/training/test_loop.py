"""The fit loop called directly: several steps per call, resume, divergence.

The commands built on it (``python -m experiments.mnist`` and friends, killed, resumed,
interrupted) are tested as subprocesses in ``tests/experiments/test_long_runs.py``.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from parallel_worker import tiny

from jaxnet.checkpoint import CheckpointManager
from jaxnet.step import loss_fn, preprocess
from jaxnet.training import DivergedError, FitConfig, TrainData, fit, initial_state, make_fit_step
from jaxnet.training.loop import _call_length


def small_data(n: int = 96, val: int = 16) -> TrainData:
    """Learnable 8x8 one-channel images of 3 classes: a bright row whose place is the class."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, n + val).astype(np.int32)
    images = rng.integers(0, 60, (n + val, 8, 8, 1), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 1 + 2 * int(c), :, 0] = 255
    mean = np.array([images[:n].mean() / 255.0], np.float32)
    return TrainData(images[:n], labels[:n], images[n:], labels[n:], mean)


CONFIG = FitConfig(
    iterations=30,
    batch_size=8,
    learning_rate=0.2,
    weight_decay=1e-3,
    schedule="cosine",
    warmup=3,
    augment=True,
    crop_pad=1,
    flip=False,
    log_every=10,
    eval_every=10,
    checkpoint_every=10,
)


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_trees_close(a, b, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Leaf by leaf; with no tolerance, equal (bit for bit but for the sign of zero)."""
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def column(result, name: str) -> list[float]:
    return [row[name] for row in result.history]


def test_fit_learns_and_logs_every_row():
    result = fit(tiny(), small_data(), CONFIG, progress=False)
    assert [row["iteration"] for row in result.history] == [10, 20, 30]
    assert [row["epoch"] for row in result.history] == [10 / 12, 20 / 12, 30 / 12]
    assert result.history[-1]["val_accuracy"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert not result.interrupted


def test_every_row_has_finite_per_layer_diagnostics():
    arch = tiny()
    result = fit(arch, small_data(), CONFIG, progress=False, steps_per_call=4)
    names = [layer.name for layer in arch.parametrised]
    for row in result.history:
        for kind in ("grad_norm", "update_ratio"):
            values = [row[f"{kind}/{name}"] for name in names]
            assert all(np.isfinite(values)) and all(v > 0 for v in values), (kind, row)
    assert len({row["grad_norm/conv1"] for row in result.history}) == 3  # each row its own step


@pytest.mark.parametrize("iteration", [0, 5])
def test_diagnostics_are_the_norms_of_that_steps_gradient_and_update(iteration):
    arch, data = tiny(), small_data()
    config = dataclasses.replace(CONFIG, augment=False)
    plain = make_fit_step(arch, config, data.mean)
    step = make_fit_step(arch, config, data.mean, diagnostics=True)
    images, labels = jax.device_put(data.train_images), jax.device_put(data.train_labels)
    order = np.random.default_rng(1).permutation(96).astype(np.int32).reshape(12, 8)
    state = initial_state(arch, config)
    for i in range(iteration):  # without diagnostics: the field is carried unchanged
        state = plain(state, images, labels, jax.device_put(order), np.int32(i))
        assert np.isnan(np.asarray(state.diagnostics)).all()
    before = jax.device_get(state.params)
    state = step(state, images, labels, jax.device_put(order), np.int32(iteration))
    index = order[iteration]
    x = preprocess(data.train_images[index], data.mean, config.pixel_scale, np.float32)
    grads = jax.grad(loss_fn, argnums=1)(arch, before, x, data.train_labels[index])
    after = jax.device_get(state.params)
    for n, layer in enumerate(arch.parametrised):
        w, g = before[layer.name]["w"], grads[layer.name]["w"]
        update = after[layer.name]["w"] - w
        grad_norm, update_ratio = np.asarray(state.diagnostics)[:, n]
        np.testing.assert_allclose(grad_norm, np.linalg.norm(g), rtol=1e-5)
        ratio = np.linalg.norm(update) / np.linalg.norm(w)
        np.testing.assert_allclose(update_ratio, ratio, rtol=1e-4)


@pytest.mark.parametrize("steps_per_call", [4, 7])
def test_several_steps_per_call_train_the_same(steps_per_call):
    # 12 steps per epoch and a row every 10: calls of 4 or 7 must stop at both boundaries.
    one = fit(tiny(), small_data(), CONFIG, progress=False)
    several = fit(tiny(), small_data(), CONFIG, progress=False, steps_per_call=steps_per_call)
    assert_trees_close(one.params, several.params, rtol=1e-5, atol=1e-6)
    assert column(several, "iteration") == column(one, "iteration")
    for a, b in zip(one.history, several.history, strict=True):
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=1 / 16 + 1e-9)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)


def test_a_call_of_several_steps_is_that_many_single_steps():
    arch, data = tiny(), small_data()
    mean = data.mean
    single, triple = make_fit_step(arch, CONFIG, mean), make_fit_step(arch, CONFIG, mean, steps=3)
    images, labels = jax.device_put(data.train_images), jax.device_put(data.train_labels)
    batches = jax.device_put(np.arange(96, dtype=np.int32).reshape(12, 8))
    a = initial_state(arch, CONFIG)
    for i in range(5, 8):
        a = single(a, images, labels, batches, np.int32(i))
    b = triple(initial_state(arch, CONFIG), images, labels, batches, np.int32(5))
    assert_trees_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("iteration", "steps", "boundaries", "expected"),
    [
        (0, 1, (12, 10, 10, 30), 1),
        (0, 4, (12, 10, 10, 30), 4),
        (8, 4, (12, 10, 10, 30), 1),  # a history row at 10
        (6, 4, (12, 10, 10, 30), 4),  # exactly up to the row
        (28, 4, (36, 30, 30, 30), 1),  # the end of the run
    ],
)
def test_call_length_never_crosses_a_boundary(iteration, steps, boundaries, expected):
    assert _call_length(iteration, steps, boundaries) == expected


def test_resume_with_several_steps_per_call_is_bit_identical(tmp_path):
    arch, data = tiny(), small_data()
    manager = CheckpointManager(tmp_path / "run")
    full = fit(arch, data, CONFIG, manager, progress=False, steps_per_call=4)
    # As if the run had been killed after its checkpoint at iteration 20: resume from there.
    manager.path_for(30).unlink()
    assert manager.checkpoints()[-1][0] == 20
    resumed = fit(arch, data, CONFIG, manager, resume=True, progress=False, steps_per_call=4)
    assert_trees_close(full.params, resumed.params)
    assert column(resumed, "train_loss") == column(full, "train_loss")


def test_divergence_names_the_iteration():
    config = dataclasses.replace(CONFIG, learning_rate=1e30, schedule="constant", warmup=0)
    with pytest.raises(DivergedError, match=r"NaN or infinite at iteration \d+: lower"):
        fit(tiny(), small_data(), config, progress=False, steps_per_call=4)


def test_a_batch_larger_than_the_training_set_is_refused_before_any_step():
    config = dataclasses.replace(CONFIG, batch_size=200)
    with pytest.raises(ValueError, match="batch-size 200 is larger than the training set"):
        fit(tiny(), small_data(), config, progress=False)


@pytest.mark.parametrize("steps_per_call", [0, 2.5, True])
def test_bad_steps_per_call(steps_per_call):
    with pytest.raises(ValueError, match="steps-per-call must be a positive integer"):
        fit(tiny(), small_data(), CONFIG, progress=False, steps_per_call=steps_per_call)


EVERY_OPTION = dataclasses.replace(
    CONFIG,
    flip=True,
    cutout=3,
    label_smoothing=0.1,
    weight_average=0.9,
    flip_test=True,
    nesterov=True,
)


def test_the_averaged_weights_are_validated_beside_the_weights():
    plain = fit(tiny(), small_data(), CONFIG, progress=False)
    averaged = fit(
        tiny(), small_data(), dataclasses.replace(CONFIG, weight_average=0.9), progress=False
    )
    # Averaging changes no step: the same weights, and the same validation of them.
    assert_trees_close(plain.params, averaged.params, rtol=1e-6, atol=1e-7)
    assert column(averaged, "val_accuracy") == column(plain, "val_accuracy")
    assert "val_accuracy_averaged" not in plain.history[-1]
    last = averaged.history[-1]
    assert 0.0 <= last["val_accuracy_averaged"] <= 1.0 and last["val_loss_averaged"] > 0
    assert last["val_loss_averaged"] != last["val_loss"]
    assert averaged.reported_params is averaged.state.averaged_params
    differ = [
        not np.allclose(a, b)
        for a, b in zip(leaves(averaged.params), leaves(averaged.reported_params), strict=True)
    ]
    assert any(differ)


def test_every_option_learns_and_resumes_bit_identically(tmp_path):
    arch, data = tiny(), small_data()
    manager = CheckpointManager(tmp_path / "run")
    full = fit(arch, data, EVERY_OPTION, manager, progress=False)
    assert full.history[-1]["val_accuracy_averaged"] > 0.6
    manager.path_for(30).unlink()
    resumed = fit(arch, data, EVERY_OPTION, manager, resume=True, progress=False)
    assert_trees_close(full.state, resumed.state)
    assert resumed.history == full.history[:2] + resumed.history[2:]
    assert column(resumed, "val_loss_averaged") == column(full, "val_loss_averaged")
