"""Shared fixtures for the layer tests: custom rule vs autodiff twin, in float64."""

from __future__ import annotations

import jax
import pytest
from layer_helpers import RTOL64, rel_err, vjps


@pytest.fixture
def compare_rules():
    """``compare_rules(custom, twin, args, argnums)``: assert primal and VJPs agree to 1e-10.

    With ``vmap=in_axes`` both are compared as ``jax.jit(jax.vmap(fn, in_axes))``.
    """

    def check(custom, twin, args, argnums, rtol=RTOL64, vmap=None):
        if vmap is not None:
            custom, twin = (jax.jit(jax.vmap(fn, vmap)) for fn in (custom, twin))
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
