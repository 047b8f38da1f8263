"""Data parallelism with JAX's own sharding: one mesh axis, batches split, parameters replicated.

On a 1-D mesh over the axis ``"data"``, a batch ``(B, ...)`` is split ``B / D`` rows to each of
the ``D`` devices (:func:`shard_batch`), parameters and optimizer state are copied whole to
every device (:func:`replicate`), and the train step is one ``jax.jit`` with those shardings. The
loss is the mean over the global batch, so XLA all-reduces the partial sums: the gradient is one
device's up to the order of the float additions.

Several hosts: after :func:`initialize_distributed` on each, :func:`make_mesh` spans every
process's devices and each process feeds only its rows of every global batch
(:func:`local_batch_slice`) to :func:`shard_batch`. Every process runs the same program.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxnet._validate import int_at_least
from jaxnet.backends import onednn

AXIS = "data"
"""The name of the mesh's one axis, along which batches are split."""

Tree = TypeVar("Tree")


def _first_per_process(n: int) -> list[jax.Device]:
    """The first ``n / P`` devices of each of the ``P`` processes, in process order."""
    processes = jax.process_count()
    if n % processes:
        raise ValueError(
            f"{n} devices do not split evenly over {processes} processes: "
            f"use a multiple of {processes}"
        )
    per_process = n // processes
    by_process = [[d for d in jax.devices() if d.process_index == p] for p in range(processes)]
    fewest = min(len(devices) for devices in by_process)
    if per_process > fewest:
        raise ValueError(
            f"{n} devices over {processes} processes needs {per_process} per process, "
            f"but one process has only {fewest}"
        )
    return [d for devices in by_process for d in devices[:per_process]]


