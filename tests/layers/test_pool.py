import jax
import jax.numpy as jnp
import numpy as np
import pytest
import references as ref
from jax import lax
from jax.test_util import check_grads
from layer_helpers import normal

from jaxnet import autodiff, maxpool2d

# (N, H, W, C, window, stride): the seed's 2x2/2, odd sizes that drop a row, overlapping
# windows (stride < window), gaps (stride > window), non-square windows and strides.
CONFIGS = [
    (1, 4, 4, 1, 2, 2),
    (2, 28, 28, 16, 2, 2),
    (3, 7, 9, 2, 2, 2),
    (1, 8, 6, 3, 3, 2),
    (2, 5, 5, 4, 2, 1),
    (1, 9, 11, 1, 3, 3),
    (2, 10, 7, 5, (2, 3), (1, 2)),
    (1, 6, 6, 2, 1, 2),
    (4, 8, 8, 8, 2, 3),
]
IDS = [f"n{c[0]}-{c[1]}x{c[2]}x{c[3]}-w{c[4]}-s{c[5]}" for c in CONFIGS]


def unique_values(config, dtype=jnp.float64, seed=0):
    """An input whose entries are all distinct, so every window has one maximum."""
    n, h, w, c = config[:4]
    perm = jax.random.permutation(jax.random.PRNGKey(seed), n * h * w * c)
    return (perm.astype(dtype) / (n * h * w * c) - 0.5).reshape(n, h, w, c)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_forward_matches_reduce_window(x64, config):
    x = normal(0, config[:4])
    (kh, kw), (sh, sw) = ref.pair(config[4]), ref.pair(config[5])
    xla = lax.reduce_window(x, -jnp.inf, lax.max, (1, kh, kw, 1), (1, sh, sw, 1), "VALID")
    y = maxpool2d(x, config[4], config[5])
    assert y.shape == xla.shape
    np.testing.assert_array_equal(y, xla)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_custom_vjp_matches_autodiff_unique_values(x64, compare_rules, config):
    x = unique_values(config)
    window, stride = config[4:]
    compare_rules(
        lambda x: maxpool2d(x, window, stride),
        lambda x: autodiff.maxpool2d(x, window, stride),
        (x,),
        (0,),
    )


@pytest.mark.parametrize("config", CONFIGS[::2], ids=IDS[::2])
def test_check_grads_finite_differences(x64, config):
    # Unique values spaced 1/size apart: the finite-difference step never flips a maximum.
    x = unique_values(config)
    check_grads(
        lambda x: maxpool2d(x, config[4], config[5]), (x,), order=1, modes=["rev"], eps=1e-6
    )


def test_ties_route_to_first_maximum_in_row_major_order(x64):
    # Window values (row-major): [[1, 3], [3, 0]] -> the 3 at (0, 1) gets the gradient;
    # an all-zero window (as after ReLU) -> its top-left element does.
    x = jnp.array([[1.0, 3.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]]).reshape(1, 2, 4, 1)
    weights = jnp.array([2.0, 5.0]).reshape(1, 1, 2, 1)
    for fn in (maxpool2d, autodiff.maxpool2d):
        dx = jax.grad(lambda x, fn=fn: jnp.sum(fn(x) * weights))(x)
        expected = np.array([[0.0, 2.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]]).reshape(1, 2, 4, 1)
        np.testing.assert_array_equal(dx, expected)


def test_ties_with_overlapping_windows_add_up(x64):
    # All equal, 3x3 windows at stride 1 over 4x4: each window sends its gradient to its
    # top-left corner, so dx counts how many windows start at each position.
    x = jnp.zeros((1, 4, 4, 1))
    dx = jax.grad(lambda x: jnp.sum(maxpool2d(x, 3, 1)))(x)
    expected = np.zeros((4, 4))
    expected[:2, :2] = 1.0
    np.testing.assert_array_equal(dx[0, :, :, 0], expected)


def test_ties_after_relu_match_autodiff(x64, compare_rules):
    x = jnp.maximum(normal(3, (2, 8, 8, 3)), 0.0)  # about half the entries are tied at zero
    compare_rules(maxpool2d, autodiff.maxpool2d, (x,), (0,))


@pytest.mark.parametrize("config", CONFIGS[1::3], ids=IDS[1::3])
def test_jit_and_vmap(x64, compare_rules, config):
    x = unique_values(config)
    xs = jnp.stack([x, -x])
    window, stride = config[4:]
    compare_rules(
        lambda x: maxpool2d(x, window, stride),
        lambda x: autodiff.maxpool2d(x, window, stride),
        (xs,),
        (0,),
        vmap=0,
    )


def test_float32_gradient_is_exact(compare_rules):
    x = unique_values(CONFIGS[1], jnp.float32)
    compare_rules(maxpool2d, autodiff.maxpool2d, (x,), (0,), rtol=0.0)


@pytest.mark.parametrize(
    ("shape", "kwargs", "error", "match"),
    [
        ((4, 4, 1), {}, ValueError, "x must have rank 4"),
        ((1, 4, 4, 1), {"window": 0}, ValueError, "window must be >= 1"),
        ((1, 4, 4, 1), {"stride": -1}, ValueError, "stride must be >= 1"),
        ((1, 1, 4, 1), {}, ValueError, "leaves no output"),
        ((1, 4, 4, 1), {"window": 2.0}, TypeError, "window must be an int"),
    ],
)
def test_bad_arguments(shape, kwargs, error, match):
    with pytest.raises(error, match=match):
        maxpool2d(jnp.ones(shape), **kwargs)


def test_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        maxpool2d(jnp.ones((1, 4, 4, 1), jnp.int32))
