"""The step module: preprocessing, the jitted step, evaluation, whole networks against autodiff."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from parallel_worker import counting, data, tiny  # they drive the multi-device runs too

import jaxnet.step
from jaxnet import architectures, evaluate, forward, init, loss_fn, make_train_step, momentum
from jaxnet.step import preprocess

RGB = (8, 8, 3)  # the input shape of most tests here: a per-channel mean


jit_forward = jax.jit(forward, static_argnums=(0, 3))
jit_loss_and_grad = jax.jit(jax.value_and_grad(loss_fn, argnums=1), static_argnums=(0, 4))
grad = jax.jit(jax.grad(loss_fn, argnums=1), static_argnums=(0, 4))


def copy(tree):
    return jax.tree.map(jnp.copy, tree)


def assert_trees_close(a, b, rtol, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# --- the train step ----------------------------------------------------------------------------


def test_step_compiles_once_learns_and_donates():
    arch = tiny(RGB)
    optimizer, calls = counting(momentum(0.1, 0.9, 1e-3))
    step = make_train_step(arch, optimizer, mean=0.5)
    params = init(arch, jax.random.key(0))
    state = optimizer.init(params)
    x, y = data(arch, 8)
    losses = []
    for i in range(30):
        old_params, old_state = params, state
        params, state, metrics = step(params, state, x, y)
        if i == 0:  # donated: the buffers now belong to the results
            assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old_params))
            assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old_state))
        losses.append(metrics["loss"])
    assert len(calls) == 1 and step._cache_size() == 1
    assert set(metrics) >= {"loss", "accuracy"}
    assert all(isinstance(m, jax.Array) and m.shape == () for m in metrics.values())
    assert float(losses[-1]) < 0.5 * float(losses[0])
    assert float(metrics["accuracy"]) == 1.0  # 8 images memorised


def test_step_is_loss_grad_update():
    arch = tiny(RGB)
    optimizer = momentum(0.05, 0.9, 5e-3)
    params = init(arch, jax.random.key(1))
    x, y = data(arch, 5)
    xf = jnp.asarray(x, jnp.float32) / 255 - 0.5
    loss, grads = jit_loss_and_grad(arch, params, xf, jnp.asarray(y), "analytic")
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    expected = optax.apply_updates(params, updates)
    logits = jit_forward(arch, params, xf, "analytic")
    accuracy = np.mean(np.argmax(logits, axis=1) == y)

    step = make_train_step(arch, optimizer)
    new, _, metrics = step(copy(params), optimizer.init(params), xf, y)
    assert_trees_close(new, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    assert float(metrics["accuracy"]) == pytest.approx(accuracy)


def test_uint8_images_are_scaled_in_the_step_with_a_per_channel_mean():
    arch = tiny(RGB)
    mean = np.array([0.2, 0.5, 0.7])
    optimizer = momentum(0.1)
    params = init(arch, jax.random.key(2))
    x, y = data(arch, 4)
    xf = (x.astype(np.float32) / 255 - mean).astype(np.float32)
    step = make_train_step(arch, optimizer, mean=mean)
    from_uint8 = step(copy(params), optimizer.init(params), x, y)
    from_float = make_train_step(arch, optimizer)(copy(params), optimizer.init(params), xf, y)
    assert_trees_close(from_uint8, from_float, rtol=1e-5, atol=1e-6)


def test_adam_works_in_place_of_momentum():
    arch = tiny(RGB)
    optimizer, calls = counting(optax.adam(1e-2))
    step = make_train_step(arch, optimizer, mean=0.5, rules="autodiff")
    params = init(arch, jax.random.key(3))
    state = optimizer.init(params)
    x, y = data(arch, 8, seed=1)
    first = None
    for _ in range(20):
        params, state, metrics = step(params, state, x, y)
        first = metrics["loss"] if first is None else first
    assert len(calls) == 1
    assert float(metrics["loss"]) < float(first)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rules": "numeric"}, ValueError, r"rules must be one of \('analytic', 'autodiff'\)"),
        ({"mean": np.zeros(2)}, ValueError, r"mean must be a scalar or have shape \(3,\)"),
        ({"mean": "zero"}, TypeError, "mean must be a float"),
        ({"optimizer": "sgd"}, TypeError, "optimizer must be an optax.GradientTransformation"),
        ({"arch": "mnist"}, TypeError, "arch must be an Architecture"),
    ],
)
def test_make_train_step_errors(kwargs, error, match):
    args = {"arch": tiny(RGB), "optimizer": momentum(0.1), **kwargs}
    with pytest.raises(error, match=match):
        make_train_step(**args)


def test_preprocess_scales_uint8_and_passes_floats_through():
    images = np.random.default_rng(1).integers(0, 256, (4, 3, 5, 3), dtype=np.uint8)
    mean = np.array([0.1, 0.2, 0.3], np.float32)
    out = jax.jit(preprocess, static_argnums=3)(images, mean, 1 / 255, jnp.float32)
    assert out.shape == images.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, images / np.float32(255) - mean, rtol=0, atol=1e-6)
    raw = preprocess(jnp.asarray(images), 100.0, 1.0, jnp.float32)  # the CIFAR-10 starter
    np.testing.assert_allclose(raw, images.astype(np.float32) - 100.0, atol=1e-5)
    prepared = jnp.asarray(out)
    assert preprocess(prepared, mean, 1 / 255, jnp.float32) is prepared
    with pytest.raises(TypeError, match="uint8 or floating-point"):
        preprocess(jnp.asarray(images, jnp.int16), mean, 1 / 255, jnp.float32)


def test_step_refuses_other_integer_images():
    arch = tiny(RGB)
    optimizer = momentum(0.1)
    params = init(arch, jax.random.key(0))
    x, y = data(arch, 2)
    with pytest.raises(TypeError, match="uint8 or floating-point"):
        make_train_step(arch, optimizer)(params, optimizer.init(params), x.astype(np.int16), y)


# --- evaluation --------------------------------------------------------------------------------


def test_evaluate_a_set_of_any_size_with_one_compilation(monkeypatch):
    arch = tiny((6, 6, 1))  # used by no other test: a fresh cache
    params = init(arch, jax.random.key(4))
    x, y = data(arch, 11)
    traces = []

    def counting_forward(*args, **kwargs):
        traces.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(jaxnet.step, "forward", counting_forward)
    result = evaluate(arch, params, x, y, batch_size=4, mean=0.25)  # batches 4, 4, 3 (padded)
    for n in (5, 3, 1, 8):  # smaller than, equal to, and multiples of the batch size
        evaluate(arch, params, x[:n], y[:n], batch_size=4, mean=0.25)
    evaluate(arch, params, jnp.asarray(x), jnp.asarray(y), batch_size=4, mean=0.3)
    assert len(traces) == 1

    xf = jnp.asarray(x, jnp.float32) / 255 - 0.25
    logits = jit_forward(arch, params, xf, "analytic")
    assert result.predictions.shape == (11,)
    assert np.issubdtype(result.predictions.dtype, np.integer)
    np.testing.assert_array_equal(result.predictions, np.argmax(logits, axis=1))
    assert isinstance(result.loss, float) and isinstance(result.accuracy, float)
    loss, _ = jit_loss_and_grad(arch, params, xf, jnp.asarray(y), "analytic")
    assert result.loss == pytest.approx(float(loss), rel=1e-5)
    assert result.accuracy == pytest.approx(np.mean(np.argmax(logits, axis=1) == y))
    float_result = evaluate(arch, params, xf, y, batch_size=4, rules="autodiff")
    np.testing.assert_array_equal(float_result.predictions, result.predictions)
    assert float_result.loss == pytest.approx(result.loss, rel=1e-5)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda x, y: (x[:0], y[:0], {}), ValueError, "empty"),
        (lambda x, y: (x, y[:-1], {}), ValueError, r"y must have shape \(4,\)"),
        (lambda x, y: (x[:, :4], y, {}), ValueError, r"x must have shape \(N, 8, 8, 3\)"),
        (lambda x, y: (x, y.astype(np.float32), {}), TypeError, "integer labels"),
        (lambda x, y: (x.astype(np.int32), y, {}), TypeError, "uint8 or floating"),
        (lambda x, y: (x, y, {"batch_size": 0}), ValueError, "batch_size must be >= 1"),
        (lambda x, y: (x, y, {"rules": "exact"}), ValueError, "rules must be one of"),
    ],
)
def test_evaluate_errors(change, error, match):
    arch = tiny(RGB)
    params = init(arch, jax.random.key(0))
    x, y, kwargs = change(*data(arch, 4))
    with pytest.raises(error, match=match):
        evaluate(arch, params, x, y, **kwargs)


# --- whole networks: analytic rules against autodiff, float64 ----------------------------------


def keep_gradient() -> optax.GradientTransformation:
    """A transformation that passes updates through and keeps the last raw gradient as state."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda updates, state, params=None: (updates, updates),
    )


