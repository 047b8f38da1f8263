"""Property-based sweeps over each layer's whole space of valid arguments (hypothesis).

Run as a child process by ``test_properties.py`` (``python properties.py LAYER``), so that an
abort inside XLA fails one test instead of killing the test run: before each example it prints
``EXAMPLE ...``, so the last such line names the configuration that aborted.

For every example, in float32 and float64: the forward pass against the NumPy reference of
``references.py``; the analytic VJP and the autodiff twin's VJP (one random cotangent) against
the NumPy backward and against each other. Values are drawn either as small integers (exact
zeros and ties, as real images give after a ReLU) or as normal floats.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import references as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxnet
from jaxnet import autodiff

jax.config.update("jax_enable_x64", True)

EXAMPLES = {"conv": 60, "maxpool": 40, "relu": 20, "dense": 20, "loss": 25}
TOL = {"float32": 2e-5, "float64": 1e-10}
settings.register_profile(
    "sweep",
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),  # the same examples on every CI run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("sweep")

dtypes = st.sampled_from(["float32", "float64"])


def values(rng: np.random.Generator, shape, ties: bool, dtype: str) -> jax.Array:
    """Small integers (many exact zeros and ties) or standard normals."""
    a = rng.integers(-2, 3, shape) if ties else rng.standard_normal(shape)
    return jnp.asarray(a, dtype)


def close(name: str, got, want, dtype: str) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1.0)
    err = float(np.max(np.abs(got - want), initial=0.0)) / scale
    assert err <= TOL[dtype], f"{name}: relative error {err:.2e} > {TOL[dtype]:.0e}"


def both_vjps(analytic, twin, args, cotangent):
    """Output and VJP of the analytic rule and of the autodiff twin, each one jitted call."""

    def run(fn):
        y, pullback = jax.vjp(fn, *args)
        return (y, *pullback(cotangent))

    return jax.jit(lambda: run(analytic))(), jax.jit(lambda: run(twin))()


def check_all(name, got_pair, want, dtype):
    """Each of the analytic and the twin's results against the reference, and each other."""
    for rules, got in zip(("analytic", "autodiff"), got_pair, strict=True):
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            close(f"{name} {rules} output {i}", g, w, dtype)
    for i, (a, t) in enumerate(zip(*got_pair, strict=True)):
        close(f"{name} analytic vs autodiff output {i}", a, t, dtype)


