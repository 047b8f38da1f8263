"""oneDNN's convolutions against XLA's (``lax.conv_general_dilated`` and ``jax.vjp`` of it).

Float32 throughout, relative error (worst difference over the reference's largest entry) at
most 1e-5. Skipped where the extension is not built, except under ``CI`` on Linux x86_64, where
``.ci/run`` builds it: there a missing extension fails.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxnet
from jaxnet.backends import onednn

RTOL = 1e-5

# (x shape NHWC, kernel (kh, kw, c_out), padding, stride)
CONFIGS = [
    ((1, 1, 1, 1), (1, 1, 1), (0, 0), (1, 1)),  # everything 1
    ((2, 8, 8, 3), (3, 3, 4), (1, 1), (1, 1)),
    ((2, 8, 3, 1), (2, 3, 1), (1, 1), (2, 2)),  # aborts XLA under jax.grad with padding inside
    ((1, 5, 7, 2), (5, 5, 3), (2, 1), (2, 3)),  # padding and stride differ per axis
    ((3, 4, 4, 2), (7, 7, 2), (3, 3), (1, 1)),  # kernel larger than the input
    ((2, 3, 3, 2), (5, 4, 3), (1, 2), (1, 1)),  # kernel larger, just enough padding
    ((2, 9, 9, 2), (3, 3, 2), (0, 0), (3, 3)),  # stride = kernel
    ((2, 10, 10, 3), (2, 2, 5), (0, 0), (3, 3)),  # stride > kernel: rows never reached
    ((1, 7, 6, 4), (3, 2, 2), (2, 0), (2, 1)),
    ((4, 6, 6, 1), (5, 5, 17), (2, 2), (1, 1)),  # one input channel, 17 outputs
    ((16, 32, 32, 3), (5, 5, 16), (2, 2), (1, 1)),  # CIFAR-10 Table 3's first convolution
    ((16, 16, 16, 16), (5, 5, 24), (2, 2), (1, 1)),
    ((8, 8, 8, 24), (3, 3, 16), (1, 1), (1, 1)),
    ((5, 28, 28, 1), (5, 5, 16), (0, 0), (1, 1)),  # MNIST's first, no padding
]


@pytest.fixture(autouse=True)
def _needs_extension():
    if onednn.available():
        return
    if os.environ.get("CI") and sys.platform == "linux" and platform.machine() == "x86_64":
        pytest.fail("the oneDNN extension is not available; CI builds it on Linux x86_64")
    pytest.skip("the oneDNN extension is not built (pip install -e . builds it on Linux x86_64)")


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def reference(x, w, padding, stride):
    """XLA's correlation; padded explicitly, as XLA aborts on some convolutions padded inside."""
    x = jnp.pad(x, [(0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)])
    return lax.conv_general_dilated(
        x, w, stride, "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
    )


def make(x_shape, kernel, seed=0):
    """Random ``x``, ``w`` and a random cotangent ``g`` of the output's shape, float32."""
    kh, kw, c_out = kernel
    kx, kw_, kg = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, x_shape, jnp.float32)
    w = jax.random.normal(kw_, (kh, kw, x_shape[3], c_out), jnp.float32)
    return x, w, kg


def check_config(x_shape, kernel, padding, stride, seed=0):
    """All three kernels, jitted, against the reference and its VJP."""
    x, w, kg = make(x_shape, kernel, seed)
    y, pullback = jax.vjp(lambda x, w: reference(x, w, padding, stride), x, w)
    g = jax.random.normal(kg, y.shape, jnp.float32)
    dx, dw = pullback(g)
    fwd = jax.jit(onednn.conv_forward, static_argnums=(2, 3))
    bwd_data = jax.jit(onednn.conv_backward_data, static_argnums=(2, 3, 4))
    bwd_weights = jax.jit(onednn.conv_backward_weights, static_argnums=(2, 3, 4))
    got = fwd(x, w, padding, stride)
    assert got.shape == y.shape and got.dtype == jnp.float32
    assert rel_err(got, y) <= RTOL, "forward"
    assert rel_err(bwd_data(g, w, x.shape, padding, stride), dx) <= RTOL, "backward data"
    assert rel_err(bwd_weights(x, g, w.shape, padding, stride), dw) <= RTOL, "backward weights"


@pytest.mark.parametrize("x_shape, kernel, padding, stride", CONFIGS)
def test_kernels_match_xla(x_shape, kernel, padding, stride):
    check_config(x_shape, kernel, padding, stride)


