"""TrainState: the on-device moving averages (debiased on the host) and the NaN watch."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from parallel_worker import tiny

from jaxnet.training import FitConfig, initial_state


def advance(state, loss, accuracy, iteration, decay):
    metrics = {"loss": jnp.float32(loss), "accuracy": jnp.float32(accuracy)}
    return state.advance(state.params, state.opt_state, metrics, jnp.int32(iteration), decay)


def test_moving_averages_hand_values():
    state = initial_state(tiny(), FitConfig(iterations=10, batch_size=4, learning_rate=0.1))
    state = advance(state, 1.0, 0.5, 0, decay=0.5)
    assert state.averages(1, 0.5) == (1.0, 0.5)  # debiased: the first value exactly
    # m = 0.5*0.5 + 0.5*2 = 1.25; debiased 1.25 / (1 - 0.25) = 5/3
    state = advance(state, 2.0, 0.5, 1, decay=0.5)
    assert state.averages(2, 0.5) == pytest.approx((5 / 3, 0.5))
    state = initial_state(tiny(), FitConfig(iterations=10, batch_size=4, learning_rate=0.1))
    for i in range(50):
        state = advance(state, 0.25, 1.0, i, decay=0.99)
    assert state.averages(50, 0.99) == pytest.approx((0.25, 1.0), rel=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_the_first_bad_iteration_is_kept(bad):
    state = initial_state(tiny(), FitConfig(iterations=10, batch_size=4, learning_rate=0.1))
    assert int(state.bad_iteration) == -1
    state = advance(state, 1.0, 0.5, 0, 0.9)
    assert int(state.bad_iteration) == -1
    state = advance(state, bad, 0.5, 1, 0.9)
    state = advance(state, 1.0, 0.5, 2, 0.9)
    assert int(state.bad_iteration) == 1
    assert not np.isfinite(state.averages(3, 0.9)[0])  # a diverged run shows, it is not hidden


def test_conv_init_gain_scales_only_the_kernels():
    base = {"iterations": 10, "batch_size": 4, "learning_rate": 0.1}
    one = initial_state(tiny(), FitConfig(**base)).params
    tenth = initial_state(tiny(), FitConfig(**base, conv_init_gain=0.1)).params
    np.testing.assert_allclose(tenth["conv1"]["w"], 0.1 * one["conv1"]["w"], rtol=1e-6)
    np.testing.assert_array_equal(tenth["dense1"]["w"], one["dense1"]["w"])
