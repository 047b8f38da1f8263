"""oneDNN's float32 2-D convolutions on the CPU, as XLA FFI custom calls.

Three kernels of one convolution (NHWC activations, HWIO kernel, zero padding, stride), the
same quantities as :func:`jaxnet.layers.conv.conv2d` and its rule compute with XLA's
convolutions:

- :func:`conv_forward`: ``y = x * w`` (the correlation, no bias).
- :func:`conv_backward_data`: ``dL/dx`` from ``g = dL/dy`` and ``w``.
- :func:`conv_backward_weights`: ``dL/dw`` from ``x`` and ``g``.

JAX cannot differentiate a custom call: these serve the analytic rule only, which says how to
differentiate them. They run under ``jit``, ``vmap`` and with donated arguments. Under
``vmap`` the forward pass and ``dL/dx`` fold the mapped axis into the batch when the kernel is
shared (one call, as XLA's own batching rule for a convolution does); otherwise the handler
loops over the mapped axes.

The kernels live in ``_onednn_conv*.so``, built from ``onednn_conv.cc`` by ``pip install`` on
Linux x86_64 against the PyPI wheels ``onednn-devel-cpu-gomp`` (headers) and
``onednn-cpu-gomp`` (``libdnnl.so.3``, a run-time dependency). :func:`available` loads both on
first use and registers the handlers with XLA; where that fails (another platform, no compiler
at install time, a missing wheel) it warns once, in one line naming the reason, and jaxnet runs
on XLA. ``JAXNET_CONV=xla`` in the environment turns oneDNN off (for comparisons and tests).

Threads: a call splits its batch into equal slices, one per thread of XLA's own CPU pool where
the batch divides, and runs the slices single-threaded on the calling thread and the pool
(backward weights sums their kernel gradients). This oneDNN build runs on GNU OpenMP, whose
threadpool interface (which XLA's pool could feed) is compiled out of the wheel; splitting the
batch over XLA's pool ourselves keeps the convolutions on the threads XLA already runs, where
OpenMP's would have to be woken for every call and compete with XLA's for the cores. A batch
that no pool size divides (odd, on two cores) runs in one piece on OpenMP's threads. OpenMP's
default wait policy spins a finished thread before it sleeps, which takes the core from XLA's
threads; so unless the user chose otherwise, the library is loaded with ``OMP_WAIT_POLICY=PASSIVE``
(threads sleep at once when a region ends). libgomp reads it when it is first loaded; if
something loaded it earlier, its setting stands.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import sys
import warnings
from collections.abc import Iterator
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet._validate import int_at_least, window_outputs

ENV_VAR = "JAXNET_CONV"
"""Set to ``xla`` to keep every convolution on XLA (``onednn`` or unset: use it where it can)."""

_EXTENSION = "jaxnet.backends._onednn_conv"
_TARGETS = {  # FFI target name -> the handler's symbol in the library
    "jaxnet_onednn_conv_forward": "JaxnetOnednnConvForward",
    "jaxnet_onednn_conv_backward_data": "JaxnetOnednnConvBackwardData",
    "jaxnet_onednn_conv_backward_weights": "JaxnetOnednnConvBackwardWeights",
}


_OFF = contextvars.ContextVar("jaxnet_onednn_off", default=False)


@contextlib.contextmanager
def turned_off() -> Iterator[None]:
    """Within the block, functions traced keep every convolution on XLA.

    For programs XLA partitions over a mesh: it cannot split a custom call, so it would gather
    the whole batch onto every device around each one.
    """
    token = _OFF.set(True)
    try:
        yield
    finally:
        _OFF.reset(token)


def enabled() -> bool:
    """Whether oneDNN is allowed: ``JAXNET_CONV`` is not ``xla``, nor inside :func:`turned_off`.

    Raises:
        ValueError: ``JAXNET_CONV`` is set to something other than ``xla`` or ``onednn``.
    """
    value = os.environ.get(ENV_VAR, "onednn").strip().lower() or "onednn"
    if value not in ("xla", "onednn"):
        raise ValueError(f"{ENV_VAR} must be 'xla' or 'onednn', got {value!r}")
    return value == "onednn" and not _OFF.get()


def _libdnnl() -> str:
    """Path of ``libdnnl.so.3`` from the installed ``onednn-cpu-gomp`` wheel."""
    try:
        files = importlib.metadata.files("onednn-cpu-gomp") or []
    except importlib.metadata.PackageNotFoundError:
        raise OSError("the onednn-cpu-gomp package is not installed") from None
    for f in files:
        if f.name == "libdnnl.so.3":
            return str(f.locate())
    raise OSError("the onednn-cpu-gomp package has no libdnnl.so.3")


def _load() -> ctypes.CDLL:
    """Load oneDNN and the kernels and register them with XLA; raise why not."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise OSError(f"built only on Linux x86_64, this is {sys.platform} {platform.machine()}")
    spec = importlib.util.find_spec(_EXTENSION)
    if spec is None or spec.origin is None:
        raise OSError("the extension was not built at install time (reinstall with a C++ compiler)")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, as libgomp loads
    # The kernels need libdnnl.so.3; loaded globally first, the loader finds it by its soname.
    ctypes.CDLL(_libdnnl(), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(spec.origin)
    for name, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), "cpu")
    return lib