@pytest.mark.parametrize("x_shape, kernel, padding, stride", [CONFIGS[2], CONFIGS[3]])
def test_vmap(x_shape, kernel, padding, stride):
    """Mapped over a leading axis of every operand, and of the activations alone."""
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, *x_shape), jnp.float32)
    x, w, kg = make(x_shape, kernel)
    ws = jnp.stack([w, 2 * w, -w])
    ys = jax.vmap(reference, (0, 0, None, None))(xs, ws, padding, stride)
    gs = jax.random.normal(kg, ys.shape, jnp.float32)

    def ref_grads(x, w, g):
        return jax.vjp(lambda x, w: reference(x, w, padding, stride), x, w)[1](g)

    dxs, dws = jax.vmap(ref_grads)(xs, ws, gs)
    fwd = jax.jit(jax.vmap(onednn.conv_forward, (0, 0, None, None)), static_argnums=(2, 3))
    assert rel_err(fwd(xs, ws, padding, stride), ys) <= RTOL
    bwd_data = jax.vmap(lambda g, w: onednn.conv_backward_data(g, w, x.shape, padding, stride))
    assert rel_err(jax.jit(bwd_data)(gs, ws), dxs) <= RTOL
    bwd_weights = jax.vmap(
        lambda x, g: onednn.conv_backward_weights(x, g, w.shape, padding, stride)
    )
    assert rel_err(jax.jit(bwd_weights)(xs, gs), dws) <= RTOL
    # Only the kernel mapped: one call per kernel.
    x_ws = jax.vmap(reference, (None, 0, None, None))(x, ws, padding, stride)
    fwd_w = jax.vmap(onednn.conv_forward, (None, 0, None, None))
    assert rel_err(jax.jit(fwd_w, static_argnums=(2, 3))(x, ws, padding, stride), x_ws) <= RTOL


@pytest.mark.parametrize("x_shape, kernel, padding, stride", [CONFIGS[2], CONFIGS[3]])
def test_vmap_over_the_activations_alone_is_one_call_on_the_folded_batch(
    x_shape, kernel, padding, stride
):
    """The forward pass and dL/dx mapped over the images only (as evaluation maps each image
    alone): one custom call on ``(V * N, ...)``, equal to XLA's, under one and two vmaps."""
    n = x_shape[0]
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 3, *x_shape), jnp.float32)
    x, w, kg = make(x_shape, kernel)
    ys = jax.vmap(jax.vmap(reference, (0, None, None, None)), (0, None, None, None))(
        xs, w, padding, stride
    )
    gs = jax.random.normal(kg, ys.shape, jnp.float32)
    dxs = jax.vmap(
        jax.vmap(lambda g: jax.vjp(lambda x: reference(x, w, padding, stride), x)[1](g)[0])
    )(gs)

    def fwd(xs):
        return onednn.conv_forward(xs, w, padding, stride)

    def bwd_data(gs):
        return onednn.conv_backward_data(gs, w, x.shape, padding, stride)

    for depth, (xv, yv, gv, dxv) in ((1, (xs[0], ys[0], gs[0], dxs[0])), (2, (xs, ys, gs, dxs))):
        f, b = fwd, bwd_data
        for _ in range(depth):
            f, b = jax.vmap(f), jax.vmap(b)
        assert rel_err(jax.jit(f)(xv), yv) <= RTOL
        assert rel_err(jax.jit(b)(gv), dxv) <= RTOL
        folded = 3 * n if depth == 1 else 6 * n
        for fn, arg in ((f, xv), (b, gv)):
            hlo = jax.jit(fn).lower(arg).as_text()
            calls = [line for line in hlo.splitlines() if "custom_call" in line]
            assert len(calls) == 1, calls
            assert f"tensor<{folded}x" in calls[0], calls[0]


@pytest.mark.parametrize("threads", [1, 2, 3, 0])
@pytest.mark.parametrize("batch", [16, 6, 5, 1])
def test_every_split_of_the_batch_matches_xla(batch, threads):
    """The batch split into slices over XLA's pool (as many as ``threads`` allows and divide it:
    16 -> 2, 6 -> 2 or 3, 5 and 1 -> one piece on OpenMP's threads), the kernels reordered once
    and the slices' kernel gradients summed: every way equals XLA's."""
    try:
        onednn.set_threads(threads)
        check_config((batch, 9, 9, 24), (3, 3, 24), (1, 1), (1, 1))  # blocked kernel layouts
        check_config((batch, 8, 7, 3), (5, 4, 5), (2, 1), (2, 1))
    finally:
        onednn.set_threads(0)


def test_set_threads_checks_its_argument():
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        onednn.set_threads(-1)
    with pytest.raises(TypeError, match=r"n must be an int, got 1\.5"):
        onednn.set_threads(1.5)


def test_donated_arguments():
    """A donated input whose buffer XLA reuses for the output (same shape and dtype)."""
    x, w, _ = make((2, 8, 8, 3), (3, 3, 3))
    want = x + reference(x, w, (1, 1), (1, 1))
    step = jax.jit(lambda x, w: x + onednn.conv_forward(x, w, (1, 1), (1, 1)), donate_argnums=0)
    donated = jnp.array(x)
    assert rel_err(step(donated, w), want) <= RTOL
    assert donated.is_deleted()


