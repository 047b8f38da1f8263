"""The benchmark case: products per step, the optional peers and the device PyTorch runs on."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import jax
import pytest
from bench_helpers import TINY

from experiments.benchmark import run
from experiments.benchmark.case import Plan, import_peers, step_flops, torch_device
from experiments.benchmark.tables import format_table
from jaxnet import architectures


def test_step_flops_counts_forward_dw_and_dx_but_not_the_first_dx():
    per_image = step_flops(architectures.mnist(), 1)
    conv1 = 2 * 28 * 28 * 5 * 5 * 1 * 16
    conv2 = 2 * 14 * 14 * 5 * 5 * 16 * 16
    dense = 2 * 784 * 10
    assert per_image == 2 * conv1 + 3 * conv2 + 3 * dense
    assert step_flops(architectures.mnist(), 7) == 7 * per_image


def test_missing_peers_are_left_out_with_a_line(monkeypatch, capsys):
    for name in ("torch", "equinox"):
        monkeypatch.setitem(sys.modules, name, None)  # import torch -> ImportError
    for name in ("experiments.peers.pytorch_peer", "experiments.peers.equinox_peer"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    peers = import_peers()
    assert peers.torch is None and peers.equinox is None
    assert peers.notes[:2] == (
        'PyTorch: left out (torch not installed: pip install -e ".[peers]")',
        'Equinox: left out (equinox not installed: pip install -e ".[peers]")',
    )
    assert all("oneDNN" in note for note in peers.notes[2:])  # where it is not built
    plan = Plan(("mnist",), (2,), TINY, layer_settings=None, epoch=False)
    result = run.run_benchmark(plan, peers, log=lambda line: None, reuse_freed_memory=False)
    table = format_table(result)
    assert all(note in table for note in peers.notes)
    analytic = {"analytic (oneDNN convs)", "analytic (XLA convs)"} if peers.onednn else {"analytic"}
    assert set(result["groups"][0]["methods"]) == analytic | {"autodiff"}


@pytest.mark.parametrize(
    ("backend", "cuda", "expected"),
    [("cpu", False, "cpu"), ("gpu", True, "cuda"), ("gpu", False, None), ("tpu", True, None)],
)
def test_pytorch_runs_on_the_device_that_matches_jax(monkeypatch, backend, cuda, expected):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    fake_torch = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: cuda))
    assert torch_device(fake_torch) == expected
