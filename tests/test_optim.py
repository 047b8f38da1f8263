"""The seed's momentum rule against the optax chain and against a hand-written loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnet import momentum

SHAPES = {"conv1": {"w": (3, 3, 1, 4), "b": (4,)}, "dense1": {"w": (2, 36), "b": (2,)}}


def random_tree(rng: np.random.Generator, dtype=np.float32) -> dict:
    return {
        layer: {k: rng.standard_normal(shape).astype(dtype) for k, shape in shapes.items()}
        for layer, shapes in SHAPES.items()
    }


def run(optimizer: optax.GradientTransformation, params: dict, grads: list[dict]) -> list[dict]:
    """Apply ``optimizer`` for each gradient in turn (one jitted update); the params after each."""
    update = jax.jit(optimizer.update)
    state = optimizer.init(params)
    history = []
    for g in grads:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history


def numpy_loop(params: dict, grads: list[dict], lr, mu: float, wd: float, nesterov=False) -> list:
    """The seed's rule written out: m = mu m + (1 - mu) g; w = w - alpha_t (d + lambda w), with
    d = m, or with ``nesterov`` the look-ahead d = mu m + (1 - mu) g (with the new m)."""
    w = {k: {n: np.array(a, np.float64) for n, a in v.items()} for k, v in params.items()}
    m = {k: {n: np.zeros_like(a) for n, a in v.items()} for k, v in w.items()}
    history = []
    for t, g in enumerate(grads):
        alpha = lr(t) if callable(lr) else lr
        for k in w:
            for n in w[k]:
                m[k][n] = mu * m[k][n] + (1 - mu) * g[k][n]
                d = mu * m[k][n] + (1 - mu) * g[k][n] if nesterov else m[k][n]
                w[k][n] = w[k][n] - alpha * (d + wd * w[k][n])
        history.append({k: {n: a.copy() for n, a in v.items()} for k, v in w.items()})
    return history


def assert_trees_close(a, b, rtol, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize(("mu", "wd"), [(0.9, 0.0), (0.95, 0.005), (0.0, 0.001)])
def test_matches_the_optax_chain(mu, wd):
    rng = np.random.default_rng(0)
    params = random_tree(rng)
    grads = [random_tree(rng) for _ in range(6)]
    lr = 0.05
    reference = optax.chain(
        optax.ema(mu, debias=False), optax.add_decayed_weights(wd), optax.scale(-lr)
    )
    assert_trees_close(
        run(momentum(lr, mu, wd), params, grads), run(reference, params, grads), rtol=1e-6
    )


@pytest.mark.parametrize(
    "lr",
    [0.1, optax.exponential_decay(0.1, transition_steps=2, decay_rate=0.5)],
    ids=["constant", "schedule"],
)
@pytest.mark.parametrize(("mu", "wd"), [(0.9, 0.005), (0.5, 0.0)])
@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_a_hand_written_loop_float64(lr, mu, wd, nesterov):
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        params = jax.tree.map(jnp.asarray, random_tree(rng, np.float64))
        grads = [jax.tree.map(jnp.asarray, random_tree(rng, np.float64)) for _ in range(8)]
        ours = run(momentum(lr, mu, wd, nesterov=nesterov), params, grads)
        # optax counts steps in int32, so a schedule gives alpha_t at float32 precision: the
        # reference loop reads alpha_t the same way, and checks the rule to float64 precision.
        alpha = (lambda t: float(lr(jnp.int32(t)))) if callable(lr) else lr
        expected = numpy_loop(params, grads, alpha, mu, wd, nesterov)
        for a, b in zip(ours, expected, strict=True):
            assert_trees_close(a, b, rtol=1e-12, atol=1e-14)


def test_first_step_by_hand():
    # m_1 = (1 - mu) g, so w_1 = w_0 - alpha ((1 - mu) g + lambda w_0): not optax.sgd's alpha g.
    w, g = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([0.5, 0.25])}
    (w1,) = run(momentum(0.1, 0.9, 0.01), w, [g])
    expected = np.array([1.0, -2.0]) - 0.1 * (
        0.1 * np.array([0.5, 0.25]) + 0.01 * np.array([1, -2])
    )
    np.testing.assert_allclose(w1["w"], expected, rtol=1e-6)


def test_keeps_float32_under_x64_and_traces_once():
    # Hyperparameters given as NumPy float64 scalars or a float64 schedule must not promote
    # float32 params (which would change the state's dtypes and retrace the next step).
    traces = 0

    with jax.enable_x64(True):
        schedule = optax.linear_schedule(np.float64(0.1), np.float64(0.01), 10)
        for lr in (np.float64(0.1), schedule):
            opt = momentum(lr, np.float64(0.9), np.float64(1e-3))

            @jax.jit
            def step(params, state, g, opt=opt):
                nonlocal traces
                traces += 1
                updates, state = opt.update(g, state, params)
                return optax.apply_updates(params, updates), state

            traces = 0
            params = {"w": jnp.ones(3, jnp.float32)}
            state = opt.init(params)
            for _ in range(5):
                params, state = step(params, state, {"w": jnp.ones(3, jnp.float32)})
            assert traces == 1
            dtypes = {leaf.dtype for leaf in jax.tree.leaves((params, state))}
            assert jnp.dtype(jnp.float32) in dtypes
            assert jnp.dtype(jnp.float64) not in dtypes


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"learning_rate": -0.1}, ValueError, "learning_rate must be a finite float >= 0"),
        ({"learning_rate": float("nan")}, ValueError, "learning_rate"),
        ({"learning_rate": 0.1, "momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\)"),
        ({"learning_rate": 0.1, "momentum": -0.1}, ValueError, "momentum must be in"),
        ({"learning_rate": 0.1, "weight_decay": -1e-3}, ValueError, "weight_decay must be"),
        ({"learning_rate": "0.1"}, TypeError, "learning_rate must be a real number"),
        ({"learning_rate": 0.1, "momentum": True}, TypeError, "momentum must be a real number"),
    ],
)
def test_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        momentum(**kwargs)


def test_nesterov_is_an_option_not_the_seeds_rule():
    rng = np.random.default_rng(2)
    params, grads = random_tree(rng), [random_tree(rng) for _ in range(6)]
    plain = run(momentum(0.1, 0.9), params, grads)[-1]
    look_ahead = run(momentum(0.1, 0.9, nesterov=True), params, grads)[-1]
    assert not np.allclose(jax.tree.leaves(plain)[0], jax.tree.leaves(look_ahead)[0])
