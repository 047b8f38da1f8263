"""Multi-device checks run in a fresh process, so JAX can be given several CPU devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=N`` only takes effect before JAX starts its
backend, which the pytest process has long done; ``tests/test_parallel.py`` runs this file with
the flag (and ``PJRT_NPROC=2N``, see :mod:`jaxnet.parallel`) set and checks what it saves::

    python tests/parallel_worker.py equivalence OUT.npz
    python tests/parallel_worker.py multihost OUT.npz 127.0.0.1:PORT NUM_PROCESSES PROCESS_ID

``equivalence`` (4 devices): the same seeded runs on one device and data-parallel, with their
trace counts, shardings and donation, the errors for a batch that does not divide, and
evaluation with and without a mesh. ``multihost`` (one of several processes): trains and
evaluates data-parallel on a mesh over every process's devices, each feeding only its own rows,
and trains the one-device reference locally.
"""

from __future__ import annotations

import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnet import Architecture, Conv, Dense, MaxPool, ReLU, architectures, init, momentum, parallel
from jaxnet import step as jstep
from jaxnet.step import evaluate, make_train_step
from jaxnet.training import FitConfig, TrainData, fit


def tiny(input_shape: tuple[int, int, int] = (8, 8, 1)) -> Architecture:
    h, w, c = input_shape
    return Architecture(
        (Conv(3, 3, c, 4, padding=1), ReLU(), MaxPool(2, 2), Dense(h // 2 * (w // 2) * 4, 3)),
        input_shape,
        num_classes=3,
    )


def mini_mnist() -> Architecture:
    """Every layer kind of the MNIST network at a fifth of its cost: 12x12 inputs, 10 classes."""
    return Architecture(
        (
            Conv(5, 5, 1, 8, padding=2),
            ReLU(),
            MaxPool(2, 2),
            Conv(3, 3, 8, 8, padding=1),
            ReLU(),
            MaxPool(2, 2),
            Dense(3 * 3 * 8, 10),
        ),
        (12, 12, 1),
        num_classes=10,
    )


def data(arch: Architecture, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random uint8 images ``(n, H, W, C)`` and int32 labels ``(n,)``."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *arch.input_shape), dtype=np.uint8)
    y = rng.integers(0, arch.num_classes, n).astype(np.int32)
    return x, y


def counting(optimizer: optax.GradientTransformation) -> tuple[optax.GradientTransformation, list]:
    """``optimizer`` whose ``update`` records each call: inside a jit, one call per trace."""
    calls = []

    def update(grads, state, params=None):
        calls.append(1)
        return optimizer.update(grads, state, params)

    return optax.GradientTransformation(optimizer.init, update), calls


def train(arch, steps, batch, x, y, *, mesh=None, local=None, dtype=jnp.float32):
    """``(losses (steps,), params, info)`` of ``steps`` seeded steps over ``x, y`` in batches of
    ``batch``; ``info``: trace and cache counts, whether the results are replicated over the mesh
    and whether the second call donated its inputs.

    ``local``: this process's slice of each global batch (several processes), which it passes
    through :func:`parallel.shard_batch`; otherwise whole NumPy batches go to the step.
    """
    optimizer, traces = counting(momentum(0.01, 0.9, 1e-3))
    step = make_train_step(arch, optimizer, mean=0.5, mesh=mesh)
    params = init(arch, jax.random.key(0), dtype=dtype)
    state = optimizer.init(params)
    if local is not None:
        params, state = parallel.replicate((params, state), step.mesh)
    losses, donated = [], None
    n_batches = x.shape[0] // batch
    for i in range(steps):
        rows = slice((i % n_batches) * batch, (i % n_batches + 1) * batch)
        xb, yb = x[rows], y[rows]
        if local is not None:
            xb, yb = parallel.shard_batch((xb[local], yb[local]), step.mesh)
        old = params
        params, state, metrics = step(params, state, xb, yb)
        if i == 1:
            donated = all(leaf.is_deleted() for leaf in jax.tree.leaves(old))
        losses.append(metrics["loss"])
    devices = 1 if mesh is None else step.mesh.size
    info = {
        "traces": len(traces),
        "cache": (step if mesh is None else step.jitted)._cache_size(),
        "donated": donated,
        "replicated": all(
            leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == devices
            for leaf in jax.tree.leaves((params, state))
        ),
    }
    return np.asarray(jnp.stack(losses)), params, info


def save_run(saved: dict, name: str, run: tuple) -> None:
    """``(losses, params, info)`` into ``saved`` as ``name:losses``, ``name:param:conv1/w``, ..."""
    losses, params, info = run
    saved[f"{name}:losses"] = losses
    saved.update({f"{name}:{k}": v for k, v in info.items()})
    for layer, p in params.items():
        saved.update({f"{name}:param:{layer}/{k}": np.asarray(v) for k, v in p.items()})


def error(fn) -> str:
    try:
        fn()
    except ValueError as e:
        return str(e)
    return ""


def pjrt_warnings(fn) -> str:
    """The warnings about ``PJRT_NPROC`` that ``fn()`` gave, joined."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return "; ".join(str(w.message) for w in caught if "PJRT_NPROC" in str(w.message))


def equivalence(out: str) -> None:
    assert jax.device_count() == 4, jax.devices()
    arch = architectures.mnist()
    x, y = data(arch, 64)
    saved = {}
    saved["warnings"] = pjrt_warnings(lambda: _equivalence_runs(saved, arch, x, y))
    os.environ["PJRT_NPROC"] = "4"  # read when a mesh is made: the pool now has too few threads
    saved["warning_short_pool"] = pjrt_warnings(lambda: parallel.make_mesh(4))
    np.savez(out, **saved)


def _equivalence_runs(saved, arch, x, y) -> None:
    save_run(saved, "f32_one", train(arch, 20, 8, x, y))
    save_run(saved, "f32_four", train(arch, 20, 8, x, y, mesh=4))
    with jax.enable_x64(True):
        xm, ym = data(mini_mnist(), 64)
        save_run(saved, "f64_one", train(mini_mnist(), 200, 8, xm, ym, dtype=jnp.float64))
        save_run(saved, "f64_four", train(mini_mnist(), 200, 8, xm, ym, mesh=4, dtype=jnp.float64))

    small = tiny()
    xs, ys = data(small, 16, seed=2)
    save_run(saved, "tiny_one", train(small, 10, 4, xs, ys))
    two = parallel.make_mesh(jax.devices()[2:])  # an explicit subset of the devices
    save_run(saved, "tiny_two", train(small, 10, 4, xs, ys, mesh=two))

    # fit itself: 4 steps per call on the 4 devices against 1 per call on one device.
    config = FitConfig(
        iterations=12, batch_size=8, learning_rate=0.05, log_every=3, checkpoint_every=100
    )
    xf, yf = data(small, 32, seed=3)
    fit_data = TrainData(xf, yf, xf[:0], yf[:0], np.array([0.5], np.float32))
    for name, kwargs in (("fit_one", {}), ("fit_four", {"mesh": 4, "steps_per_call": 4})):
        result = fit(small, fit_data, config, progress=False, **kwargs)
        losses = np.array([row["train_loss"] for row in result.history])
        save_run(saved, name, (losses, result.params, {}))

    step = make_train_step(arch, momentum(0.01), mesh=4)
    params = init(arch, jax.random.key(0))
    saved["error_step"] = error(lambda: step(params, momentum(0.01).init(params), x[:6], y[:6]))
    saved["error_mesh"] = error(lambda: parallel.make_mesh(8))
    saved["error_eval"] = error(lambda: evaluate(arch, params, x, y, batch_size=6, mesh=4))

    xs, ys = data(small, 11, seed=1)
    p = init(small, jax.random.key(1))
    one = evaluate(small, p, xs, ys, batch_size=4, mean=0.25)  # batches 4, 4, 3 (padded)
    four = evaluate(small, p, xs, ys, batch_size=4, mean=0.25, mesh=parallel.make_mesh())
    evaluate(small, p, jnp.asarray(xs[:5]), jnp.asarray(ys[:5]), batch_size=4, mean=0.3, mesh=4)
    saved["eval_one_predictions"], saved["eval_one_loss"] = one.predictions, one.loss
    saved["eval_four_predictions"], saved["eval_four_loss"] = four.predictions, four.loss
    saved["eval_four_cache"] = jstep._eval_batch(parallel.make_mesh())._cache_size()


def multihost(out: str, address: str, num_processes: int, process_id: int) -> None:
    parallel.initialize_distributed(address, num_processes, process_id, timeout_s=60)
    arch = tiny()
    x, y = data(arch, 32)
    mesh = parallel.make_mesh()  # every process's devices
    local = parallel.local_batch_slice(8)
    runs = {
        "mesh": (train(arch, 20, 8, x, y, mesh=mesh, local=local), mesh),
        "ref": (train(arch, 20, 8, x, y), None),  # one local device, whole batches
    }
    saved = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "mesh_size": mesh.size,
        "mesh_of_two": [d.process_index for d in parallel.make_mesh(2).devices],  # one each
        "local_rows": np.array([local.start, local.stop]),
    }
    for name, (run, on) in runs.items():
        save_run(saved, name, run)
        result = evaluate(arch, run[1], x[:13], y[:13], batch_size=4, mesh=on)
        saved[f"{name}:eval_predictions"] = result.predictions
        saved[f"{name}:eval_loss"] = result.loss
    np.savez(out, **saved)
    jax.distributed.shutdown()


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "equivalence":
        equivalence(path)
    elif mode == "multihost":
        multihost(path, sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown mode {mode!r}: use 'equivalence' or 'multihost'")
