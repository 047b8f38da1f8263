"""Smoke test of ``python -m experiments.benchmark``: structure, never speed."""

from __future__ import annotations

import json
import platform

import jax
import numpy as np
import pytest

from experiments import benchmark
from jaxnet import architectures, init
from jaxnet.train import loss_and_logits

TINY = benchmark.Settings(windows=1, window_s=0.001)


def test_step_flops_counts_forward_dw_and_dx_but_not_the_first_dx():
    per_image = benchmark.step_flops(architectures.mnist(), 1)
    conv1 = 2 * 28 * 28 * 5 * 5 * 1 * 16
    conv2 = 2 * 14 * 14 * 5 * 5 * 16 * 16
    dense = 2 * 784 * 10
    assert per_image == 2 * conv1 + 3 * conv2 + 3 * dense
    assert benchmark.step_flops(architectures.mnist(), 7) == 7 * per_image


def test_interleaved_gives_one_time_per_round_for_every_runner():
    calls = {"a": 0, "b": 0}

    def runner(name):
        def run(k):
            calls[name] += k

        return run

    timed = benchmark.interleaved({"a": runner("a"), "b": runner("b")}, TINY)
    assert set(timed) == {"a", "b"}
    for per_window, seconds in timed.values():
        assert per_window >= 1 and len(seconds) == TINY.windows
    assert benchmark.median_ratio([1.0, 2.0, 4.0], [2.0, 2.0, 2.0]) == 1.0


def test_group_record_has_every_method_and_ratio():
    group = benchmark.bench_group("mnist", 2, TINY, torch=None, threads=1)
    assert group["net"] == "mnist" and group["batch"] == 2
    assert set(group["methods"]) == {"analytic", "autodiff"}
    for record in group["methods"].values():
        for key in ("images_per_s", "step_ms", "gflops", "compile_s", "window_step_s"):
            assert key in record
        assert record["images_per_s"] > 0
    assert set(group["ratios"]) == {"analytic/autodiff"}
    assert group["matmul_gflops"]["xla"] > 0


def test_torch_model_gives_jaxnet_loss_with_the_same_weights():
    torch = pytest.importorskip("torch")
    arch = architectures.cifar10_modified()
    x = np.random.default_rng(0).standard_normal((3, 32, 32, 3)).astype(np.float32)
    y = np.array([0, 4, 9], np.int32)
    loss_fn, params = benchmark.torch_model(torch, arch, seed=0)
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    loss_t, logits_t = loss_fn(x_t, torch.from_numpy(y.astype(np.int64)))
    loss_j, logits_j = loss_and_logits(arch, init(arch, jax.random.PRNGKey(0)), x, y)
    np.testing.assert_allclose(logits_t.detach().numpy(), logits_j, rtol=1e-4, atol=1e-4)
    assert abs(loss_t.item() - float(loss_j)) < 1e-4
    assert len(params) == 2 * len(arch.parametrised)


def test_command_writes_json_and_table(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = ["--quick", "--nets", "mnist", "--batches", "2", "--json", str(path)]
    argv += ["--windows", "1", "--window-s", "0.001", "--no-epoch"]
    if benchmark.import_torch() is None:
        argv.append("--no-torch")
    assert benchmark.main(argv) == 0
    out = capsys.readouterr().out
    assert "| mnist | 2 |" in out and "ceiling" in out
    result = json.loads(path.read_text())
    assert set(result) == {"meta", "ceiling_gflops", "groups", "epoch"}
    assert result["epoch"] is None
    assert result["meta"]["threads"] >= 1 and result["ceiling_gflops"] > 0
    assert result["meta"]["reuse_freed_memory"] is False and "glibc defaults" in out
    (group,) = result["groups"]
    assert {"analytic", "autodiff"} <= set(group["methods"])
    for record in group["methods"].values():
        assert 0 < record["fraction_of_ceiling"]
    if result["meta"]["torch"] is not None:
        assert "torch" in group["methods"] and "analytic/torch" in group["ratios"]


def test_epoch_check_reports_epoch_and_step_times(monkeypatch):
    monkeypatch.setattr(benchmark, "EPOCH_IMAGES", {True: 256, False: 256})
    record = benchmark.bench_epoch(quick=True, batch=64, epochs=2)
    assert record["steps"] == 4 and len(record["epochs_s"]) == 2
    assert record["epoch_s"] > 0 and record["steps_x_step_s"] > 0
    assert record["ratio"] == pytest.approx(
        record["epoch_s"] / (record["steps"] * record["step_ms"] / 1e3)
    )
    several = record["several"]
    assert several["steps_per_call"] == benchmark.STEPS_PER_CALL and len(several["epochs_s"]) == 2
    assert several["speedup"] == pytest.approx(record["epoch_s"] / several["epoch_s"])


def test_bad_flags_exit_with_status_2():
    with pytest.raises(SystemExit) as error:
        benchmark.main(["--nets", "no_such_net"])
    assert error.value.code == 2
    with pytest.raises(SystemExit) as error:
        benchmark.main(["--batches", "0"])
    assert error.value.code == 2


def test_data_parallel_row_on_two_virtual_devices(tmp_path):
    """--devices 2 adds the analytic rules on 2 virtual CPU devices, made before JAX starts."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.benchmark",
            "--quick",
            "--no-torch",
            "--no-epoch",
            "--nets",
            "mnist",
            "--batches",
            "8",
            "--windows",
            "1",
            "--devices",
            "2",
            "--reuse-freed-memory",  # a fresh process: the real call
            "--json",
            str(out),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert record["meta"]["device_count"] == 2
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert record["meta"]["reuse_freed_memory"] is True
    (group,) = record["groups"]
    assert group["methods"]["analytic x2"]["images_per_s"] > 0
    assert "analytic x2/analytic" in group["ratios"]
    assert "data-parallel, mnist at batch 8" in result.stdout


@pytest.mark.parametrize(
    ("backend", "cuda", "expected"),
    [("cpu", False, "cpu"), ("gpu", True, "cuda"), ("gpu", False, None), ("tpu", True, None)],
)
def test_pytorch_runs_on_the_device_that_matches_jax(monkeypatch, backend, cuda, expected):
    from types import SimpleNamespace

    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    fake_torch = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: cuda))
    assert benchmark.torch_device(fake_torch) == expected
