"""The benchmark's rows: which methods run, and which ratios are taken."""

from __future__ import annotations

from types import SimpleNamespace

from experiments.benchmark.case import Peers, Plan, on_xla
from experiments.benchmark.methods import ratio_pairs, step_methods
from jaxnet.backends import onednn


def test_ratio_pairs_put_the_reference_against_each_method():
    names = ["analytic", "autodiff", "analytic x2", "PyTorch", "PyTorch hand-written"]
    assert ratio_pairs(names) == [
        ("analytic", "autodiff"),
        ("analytic x2", "analytic"),
        ("analytic", "PyTorch"),
        ("analytic", "PyTorch hand-written"),
        ("PyTorch hand-written", "PyTorch"),
    ]


def test_with_onednn_the_analytic_rules_run_on_each_kernel_set(monkeypatch):
    methods = step_methods(Peers(onednn=SimpleNamespace()), Plan())
    assert [m.name for m in methods[:3]] == [
        "analytic (oneDNN convs)",
        "analytic (XLA convs)",
        "autodiff",
    ]
    monkeypatch.delenv(onednn.ENV_VAR, raising=False)
    seen = []
    on_xla(lambda k: seen.append(onednn.enabled()))(1)
    assert seen == [False] and onednn.enabled()
