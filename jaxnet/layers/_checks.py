"""Trace-time argument checks shared by the layers.

Every check runs on static information only (shapes, dtypes, Python ints), so it raises while
JAX traces the function, with a one-line message naming the argument, what it got and what
was expected. Integer arguments (padding, stride, window) and the output size of a window are
checked by :mod:`jaxnet._validate`, as for the layer specs.
"""

from __future__ import annotations

import jax.numpy as jnp


def check_float(name: str, a: jnp.ndarray) -> None:
    """Raise TypeError unless ``a`` has a floating dtype."""
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")


def check_int(name: str, a: jnp.ndarray) -> None:
    """Raise TypeError unless ``a`` has an integer dtype."""
    if not jnp.issubdtype(a.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")


def check_rank(name: str, a: jnp.ndarray, rank: int, layout: str) -> None:
    """Raise ValueError unless ``a`` has exactly ``rank`` dimensions (``layout`` names them)."""
    if a.ndim != rank:
        raise ValueError(
            f"{name} must have rank {rank} {layout}, got shape {tuple(a.shape)} (rank {a.ndim})"
        )


def check_floats(**arrays: jnp.ndarray) -> None:
    """Raise TypeError unless every array is floating point and all share one dtype (no silent
    promotion inside a layer)."""
    for name, a in arrays.items():
        check_float(name, a)
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        got = ", ".join(f"{name}: {dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"arrays must share one floating dtype, got {got}")


def check_shape(name: str, a: jnp.ndarray, shape: tuple[int, ...], other: str, b) -> None:
    """Raise ValueError unless ``a`` has ``shape``, the shape the argument ``other`` (``b``)
    fixes: a bias for its kernel, a kernel's input channels for its input, labels for logits."""
    if tuple(a.shape) != shape:
        raise ValueError(
            f"{name} must have shape {shape} to match {other} of shape {tuple(b.shape)}, "
            f"got shape {tuple(a.shape)}"
        )
