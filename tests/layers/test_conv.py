import jax
import jax.numpy as jnp
import pytest
import references as ref
from jax import lax
from jax.test_util import check_grads
from layer_helpers import assert_float32_grads_close_to_float64, normal, rel_err

from jaxnet import autodiff, conv2d

# (N, H, W, C_in, C_out, KH, KW, stride, padding): batch 1 and larger, odd/even/non-square
# sizes, kernels 1/3/5, strides 1-3 with remainders, paddings 0-2, channels 1-8.
CONFIGS = [
    (1, 5, 5, 1, 1, 1, 1, 1, 0),
    (2, 8, 8, 1, 4, 3, 3, 1, 1),
    (1, 7, 9, 3, 2, 3, 3, 2, 0),
    (3, 10, 6, 2, 5, 5, 5, 1, 2),
    (2, 11, 11, 4, 3, 5, 5, 3, 2),
    (1, 9, 12, 8, 8, 3, 3, 3, 1),
    (2, 6, 7, 5, 1, 1, 1, 2, 1),
    (1, 28, 28, 1, 16, 5, 5, 1, 2),
    (2, 14, 14, 16, 16, 5, 5, 1, 2),
    (2, 13, 8, 3, 4, 3, 5, 2, (1, 2)),
    (1, 12, 12, 2, 3, 3, 3, (2, 3), (0, 1)),
    (4, 5, 5, 2, 2, 5, 5, 1, 0),
    (1, 4, 4, 3, 2, 5, 5, 1, 1),
    (2, 9, 9, 6, 7, 3, 3, 2, 2),
    (1, 16, 10, 1, 8, 5, 3, 3, 0),
    (3, 8, 8, 8, 4, 1, 1, 1, 2),
    # batch 16 and 8 with few channels: dL/dw pads the batch or the channels (a speed path)
    (16, 14, 14, 16, 16, 5, 5, 1, 2),
    (8, 9, 7, 3, 4, 3, 3, 2, 1),
]
IDS = [f"n{c[0]}-{c[1]}x{c[2]}x{c[3]}-k{c[5]}x{c[6]}x{c[4]}-s{c[7]}-p{c[8]}" for c in CONFIGS]


def make(config, dtype=jnp.float64, seed=0):
    n, h, w, ci, co, kh, kw, stride, padding = config
    x = normal(seed, (n, h, w, ci), dtype)
    k = normal(seed + 1, (kh, kw, ci, co), dtype)
    b = normal(seed + 2, (co,), dtype)
    return (x, k, b), padding, stride


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_forward_matches_references(x64, config):
    (x, w, b), padding, stride = make(config)
    y = conv2d(x, w, b, padding=padding, stride=stride)
    pads = [(p, p) for p in ref.pair(padding)]
    dims = ("NHWC", "HWIO", "NHWC")
    xla = lax.conv_general_dilated(x, w, ref.pair(stride), pads, dimension_numbers=dims) + b
    assert y.shape == xla.shape
    assert rel_err(y, xla) < 1e-12
    assert rel_err(y, ref.conv(x, w, b, padding, stride)) < 1e-12  # the defining sum, in NumPy


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_custom_vjp_matches_autodiff_float64(x64, compare_rules, config):
    args, padding, stride = make(config)
    compare_rules(
        lambda x, w, b: conv2d(x, w, b, padding, stride),
        lambda x, w, b: autodiff.conv2d(x, w, b, padding, stride),
        args,
        (0, 1, 2),
    )


@pytest.mark.parametrize("config", CONFIGS[::3], ids=IDS[::3])
def test_check_grads_finite_differences(x64, config):
    args, padding, stride = make(config)
    check_grads(lambda *a: conv2d(*a, padding, stride), args, order=1, modes=["rev"])


@pytest.mark.parametrize("config", CONFIGS[1::4], ids=IDS[1::4])
def test_jit_and_vmap(x64, compare_rules, config):
    (x, w, b), padding, stride = make(config)
    xs = jnp.stack([x, 2.0 * x, -x])  # an extra leading axis for vmap
    compare_rules(
        lambda x, w, b: conv2d(x, w, b, padding, stride),
        lambda x, w, b: autodiff.conv2d(x, w, b, padding, stride),
        (xs, w, b),
        (0, 1, 2),
        vmap=(0, None, None),
    )


@pytest.mark.parametrize("config", CONFIGS[::2], ids=IDS[::2])
def test_float32_close_to_float64(config):
    args32, padding, stride = make(config, jnp.float32)
    assert_float32_grads_close_to_float64(
        lambda *a: jnp.sum(jnp.sin(conv2d(*a, padding, stride))), args32
    )


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (((2, 8, 8), (3, 3, 1, 4), (4,)), {}, ValueError, "x must have rank 4"),
        (((2, 8, 8, 3), (3, 3, 1, 4), (4,)), {}, ValueError, r"w must have shape \(3, 3, 3, 4\)"),
        (((2, 8, 8, 1), (3, 3, 1, 4), (5,)), {}, ValueError, r"b must have shape \(4,\)"),
        (((2, 8, 8, 1), (3, 3, 1), (4,)), {}, ValueError, "w must have rank 4"),
        (((2, 8, 8, 1), (3, 3, 1, 4), (4,)), {"stride": 0}, ValueError, "stride must be >= 1"),
        (((2, 8, 8, 1), (3, 3, 1, 4), (4,)), {"padding": -1}, ValueError, "padding must be >= 0"),
        (((2, 2, 2, 1), (5, 5, 1, 4), (4,)), {"padding": 1}, ValueError, "leaves no output"),
        (((2, 8, 8, 1), (3, 3, 1, 4), (4,)), {"stride": 1.0}, TypeError, "stride must be an int"),
        (((2, 8, 8, 1), (3, 3, 1, 4), (4,)), {"padding": (1, 2, 3)}, ValueError, "pair of ints"),
    ],
)
def test_bad_arguments(args, kwargs, error, match):
    x, w, b = (jnp.ones(s) for s in args)
    with pytest.raises(error, match=match):
        conv2d(x, w, b, **kwargs)
    with pytest.raises(error, match=match):
        jax.jit(lambda x, w, b: autodiff.conv2d(x, w, b, **kwargs))(x, w, b)


def test_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        conv2d(jnp.ones((1, 4, 4, 1), jnp.int32), jnp.ones((3, 3, 1, 1)), jnp.ones(1))
