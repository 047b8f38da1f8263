"""The rows of the benchmark: each method's whole train step as a runner, and the matrix product
that sets the ceiling."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmark.case import (
    DATA_BATCHES,
    LEARNING_RATE,
    MEAN,
    MOMENTUM,
    TORCH_FOREACH,
    TORCH_FORMAT,
    WEIGHT_DECAY,
    Case,
    Method,
    Peers,
    Plan,
    jax_optimizer,
    on_xla,
    torch_optimizer,
    torch_sync,
)
from experiments.benchmark.pieces import equinox_layers, jaxnet_layers, torch_layers
from experiments.benchmark.timing import Runner
from jaxnet import parallel
from jaxnet.step import make_train_step


def _jax_loop(step: Callable, state: tuple, xs: list, ys: list) -> Runner:
    """A runner that calls ``step(a, b, x, y) -> (a, b, metrics)`` on the batches in turn."""
    holder = {"state": state, "i": 0}

    def run(k: int) -> None:
        (a, b), i = holder["state"], holder["i"]
        for _ in range(k):
            a, b, _ = step(a, b, xs[i % DATA_BATCHES], ys[i % DATA_BATCHES])
            i += 1
        jax.block_until_ready((a, b))
        holder.update(state=(a, b), i=i)

    return run


def jaxnet_runner(
    case: Case, rules: str, devices: int = 1, xla_convs: bool = False
) -> Runner | None:
    """``jaxnet.make_train_step(arch, jaxnet.momentum(...), rules, mean=MEAN)`` on uint8 batches.

    Args:
        case: the network, batch and seed.
        rules: ``"analytic"`` or ``"autodiff"``.
        devices: more than 1: data-parallel over that many devices (each batch split over
            them, :mod:`jaxnet.parallel`); ``None`` is returned when they do not divide it.
        xla_convs: keep jaxnet's convolutions on XLA (else jaxnet's default: oneDNN where
            it runs).

    Returns:
        The runner (params and optimizer state donated and carried from call to call).
    """
    if devices > 1 and case.batch % devices:
        return None
    optimizer = jax_optimizer()
    mesh = parallel.make_mesh(devices) if devices > 1 else None
    step = make_train_step(case.arch, optimizer, rules=rules, mean=MEAN, mesh=mesh)
    params = case.params()
    xs, ys = case.data()
    put = jax.device_put if mesh is None else partial(parallel.shard_batch, mesh=mesh)
    run = _jax_loop(
        step, (params, optimizer.init(params)), [put(x) for x in xs], list(map(put, ys))
    )
    return on_xla(run) if xla_convs else run


def equinox_runner(case: Case, donate: str = "none") -> Runner:
    """The Equinox peer's ``eqx.filter_jit`` step on uint8 NCHW batches.

    Args:
        case: the network, batch and seed.
        donate: ``eqx.filter_jit``'s ``donate``: ``"none"`` as in Equinox's examples.

    Returns:
        The runner (model and optimizer state carried from call to call).
    """
    eqx_peer = case.peers.equinox
    optimizer = jax_optimizer()
    model = eqx_peer.CNN(case.arch, case.params())
    opt_state = optimizer.init(eqx_peer.eqx.filter(model, eqx_peer.eqx.is_array))
    step = eqx_peer.make_train_step(optimizer, MEAN, donate=donate)
    xs, ys = case.data()
    xs_dev = [jax.device_put(x.transpose(0, 3, 1, 2)) for x in xs]
    return _jax_loop(step, (model, opt_state), xs_dev, [jax.device_put(y) for y in ys])


def _torch_loop(case: Case, step: Callable, memory_format: Any) -> Runner:
    """A runner that calls a PyTorch ``step(x, y)`` on the case's batches in turn."""
    tp = case.peers.torch
    device = case.peers.torch_device
    xs, ys = case.data()
    xs_t = [tp.images(x, device, memory_format) for x in xs]
    ys_t = [tp.torch.from_numpy(y.astype(np.int64)).to(device) for y in ys]
    counter = itertools.count()

    def run(k: int) -> None:
        for _ in range(k):
            i = next(counter) % DATA_BATCHES
            step(xs_t[i], ys_t[i])
        torch_sync(tp.torch, device)

    return run