@pytest.mark.parametrize("name", ["mnist", "cifar10_baseline", "cifar10_modified"])
def test_whole_network_analytic_equals_autodiff(name):
    """The gradient agrees to 1e-10, and 200 steps of the seed's momentum give the same params.

    One compiled step per rule serves both checks: its optimizer keeps the raw gradient of the
    first step (2 uint8 images of the real size, scaled to float64 in the step) in its state.
    The steps alternate between two batches of 2.
    """
    arch = architectures.get(name)
    with jax.enable_x64(True):
        params = init(arch, jax.random.key(5), dtype=jnp.float64)
        x, y = data(arch, 4)
        batches = [(x[:2], y[:2]), (x[2:], y[2:])]
        first_grad, final = {}, {}
        for rules in ("analytic", "autodiff"):
            optimizer = optax.chain(keep_gradient(), momentum(0.01, 0.9, 1e-3))
            step = make_train_step(arch, optimizer, rules=rules, mean=0.5)
            p, s = copy(params), optimizer.init(params)
            for i in range(200):
                p, s, metrics = step(p, s, *batches[i % 2])
                if i == 0:
                    first_grad[rules] = copy(s[0])
            assert step._cache_size() == 1
            assert np.isfinite(float(metrics["loss"]))
            final[rules] = p

        for layer in params:
            for k in ("w", "b"):
                a, r = first_grad["analytic"][layer][k], first_grad["autodiff"][layer][k]
                assert a.dtype == jnp.float64
                err = float(jnp.max(jnp.abs(a - r)) / jnp.max(jnp.abs(r)))
                assert err < 1e-10, (layer, k, err)
        xf = jnp.asarray(x[:2], jnp.float64) / 255 - 0.5  # and it is the gradient of the loss
        want = grad(arch, params, xf, y[:2], "autodiff")
        assert_trees_close(first_grad["autodiff"], want, rtol=1e-10, atol=1e-14)

        assert_trees_close(final["analytic"], final["autodiff"], rtol=1e-9, atol=1e-12)
        # The runs went somewhere, so agreeing means something.
        moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), final["analytic"], params)
        assert max(jax.tree.leaves(moved)) > 1e-3


def test_evaluate_with_flip_averages_the_mirror_images_logits():
    arch = tiny(RGB)
    params = init(arch, jax.random.key(5))
    x, y = data(arch, 7)
    xf = jnp.asarray(x, jnp.float32) / 255
    logits = (
        jit_forward(arch, params, xf, "analytic")
        + jit_forward(arch, params, xf[:, :, ::-1], "analytic")
    ) / 2
    result = evaluate(arch, params, x, y, batch_size=4, flip=True)
    np.testing.assert_array_equal(result.predictions, np.argmax(logits, axis=1))
    want = -np.mean(np.asarray(jax.nn.log_softmax(logits))[np.arange(7), y])
    assert result.loss == pytest.approx(float(want), rel=1e-5)
    # An image equal to its mirror image gets the plain result.
    symmetric = np.concatenate([x[:, :, :4], x[:, :, :4][:, :, ::-1]], axis=2)
    plain = evaluate(arch, params, symmetric, y, batch_size=4)
    flipped = evaluate(arch, params, symmetric, y, batch_size=4, flip=True)
    np.testing.assert_array_equal(plain.predictions, flipped.predictions)
    assert flipped.loss == pytest.approx(plain.loss, rel=1e-6)
