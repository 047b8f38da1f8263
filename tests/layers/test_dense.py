import jax.numpy as jnp
import numpy as np
import pytest
import references as ref
from jax.test_util import check_grads
from layer_helpers import assert_float32_grads_close_to_float64, normal, rel_err

from jaxnet import autodiff, dense

# (input shape (N, ...), M): batch 1 and larger, flat and NHWC inputs that get flattened.
CONFIGS = [
    ((1, 5), 3),
    ((4, 784), 10),
    ((3, 7, 7, 16), 10),
    ((2, 8, 8, 16), 10),
    ((5, 4, 4, 4), 20),
    ((1, 3, 2, 1), 1),
]
IDS = [f"{'x'.join(map(str, s))}-to-{m}" for s, m in CONFIGS]


def make(config, dtype=jnp.float64):
    shape, m = config
    d = int(np.prod(shape[1:]))
    return normal(0, shape, dtype), normal(1, (m, d), dtype), normal(2, (m,), dtype)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_forward_matches_numpy(x64, config):
    x, w, b = make(config)
    assert rel_err(dense(x, w, b), ref.dense(x, w, b)) < 1e-13


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_custom_vjp_matches_autodiff_float64(x64, compare_rules, config):
    grads = compare_rules(dense, autodiff.dense, make(config), (0, 1, 2))
    assert grads[0].shape == config[0]  # dL/dx comes back in the shape of x


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_check_grads_finite_differences(x64, config):
    check_grads(dense, make(config), order=1, modes=["rev"])


def test_jit_and_vmap(x64, compare_rules):
    x, w, b = make(CONFIGS[2])
    xs = jnp.stack([x, 3.0 * x])
    compare_rules(dense, autodiff.dense, (xs, w, b), (0, 1, 2), vmap=(0, None, None))


def test_float32_close_to_float64():
    args32 = make(CONFIGS[2], jnp.float32)  # 784-term float32 sums through a saturating tanh
    assert_float32_grads_close_to_float64(lambda *a: jnp.sum(jnp.tanh(dense(*a))), args32)


@pytest.mark.parametrize(
    ("shapes", "error", "match"),
    [
        (((2, 5), (3, 4), (3,)), ValueError, r"w must have shape \(3, 5\) to match x"),
        (((2, 5), (3, 5), (4,)), ValueError, r"b must have shape \(3,\)"),
        (((2, 5), (15,), (3,)), ValueError, r"w must have shape \(M, D\)"),
        (((), (3, 1), (3,)), ValueError, "x must have shape"),
    ],
)
def test_bad_shapes(shapes, error, match):
    with pytest.raises(error, match=match):
        dense(*(jnp.ones(s) for s in shapes))


def test_dtypes_must_be_float_and_agree():
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        dense(jnp.ones((2, 3), jnp.int32), jnp.ones((1, 3)), jnp.ones(1))
    with pytest.raises(TypeError, match="share one floating dtype"):
        dense(jnp.ones((2, 3), jnp.float16), jnp.ones((1, 3)), jnp.ones(1))
