"""TrainState: the on-device moving averages (debiased on the host) and the NaN watch."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parallel_worker import tiny

from jaxnet.training import FitConfig, Run, initial_state

CONFIG = FitConfig(iterations=10, batch_size=4, learning_rate=0.1)


def advance(state, loss, accuracy, iteration, decay):
    metrics = {"loss": jnp.float32(loss), "accuracy": jnp.float32(accuracy)}
    return state.advance(state.params, state.opt_state, metrics, jnp.int32(iteration), decay=decay)


def test_moving_averages_hand_values():
    state = initial_state(tiny(), CONFIG)
    state = advance(state, 1.0, 0.5, 0, decay=0.5)
    assert state.averages(1, 0.5) == (1.0, 0.5)  # debiased: the first value exactly
    # m = 0.5*0.5 + 0.5*2 = 1.25; debiased 1.25 / (1 - 0.25) = 5/3
    state = advance(state, 2.0, 0.5, 1, decay=0.5)
    assert state.averages(2, 0.5) == pytest.approx((5 / 3, 0.5))
    state = initial_state(tiny(), CONFIG)
    for i in range(50):
        state = advance(state, 0.25, 1.0, i, decay=0.99)
    assert state.averages(50, 0.99) == pytest.approx((0.25, 1.0), rel=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_the_first_bad_iteration_is_kept(bad):
    state = initial_state(tiny(), CONFIG)
    assert int(state.bad_iteration) == -1
    state = advance(state, 1.0, 0.5, 0, 0.9)
    assert int(state.bad_iteration) == -1
    state = advance(state, bad, 0.5, 1, 0.9)
    state = advance(state, 1.0, 0.5, 2, 0.9)
    assert int(state.bad_iteration) == 1
    assert not np.isfinite(state.averages(3, 0.9)[0])  # a diverged run shows, it is not hidden


def test_conv_init_gain_scales_only_the_kernels():
    one = initial_state(tiny(), CONFIG).params
    tenth = initial_state(tiny(), dataclasses.replace(CONFIG, conv_init_gain=0.1)).params
    np.testing.assert_allclose(tenth["conv1"]["w"], 0.1 * one["conv1"]["w"], rtol=1e-6)
    np.testing.assert_array_equal(tenth["dense1"]["w"], one["dense1"]["w"])


def test_the_weights_average_by_hand():
    state = initial_state(tiny(), dataclasses.replace(CONFIG, weight_average=0.5))
    leaf = lambda tree: np.asarray(jax.tree.leaves(tree)[0])  # noqa: E731
    w0 = leaf(state.params)
    np.testing.assert_array_equal(leaf(state.averaged_params), w0)
    assert jax.tree.leaves(state.averaged_params)[0] is not jax.tree.leaves(state.params)[0]
    metrics = {"loss": jnp.float32(1.0), "accuracy": jnp.float32(0.5)}
    w1 = jax.tree.map(lambda p: p + 1.0, state.params)
    # iteration 0: decay min(0.5, 1/10) = 0.1, so the average is 0.1 w0 + 0.9 w1
    s1 = state.advance(w1, state.opt_state, metrics, jnp.int32(0), decay=0.9, weight_average=0.5)
    np.testing.assert_allclose(leaf(s1.averaged_params), 0.1 * w0 + 0.9 * leaf(w1), rtol=1e-6)
    # iteration 90: min(0.5, 91/100) = 0.5
    w2 = jax.tree.map(lambda p: p + 1.0, w1)
    s2 = s1.advance(w2, s1.opt_state, metrics, jnp.int32(90), decay=0.9, weight_average=0.5)
    want = 0.5 * leaf(s1.averaged_params) + 0.5 * leaf(w2)
    np.testing.assert_allclose(leaf(s2.averaged_params), want, rtol=1e-6)


def test_no_average_kept_unless_asked():
    state = initial_state(tiny(), CONFIG)
    assert state.averaged_params is None
    assert Run(state).reported_params is state.params
    state = initial_state(tiny(), dataclasses.replace(CONFIG, weight_average=0.9))
    assert Run(state).reported_params is state.averaged_params
