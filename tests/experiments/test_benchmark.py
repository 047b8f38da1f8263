"""``python -m experiments.benchmark`` and its peers: structure and equal work, never speed."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.benchmark import epoch, run
from experiments.benchmark.case import (
    MEAN,
    Case,
    Method,
    Peers,
    Plan,
    import_peers,
    on_xla,
    step_flops,
    torch_device,
)
from experiments.benchmark.methods import ratio_pairs, step_methods
from experiments.benchmark.tables import format_table
from experiments.benchmark.timing import Settings, interleaved, median_ratio
from experiments.peers import nchw_weights
from jaxnet import architectures, init, momentum
from jaxnet.backends import onednn
from jaxnet.step import loss_and_logits, make_train_step

TINY = Settings(windows=1, window_s=0.001)
NETS = ["mnist", "cifar10_modified"]
LR, MU, WD = 0.1, 0.9, 5e-3


def _batch(arch, n=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *arch.input_shape), dtype=np.uint8)
    x[:, :4] = 0  # a black band, as real images have: ReLU and pooling ties
    return x, rng.integers(0, arch.num_classes, n).astype(np.int32)


def _jaxnet_after_one_step(arch, optimizer, x, y):
    params = init(arch, jax.random.PRNGKey(0))
    step = make_train_step(arch, optimizer, mean=MEAN)
    params, _, metrics = step(params, optimizer.init(params), x, y)
    return nchw_weights(arch, params), float(metrics["loss"])


def test_step_flops_counts_forward_dw_and_dx_but_not_the_first_dx():
    per_image = step_flops(architectures.mnist(), 1)
    conv1 = 2 * 28 * 28 * 5 * 5 * 1 * 16
    conv2 = 2 * 14 * 14 * 5 * 5 * 16 * 16
    dense = 2 * 784 * 10
    assert per_image == 2 * conv1 + 3 * conv2 + 3 * dense
    assert step_flops(architectures.mnist(), 7) == 7 * per_image


def test_interleaved_gives_one_time_per_round_for_every_runner():
    calls = {"a": 0, "b": 0}

    def runner(name):
        def run(k):
            calls[name] += k

        return run

    timed = interleaved({"a": runner("a"), "b": runner("b")}, TINY)
    assert set(timed) == {"a", "b"}
    for per_window, seconds in timed.values():
        assert per_window >= 1 and len(seconds) == TINY.windows
    assert median_ratio([1.0, 2.0, 4.0], [2.0, 2.0, 2.0]) == 1.0


def test_ratio_pairs_put_the_reference_against_each_method():
    names = ["analytic", "autodiff", "analytic x2", "PyTorch", "PyTorch hand-written"]
    assert ratio_pairs(names) == [
        ("analytic", "autodiff"),
        ("analytic x2", "analytic"),
        ("analytic", "PyTorch"),
        ("analytic", "PyTorch hand-written"),
        ("PyTorch hand-written", "PyTorch"),
    ]


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


@pytest.mark.parametrize("net", NETS)
def test_peers_compute_jaxnet_loss_with_the_same_weights(net):
    torch_peer = pytest.importorskip("experiments.peers.pytorch_peer")
    equinox_peer = pytest.importorskip("experiments.peers.equinox_peer")
    torch = torch_peer.torch
    arch = architectures.get(net)
    params = init(arch, jax.random.PRNGKey(0))
    x, y = _batch(arch)
    xf = x / 255.0 - MEAN
    loss_j, logits_j = loss_and_logits(
        arch, params, jnp.asarray(xf, jnp.float32), y, "analytic", 0.0
    )
    model = torch_peer.sequential(arch, params)
    logits_t = model(torch_peer.images(x).float() / 255 - MEAN).detach().numpy()
    loss_e, logits_e = equinox_peer.loss(
        equinox_peer.CNN(arch, params), jnp.asarray(xf.transpose(0, 3, 1, 2), jnp.float32), y
    )
    for logits in (logits_t, logits_e):
        np.testing.assert_allclose(logits, logits_j, rtol=1e-5, atol=1e-5)
    loss_t = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits_t), torch.from_numpy(y).long()
    )
    assert abs(loss_t.item() - float(loss_j)) < 1e-5 and abs(float(loss_e) - float(loss_j)) < 1e-5


def _assert_same_params(got, expected):
    assert got.keys() == expected.keys()
    for name in expected:
        for a, b in zip(got[name], expected[name], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("net", NETS)
def test_equinox_step_updates_like_jaxnet(net):
    equinox_peer = pytest.importorskip("experiments.peers.equinox_peer")
    eqx = equinox_peer.eqx
    arch = architectures.get(net)
    x, y = _batch(arch, 4)
    optimizer = momentum(LR, MU, WD)
    expected, loss_j = _jaxnet_after_one_step(arch, optimizer, x, y)
    model = equinox_peer.CNN(arch, init(arch, jax.random.PRNGKey(0)))
    step = equinox_peer.make_train_step(optimizer, MEAN)
    state = optimizer.init(eqx.filter(model, eqx.is_array))
    model, _, metrics = step(model, state, x.transpose(0, 3, 1, 2), y)
    layers = [m for m in model.layers if isinstance(m, (eqx.nn.Conv2d, eqx.nn.Linear))]
    got = {
        layer.name: (np.asarray(m.weight), np.asarray(m.bias).ravel())
        for layer, m in zip(arch.parametrised, layers, strict=True)
    }
    _assert_same_params(got, expected)
    assert abs(float(metrics["loss"]) - loss_j) < 1e-5


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("weight_decay", [0.0, WD])
def test_pytorch_steps_update_like_jaxnet_or_as_documented(net, weight_decay):
    """SGD(dampening=mu), momentum buffer from zero: the seed's rule without weight decay; with
    it, decay before the average. The hand-written step is the seed's rule exactly."""
    torch_peer = pytest.importorskip("experiments.peers.pytorch_peer")
    arch = architectures.get(net)
    x, y = _batch(arch, 4)
    params = init(arch, jax.random.PRNGKey(0))
    torch_decay_first = optax.chain(
        optax.add_decayed_weights(weight_decay), optax.ema(MU, debias=False), optax.scale(-LR)
    )
    expected, loss_j = _jaxnet_after_one_step(arch, torch_decay_first, x, y)
    model = torch_peer.sequential(arch, params)
    optimizer = torch_peer.sgd(model, LR, MU, weight_decay)
    torch_peer.zero_momentum(optimizer)
    loss, _ = torch_peer.make_train_step(model, optimizer, MEAN)(
        torch_peer.images(x), torch_peer.torch.from_numpy(y.astype(np.int64))
    )
    pairs = [m for m in model if hasattr(m, "weight")]
    got = {
        layer.name: (m.weight.detach().numpy(), m.bias.detach().numpy())
        for layer, m in zip(arch.parametrised, pairs, strict=True)
    }
    _assert_same_params(got, expected)
    assert abs(loss.item() - loss_j) < 1e-5

    expected, _ = _jaxnet_after_one_step(arch, momentum(LR, MU, weight_decay), x, y)
    step, weights = torch_peer.hand_written_step(arch, params, LR, MU, weight_decay, MEAN)
    step(torch_peer.images(x), torch_peer.torch.from_numpy(y.astype(np.int64)))
    got = {name: tuple(t.detach().numpy() for t in pair) for name, pair in weights.items()}
    _assert_same_params(got, expected)


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


