"""Trace-time argument checks shared by the layers.

Every check runs on static information only (shapes, dtypes, Python ints), so it raises while
JAX traces the function, with a one-line message naming the argument, what it got and what
was expected.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxnet._validate import int_pair


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


def check_bias(b: jnp.ndarray, w: jnp.ndarray, n_out: int) -> None:
    """Raise ValueError unless the bias ``b`` has shape ``(n_out,)``, the outputs of ``w``."""
    if b.shape != (n_out,):
        raise ValueError(
            f"b must have shape ({n_out},) to match w of shape {tuple(w.shape)}, "
            f"got shape {tuple(b.shape)}"
        )


def pair(name: str, value: int | tuple[int, int], minimum: int) -> tuple[int, int]:
    """An int or a pair of ints as a pair, each at least ``minimum`` (``_validate.int_pair``).

    Raises:
        TypeError: an entry that is not an int (a float, an array, a bool).
        ValueError: a pair of the wrong length, or an entry below ``minimum``.
    """
    return int_pair(name, value, minimum)
