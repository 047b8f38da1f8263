"""The benchmark's record as Markdown: one row per method, the targets marked, the notes."""

from __future__ import annotations

from experiments.benchmark.tables import format_table

REF = "analytic (oneDNN convs)"


def method(images_per_s: float, fraction: float) -> dict:
    return {
        "images_per_s": images_per_s,
        "step_ms": 16e3 / images_per_s,
        "gflops": 100 * fraction,
        "fraction_of_ceiling": fraction,
        "compile_s": 1.5,
    }


def group(net: str, fraction: float, ratios: dict, failed: dict | None = None) -> dict:
    return {
        "net": net,
        "batch": 16,
        "methods": {REF: method(2000, fraction), "PyTorch": method(1500, 0.3)},
        "ratios": ratios,
        "failed": failed or {},
        "layers": None,
        "matmul_gflops": {"xla": 180.0, "torch": 220.0},
    }


def record(load: float, groups: list[dict]) -> dict:
    meta = {
        "reference": REF,
        "cpu": "Test CPU",
        "threads": 2,
        "jax": "0.0",
        "torch": "2.0",
        "equinox": None,
        "load_average_start": load,
        "load_average_end": 1.0,
        "reuse_freed_memory": False,
        "pytorch_formulation": "nn.Sequential",
        "equinox_formulation": "eqx.nn",
        "notes": ["Equinox: left out (equinox not installed)"],
        "matmul_n": 1024,
    }
    return {"meta": meta, "ceiling_gflops": 220.0, "groups": groups, "epoch": None}


def test_rows_targets_and_notes():
    groups = [
        group("mnist", 0.30, {f"{REF}/PyTorch": 1.33}),
        group("cifar10_modified", 0.44, {f"{REF}/PyTorch": 0.95, f"{REF}/autodiff": 2.0}),
        group("cifar10_modified", 0.45, {f"{REF}/PyTorch": 1.0}, {"torch.compile": "no g++"}),
    ]
    table = format_table(record(0.5, groups))
    assert "CPU: Test CPU, 2 threads" in table and "Equinox: left out" in table
    assert "GFLOP/s: xla 180, torch 220; ceiling 220" in table
    assert f"| mnist | 16 | {REF} | 2000 | 8.00 | 30.0 | 30% | - | 1.5 |" in table
    assert "| mnist | 16 | PyTorch | 1500 | 10.67 | 30.0 | 30% | 1.33 | 1.5 |" in table
    assert "| mnist | 16 | 1.33 met | - | 30% |" in table  # no ceiling target for MNIST
    assert "| cifar10_modified | 16 | 0.95 not met | - | 44% not met |" in table
    assert "| cifar10_modified | 16 | 1.00 met | - | 45% met |" in table
    assert "torch.compile on cifar10_modified at batch 16: failed, no g++" in table
    assert "note: the load average" not in table


def test_a_loaded_machine_is_said_to_give_noisy_figures():
    table = format_table(record(3.5, [group("mnist", 0.3, {})]))
    assert "note: the load average (3.5) exceeds the 2 CPUs" in table