def test_epoch_check_reports_epoch_and_step_times(monkeypatch):
    monkeypatch.setattr(epoch, "EPOCH_IMAGES", {True: 256, False: 256})
    record = epoch.bench_epoch(quick=True, batch=64, epochs=2)
    assert record["steps"] == 4 and len(record["epochs_s"]) == 2
    assert record["epoch_s"] > 0 and record["steps_x_step_s"] > 0
    assert record["ratio"] == pytest.approx(
        record["epoch_s"] / (record["steps"] * record["step_ms"] / 1e3)
    )
    several = record["several"]
    assert several["steps_per_call"] == epoch.STEPS_PER_CALL and len(several["epochs_s"]) == 2
    assert several["speedup"] == pytest.approx(record["epoch_s"] / several["epoch_s"])


def test_bad_flags_exit_with_status_2():
    with pytest.raises(SystemExit) as error:
        run.main(["--nets", "no_such_net"])
    assert error.value.code == 2
    with pytest.raises(SystemExit) as error:
        run.main(["--batches", "0"])
    assert error.value.code == 2


def test_data_parallel_row_on_two_virtual_devices(tmp_path):
    """--devices 2 adds the analytic rules on 2 virtual CPU devices, made before JAX starts."""
    root = Path(__file__).resolve().parents[2]
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


@pytest.mark.parametrize(
    ("backend", "cuda", "expected"),
    [("cpu", False, "cpu"), ("gpu", True, "cuda"), ("gpu", False, None), ("tpu", True, None)],
)
def test_pytorch_runs_on_the_device_that_matches_jax(monkeypatch, backend, cuda, expected):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    fake_torch = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: cuda))
    assert torch_device(fake_torch) == expected
