"""Shared checks for the layer tests: custom rule vs autodiff twin, in float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

RTOL64 = 1e-10


def rel_err(a, b) -> float:
    """Worst absolute difference, relative to the largest entry of the reference ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.max(np.abs(b)), np.finfo(np.float64).tiny) if b.size else 1.0
    return float(np.max(np.abs(a - b)) / scale) if b.size else 0.0


def vjps(fn, args, argnums, cotangent_key=0):
    """Primal output and the VJP of ``fn`` w.r.t. ``argnums`` for one random cotangent."""

    def partial_fn(*diff):
        full = list(args)
        for i, a in zip(argnums, diff, strict=True):
            full[i] = a
        return fn(*full)

    out, pullback = jax.vjp(partial_fn, *(args[i] for i in argnums))
    ct = jax.random.normal(jax.random.PRNGKey(cotangent_key), out.shape, out.dtype)
    return out, pullback(ct)


@pytest.fixture
def compare_rules():
    """``compare_rules(custom, twin, args, argnums)``: assert primal and VJPs agree to 1e-10."""

    def check(custom, twin, args, argnums, rtol=RTOL64):
        out_c, grads_c = vjps(custom, args, argnums)
        out_a, grads_a = vjps(twin, args, argnums)
        assert rel_err(out_c, out_a) <= rtol
        for i, gc, ga in zip(argnums, grads_c, grads_a, strict=True):
            assert gc.shape == args[i].shape and gc.dtype == args[i].dtype
            err = rel_err(gc, ga)
            assert err <= rtol, f"argument {i}: relative error {err:.3e} > {rtol:.0e}"
        return grads_c

    return check


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def normal(key: int, shape, dtype=jnp.float64):
    return jax.random.normal(jax.random.PRNGKey(key), shape, dtype)
