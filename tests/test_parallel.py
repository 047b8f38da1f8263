"""Data parallelism: the mesh helpers here, and multi-device training in fresh processes.

JAX sees one CPU device in this process. The checks that need several run
``tests/parallel_worker.py`` in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (read only when JAX starts) and
``PJRT_NPROC=2N`` (see :func:`jaxnet.parallel._warn_if_cpu_threads_short`), and compare what it
saves: one device against four, and two processes joined over 127.0.0.1 against one device.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from parallel_worker import data, tiny, train  # what the multi-device worker runs

from jaxnet import evaluate, init, momentum, parallel
from jaxnet.step import make_train_step

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "parallel_worker.py"


# --- the helpers, on this process's devices -----------------------------------------------------


def test_xla_cpu_threads_follows_pjrt_nproc_then_nproc_then_the_cpus(monkeypatch):
    monkeypatch.setenv("PJRT_NPROC", "6")
    monkeypatch.setenv("NPROC", "3")
    assert parallel.xla_cpu_threads() == 6
    monkeypatch.delenv("PJRT_NPROC")
    assert parallel.xla_cpu_threads() == 3
    monkeypatch.setenv("NPROC", "not a number")
    assert parallel.xla_cpu_threads() == len(os.sched_getaffinity(0))


def test_make_mesh_over_all_or_some_devices():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    assert parallel.make_mesh(1).devices.tolist() == [jax.devices()[0]]
    assert parallel.make_mesh(jax.devices()[:1]).size == 1
    assert parallel.batch_sharding(mesh).spec == jax.sharding.PartitionSpec("data")
    assert parallel.replicated(mesh).spec == jax.sharding.PartitionSpec()


@pytest.mark.parametrize(
    ("devices", "error", "match"),
    [
        (jax.device_count() + 1, ValueError, rf"asked for {jax.device_count() + 1} devices but "
         rf"JAX sees only {jax.device_count()} \(jax.device_count\(\)\)"),
        (0, ValueError, "devices must be >= 1, got 0"),
        (True, TypeError, "devices must be None, an int or a sequence"),
        ("cpu", TypeError, "devices must be None, an int or a sequence"),
        ([], ValueError, "devices must not be empty"),
        ([0, 1], TypeError, "devices must be jax.Device objects, got 0"),
        (jax.devices()[:1] * 2, ValueError, "devices must be distinct"),
    ],
)  # fmt: skip
def test_make_mesh_errors(devices, error, match):
    with pytest.raises(error, match=match):
        parallel.make_mesh(devices)


def test_as_mesh_takes_a_data_mesh_or_a_count():
    mesh = parallel.make_mesh(1)
    assert parallel.as_mesh(mesh) is mesh
    assert parallel.as_mesh(1) == mesh
    with pytest.raises(ValueError, match=r"single axis 'data', got axes \('batch',\)"):
        parallel.as_mesh(Mesh(np.array(jax.devices()[:1]), ("batch",)))
    with pytest.raises(TypeError, match=r"mesh must be a jax\.sharding\.Mesh, an int or None"):
        parallel.as_mesh("4")


@pytest.mark.parametrize(("batch", "devices"), [(8, 4), (4, 4), (1, 1), (30, 3)])
def test_check_batch_accepts_multiples(batch, devices):
    parallel.check_batch(batch, devices)


@pytest.mark.parametrize(
    ("batch", "devices", "error", "match"),
    [
        (30, 4, ValueError, "batch size 30 does not divide over 4 devices: use a multiple of 4"),
        (1, 2, ValueError, "batch size 1 does not divide over 2 devices: use a multiple of 2"),
        (0, 1, ValueError, "batch size must be >= 1, got 0"),
        (8.0, 1, TypeError, "batch size must be an int, got 8.0"),
    ],
)
def test_check_batch_errors(batch, devices, error, match):
    with pytest.raises(error, match=match):
        parallel.check_batch(batch, devices)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((8, 0, 2), slice(0, 4)),
        ((8, 1, 2), slice(4, 8)),
        ((12, 2, 3), slice(8, 12)),
        ((5, 0, 1), slice(0, 5)),
        ((6,), slice(0, 6)),  # this process, alone
    ],
)
def test_local_batch_slice(args, expected):
    assert parallel.local_batch_slice(*args) == expected
    n, count = args[0], args[2] if len(args) == 3 else 1
    rows = [np.arange(n)[parallel.local_batch_slice(n, i, count)] for i in range(count)]
    np.testing.assert_array_equal(np.concatenate(rows), np.arange(n))  # in order: the batch


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((30, 0, 4), ValueError, "global batch 30 does not divide over 4 processes"),
        ((8, 2, 2), ValueError, r"process_index must be in \[0, 2\), got 2"),
        ((8, -1, 2), ValueError, "process_index must be >= 0"),
        ((8, 0, 0), ValueError, "process_count must be >= 1"),
        ((8.0, 0, 2), TypeError, "global_batch must be an int"),
    ],
)
def test_local_batch_slice_errors(args, error, match):
    with pytest.raises(error, match=match):
        parallel.local_batch_slice(*args)


def test_shard_batch_and_replicate_on_one_device():
    mesh = parallel.make_mesh(1)
    x, y = data(tiny(), 4)
    xs, ys = parallel.shard_batch((x, y), mesh)
    assert xs.shape == x.shape and xs.sharding == parallel.batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(ys), y)
    params = parallel.replicate(init(tiny(), jax.random.key(0)), mesh)
    assert all(a.sharding == parallel.replicated(mesh) for a in jax.tree.leaves(params))
    g = parallel.shard_global(jnp.arange(4), mesh)
    assert g.sharding == parallel.batch_sharding(mesh)
    with pytest.raises(ValueError, match=r"the same length, got \[3, 4\]"):
        parallel.shard_batch((x, y[:3]), mesh)
    with pytest.raises(ValueError, match="leading batch axis"):
        parallel.shard_batch((x, np.float32(1)), mesh)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("127.0.0.1:1234", 2, None), ValueError, "give coordinator_address, num_processes and"),
        (("127.0.0.1", 2, 0), ValueError, "must look like 'host:port'"),
        (("127.0.0.1:0", 2, 0), ValueError, r"port in \[1, 65535\]"),
        (("127.0.0.1:70000", 2, 0), ValueError, "must look like 'host:port'"),
        ((1234, 2, 0), TypeError, "coordinator_address must be a 'host:port' string"),
        (("127.0.0.1:1234", 2, 2), ValueError, r"process_id must be in \[0, 2\), got 2"),
        (("127.0.0.1:1234", 0, 0), ValueError, "num_processes must be >= 1"),
        (("127.0.0.1:1234", "2", 0), TypeError, "num_processes must be an int"),
    ],
)
def test_initialize_distributed_validates_before_calling_jax(args, error, match):
    with pytest.raises(error, match=match):
        parallel.initialize_distributed(*args)


def test_initialize_distributed_after_jax_started_says_so():
    jax.devices()  # the backend is up in this process
    with pytest.raises(RuntimeError, match=r"\(process 0 of 1 at coordinator 127.0.0.1:1234\): "
                       r".*before any JAX calls.*Call initialize_distributed once"):  # fmt: skip
        parallel.initialize_distributed("127.0.0.1:1234", 1, 0)


def test_one_device_mesh_equals_no_mesh():
    arch = tiny()
    x, y = data(arch, 8)
    losses, params, info = train(arch, 5, 4, x, y)
    mesh_losses, mesh_params, mesh_info = train(arch, 5, 4, x, y, mesh=1)
    assert info["cache"] == mesh_info["cache"] == 1
    np.testing.assert_allclose(mesh_losses, losses, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(mesh_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
    assert make_train_step(arch, momentum(0.1), mesh=1).mesh.size == 1

    p = init(arch, jax.random.key(1))
    plain = evaluate(arch, p, x, y, batch_size=3)
    meshed = evaluate(arch, p, x, y, batch_size=3, mesh=1)
    np.testing.assert_array_equal(meshed.predictions, plain.predictions)
    assert meshed.loss == pytest.approx(plain.loss, rel=1e-6)


def test_make_train_step_refuses_a_mesh_larger_than_the_machine():
    n = jax.device_count() + 1
    with pytest.raises(ValueError, match=f"asked for {n} devices but JAX sees only"):
        make_train_step(tiny(), momentum(0.1), mesh=n)
    with pytest.raises(TypeError, match=r"mesh must be a jax\.sharding\.Mesh"):
        make_train_step(tiny(), momentum(0.1), mesh="all")


# --- several devices and processes, in subprocesses ---------------------------------------------


def worker_env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["PJRT_NPROC"] = str(2 * devices)  # enough XLA threads for the all-reduce
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_ENABLE_X64", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_workers(argvs: list[list[str]], devices: int, timeout: float = 240) -> None:
    """Run one worker per argument list, all at once, each seeing ``devices`` CPU devices."""
    env = worker_env(devices)
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in argvs
    ]
    try:
        logs = [p.communicate(timeout=timeout)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for args, p, log in zip(argvs, procs, logs, strict=True):
        assert p.returncode == 0, f"worker {args[0]} failed:\n{log[-3000:]}"


def assert_runs_close(saved, a: str, b: str, rtol: float, atol: float) -> None:
    np.testing.assert_allclose(saved[f"{b}:losses"], saved[f"{a}:losses"], rtol=rtol, atol=atol)
    names = [k.split(":param:")[1] for k in saved if k.startswith(f"{a}:param:")]
    assert names
    for name in names:
        np.testing.assert_allclose(
            saved[f"{b}:param:{name}"], saved[f"{a}:param:{name}"], rtol=rtol, atol=atol,
            err_msg=name,
        )  # fmt: skip


@pytest.mark.slow
def test_four_devices_train_and_evaluate_as_one(tmp_path):
    """Same seed, 1 device vs 4 virtual CPU devices: the same run up to reduction order.

    Float32, the MNIST network, batch 8, 20 steps: we measured the losses 2e-7 apart (one or two
    ulps) and the params 3e-8. Float32 runs drift apart over longer runs (chaotic training on
    random labels: 3e-3 in the loss after 200 steps), so the long run is in float64, where 200
    steps of a smaller network with the same layers stayed 1e-15 apart.
    """
    out = tmp_path / "equivalence.npz"
    run_workers([["equivalence", str(out)]], devices=4)
    saved = dict(np.load(out))

    assert_runs_close(saved, "f32_one", "f32_four", rtol=1e-5, atol=1e-6)
    assert_runs_close(saved, "f64_one", "f64_four", rtol=1e-9, atol=1e-12)
    assert_runs_close(saved, "tiny_one", "tiny_two", rtol=1e-5, atol=1e-6)  # a 2-device subset
    assert_runs_close(saved, "fit_one", "fit_four", rtol=1e-5, atol=1e-6)  # 4 steps per call
    losses = saved["f64_four:losses"]
    assert losses.dtype == np.float64 and losses.shape == (200,)
    assert losses[-8:].mean() < 0.8 * losses[:8].mean()  # it went somewhere
    for run in ("f32_one", "f32_four", "f64_one", "f64_four", "tiny_one", "tiny_two"):
        assert saved[f"{run}:traces"] == 1 and saved[f"{run}:cache"] == 1, run  # compiles once
        assert saved[f"{run}:donated"], run
        assert saved[f"{run}:replicated"], run  # params and state whole on every device

    assert str(saved["error_step"]) == (
        "batch size 6 does not divide over 4 devices: use a multiple of 4"
    )
    assert str(saved["error_eval"]) == str(saved["error_step"])
    assert str(saved["error_mesh"]).startswith("asked for 8 devices but JAX sees only 4")

    np.testing.assert_array_equal(saved["eval_four_predictions"], saved["eval_one_predictions"])
    assert float(saved["eval_four_loss"]) == pytest.approx(float(saved["eval_one_loss"]), rel=1e-6)
    assert saved["eval_four_cache"] == 1  # 11, 5 examples; NumPy and JAX input: one compilation

    assert str(saved["warnings"]) == ""  # PJRT_NPROC=8 for 4 devices: no warning
    assert "Set PJRT_NPROC=8" in str(saved["warning_short_pool"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_as_one_device(tmp_path):
    """Two processes on 127.0.0.1, two CPU devices each, one mesh of four over both.

    Each process feeds only its half of every batch of 8; JAX's CPU collectives (gloo) all-reduce
    the gradient across the processes. Both must end with the same params as each other and as
    one device fed whole batches, and evaluate to the same result.
    """
    address = f"127.0.0.1:{free_port()}"
    outs = [tmp_path / f"process{i}.npz" for i in range(2)]
    run_workers([["multihost", str(out), address, "2", str(i)] for i, out in enumerate(outs)], 2)

    first, second = (dict(np.load(out)) for out in outs)
    for i, saved in enumerate((first, second)):
        assert saved["process_index"] == i and saved["process_count"] == 2
        assert saved["device_count"] == 4 and saved["local_device_count"] == 2
        assert saved["mesh_size"] == 4
        np.testing.assert_array_equal(saved["mesh_of_two"], [0, 1])  # make_mesh(2): one per host
        np.testing.assert_array_equal(saved["local_rows"], [4 * i, 4 * i + 4])
        assert saved["mesh:traces"] == 1 and saved["mesh:cache"] == 1 and saved["mesh:replicated"]
    for key in [k for k in first if k.startswith("mesh:")]:  # losses, params, evaluation
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)  # bit for bit
    assert_runs_close(first, "ref", "mesh", rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(first["mesh:eval_predictions"], first["ref:eval_predictions"])
    assert float(first["mesh:eval_loss"]) == pytest.approx(float(first["ref:eval_loss"]), rel=1e-6)