def xla_cpu_threads() -> int:
    """The size of XLA's CPU client thread pools: ``$PJRT_NPROC``, ``$NPROC`` or the CPUs."""
    for name in ("PJRT_NPROC", "NPROC"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _warn_if_cpu_threads_short(mesh: Mesh) -> None:
    """Warn where XLA's CPU runtime can deadlock in the step's all-reduce.

    XLA's CPU client runs the ``D`` devices' shares and the next launches from one pool of
    ``max(threads, D)`` threads; ``D`` shares plus up to ``D`` launches blocked on the in-flight
    limit need ``2 D`` threads, or the all-reduce waits for a share no thread runs (what was
    run: ``docs/performance.md``).
    """
    local = [d for d in mesh.local_devices if d.platform == "cpu"]
    if len(local) < 2:
        return
    n = jax.local_device_count()
    threads = max(xla_cpu_threads(), n)
    if threads < 2 * n:
        warnings.warn(
            f"{n} CPU devices share a pool of {threads} XLA threads: a data-parallel loop may "
            f"deadlock in its all-reduce. Set PJRT_NPROC={2 * n} (at least twice the device "
            "count) in the environment before JAX starts",
            RuntimeWarning,
            stacklevel=3,
        )


def request_cpu_devices(n: int) -> None:
    """Ask XLA's CPU backend for ``n >= 1`` virtual devices and enough threads for their
    all-reduce: ``XLA_FLAGS=--xla_force_host_platform_device_count=n`` and ``PJRT_NPROC=2n``
    unless set (``n = 1`` changes nothing). Effective only before JAX starts its backend, and
    only on CPU (a GPU shows its real devices).
    """
    n = int_at_least("n", n, 1)
    if n == 1:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ.setdefault("PJRT_NPROC", str(2 * n))


def make_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D :class:`jax.sharding.Mesh` ``{"data": D}`` over ``devices``.

    Args:
        devices: ``None`` for every device JAX sees (on several hosts, all of theirs); an int
            ``n`` for the first ``n`` (the first ``n / process_count`` of each host's); or a
            sequence of distinct devices.

    Raises:
        ValueError: ``n`` < 1 or more than ``jax.device_count()``, ``n`` not a multiple of the
            process count, or an empty or repeating device sequence.
        TypeError: ``devices`` of another kind.
    """
    if devices is None:
        devs = jax.devices()
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        n = int_at_least("devices", devices, 1)
        available = jax.device_count()
        if n > available:
            raise ValueError(
                f"asked for {n} devices but JAX sees only {available} (jax.device_count()); "
                "on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N before "
                "importing jax to get N virtual devices"
            )
        devs = _first_per_process(n)
    elif isinstance(devices, Sequence) and not isinstance(devices, (str, bytes)):
        devs = list(devices)
        if not devs:
            raise ValueError("devices must not be empty")
        bad = [d for d in devs if not isinstance(d, jax.Device)]
        if bad:
            raise TypeError(f"devices must be jax.Device objects, got {bad[0]!r}")
        if len(set(devs)) != len(devs):
            raise ValueError(f"devices must be distinct, got {devs}")
    else:
        raise TypeError(
            f"devices must be None, an int or a sequence of jax.Device, got {devices!r}"
        )
    mesh = Mesh(np.array(devs, dtype=object), (AXIS,))
    _warn_if_cpu_threads_short(mesh)
    return mesh


def as_mesh(mesh: Mesh | int) -> Mesh:
    """The data mesh of a ``mesh=`` argument: a mesh whose only axis is ``"data"``, or a count.

    Raises:
        ValueError: a mesh with other axes, or a bad device count.
        TypeError: anything else.
    """
    if isinstance(mesh, Mesh):
        if tuple(mesh.axis_names) != (AXIS,):
            raise ValueError(
                f"the mesh must have the single axis {AXIS!r}, got axes {mesh.axis_names}"
            )
        _warn_if_cpu_threads_short(mesh)
        return mesh
    if isinstance(mesh, (int, np.integer)) and not isinstance(mesh, bool):
        return make_mesh(mesh)
    raise TypeError(f"mesh must be a jax.sharding.Mesh, an int or None, got {mesh!r}")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """``P("data")``: an array ``(B, ...)`` gets ``B / D`` rows on each of the mesh's devices."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """``P()``: a whole copy on every device (parameters, optimizer state, scalars)."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch(batch_size: int, devices: int) -> None:
    """Refuse a batch size that ``devices`` devices (a mesh's size) cannot share equally.

    Raises:
        ValueError: ``batch_size`` < 1 or not a multiple of ``devices``.
        TypeError: ``batch_size`` not an int.
    """
    b, d = int_at_least("batch size", batch_size, 1), devices
    if b % d:
        raise ValueError(f"batch size {b} does not divide over {d} devices: use a multiple of {d}")


def shard_batch(batch: Tree, mesh: Mesh) -> Tree:
    """Put this process's rows of a global batch on its devices, split along ``"data"``.

    ``batch`` is an array ``(b, ...)`` or a pytree of them (``(x, y)``), NumPy or JAX. On one
    process this is ``jax.device_put`` with :func:`batch_sharding`; on several, each passes its
    own ``b`` rows (:func:`local_batch_slice`) and the global arrays, ``(b * process_count,
    ...)``, are assembled without moving data between hosts.

    Raises:
        ValueError: a leaf with no batch axis, leaves of different lengths, or a ``b`` that does
            not divide over this process's devices in the mesh.
    """
    leaves = jax.tree.leaves(batch)
    lengths = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in lengths:
        raise ValueError("every array in the batch needs a leading batch axis, got a scalar")
    if len(lengths) > 1:
        raise ValueError(f"the arrays of a batch must have the same length, got {sorted(lengths)}")
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        for n in lengths:
            check_batch(n, mesh.size)
        return jax.device_put(batch, sharding)
    local = len(mesh.local_devices)
    if local == 0:
        raise ValueError(
            f"process {jax.process_index()} has no device in the mesh: every process must "
            "contribute devices (make the mesh with make_mesh)"
        )
    for n in lengths:
        if n % local:
            raise ValueError(
                f"local batch size {n} does not divide over this process's {local} devices: "
                f"use a multiple of {local}"
            )
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), batch
    )


def shard_global(x: np.ndarray | jax.Array, mesh: Mesh) -> jax.Array:
    """Split an array that every process holds whole along ``"data"``; each keeps its part.

    Unlike :func:`shard_batch`, ``x`` is the whole ``(B, ...)`` array on every process (an
    evaluation set each host loads); each copies only its devices' rows, with no check, into
    the ``(B, ...)`` ``jax.Array`` sharded ``P("data")`` it returns.

    Raises:
        ValueError: ``B`` is not a multiple of ``D``.
    """
    check_batch(np.shape(x)[0], mesh.size)
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    return jax.make_array_from_callback(np.shape(x), sharding, lambda index: np.asarray(x[index]))