def torch_runner(
    case: Case,
    memory_format: str = TORCH_FORMAT,
    foreach: bool | None = TORCH_FOREACH,
    compile: bool = False,
) -> Runner:
    """The PyTorch peer: ``nn.Sequential``, ``torch.optim.SGD``, uint8 batches.

    Args:
        case: the network, batch and seed.
        memory_format: ``"channels_last"`` or ``"contiguous_format"``, of weights and images.
        foreach: ``torch.optim.SGD(foreach=)``; ``None`` is PyTorch's default.
        compile: run the model through ``torch.compile`` (compiled on the first call).

    Returns:
        The runner.
    """
    tp = case.peers.torch
    fmt = getattr(tp.torch, memory_format)
    model = tp.sequential(case.arch, case.params(), case.peers.torch_device, fmt)
    optimizer = torch_optimizer(case, model, foreach)
    step = tp.make_train_step(tp.torch.compile(model) if compile else model, optimizer, MEAN)
    return _torch_loop(case, step, fmt)


def torch_hand_written_runner(case: Case) -> Runner:
    """The benchmark's earlier PyTorch runner (``F.*`` calls, the update written out)."""
    tp = case.peers.torch
    step, _ = tp.hand_written_step(
        case.arch, case.params(), LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, mean=MEAN,
        device=case.peers.torch_device,
    )  # fmt: skip
    return _torch_loop(case, step, tp.torch.channels_last)


MATMUL_N = 1024


def matmul_runners(peers: Peers) -> dict[str, Runner]:
    """Runners for one float32 ``MATMUL_N``-cubed product in XLA (and PyTorch if it imported)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((MATMUL_N, MATMUL_N)).astype(np.float32)
    b = rng.standard_normal((MATMUL_N, MATMUL_N)).astype(np.float32)
    a_dev, b_dev = jax.device_put(a), jax.device_put(b)
    product = jax.jit(jnp.dot)

    def run_xla(k: int) -> None:
        out = None
        for _ in range(k):
            out = product(a_dev, b_dev)
        jax.block_until_ready(out)

    runners = {"matmul_xla": run_xla}
    if peers.torch is not None:
        torch, device = peers.torch.torch, peers.torch_device
        a_t, b_t = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)

        def run_torch(k: int) -> None:
            for _ in range(k):
                torch.mm(a_t, b_t)
            torch_sync(torch, device)

        runners["matmul_torch"] = run_torch
    for run in runners.values():
        run(1)
    return runners


def step_methods(peers: Peers, plan: Plan) -> list[Method]:
    """The rows of one run, the reference (jaxnet's default analytic path) first.

    Args:
        peers: the libraries that imported.
        plan: the run's options (``devices``, ``torch_compile``, ``torch_variants``).

    Returns:
        The methods, in table order.
    """
    analytic = partial(jaxnet_runner, rules="analytic")
    if peers.onednn is not None:
        methods = [
            Method("analytic (oneDNN convs)", analytic, partial(jaxnet_layers, rules="analytic")),
            Method(
                "analytic (XLA convs)",
                partial(analytic, xla_convs=True),
                partial(jaxnet_layers, rules="analytic", xla_convs=True),
            ),
        ]
    else:
        methods = [Method("analytic", analytic, partial(jaxnet_layers, rules="analytic"))]
    methods.append(
        Method(
            "autodiff",
            partial(jaxnet_runner, rules="autodiff"),
            partial(jaxnet_layers, rules="autodiff"),
        )
    )
    if plan.devices > 1:
        methods.append(Method(f"analytic x{plan.devices}", partial(analytic, devices=plan.devices)))
    if peers.equinox is not None:
        methods.append(Method("Equinox", equinox_runner, equinox_layers))
    if peers.torch is not None:
        methods.append(Method("PyTorch", torch_runner, torch_layers))
        if plan.torch_compile:
            methods.append(
                Method("torch.compile", partial(torch_runner, compile=True), optional=True)
            )
        if plan.torch_variants:
            methods += [
                Method("PyTorch hand-written", torch_hand_written_runner),
                Method(
                    "PyTorch contiguous", partial(torch_runner, memory_format="contiguous_format")
                ),
                Method("PyTorch foreach SGD", partial(torch_runner, foreach=True)),
                Method(
                    "PyTorch contiguous, foreach SGD",
                    partial(torch_runner, memory_format="contiguous_format", foreach=True),
                ),
            ]
    return methods


def ratio_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """The speed ratios a group reports, ``(faster?, than)``: the reference against each method;
    a data-parallel row against one device; each PyTorch variant against the PyTorch kept."""
    reference = names[0]
    pairs = []
    for name in names[1:]:
        if name.startswith("analytic x"):
            pairs.append((name, reference))
        else:
            pairs.append((reference, name))
        if name.startswith("PyTorch ") and "PyTorch" in names:
            pairs.append((name, "PyTorch"))
    return pairs