@pytest.mark.parametrize("value, want", [("xla", False), ("onednn", True), ("", True)])
def test_env_var_switch(monkeypatch, value, want):
    monkeypatch.setenv(onednn.ENV_VAR, value)
    assert onednn.enabled() is want
    x = jnp.zeros((1, 4, 4, 1), jnp.float32)
    assert onednn.usable(x, x) is want


def test_env_var_bad_value(monkeypatch):
    monkeypatch.setenv(onednn.ENV_VAR, "mkl")
    with pytest.raises(ValueError, match="JAXNET_CONV must be 'xla' or 'onednn', got 'mkl'"):
        onednn.enabled()


SWEEP = """
import hypothesis.strategies as st
from hypothesis import HealthCheck, Phase, assume, given, settings
from test_onednn import check_config

@settings(
    max_examples={n},
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: a compile per try
)
@given(
    n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), c_in=st.integers(1, 4),
    c_out=st.integers(1, 4), kh=st.integers(1, 6), kw=st.integers(1, 6),
    ph=st.integers(0, 3), pw=st.integers(0, 3), sh=st.integers(1, 4), sw=st.integers(1, 4),
)
def sweep(n, h, w, c_in, c_out, kh, kw, ph, pw, sh, sw):
    assume(h + 2 * ph >= kh and w + 2 * pw >= kw)  # every padding that leaves an output
    check_config((n, h, w, c_in), (kh, kw, c_out), (ph, pw), (sh, sw))

sweep()
"""


@pytest.mark.slow
def test_hypothesis_sweep_in_a_child_process():
    """Shapes from 1 up, every padding and stride that leaves an output; a child process, so
    that an abort inside XLA is a failed test."""
    pytest.importorskip("hypothesis")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SWEEP.format(n=60))],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def _targets(fn, *args) -> set[str]:
    """The oneDNN kernels in ``fn``'s compiled program."""
    text = jax.jit(fn).lower(*args).as_text()
    names = ("forward", "backward_data", "backward_weights")
    return {name for name in names if f"jaxnet_onednn_conv_{name}" in text}


@pytest.mark.parametrize("x_shape, kernel, padding, stride", CONFIGS)
def test_conv_rule_on_onednn_matches_the_autodiff_twin(x_shape, kernel, padding, stride):
    """:func:`jaxnet.conv2d`'s rule runs on oneDNN; forward and VJP equal the twin's (XLA)."""
    x, w, kg = make(x_shape, kernel)
    b = jax.random.normal(jax.random.PRNGKey(2), (kernel[2],), jnp.float32)

    def vjp(conv, x, w, b):
        y, pullback = jax.vjp(lambda x, w, b: conv(x, w, b, padding, stride), x, w, b)
        return y, pullback(jax.random.normal(kg, y.shape, jnp.float32))

    rule, twin = partial(vjp, jaxnet.conv2d), partial(vjp, jaxnet.autodiff.conv2d)
    assert "forward" in _targets(rule, x, w, b)
    assert not _targets(twin, x, w, b)
    y, grads = jax.jit(rule)(x, w, b)
    y_twin, grads_twin = jax.jit(twin)(x, w, b)
    assert rel_err(y, y_twin) <= RTOL
    for name, got, want in zip("xwb", grads, grads_twin, strict=True):
        assert rel_err(got, want) <= RTOL, name


def _conv_targets(wrap=lambda fn: fn) -> set[str]:
    """The oneDNN kernels in a conv's gradient, a new function each time (traced afresh)."""
    x, w, _ = make((2, 8, 8, 3), (3, 3, 4))
    grad = jax.grad(lambda x, w, b: (jaxnet.conv2d(x, w, b, 1, 1) ** 2).sum(), (0, 1, 2))
    return _targets(wrap(grad), x, w, jnp.zeros((4,), jnp.float32))


def test_conv_rule_stays_on_xla_when_turned_off(monkeypatch):
    """``JAXNET_CONV`` is read when a function is traced (a cached trace keeps its kernels)."""
    monkeypatch.setenv(onednn.ENV_VAR, "xla")
    assert not _conv_targets()
    monkeypatch.setenv(onednn.ENV_VAR, "onednn")
    assert _conv_targets() >= {"forward", "backward_data"}


def test_data_parallel_programs_keep_convolutions_on_xla():
    """XLA cannot partition a custom call: a mesh's step, fit step and evaluation trace on XLA."""
    assert not _conv_targets(jaxnet.parallel.partitionable)
    assert _conv_targets()  # outside, oneDNN again

    arch = jaxnet.architectures.mnist()
    params = jaxnet.init(arch, jax.random.PRNGKey(0))
    optimizer = jaxnet.momentum(0.1)
    images, labels = np.zeros((4, 28, 28, 1), np.uint8), np.zeros(4, np.int32)
    for mesh, calls in ((None, True), (1, False)):
        step = jaxnet.make_train_step(arch, optimizer, mesh=mesh)
        text = (
            (step if mesh is None else step.jitted)
            .lower(params, optimizer.init(params), images, labels)
            .as_text()
        )
        assert ("jaxnet_onednn_conv" in text) == calls, mesh