def replicate(tree: Tree, mesh: Mesh) -> Tree:
    """The pytree of arrays copied whole to every device of the mesh (:func:`replicated`).

    On several processes every one passes the same values; global arrays are resharded.
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(leaf: Any) -> jax.Array:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return jax.device_put(leaf, sharding)
        # Each process copies its own value to its own devices. (jax.device_put would first
        # compare the values across processes, and NaN, as in a fresh run's metrics, never
        # equals itself.)
        value = np.asarray(leaf)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(put, tree)


def local_batch_slice(
    global_batch: int, process_index: int | None = None, process_count: int | None = None
) -> slice:
    """The rows of a global batch that one process reads and passes to :func:`shard_batch`.

    Process ``i`` of ``P`` (default: this one, of ``jax.process_count()``) reads rows
    ``slice(i * b, (i + 1) * b)``, ``b = global_batch / P``: the global batch is the processes'
    rows in order, the batch a single process would have used.

    Raises:
        ValueError: ``global_batch`` not a multiple of ``process_count``, or an index out of range.
        TypeError: a non-int argument.
    """
    count = jax.process_count() if process_count is None else process_count
    index = jax.process_index() if process_index is None else process_index
    count = int_at_least("process_count", count, 1)
    index = int_at_least("process_index", index, 0)
    g = int_at_least("global_batch", global_batch, 1)
    if index >= count:
        raise ValueError(f"process_index must be in [0, {count}), got {index}")
    if g % count:
        raise ValueError(
            f"global batch {g} does not divide over {count} processes: use a multiple of {count}"
        )
    b = g // count
    return slice(index * b, (index + 1) * b)


def _check_address(address: object) -> None:
    if not isinstance(address, str):
        raise TypeError(f"coordinator_address must be a 'host:port' string, got {address!r}")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"coordinator_address must look like 'host:port' with a port in [1, 65535], "
            f"got {address!r}"
        )


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 300,
) -> None:
    """Join this process to a multi-process (multi-host) JAX run: ``jax.distributed.initialize``.

    Call it first in every process, with the same ``coordinator_address`` (``"host:port"`` of
    process 0, the coordinator) and ``num_processes`` and a distinct ``process_id`` in
    ``[0, num_processes)``; with no arguments JAX detects the cluster (Slurm, Open MPI, Cloud
    TPU, ...). JAX aborts the whole process (it is not an exception) when the coordinator cannot
    be reached in ``timeout_s`` seconds.

    Raises:
        ValueError: some but not all of the three given, a malformed address, or an id out of
            range.
        TypeError: arguments of the wrong type.
        RuntimeError: JAX refused, e.g. it had already been used in this process, or
            initialisation ran twice; the message says which process and address.
    """
    given = [a is not None for a in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            "give coordinator_address, num_processes and process_id together (or none, to let "
            f"JAX detect the cluster), got {coordinator_address=}, {num_processes=}, "
            f"{process_id=}"
        )
    if all(given):
        _check_address(coordinator_address)
        num_processes = int_at_least("num_processes", num_processes, 1)
        process_id = int_at_least("process_id", process_id, 0)
        if process_id >= num_processes:
            raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    timeout_s = int_at_least("timeout_s", timeout_s, 1)
    try:
        jax.distributed.initialize(
            coordinator_address, num_processes, process_id, initialization_timeout=timeout_s
        )
    except RuntimeError as e:
        where = "auto-detected cluster"
        if all(given):
            where = f"process {process_id} of {num_processes} at coordinator {coordinator_address}"
        raise RuntimeError(
            f"could not initialise distributed JAX ({where}): {e} Call initialize_distributed "
            "once, at the start of the program, before anything else touches JAX."
        ) from e


def stop_signal(received: int, at_sync_point: bool) -> int:
    """The stop signal the loop acts on now (0: go on), the same in every process.

    ``received`` is this process's signal (0: none). One process acts on it at once. Processes
    of a multi-process run must stop after the same step (or the others wait for their
    all-reduce forever), so their signals are gathered only where every process is
    (``at_sync_point``: history rows, evaluations, checkpoints), and the largest one wins.
    """
    if jax.process_count() == 1:
        return received
    if not at_sync_point:
        return 0
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(received))))


def partitionable(fn: Callable) -> Callable:
    """``fn`` traced with every convolution on XLA, for a program XLA splits over a mesh.

    XLA cannot partition the oneDNN custom calls (:mod:`jaxnet.backends.onednn`): around each
    one it would gather the whole batch onto every device, which then computes all of it.
    Under a mesh the convolutions therefore stay on XLA's own, partitionable kernels.
    """

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with onednn.turned_off():
            return fn(*args, **kwargs)

    return traced