def announce(**case) -> None:
    print("EXAMPLE", case, flush=True)


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    ph, pw = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    h = draw(st.integers(max(1, kh - 2 * ph), max(1, kh - 2 * ph) + 9))
    w = draw(st.integers(max(1, kw - 2 * pw), max(1, kw - 2 * pw) + 9))
    return dict(
        n=draw(st.sampled_from([1, 2, 3, 16])),
        h=h,
        w=w,
        c_in=draw(st.integers(1, 4)),
        c_out=draw(st.sampled_from([1, 2, 3, 5, 16, 17])),
        k=(kh, kw),
        padding=(ph, pw),
        stride=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        dtype=draw(dtypes),
        ties=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@given(conv_cases())
def conv(case):
    announce(**case)
    rng = np.random.default_rng(case["seed"])
    dt, ties = case["dtype"], case["ties"]
    x = values(rng, (case["n"], case["h"], case["w"], case["c_in"]), ties, dt)
    w = values(rng, (*case["k"], case["c_in"], case["c_out"]), ties, dt)
    b = values(rng, (case["c_out"],), ties, dt)
    p, s = case["padding"], case["stride"]
    y = ref.conv(x, w, b, p, s)
    g = values(rng, y.shape, False, dt)
    got = both_vjps(
        lambda x, w, b: jaxnet.conv2d(x, w, b, p, s),
        lambda x, w, b: autodiff.conv2d(x, w, b, p, s),
        (x, w, b),
        g,
    )
    check_all("conv2d", got, (y, *ref.conv_vjp(x, w, g, p, s)), dt)


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return dict(
        n=draw(st.integers(1, 3)),
        h=draw(st.integers(kh, kh + 8)),
        w=draw(st.integers(kw, kw + 8)),
        c=draw(st.integers(1, 3)),
        window=(kh, kw),
        stride=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        dtype=draw(dtypes),
        ties=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@given(pool_cases())
def maxpool(case):
    announce(**case)
    rng = np.random.default_rng(case["seed"])
    dt = case["dtype"]
    x = values(rng, (case["n"], case["h"], case["w"], case["c"]), case["ties"], dt)
    k, s = case["window"], case["stride"]
    y, _ = ref.maxpool(x, k, s)
    g = values(rng, y.shape, False, dt)
    got = both_vjps(
        lambda x: jaxnet.maxpool2d(x, k, s), lambda x: autodiff.maxpool2d(x, k, s), (x,), g
    )
    check_all("maxpool2d", got, (y, ref.maxpool_vjp(x, g, k, s)), dt)


shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


@given(shapes, dtypes, st.booleans(), st.integers(0, 2**16))
def relu(shape, dt, ties, seed):
    announce(shape=shape, dtype=dt, ties=ties, seed=seed)
    rng = np.random.default_rng(seed)
    x = values(rng, shape, ties, dt)
    g = values(rng, shape, False, dt)
    xn, gn = np.asarray(x, np.float64), np.asarray(g, np.float64)
    got = both_vjps(jaxnet.relu, autodiff.relu, (x,), g)
    check_all("relu", got, (np.where(xn > 0, xn, 0.0), np.where(xn > 0, gn, 0.0)), dt)


@given(
    st.integers(1, 4),
    st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple),
    st.integers(1, 5),
    dtypes,
    st.booleans(),
    st.integers(0, 2**16),
)
def dense(n, features, m, dt, ties, seed):
    announce(n=n, features=features, m=m, dtype=dt, ties=ties, seed=seed)
    rng = np.random.default_rng(seed)
    x = values(rng, (n, *features), ties, dt)
    w = values(rng, (m, int(np.prod(features))), ties, dt)
    b = values(rng, (m,), ties, dt)
    g = values(rng, (n, m), False, dt)
    got = both_vjps(jaxnet.dense, autodiff.dense, (x, w, b), g)
    check_all("dense", got, (ref.dense(x, w, b), *ref.dense_vjp(x, w, g)), dt)


@given(
    st.integers(1, 5),
    st.integers(2, 7),
    st.sampled_from([1.0, 30.0, 1e3]),
    dtypes,
    st.booleans(),
    st.sampled_from([0.0, 0.1, 0.5]),
    st.integers(0, 2**16),
)
def loss(n, k, scale, dt, ties, smoothing, seed):
    announce(n=n, k=k, scale=scale, dtype=dt, ties=ties, smoothing=smoothing, seed=seed)
    rng = np.random.default_rng(seed)
    logits = values(rng, (n, k), ties, dt) * scale
    labels = jnp.asarray(rng.integers(0, k, n), jnp.int32)
    g = jnp.asarray(rng.standard_normal(), dt)

    def rule(fn):
        return lambda z: fn(z, labels, smoothing)

    got = both_vjps(
        rule(jaxnet.softmax_cross_entropy), rule(autodiff.softmax_cross_entropy), (logits,), g
    )
    want_loss, _ = ref.softmax_cross_entropy(logits, labels, smoothing)
    want_grad = float(g) * ref.softmax_cross_entropy_grad(logits, labels, smoothing)
    check_all("softmax_cross_entropy", got, (want_loss, want_grad), dt)


if __name__ == "__main__":
    layer = sys.argv[1]
    test = globals()[layer]
    settings(max_examples=EXAMPLES[layer])(test)()
    print(f"{layer}: {EXAMPLES[layer]} examples passed", flush=True)