@cache
def _library() -> ctypes.CDLL | None:
    """The loaded kernels, or ``None`` after one warning that names the reason."""
    try:
        return _load()
    except Exception as e:  # any failure means XLA's path, with its reason said once
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        warnings.warn(
            f"jaxnet: oneDNN convolutions unavailable, using XLA's ({reason})",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def available() -> bool:
    """Whether the oneDNN kernels are loaded and registered (tried once; warns once if not)."""
    return _library() is not None


def set_threads(n: int) -> None:
    """The most threads every later convolution uses; 0 for all it can have.

    A batch is split into the most slices up to ``n`` (0: XLA's CPU pool size) that divide it,
    one thread each; one that is not split runs on ``n`` OpenMP threads (0: OpenMP's default,
    ``OMP_NUM_THREADS``, else one per core).

    Raises:
        TypeError: ``n`` is not an int; ValueError: ``n < 0``.
        RuntimeError: the kernels are not :func:`available`.
    """
    n = int_at_least("n", n, 0)
    if not available():
        raise RuntimeError("the oneDNN kernels are not available")
    _library().JaxnetOnednnSetNumThreads(ctypes.c_int(n))


def usable(*arrays: jax.Array) -> bool:
    """Whether a convolution of these arrays may run on oneDNN: float32, enabled, available."""
    return all(a.dtype == jnp.float32 for a in arrays) and enabled() and available()


def pick(kernel: str, xla_fn, a: jax.Array, b: jax.Array, *static) -> jax.Array:
    """``kernel`` of the analytic conv rule on oneDNN where it runs, else ``xla_fn(a, b, *static)``.

    The one place that decides it: float32, not turned off by ``JAXNET_CONV=xla``, the kernels
    :func:`available`, and, when the program is lowered, the CPU
    (:func:`jax.lax.platform_dependent`: a GPU or TPU never sees the custom call). There is no
    choice by shape: every kernel of the report's networks ran faster on oneDNN
    (``docs/performance.md``).

    Args:
        kernel: ``"forward"`` (``a, b = x, w``; ``static = padding, stride``),
            ``"backward_data"`` (``g, w``; ``x_shape, padding, stride``) or
            ``"backward_weights"`` (``x, g``; ``w_shape, padding, stride``), as the functions
            of this module of those names take them.
        xla_fn: the XLA formulation, with the same arguments.
    """
    fn = {
        "forward": conv_forward,
        "backward_data": conv_backward_data,
        "backward_weights": conv_backward_weights,
    }[kernel]
    if not usable(a, b):
        return xla_fn(a, b, *static)
    return jax.lax.platform_dependent(
        a, b, cpu=lambda a, b: fn(a, b, *static), default=lambda a, b: xla_fn(a, b, *static)
    )


def _call(target: str, shape: tuple[int, ...], a, b, *, padding, stride) -> jax.Array:
    """The custom call ``target`` on ``a, b`` with result ``shape``; under ``vmap`` the handler
    loops over the mapped axes (every operand broadcast to them)."""
    if not available():
        raise RuntimeError("the oneDNN kernels are not available (see the warning for why)")
    call = jax.ffi.ffi_call(
        target, jax.ShapeDtypeStruct(shape, jnp.float32), vmap_method="broadcast_all"
    )
    ph, pw = padding
    sh, sw = stride
    return call(a, b, ph=np.int64(ph), pw=np.int64(pw), sh=np.int64(sh), sw=np.int64(sw))


def _per_image(target: str, image_shape: tuple[int, ...], a, w, *, padding, stride) -> jax.Array:
    """The custom call ``target`` on a batch ``a`` and a kernel ``w`` whose result's row ``i``,
    of shape ``image_shape``, depends on ``a``'s row ``i`` alone (the forward pass, ``dL/dx``).

    Its ``vmap`` rule folds the mapped axis into the batch: mapped over ``a`` alone (one kernel
    for all, as when :func:`jaxnet.evaluate` maps each image alone) it is one call on
    ``(V * N, ...)``, not ``V`` calls of ``N`` images; mapped over ``w`` too, ``V`` calls.
    """

    def kernel(a: jax.Array, w: jax.Array) -> jax.Array:
        return _call(target, (a.shape[0], *image_shape), a, w, padding=padding, stride=stride)

    fn = jax.custom_batching.custom_vmap(kernel)

    @fn.def_vmap
    def rule(axis_size: int, in_batched: list[bool], a: jax.Array, w: jax.Array):
        a_batched, w_batched = in_batched  # at least one is: JAX calls a rule only then
        if w_batched:
            return jax.vmap(kernel, (0 if a_batched else None, 0))(a, w), True
        out = fn(a.reshape(-1, *a.shape[2:]), w)
        return out.reshape(axis_size, -1, *out.shape[1:]), True

    return fn(a, w)


def conv_forward(
    x: jax.Array, w: jax.Array, padding: tuple[int, int], stride: tuple[int, int]
) -> jax.Array:
    """The correlation of ``x`` ``(N, H, W, C_in)`` with ``w`` ``(KH, KW, C_in, C_out)``, no bias:
    ``(N, Ho, Wo, C_out)``, ``Ho = (H + 2 ph - KH) // sh + 1`` (likewise ``Wo``).

    The three kernels take float32 arrays, ``padding`` ``(ph, pw)`` and ``stride`` ``(sh, sw)``
    as :func:`jaxnet.conv2d` has checked them: its rule is their one caller (:func:`pick`).
    """
    kh, kw, _, c_out = w.shape
    out = (*window_outputs("conv_forward", x.shape[1:3], (kh, kw), padding, stride), c_out)
    return _per_image("jaxnet_onednn_conv_forward", out, x, w, padding=padding, stride=stride)


def conv_backward_data(g, w, x_shape, padding, stride) -> jax.Array:
    """``dL/dx`` ``(N, H, W, C_in)`` of the shape ``x_shape`` from ``g = dL/dy``
    ``(N, Ho, Wo, C_out)`` and ``w``; rows and columns the forward pass never reached get zero."""
    image = tuple(int(d) for d in x_shape[1:])
    return _per_image(
        "jaxnet_onednn_conv_backward_data", image, g, w, padding=padding, stride=stride
    )


def conv_backward_weights(x, g, w_shape, padding, stride) -> jax.Array:
    """``dL/dw`` ``(KH, KW, C_in, C_out)`` of the shape ``w_shape`` from ``x`` and ``g = dL/dy``."""
    shape = tuple(int(d) for d in w_shape)
    return _call("jaxnet_onednn_conv_backward_weights", shape, x, g, padding=padding, stride=stride)
