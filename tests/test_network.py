"""Layer specs, architecture validation, init, forward and the parameter table."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxnet import architectures, autodiff, layers
from jaxnet.network import (
    Architecture,
    Conv,
    Dense,
    Layer,
    MaxPool,
    ReLU,
    count_params,
    forward,
    init,
    layer_ops,
    parameter_rows,
    parameter_table,
)


def tiny(c_in: int = 2) -> Architecture:
    """A small network exercising every layer kind, stride and a non-square input."""
    return Architecture(
        layers=(
            Conv(3, 3, c_in, 4, padding=1),
            ReLU(),
            MaxPool(2, 2),
            Conv(3, 2, 4, 5, padding=(1, 0), stride=(2, 1)),
            ReLU(),
            Dense(2 * 4 * 5, 6),
            ReLU(),
            Dense(6, 3),
        ),
        input_shape=(7, 10, c_in),
        num_classes=3,
    )


jit_forward = jax.jit(forward, static_argnums=(0, 3))


@partial(jax.jit, static_argnums=0)
def reference_forward(arch: Architecture, params: dict, x: jax.Array) -> jax.Array:
    """The network written with lax primitives only: an independent reference for forward."""
    for layer in arch.layers:
        if isinstance(layer, Conv):
            p = params[layer.name]
            x = lax.conv_general_dilated(
                x,
                p["w"],
                window_strides=layer.stride,
                padding=[(q, q) for q in layer.padding],
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            x = x + p["b"]
        elif isinstance(layer, MaxPool):
            x = lax.reduce_window(
                x, -jnp.inf, lax.max, (1, *layer.window, 1), (1, *layer.stride, 1), "VALID"
            )
        elif isinstance(layer, Dense):
            p = params[layer.name]
            x = x.reshape(x.shape[0], -1) @ p["w"].T + p["b"]
        else:
            x = jnp.maximum(x, 0)
    return x


# --- specs and architecture ------------------------------------------------------------------


def test_specs_normalise_ints_and_pairs_and_are_hashable():
    conv = Conv(5, 5, 1, 16, padding=2)
    assert conv.padding == (2, 2) and conv.stride == (1, 1)
    assert MaxPool(3, (2, 1)).window == (3, 3) and MaxPool(3, (2, 1)).stride == (2, 1)
    assert Conv(5, 5, 1, 16, padding=[2, 2]) == conv
    numpy = Conv(np.int64(3), 3, 1, 1, padding=np.int32(1), stride=[np.int64(2), 1])
    assert numpy == Conv(3, 3, 1, 1, padding=1, stride=(2, 1))
    assert type(numpy.kh) is int and all(type(v) is int for v in (*numpy.padding, *numpy.stride))
    assert hash(numpy) == hash(Conv(3, 3, 1, 1, padding=1, stride=(2, 1)))
    assert hash(architectures.mnist()) == hash(architectures.mnist())
    assert architectures.mnist() == architectures.mnist()
    assert architectures.mnist() != architectures.cifar10_baseline()


def test_architecture_is_a_static_jit_argument():
    arch = tiny()
    params = init(arch, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, *arch.input_shape))
    # A function of its own: jax.jit(forward, ...) shares its cache with other tests' jits of
    # forward (test_step's), which would make the count below depend on the test order.
    f = jax.jit(lambda a, p, x, r: forward(a, p, x, r), static_argnums=(0, 3))
    np.testing.assert_array_equal(f(arch, params, x, "analytic"), f(tiny(), params, x, "analytic"))
    assert f._cache_size() == 1  # an equal architecture built anew hits the cache


def test_layers_are_named_by_kind_and_position_and_know_their_output_shapes():
    arch = tiny()
    names = [layer.name for layer in arch.layers]
    assert names == ["conv1", "relu1", "pool1", "conv2", "relu2", "dense1", "relu3", "dense2"]
    assert [layer.name for layer in arch.parametrised] == ["conv1", "conv2", "dense1", "dense2"]
    shapes = [(7, 10, 4), (7, 10, 4), (3, 5, 4), (2, 4, 5), (2, 4, 5), (6,), (6,), (3,)]
    assert list(arch.output_shapes) == shapes
    named = Architecture((Dense(12, 3, name="head"),), (2, 2, 3), 3)
    assert named.layers[0].name == "head"


@pytest.mark.parametrize(
    ("layers", "input_shape", "num_classes", "match"),
    [
        ((Conv(3, 3, 2, 4), Dense(4, 3)), (3, 3, 1), 3, "'conv1'.*c_in = 2.*1 channels"),
        ((Conv(3, 3, 1, 4), Dense(5, 3)), (3, 3, 1), 3, "'dense1'.*n_in = 5.*4 values"),
        ((Conv(5, 5, 1, 4, padding=1), Dense(4, 3)), (2, 2, 1), 3, "'conv1'.*leaves no output"),
        ((MaxPool(3, 1), Dense(4, 3)), (2, 2, 1), 3, r"'pool1' \(MaxPool\): its 3x3 window leaves"),
        ((Dense(4, 4), Conv(1, 1, 4, 3)), (2, 2, 1), 3, "'conv1'.*needs an image"),
        ((Dense(4, 4), MaxPool()), (2, 2, 1), 3, r"'pool1' \(MaxPool\) needs an image"),
        ((Dense(4, 4),), (2, 2, 1), 3, "'dense1'.*num_classes = 3"),
        ((Conv(1, 1, 1, 3),), (2, 2, 1), 3, "'conv1'.*num_classes = 3"),
        ((Dense(4, 3, name="a"), Dense(3, 3, name="a")), (2, 2, 1), 3, "unique.*'a'"),
        ((), (2, 2, 1), 3, "empty"),
        ((Dense(4, 3),), (2, 2), 3, r"input_shape must be \(H, W, C\)"),
        ((Dense(4, 3),), (2, 0, 1), 3, "input_shape entries must be >= 1"),
        ((Dense(4, 1),), (2, 2, 1), 1, "num_classes must be >= 2"),
    ],
)
def test_bad_architectures_name_the_layer(layers, input_shape, num_classes, match):
    with pytest.raises(ValueError, match=match) as info:
        Architecture(layers, input_shape, num_classes)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Conv(0, 3, 1, 1), ValueError, "kh must be >= 1"),
        (lambda: Conv(3, 3, 1, 1, padding=(1, -1)), ValueError, "Conv: padding must be >= 0"),
        (lambda: Conv(3, 3, 1, 1, stride=(1, 2, 3)), ValueError, "stride must be an int or a pair"),
        (lambda: Conv(3, 3, 1, 1, stride=(1, 2.0)), TypeError, "Conv: stride must be an int"),
        (lambda: Conv(3.0, 3, 1, 1), TypeError, "kh must be an int"),
        (lambda: Conv(True, 3, 1, 1), TypeError, "Conv: kh must be an int, got True"),
        (lambda: Conv(3, 3, 1, 1, name=""), TypeError, "name"),
        (lambda: MaxPool(0), ValueError, "window must be >= 1"),
        (lambda: MaxPool("2"), TypeError, "MaxPool: window must be an int"),
        (lambda: Dense(4, 0, name="fc"), ValueError, "Dense 'fc': n_out must be >= 1"),
        (lambda: Dense(4, 2.5), TypeError, "Dense: n_out must be an int"),
        (lambda: ReLU(name=3), TypeError, "ReLU: name must be a non-empty str or None"),
        (lambda: Architecture(("relu",), (1, 1, 1), 2), TypeError, "layer 0 must be"),
    ],
)
def test_bad_specs(build, error, match):
    with pytest.raises(error, match=match) as info:
        build()
    assert "\n" not in str(info.value)


# --- what each spec owns -------------------------------------------------------------------

SPECS = [
    # spec, input, output, param shapes, fan_in, description, arithmetic
    (
        Conv(3, 2, 4, 5, padding=(1, 0), stride=(2, 1)),
        (6, 10, 4),
        (3, 9, 5),
        {"w": (3, 2, 4, 5), "b": (5,)},
        3 * 2 * 4,
        "conv 3x2x4x5, pad 1x0, stride 2x1",
        "3*2*4*5 + 5 = 125",
    ),
    (
        Conv(5, 5, 1, 16, padding=2),
        (28, 28, 1),
        (28, 28, 16),
        {"w": (5, 5, 1, 16), "b": (16,)},
        25,
        "conv 5x5x1x16, pad 2",
        "5*5*1*16 + 16 = 416",
    ),
    (ReLU(), (3, 4, 2), (3, 4, 2), {}, 0, "ReLU", "0"),
    (ReLU(), (7,), (7,), {}, 0, "ReLU", "0"),
    (MaxPool(3, (2, 1)), (7, 5, 3), (3, 3, 3), {}, 0, "max pool 3x3, stride 2x1", "0"),
    (
        Dense(24, 6),
        (2, 4, 3),
        (6,),
        {"w": (6, 24), "b": (6,)},
        24,
        "dense 24 -> 6",
        "24*6 + 6 = 150",
    ),
]


@pytest.mark.parametrize(("spec", "x_shape", "y_shape", "shapes", "fan_in", "text", "sums"), SPECS)
def test_spec_shapes_description_and_flops(spec, x_shape, y_shape, shapes, fan_in, text, sums):
    assert spec.output_shape(x_shape) == y_shape
    assert spec.param_shapes() == shapes
    assert spec.param_count() == sum(math.prod(s) for s in shapes.values())
    assert spec.fan_in == fan_in
    assert spec.describe() == text
    assert spec.param_arithmetic() == sums
    assert spec.flops(y_shape) == 2 * math.prod(y_shape) * fan_in


@pytest.mark.parametrize(("spec", "x_shape", "y_shape", "shapes", "fan_in", "text", "sums"), SPECS)
@pytest.mark.parametrize("rules", ["analytic", "autodiff"])
def test_spec_apply_gives_its_output_shape(
    spec, x_shape, y_shape, shapes, fan_in, text, sums, rules
):
    keys = iter(jax.random.split(jax.random.key(0), 3))
    params = {k: jax.random.normal(next(keys), s) for k, s in shapes.items()} or None
    x = jax.random.normal(next(keys), (2, *x_shape))
    y = spec.apply(params, x, layer_ops(rules))
    assert y.shape == (2, *y_shape)


def test_spec_apply_calls_the_layer_functions_it_is_given():
    conv = Conv(3, 3, 2, 4, padding=1, stride=2)
    p = {"w": jax.random.normal(jax.random.key(0), (3, 3, 2, 4)), "b": jnp.arange(4.0)}
    x = jax.random.normal(jax.random.key(1), (2, 5, 6, 2))
    expected = layers.conv2d(x, p["w"], p["b"], padding=1, stride=2)
    np.testing.assert_array_equal(conv.apply(p, x, layers), expected)
    np.testing.assert_array_equal(
        MaxPool(2, 1).apply(None, x, autodiff), autodiff.maxpool2d(x, 2, 1)
    )


def test_layer_ops():
    assert layer_ops("analytic") is layers
    assert layer_ops("autodiff") is autodiff
    with pytest.raises(
        ValueError, match=r"rules must be one of \('analytic', 'autodiff'\), got 'x'"
    ):
        layer_ops("x")


@dataclass(frozen=True)
class Square(Layer):
    """A layer of a kind network.py has never heard of: x ** 2, no parameters."""

    kind: ClassVar[str] = "square"
    name: str | None = None

    def output_shape(self, input_shape):
        return input_shape

    def describe(self):
        return "square"

    def apply(self, params, x, ops):
        return x * x


def test_a_new_layer_kind_needs_no_change_to_the_network_code():
    arch = Architecture((Square(), Dense(12, 3), Square()), (2, 2, 3), 3)
    assert [layer.name for layer in arch.layers] == ["square1", "dense1", "square2"]
    assert [row.kind for row in parameter_rows(arch)] == ["square", "dense 12 -> 3", "square"]
    params = init(arch, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 2, 2, 3))
    w, b = params["dense1"]["w"], params["dense1"]["b"]
    expected = ((x * x).reshape(2, -1) @ w.T + b) ** 2
    np.testing.assert_allclose(forward(arch, params, x), expected, rtol=1e-5, atol=1e-6)


# --- init --------------------------------------------------------------------------------------


def test_init_shapes_dtype_and_determinism():
    arch = tiny()
    params = init(arch, jax.random.key(0))
    assert list(params) == ["conv1", "conv2", "dense1", "dense2"]
    assert params["conv2"]["w"].shape == (3, 2, 4, 5) and params["conv2"]["b"].shape == (5,)
    assert params["dense1"]["w"].shape == (6, 40) and params["dense1"]["b"].shape == (6,)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    again = init(arch, jax.random.key(0))
    other = init(arch, jax.random.key(1))
    for a, b, c in zip(*map(jax.tree.leaves, (params, again, other)), strict=True):
        np.testing.assert_array_equal(a, b)
        if a.ndim > 1:
            assert not np.array_equal(a, c)
    assert all(np.all(params[name]["b"] == 0) for name in params)
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == count_params(arch)


def test_init_he_scaling():
    arch = architectures.cifar10_baseline()
    params = init(arch, jax.random.key(0))
    for name, fan_in in (("conv2", 5 * 5 * 16), ("dense1", 4096)):
        std = float(jnp.std(params[name]["w"]))
        assert std == pytest.approx(math.sqrt(2 / fan_in), rel=0.05), name


def test_init_float64_and_bad_dtypes():
    arch = tiny()
    with jax.enable_x64(True):
        params = init(arch, jax.random.PRNGKey(0), dtype=jnp.float64)
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params))
    with pytest.raises(TypeError, match="floating"):
        init(arch, jax.random.key(0), dtype=jnp.int32)
    if not jax.config.jax_enable_x64:
        with pytest.raises(TypeError, match="enable_x64"):
            init(arch, jax.random.key(0), dtype=jnp.float64)
    with pytest.raises(TypeError, match="Architecture"):
        init("mnist", jax.random.key(0))


# --- forward -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_forward_matches_lax_reference(n):
    arch = tiny()
    params = init(arch, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (n, *arch.input_shape))
    expected = reference_forward(arch, params, x)
    for rules in ("analytic", "autodiff"):
        logits = jit_forward(arch, params, x, rules)
        assert logits.shape == (n, 3) and logits.dtype == jnp.float32
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_forward_mnist_shapes_and_rules_agree():
    arch = architectures.mnist()
    params = init(arch, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    a = jit_forward(arch, params, x, "analytic")
    # Equal bit for bit on XLA's kernels; to float32 rounding where the rule's convolutions run
    # on oneDNN (CPU, float32), which sums in another order.
    np.testing.assert_allclose(a, jit_forward(arch, params, x, "autodiff"), rtol=1e-5, atol=1e-5)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda v: v.astype(jnp.float64), params)
        x64 = x.astype(jnp.float64)
        np.testing.assert_array_equal(
            jit_forward(arch, p64, x64, "analytic"), jit_forward(arch, p64, x64, "autodiff")
        )
    np.testing.assert_allclose(a, reference_forward(arch, params, x), rtol=1e-5, atol=1e-5)


def test_forward_under_jit_and_vmap():
    arch = tiny()
    params = init(arch, jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (2, 3, *arch.input_shape))  # 2 batches of 3
    expected = jnp.stack([jit_forward(arch, params, x, "analytic") for x in xs])
    batched = jax.jit(jax.vmap(lambda x: forward(arch, params, x)))(xs)
    np.testing.assert_allclose(batched, expected, rtol=1e-5, atol=1e-6)


def test_forward_errors():
    arch = tiny()
    params = init(arch, jax.random.key(0))
    x = jnp.zeros((2, *arch.input_shape))
    with pytest.raises(ValueError, match=r"rules must be one of \('analytic', 'autodiff'\)"):
        forward(arch, params, x, rules="numeric")
    with pytest.raises(ValueError, match=r"x must have shape \(N, 7, 10, 2\)"):
        forward(arch, params, jnp.zeros((2, 10, 7, 2)))
    with pytest.raises(TypeError, match="floating-point"):
        forward(arch, params, jnp.zeros((2, *arch.input_shape), jnp.uint8))
    with pytest.raises(ValueError, match="params must have the layers"):
        forward(arch, {k: v for k, v in params.items() if k != "dense2"}, x)
    bad = {**params, "conv1": {"w": jnp.zeros((3, 3, 2, 5)), "b": jnp.zeros(4)}}
    with pytest.raises(ValueError, match=r"params\['conv1'\]\['w'\] must have shape"):
        forward(arch, bad, x)


# --- parameter table ---------------------------------------------------------------------------


def test_parameter_rows_and_table():
    arch = tiny()
    rows = parameter_rows(arch)
    assert [row.layer for row in rows] == [layer.name for layer in arch.layers]
    assert rows[0].arithmetic == "3*3*2*4 + 4 = 76"
    assert rows[3].kind == "conv 3x2x4x5, pad 1x0, stride 2x1"
    assert rows[5].arithmetic == "40*6 + 6 = 246"
    assert rows[1].params == 0 and rows[1].arithmetic == "0"
    table = parameter_table(arch)
    lines = table.strip().split("\n")
    assert lines[0] == "| Layer | Type | Output shape | Trainable parameters |"
    assert lines[2] == "| input | input | 7x10x2 | 0 |"
    assert "| pool1 | max pool 2x2, stride 2 | 3x5x4 | 0 |" in lines
    assert lines[-1] == f"| **total** | | | **{count_params(arch)}** |"
    assert len(lines) == 2 + 1 + len(arch.layers) + 1
    assert count_params(arch) == 76 + (3 * 2 * 4 * 5 + 5) + 246 + (6 * 3 + 3)
