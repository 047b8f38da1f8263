"""``python -m experiments.benchmark``: a group, the whole run, the command and its flags."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from bench_helpers import TINY

from experiments.benchmark import run
from experiments.benchmark.case import Case, Method, Peers, Plan
from experiments.benchmark.methods import step_methods
from jaxnet import architectures
from jaxnet.backends import onednn


def test_group_record_has_every_method_ratio_and_layer():
    case = Case(architectures.mnist(), 2)
    methods = step_methods(Peers(), Plan())
    group = run.bench_group(case, methods, TINY, TINY)
    assert group["net"] == "mnist" and group["batch"] == 2 and group["failed"] == {}
    assert set(group["methods"]) == {"analytic", "autodiff"}
    for record in group["methods"].values():
        for key in ("images_per_s", "step_ms", "gflops", "compile_s", "window_step_s"):
            assert key in record
        assert record["images_per_s"] > 0
    assert set(group["ratios"]) == {"analytic/autodiff"}
    assert group["matmul_gflops"]["xla"] > 0
    expected = ["input", *(layer.name for layer in case.arch.layers), "loss", "update"]
    for rows in group["layers"].values():
        assert [row["layer"] for row in rows] == expected
        assert all(row["forward_ms"] > 0 for row in rows)
        assert [row["backward_ms"] is None for row in rows] == [
            name in ("input", "update") for name in expected
        ]


def test_a_failing_optional_method_is_one_line_and_the_run_goes_on():
    def broken(case):
        raise RuntimeError("no C++ compiler\nlong traceback")

    methods = [
        *step_methods(Peers(), Plan()),
        Method("torch.compile", broken, optional=True),
    ]
    group = run.bench_group(Case(architectures.mnist(), 2), methods, TINY, None)
    assert group["failed"] == {"torch.compile": "RuntimeError: no C++ compiler"}
    assert "torch.compile" not in group["methods"] and group["layers"] is None
    with pytest.raises(RuntimeError):  # a method that must work raises
        run.bench_group(Case(architectures.mnist(), 2), [Method("x", broken)], TINY, None)


def test_command_writes_json_and_table(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = ["--quick", "--nets", "mnist", "--batches", "2", "--json", str(path)]
    argv += ["--windows", "1", "--window-s", "0.001", "--no-epoch"]
    assert run.main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(path.read_text())
    ref = result["meta"]["reference"]  # the analytic rules on oneDNN's convolutions where built
    assert ref == ("analytic (oneDNN convs)" if onednn.available() else "analytic")
    assert f"| mnist | 2 | {ref} |" in out and "ceiling" in out and "where time goes" in out
    assert set(result) == {"meta", "ceiling_gflops", "groups", "epoch"}
    assert result["epoch"] is None
    assert result["meta"]["threads"] >= 1 and result["ceiling_gflops"] > 0
    assert result["meta"]["reuse_freed_memory"] is False and "glibc defaults" in out
    (group,) = result["groups"]
    assert {ref, "autodiff"} <= set(group["methods"]) <= set(group["layers"]) | {"torch.compile"}
    for record in group["methods"].values():
        assert 0 < record["fraction_of_ceiling"]
    assert "torch.compile" not in group["methods"]  # left out with --quick
    if result["meta"]["torch"] is not None:
        assert "PyTorch" in group["methods"] and f"{ref}/PyTorch" in group["ratios"]
    if result["meta"]["equinox"] is not None:
        assert "Equinox" in group["methods"] and f"{ref}/Equinox" in group["ratios"]


def test_bad_flags_exit_with_status_2():
    with pytest.raises(SystemExit) as error:
        run.main(["--nets", "no_such_net"])
    assert error.value.code == 2
    with pytest.raises(SystemExit) as error:
        run.main(["--batches", "0"])
    assert error.value.code == 2


def test_data_parallel_row_on_two_virtual_devices(tmp_path):
    """--devices 2 adds the analytic rules on 2 virtual CPU devices, made before JAX starts."""
    root = Path(__file__).resolve().parents[3]
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("XLA_FLAGS", None)
    argv = ["--quick", "--no-torch", "--no-equinox", "--no-epoch", "--no-layers"]
    argv += ["--nets", "mnist", "--batches", "8", "--windows", "1", "--devices", "2"]
    argv += ["--reuse-freed-memory", "--json", str(out)]  # a fresh process: the real call
    result = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", *argv],
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
    assert f"analytic x2/{record['meta']['reference']}" in group["ratios"]
    assert "mnist at batch 8: analytic x2 ran" in result.stdout
