"""Helpers for the layer tests: relative error, VJPs, random arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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


def assert_float32_grads_close_to_float64(loss, args32, rtol=1e-4) -> None:
    """``jax.grad`` of ``loss`` w.r.t. every argument: float32, and within ``rtol`` of float64."""
    argnums = tuple(range(len(args32)))
    g32 = jax.grad(loss, argnums)(*args32)
    with jax.enable_x64(True):
        g64 = jax.grad(loss, argnums)(*(a.astype(jnp.float64) for a in args32))
    for a, b in zip(g32, g64, strict=True):
        assert a.dtype == jnp.float32
        assert rel_err(a, b) < rtol


def normal(key: int, shape, dtype=jnp.float64):
    return jax.random.normal(jax.random.PRNGKey(key), shape, dtype)
