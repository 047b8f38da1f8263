import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from layer_helpers import normal

from jaxnet import autodiff, relu

SHAPES = [(1, 3), (4, 7, 9, 2), (2, 28, 28, 16), (5,)]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_rule_match_autodiff(x64, compare_rules, shape):
    x = normal(0, shape)
    np.testing.assert_array_equal(relu(x), np.maximum(np.asarray(x), 0.0))
    compare_rules(relu, autodiff.relu, (x,), (0,), rtol=0.0)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_check_grads_finite_differences(x64, shape):
    # keep entries away from the kink at 0, where finite differences are meaningless
    x = normal(1, shape)
    x = jnp.where(jnp.abs(x) < 1e-2, 0.5, x)
    check_grads(relu, (x,), order=1, modes=["rev"])


def test_step_at_zero_is_zero(x64):
    x = jnp.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(relu(x)))(x), [0.0, 0.0, 1.0])


def test_jit_vmap_and_float32():
    x = normal(2, (3, 2, 4, 4, 1), jnp.float32)
    g = jax.jit(jax.vmap(jax.grad(lambda x: jnp.sum(relu(x) ** 2))))(x)
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, 2 * np.maximum(np.asarray(x), 0.0), rtol=1e-6)


def test_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        relu(jnp.ones(3, jnp.int32))


def test_twin_agrees_with_the_rule_at_exact_zeros(x64):
    # Real images give exact zeros at ReLU (a zero bias on a black background); the twin's
    # derivative there must be the rule's step(0) = 0, not maximum's 0.5.
    x = jnp.array([[-1.0, 0.0, 0.0, 2.0], [0.0, 3.0, -0.0, 0.0]])
    g = jnp.arange(1.0, 9.0).reshape(2, 4)
    (rule,) = jax.vjp(relu, x)[1](g)
    (twin,) = jax.vjp(autodiff.relu, x)[1](g)
    np.testing.assert_array_equal(rule, np.where(np.asarray(x) > 0, np.asarray(g), 0.0))
    np.testing.assert_array_equal(twin, rule)
