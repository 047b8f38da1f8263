"""Train-step throughput of jaxnet against the libraries its users would pick instead.

    python -m experiments.benchmark                     # several minutes on 2 CPU cores
    python -m experiments.benchmark --quick             # a smoke run
    python -m experiments.benchmark --batches 16 64 --nets mnist --json bench.json

For each network (``--nets``) and batch size (``--batches``), one process times one full train
step (forward, loss, backward, the momentum update; uint8 images scaled inside the step) of
each method of :func:`step_methods`:

- jaxnet's analytic rules (``make_train_step(rules="analytic")``) and their autodiff twin
  (``rules="autodiff"``); where jaxnet's oneDNN convolutions are available, the analytic rules
  on each kernel set, "analytic (oneDNN convs)" (the default path) and "analytic (XLA convs)";
- the network as PyTorch's users write it (:mod:`experiments.peers.pytorch_peer`), eager and
  through ``torch.compile`` (its compile time apart; where it fails, one line says why);
- the network as Equinox's users write it (:mod:`experiments.peers.equinox_peer`);
- with ``--devices N``, the analytic rules data-parallel over N devices; with
  ``--torch-variants``, the PyTorch formulations that were tried and not kept.

The peers are optional (``pip install -e ".[peers]"``); one that does not import is left out
with a line saying so. Every method starts from jaxnet's initial weights and cycles through
the same few random batches; PyTorch gets as many threads as XLA uses, on the device that
matches JAX's.

How: each method's first call (compilation included) is timed apart; then all methods and a
float32 matrix product (XLA's and PyTorch's: the best is the ceiling) are timed in windows of
about ``--window-s`` seconds, one window each per round, in an order that rotates from round to
round, so that load from other processes falls on all alike. A speed is the median over the
rounds; a ratio is the median of the per-round ratios. GFLOP/s counts only the products a step
needs (:func:`step_flops`).

Where time goes (:func:`layer_times`): every layer's forward and backward pass timed on its
own at the same batch, for each JAX method and PyTorch. The ``fit()`` check
(:func:`bench_epoch`): full MNIST epochs through ``jaxnet.training.fit`` against steps x step time.

A table goes to the terminal and everything, raw windows included, to ``--json``, with the
load average: figures from a shared machine are noisy, PyTorch's OpenMP threads most. What was
tried and measured over time: ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnet import allocator, architectures, io, parallel
from jaxnet.backends import onednn
from jaxnet.network import Architecture, init, layer_ops, parameter_rows
from jaxnet.optim import momentum
from jaxnet.step import make_train_step

DEFAULT_NETS = ("mnist", "cifar10_modified")
DEFAULT_BATCHES = (16, 64, 256)
LEARNING_RATE = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
MEAN = 0.5  # every step turns uint8 pixels into x / 255 - MEAN
MATMUL_N = 1024
DATA_BATCHES = 4  # distinct batches each method cycles through
EPOCH_IMAGES = {False: 58000, True: 4096}  # MNIST's 60000 less a 2000-image validation split
STEPS_PER_CALL = 8  # the epoch check's second fit run: steps per compiled call
TORCH_FORMAT = "channels_last"  # the PyTorch formulation kept (docs/performance.md)
TORCH_FOREACH = None  # PyTorch's default: a for-loop update on CPU, foreach on CUDA


@dataclass(frozen=True)
class Settings:
    """How long to time: ``windows`` interleaved rounds of about ``window_s`` seconds each."""

    windows: int
    window_s: float


FULL = Settings(windows=9, window_s=0.4)
QUICK = Settings(windows=3, window_s=0.1)
LAYERS_FULL = Settings(windows=5, window_s=0.05)
LAYERS_QUICK = Settings(windows=2, window_s=0.01)

Runner = Callable[[int], None]
"""``run(k)``: take ``k`` steps (or products) and wait until the device is done."""


@dataclass(frozen=True)
class Plan:
    """What one benchmark run times.

    Attributes:
        nets: architecture names (:func:`jaxnet.architectures.get`).
        batches: batch sizes, each >= 1.
        settings: rounds and seconds per window for whole steps.
        layer_settings: the same for the per-layer times; ``None`` leaves them out.
        devices: more than 1 adds the analytic rules data-parallel over that many devices.
        torch_compile: include ``torch.compile`` (about half a minute of compilation per
            network and batch on 2 cores).
        torch_variants: include the PyTorch formulations not kept, to compare.
        epoch: include the ``fit()`` epoch check.
        quick: the epoch check on a small data set.
    """

    nets: tuple[str, ...] = DEFAULT_NETS
    batches: tuple[int, ...] = DEFAULT_BATCHES
    settings: Settings = FULL
    layer_settings: Settings | None = LAYERS_FULL
    devices: int = 1
    torch_compile: bool = True
    torch_variants: bool = False
    epoch: bool = True
    quick: bool = False


def cpu_threads() -> int:
    """The CPUs this process may run on: the size of XLA's CPU thread pool."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average, or ``None`` where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def one_line(error: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160] if text else '(no message)'}"


# ---------------------------------------------------------------------------------------------
# The optional peers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peers:
    """The optional libraries that imported, and a line for each one left out.

    Attributes:
        torch: :mod:`experiments.peers.pytorch_peer` (``torch`` is its ``.torch``), or ``None``.
        equinox: :mod:`experiments.peers.equinox_peer`, or ``None``.
        onednn: ``jaxnet.backends.onednn`` where it is ``available()``, or ``None``.
        torch_device: PyTorch's device, matching JAX's (:func:`torch_device`).
        notes: one line per peer left out, saying why.
    """

    torch: ModuleType | None = None
    equinox: ModuleType | None = None
    onednn: ModuleType | None = None
    torch_device: str = "cpu"
    notes: tuple[str, ...] = ()


def _import(module: str) -> tuple[ModuleType | None, str]:
    """``module`` imported, or ``None`` and the name of what is missing."""
    try:
        return importlib.import_module(module), ""
    except ImportError as error:
        return None, error.name or module


def torch_device(torch: Any) -> str | None:
    """The PyTorch device that matches JAX's default backend: ``"cpu"``, ``"cuda"`` or ``None``.

    ``None`` (JAX on a TPU, or on a GPU that PyTorch cannot use) leaves PyTorch out rather than
    comparing different hardware.
    """
    backend = jax.default_backend()
    if backend == "cpu":
        return "cpu"
    if backend == "gpu" and torch.cuda.is_available():
        return "cuda"
    return None


def import_peers(use_torch: bool = True, use_equinox: bool = True) -> Peers:
    """Import the peers that are installed (and wanted), and jaxnet's oneDNN backend if any.

    Args:
        use_torch: try PyTorch.
        use_equinox: try Equinox.

    Returns:
        The :class:`Peers`; a peer that is not installed is ``None`` with a line in ``notes``.
    """
    notes = []
    torch_peer, equinox_peer = None, None
    device = "cpu"
    if use_torch:
        torch_peer, missing = _import("experiments.peers.pytorch_peer")
        if torch_peer is None:
            notes.append(f'PyTorch: left out ({missing} not installed: pip install -e ".[peers]")')
        elif (found := torch_device(torch_peer.torch)) is None:
            notes.append(f"PyTorch: left out (no device to match JAX's {jax.default_backend()})")
            torch_peer = None
        else:
            device = found
    if use_equinox:
        equinox_peer, missing = _import("experiments.peers.equinox_peer")
        if equinox_peer is None:
            notes.append(f'Equinox: left out ({missing} not installed: pip install -e ".[peers]")')
    kernels = onednn if onednn.available() else None
    if kernels is None:
        notes.append(
            "jaxnet's oneDNN convolutions: not available here (the analytic rules use XLA's)"
        )
    return Peers(torch_peer, equinox_peer, kernels, device, tuple(notes))


# ---------------------------------------------------------------------------------------------
# Work per step
# ---------------------------------------------------------------------------------------------


def step_flops(arch: Architecture, batch: int) -> int:
    """Floating-point operations that one train step needs in its products, for ``batch`` images.

    Per convolution ``2 N Ho Wo KH KW C_in C_out`` and per dense layer ``2 N n_in n_out``, each
    counted once for the forward pass, once for ``dL/dw``, and once for ``dL/dx`` unless the
    layer is the network's first (nothing needs the gradient of the input). Biases, ReLU,
    pooling, the loss and the update are not counted.

    Args:
        arch: the network.
        batch: images per step, >= 1.

    Returns:
        The count for one step.
    """
    total, first = 0, True
    for layer, shape in zip(arch.layers, arch.output_shapes, strict=True):
        if layer.fan_in:
            total += batch * layer.flops(shape) * (2 if first else 3)
            first = False
    return total


# ---------------------------------------------------------------------------------------------
# What is timed: one case (network, batch, peers) and its methods
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One network at one batch size, with the peers that imported.

    Attributes:
        arch: the network.
        batch: images per step.
        peers: the optional libraries.
        seed: jaxnet's initial weights and the random data.
    """

    arch: Architecture
    batch: int
    peers: Peers = field(default_factory=Peers)
    seed: int = 0

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """``DATA_BATCHES`` uint8 image batches ``(K, B, H, W, C)`` and int32 labels ``(K, B)``."""
        rng = np.random.default_rng(self.seed)
        x = rng.integers(0, 256, (DATA_BATCHES, self.batch, *self.arch.input_shape), np.uint8)
        y = rng.integers(0, self.arch.num_classes, (DATA_BATCHES, self.batch)).astype(np.int32)
        return x, y

    def params(self) -> dict:
        """jaxnet's initial parameters, the starting point of every method."""
        return init(self.arch, jax.random.PRNGKey(self.seed))


@dataclass(frozen=True)
class Method:
    """A row of the benchmark: a name and how to build its runner.

    Attributes:
        name: the row's name (and its key in the JSON record).
        build: ``build(case)`` -> a :data:`Runner` whose first call compiles, or ``None``
            where the method does not apply to the case (a batch that does not split).
        layers: ``layers(case)`` -> its per-layer pieces (:func:`layer_times`), or ``None``.
        optional: a failure to build or run it is recorded in one line instead of raised.
    """

    name: str
    build: Callable[[Case], Runner | None]
    layers: Callable[[Case], dict[tuple[str, str], Runner]] | None = None
    optional: bool = False


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


def _on_xla(run: Runner) -> Runner:
    """``run`` with jaxnet's convolutions kept on XLA as it traces (``onednn.turned_off``)."""

    def wrapped(k: int) -> None:
        with onednn.turned_off():
            run(k)

    return wrapped


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
    optimizer = momentum(LEARNING_RATE, MOMENTUM, WEIGHT_DECAY)
    mesh = parallel.make_mesh(devices) if devices > 1 else None
    step = make_train_step(case.arch, optimizer, rules=rules, mean=MEAN, mesh=mesh)
    params = case.params()
    xs, ys = case.data()
    put = jax.device_put if mesh is None else partial(parallel.shard_batch, mesh=mesh)
    run = _jax_loop(
        step, (params, optimizer.init(params)), [put(x) for x in xs], list(map(put, ys))
    )
    return _on_xla(run) if xla_convs else run


def equinox_runner(case: Case, donate: str = "none") -> Runner:
    """The Equinox peer's ``eqx.filter_jit`` step on uint8 NCHW batches.

    Args:
        case: the network, batch and seed.
        donate: ``eqx.filter_jit``'s ``donate``: ``"none"`` as in Equinox's examples.

    Returns:
        The runner (model and optimizer state carried from call to call).
    """
    eqx_peer = case.peers.equinox
    optimizer = momentum(LEARNING_RATE, MOMENTUM, WEIGHT_DECAY)
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


def torch_sync(torch: Any, device: str) -> None:
    """Wait until PyTorch's queued work on ``device`` is done (CUDA runs asynchronously)."""
    if device == "cuda":
        torch.cuda.synchronize()


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
    optimizer = tp.sgd(model, LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, foreach)
    step = tp.make_train_step(tp.torch.compile(model) if compile else model, optimizer, MEAN)
    return _torch_loop(case, step, fmt)


def torch_hand_written_runner(case: Case) -> Runner:
    """The benchmark's earlier PyTorch runner (``F.*`` calls, the update written out)."""
    tp = case.peers.torch
    step, _ = tp.hand_written_step(
        case.arch, case.params(), LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, MEAN,
        device=case.peers.torch_device,
    )  # fmt: skip
    return _torch_loop(case, step, tp.torch.channels_last)


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


# ---------------------------------------------------------------------------------------------
# The methods
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Where time goes: each layer's forward and backward pass on its own
# ---------------------------------------------------------------------------------------------

Pieces = dict[tuple[str, str], Runner]
"""``(row, "forward" | "backward") -> runner``: rows input, the layers, loss, update."""


def _repeat(fn: Callable, *args: Any) -> Runner:
    """A runner that calls the jitted ``fn(*args)`` ``k`` times and waits for the last result."""

    def run(k: int) -> None:
        out = None
        for _ in range(k):
            out = fn(*args)
        jax.block_until_ready(out)

    return run


def jax_pieces(
    prepare: Callable,
    layers: Sequence[tuple[str, Callable, Any]],
    loss: Callable,
    update: Runner,
    x: jax.Array,
    y: jax.Array,
) -> Pieces:
    """Each piece of a JAX train step jitted on its own.

    A layer's forward piece is ``jit(f)(p, h)``; its backward piece applies the pullback of
    ``jax.vjp`` (its residuals computed beforehand) to a random cotangent: ``dL/dp`` and, but
    for the first layer, ``dL/dh``, as in the step.

    Args:
        prepare: uint8 batch -> float input.
        layers: ``(row, f(p, h) -> output, p)`` in order; ``p`` is ``None`` without parameters.
        loss: ``loss(logits, y)`` -> the scalar mean loss.
        update: the runner of the optimizer update alone.
        x, y: one uint8 batch and its labels, on the device.

    Returns:
        The pieces.
    """
    pull = jax.jit(lambda vjp, g: vjp(g))
    pieces = {("input", "forward"): _repeat(jax.jit(prepare), x)}
    h = jax.jit(prepare)(x)
    for i, (row, f, p) in enumerate(layers):
        if i == 0:  # nothing needs dL/dx of the input
            out, vjp = jax.jit(lambda p, h, f=f: jax.vjp(lambda q: f(q, h), p))(p, h)
        else:
            out, vjp = jax.jit(partial(jax.vjp, f))(p, h)
        g = jax.random.normal(jax.random.PRNGKey(i), out.shape, out.dtype)
        pieces[(row, "forward")] = _repeat(jax.jit(f), p, h)
        pieces[(row, "backward")] = _repeat(pull, vjp, g)
        h = out
    _, vjp = jax.jit(lambda z, y: jax.vjp(lambda z: loss(z, y), z))(h, y)
    pieces[("loss", "forward")] = _repeat(jax.jit(loss), h, y)
    pieces[("loss", "backward")] = _repeat(pull, vjp, jnp.ones((), h.dtype))
    pieces[("update", "forward")] = update
    return pieces


def _jax_update(optimizer: optax.GradientTransformation, params: Any) -> Runner:
    """The optimizer update and new params alone, for gradients shaped like ``params``."""
    state = optimizer.init(params)
    grads = jax.tree.map(jnp.ones_like, params)

    def apply(g, s, p):
        updates, s = optimizer.update(g, s, p)
        return optax.apply_updates(p, updates), s

    return _repeat(jax.jit(apply), grads, state, params)


def jaxnet_layers(case: Case, rules: str, xla_convs: bool = False) -> Pieces:
    """The pieces of ``jaxnet.make_train_step``'s step (see :func:`jax_pieces`).

    Args:
        case: the network, batch and seed.
        rules: ``"analytic"`` or ``"autodiff"``.
        xla_convs: keep jaxnet's convolutions on XLA (see :func:`jaxnet_runner`).

    Returns:
        The pieces.
    """
    from jaxnet.step import preprocess

    ops = layer_ops(rules)
    params = case.params()
    xs, ys = case.data()
    layers = [
        (layer.name, partial(layer.apply, ops=ops), params.get(layer.name))
        for layer in case.arch.layers
    ]
    optimizer = momentum(LEARNING_RATE, MOMENTUM, WEIGHT_DECAY)
    with onednn.turned_off() if xla_convs else nullcontext():
        pieces = jax_pieces(
            lambda x: preprocess(x, MEAN, 1 / 255, jnp.float32),
            layers,
            ops.softmax_cross_entropy,
            _jax_update(optimizer, params),
            jax.device_put(xs[0]),
            jax.device_put(ys[0]),
        )
    return {key: _on_xla(run) for key, run in pieces.items()} if xla_convs else pieces


def _with_flatten_merged(modules: Sequence[Any], is_flatten: Callable[[Any], bool]) -> list[list]:
    """The peer's layers grouped one group per jaxnet layer: a flatten joins the layer after it."""
    groups, pending = [], []
    for module in modules:
        pending.append(module)
        if not is_flatten(module):
            groups.append(pending)
            pending = []
    return groups


def equinox_layers(case: Case) -> Pieces:
    """The pieces of the Equinox peer's step: each layer ``jax.vmap``-ed over the batch."""
    eq = case.peers.equinox
    eqx = eq.eqx
    model = eq.CNN(case.arch, case.params())
    groups = _with_flatten_merged(model.layers, lambda m: m is jnp.ravel)
    layers = []
    for layer, group in zip(case.arch.layers, groups, strict=True):
        params, static = eqx.partition(group, eqx.is_array)

        def f(p, h, static=static):
            modules = eqx.combine(p, static)

            def one(x):
                for module in modules:
                    x = module(x)
                return x

            return jax.vmap(one)(h)

        layers.append((layer.name, f, params))
    xs, ys = case.data()
    optimizer = momentum(LEARNING_RATE, MOMENTUM, WEIGHT_DECAY)
    return jax_pieces(
        lambda x: x.astype(jnp.float32) * (1 / 255) - MEAN,
        layers,
        lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y).mean(),
        _jax_update(optimizer, eqx.filter(model, eqx.is_array)),
        jax.device_put(xs[0].transpose(0, 3, 1, 2)),
        jax.device_put(ys[0]),
    )


def torch_layers(case: Case) -> Pieces:
    """The pieces of the PyTorch peer's step, each module run on its own.

    A backward piece is ``torch.autograd.grad`` of the module's output (graph retained) with
    respect to its parameters and, but for the first layer, its input.
    """
    tp = case.peers.torch
    torch, device = tp.torch, case.peers.torch_device
    fmt = getattr(torch, TORCH_FORMAT)
    model = tp.sequential(case.arch, case.params(), device, fmt)
    groups = _with_flatten_merged(list(model), lambda m: isinstance(m, torch.nn.Flatten))
    xs, ys = case.data()
    x, y = tp.images(xs[0], device, fmt), torch.from_numpy(ys[0].astype(np.int64)).to(device)

    def repeat(fn: Callable[[], Any]) -> Runner:
        def run(k: int) -> None:
            for _ in range(k):
                fn()
            torch_sync(torch, device)

        return run

    def prepare() -> Any:
        return x.float().mul_(1 / 255).sub_(MEAN)

    pieces, h = {("input", "forward"): repeat(prepare)}, prepare()
    for i, (layer, group) in enumerate(zip(case.arch.layers, groups, strict=True)):
        module = torch.nn.Sequential(*group)
        inp = h.detach().requires_grad_(i > 0)
        out = module(inp)
        wrt = ([inp] if i > 0 else []) + list(module.parameters())
        g = torch.randn_like(out)
        pieces[(layer.name, "forward")] = repeat(partial(module, inp))
        pieces[(layer.name, "backward")] = repeat(
            partial(torch.autograd.grad, out, wrt, g, retain_graph=True)
        )
        h = out.detach()
    logits, loss_fn = h.requires_grad_(True), torch.nn.CrossEntropyLoss()
    loss = loss_fn(logits, y)
    pieces[("loss", "forward")] = repeat(partial(loss_fn, logits, y))
    pieces[("loss", "backward")] = repeat(
        partial(torch.autograd.grad, loss, [logits], retain_graph=True)
    )
    other = tp.sequential(case.arch, case.params(), device, fmt)  # the graphs above keep model's
    optimizer = tp.sgd(other, LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, TORCH_FOREACH)
    for p in other.parameters():
        p.grad = torch.zeros_like(p)
    pieces[("update", "forward")] = repeat(optimizer.step)
    return pieces


def layer_times(case: Case, methods: Sequence[Method], settings: Settings) -> dict[str, list]:
    """Every piece of every method's step timed on its own, in interleaved windows.

    Args:
        case: the network, batch and peers.
        methods: those with ``layers`` are timed.
        settings: rounds and seconds per window.

    Returns:
        ``{method: [row, ...]}``, a row per piece in step order (``input``, each layer,
        ``loss``, ``update``): ``layer``, ``kind``, ``forward_ms`` and ``backward_ms``
        (``None`` for input and update), medians over the rounds.
    """
    runners = {}
    for method in methods:
        if method.layers is not None:
            for (row, phase), run in method.layers(case).items():
                runners[f"{method.name}|{row}|{phase}"] = run
    for run in runners.values():
        run(1)  # compile
    timed = interleaved(runners, settings)
    kinds = {"input": "uint8 -> float", "loss": "softmax cross-entropy", "update": "optimizer"}
    kinds.update({row.layer: row.kind for row in parameter_rows(case.arch)})
    out: dict[str, list] = {}
    for key, (_, seconds) in timed.items():
        method, row, phase = key.split("|")
        rows = out.setdefault(method, [])
        if not rows or rows[-1]["layer"] != row:
            rows.append({"layer": row, "kind": kinds[row], "forward_ms": None, "backward_ms": None})
        rows[-1][f"{phase}_ms"] = statistics.median(seconds) * 1e3
    return out


# ---------------------------------------------------------------------------------------------
# Interleaved timing
# ---------------------------------------------------------------------------------------------


def calibrate(run: Runner, window_s: float) -> int:
    """How many calls of ``run(1)`` fill about ``window_s`` seconds (at least 1)."""
    start = time.perf_counter()
    run(2)
    per_call = (time.perf_counter() - start) / 2
    return max(1, round(window_s / max(per_call, 1e-9)))


def interleaved(
    runners: dict[str, Runner], settings: Settings
) -> dict[str, tuple[int, list[float]]]:
    """Time every runner in ``settings.windows`` rounds, one window each per round.

    The order rotates from round to round, so no runner always follows the same one.

    Args:
        runners: name -> ``run(k)``.
        settings: rounds and seconds per window.

    Returns:
        name -> ``(calls per window, [seconds per call in each round])``, in ``runners``' order.
    """
    names = list(runners)
    calls = {name: calibrate(runners[name], settings.window_s) for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(settings.windows):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name](calls[name])
            seconds[name].append((time.perf_counter() - start) / calls[name])
    return {name: (calls[name], seconds[name]) for name in names}


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median over rounds of ``denominator[r] / numerator[r]`` (a speed ratio of times)."""
    return statistics.median(d / n for n, d in zip(numerator, denominator, strict=True))


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def bench_group(
    case: Case, methods: Sequence[Method], settings: Settings, layer_settings: Settings | None
) -> dict[str, Any]:
    """Time every method (and the matrix product) on one network and batch size.

    Args:
        case: the network, batch and peers.
        methods: the rows (:func:`step_methods`), the reference first.
        settings: rounds and seconds per window.
        layer_settings: the same for :func:`layer_times`; ``None`` leaves them out.

    Returns:
        The group's JSON record: ``net``, ``batch``, ``flops_per_step``, ``methods`` (per
        method ``images_per_s``, ``step_ms``, ``gflops``, ``compile_s``, ``calls_per_window``,
        ``window_step_s``), ``failed`` (optional method -> why), ``matmul_gflops`` (per
        library), ``ratios`` (``"a/b"``: how many times as fast ``a`` ran as ``b``) and
        ``layers`` (:func:`layer_times`, or ``None``).
    """
    runners: dict[str, Runner] = {}
    first: dict[str, float] = {}
    failed: dict[str, str] = {}
    for method in methods:
        try:
            run = method.build(case)
            if run is None:
                continue
            start = time.perf_counter()
            run(1)
            first[method.name] = time.perf_counter() - start
        except Exception as error:
            if not method.optional:
                raise
            failed[method.name] = one_line(error)
            continue
        runners[method.name] = run
    runners.update(matmul_runners(case.peers))
    timed = interleaved(runners, settings)

    flops = step_flops(case.arch, case.batch)
    records = {}
    for name in first:
        calls, seconds = timed[name]
        step_s = statistics.median(seconds)
        records[name] = {
            "images_per_s": case.batch / step_s,
            "step_ms": step_s * 1e3,
            "gflops": flops / step_s / 1e9,
            "compile_s": max(first[name] - step_s, 0.0),
            "calls_per_window": calls,
            "window_step_s": seconds,
        }
    matmul = {
        name.removeprefix("matmul_"): 2 * MATMUL_N**3 / statistics.median(timed[name][1]) / 1e9
        for name in timed
        if name.startswith("matmul_")
    }
    ratios = {
        f"{a}/{b}": median_ratio(timed[a][1], timed[b][1]) for a, b in ratio_pairs(list(first))
    }
    layers = None
    if layer_settings is not None:
        layers = layer_times(case, [m for m in methods if m.name in first], layer_settings)
    return {
        "net": case.arch.name,
        "batch": case.batch,
        "flops_per_step": flops,
        "methods": records,
        "failed": failed,
        "matmul_gflops": matmul,
        "ratios": ratios,
        "layers": layers,
    }


def _epoch_config(steps: int, epochs: int, batch: int):
    """The default MNIST experiment's settings for ``epochs + 1`` epochs of ``steps`` steps."""
    from jaxnet.training import FitConfig

    return FitConfig(
        iterations=(epochs + 1) * steps,
        batch_size=batch,
        learning_rate=0.2,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        warmup=min(200, steps),
        augment=True,
        crop_pad=2,
        flip=False,
        log_every=steps,
        eval_every=steps,
        checkpoint_every=(epochs + 2) * steps,
    )


def _random_training_set(arch: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` random uint8 images of ``arch``'s shape, random labels, and their mean."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, *arch.input_shape), dtype=np.uint8)
    labels = rng.integers(0, arch.num_classes, n).astype(np.int32)
    return images, labels, np.array([images.mean() / 255.0], np.float32)


def bench_epoch(
    quick: bool = False, batch: int = 64, epochs: int = 2, steps_per_call: int = STEPS_PER_CALL
) -> dict[str, Any]:
    """Full MNIST epochs through :func:`jaxnet.training.fit` against steps x step time.

    The settings are the default MNIST experiment's (batch 64, cosine schedule, random shifts
    of up to 2 pixels); the images are random uint8 of MNIST's shape (58000 training images,
    as after the experiment's 2000-image validation split; 4096 with ``quick``). ``fit`` runs
    ``epochs + 1`` epochs, logging once per epoch, and the last ``epochs`` are timed from its
    history (the first one holds the compilation). The step time comes from the same jitted
    fit step that ``fit`` builds, called in a tight loop for one epoch's worth of steps right
    before and right after the ``fit`` calls (so all see the same load). ``fit`` runs twice:
    one step per call, then ``steps_per_call`` steps per compiled call.

    Args:
        quick: a small data set.
        batch: images per step.
        epochs: timed epochs, >= 1.
        steps_per_call: the second ``fit`` run's steps per call (``fit(steps_per_call=)``).

    Returns:
        ``epoch_s`` (mean of the timed epochs, each in ``epochs_s``), ``steps``, ``step_ms``,
        ``steps_x_step_s`` and ``ratio`` (epoch time over steps x step time), and ``several``:
        the same for ``steps_per_call`` steps per call, with ``speedup`` (one step per call's
        epoch time over this one's).
    """
    from jaxnet.training import TrainData, fit, initial_state, make_fit_step
    from jaxnet.training.data import epoch_batches

    arch = architectures.mnist()
    n = EPOCH_IMAGES[quick]
    steps = n // batch
    images, labels, mean = _random_training_set(arch, n)
    config = _epoch_config(steps, epochs, batch)

    step = make_fit_step(arch, config, mean)
    images_dev, labels_dev = jax.device_put(images), jax.device_put(labels)
    order = jax.device_put(epoch_batches(n, batch, config.seed, 0))
    holder = {"state": initial_state(arch, config), "i": 0}

    def tight_loop(k: int) -> float:
        state, i = holder["state"], holder["i"]
        start = time.perf_counter()
        for _ in range(k):
            state = step(state, images_dev, labels_dev, order, np.int32(i))
            i += 1
        jax.block_until_ready(state)
        holder.update(state=state, i=i)
        return time.perf_counter() - start

    def fit_epochs(k: int) -> list[float]:
        no_images = np.zeros((0, *arch.input_shape), np.uint8)
        data = TrainData(images, labels, no_images, np.zeros(0, np.int32), mean)
        history = fit(arch, data, config, progress=False, steps_per_call=k).history
        elapsed = {round(row["iteration"]): row["elapsed_s"] for row in history}
        marks = [elapsed[e * steps] for e in range(1, epochs + 2)]
        return [b - a for a, b in itertools.pairwise(marks)]

    tight_loop(1)  # compile
    before = tight_loop(steps)
    epochs_s = fit_epochs(1)
    several_s = fit_epochs(steps_per_call)
    after = tight_loop(steps)

    epoch_s, several_epoch_s = statistics.mean(epochs_s), statistics.mean(several_s)
    step_s = (before + after) / (2 * steps)
    return {
        "net": arch.name,
        "batch": batch,
        "train_images": n,
        "steps": steps,
        "epoch_s": epoch_s,
        "epochs_s": epochs_s,
        "step_ms": step_s * 1e3,
        "steps_x_step_s": steps * step_s,
        "tight_loop_s": [before, after],
        "ratio": epoch_s / (steps * step_s),
        "several": {
            "steps_per_call": steps_per_call,
            "epoch_s": several_epoch_s,
            "epochs_s": several_s,
            "ratio": several_epoch_s / (steps * step_s),
            "speedup": epoch_s / several_epoch_s,
        },
    }


def run_benchmark(
    plan: Plan = Plan(),
    peers: Peers | None = None,
    log: Callable[[str], None] = print,
    reuse_freed_memory: bool = False,
) -> dict[str, Any]:
    """Run the whole benchmark and return its JSON record.

    Args:
        plan: what to time.
        peers: the optional libraries (default: :func:`import_peers`, all that are installed).
        log: called with one line of progress per group.
        reuse_freed_memory: recorded in the metadata: whether the caller made glibc keep
            freed memory (:func:`jaxnet.allocator.reuse_freed_memory`).

    Returns:
        ``{"meta": ..., "ceiling_gflops": ..., "groups": [...], "epoch": ... or None}``; see
        :func:`bench_group` and :func:`bench_epoch`. Each method of each group also gets
        ``fraction_of_ceiling``.
    """
    peers = import_peers() if peers is None else peers
    threads = cpu_threads()
    if peers.torch is not None:
        peers.torch.torch.set_num_threads(threads)
    methods = step_methods(peers, plan)
    meta = {
        "jax": jax.__version__,
        "torch": None if peers.torch is None else peers.torch.torch.__version__,
        "equinox": None if peers.equinox is None else peers.equinox.eqx.__version__,
        "torch_device": peers.torch_device if peers.torch is not None else None,
        "pytorch_formulation": f"nn.Sequential, {TORCH_FORMAT}, torch.optim.SGD(dampening=mu, "
        "foreach default: a for-loop on CPU), nn.CrossEntropyLoss",
        "equinox_formulation": "eqx.nn layers on one NCHW image, jax.vmap over the batch, "
        "eqx.filter_jit + eqx.filter_value_and_grad, jaxnet.momentum",
        "reference": methods[0].name,
        "notes": list(peers.notes),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "threads": threads,
        "device": str(jax.devices()[0]),
        "device_count": jax.device_count(),
        "reuse_freed_memory": reuse_freed_memory,
        "load_average_start": load_average(),
        "windows": plan.settings.windows,
        "window_s": plan.settings.window_s,
        "matmul_n": MATMUL_N,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for note in peers.notes:
        log(note)
    groups = []
    for net in plan.nets:
        for batch in plan.batches:
            log(f"timing {net} at batch {batch} ...")
            case = Case(architectures.get(net), batch, peers)
            groups.append(bench_group(case, methods, plan.settings, plan.layer_settings))
    ceiling = max(
        statistics.median([g["matmul_gflops"][lib] for g in groups])
        for lib in groups[0]["matmul_gflops"]
    )
    for group in groups:
        for record in group["methods"].values():
            record["fraction_of_ceiling"] = record["gflops"] / ceiling
    epoch_record = None
    if plan.epoch:
        log("timing a full MNIST epoch through jaxnet.training.fit ...")
        epoch_record = bench_epoch(plan.quick)
    meta["load_average_end"] = load_average()
    return {"meta": meta, "ceiling_gflops": ceiling, "groups": groups, "epoch": epoch_record}


def format_table(result: dict[str, Any]) -> str:
    """The benchmark as Markdown: set-up, one row per method, targets, layers, the epoch check."""
    meta, groups = result["meta"], result["groups"]
    ref = meta["reference"]
    lines = [
        f"CPU: {meta['cpu']}, {meta['threads']} threads (XLA and PyTorch); jax {meta['jax']}, "
        f"torch {meta['torch'] or 'not installed'}, equinox {meta['equinox'] or 'not installed'}"
        f"; load average {_fmt(meta['load_average_start'])} -> {_fmt(meta['load_average_end'])}"
        "; malloc: "
        + ("freed memory kept for reuse" if meta.get("reuse_freed_memory") else "glibc defaults"),
        f"PyTorch: {meta['pytorch_formulation']}",
        f"Equinox: {meta['equinox_formulation']}",
        *meta["notes"],
    ]
    matmul = ", ".join(
        f"{lib} {statistics.median(g['matmul_gflops'][lib] for g in groups):.0f}"
        for lib in groups[0]["matmul_gflops"]
    )
    lines += [
        f"float32 {meta['matmul_n']}^3 matrix product, GFLOP/s: {matmul}; "
        f"ceiling {result['ceiling_gflops']:.0f}",
        "",
        f"| network | batch | method | img/s | ms/step | GFLOP/s | % of ceiling | {ref} / it "
        "| first call s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for g in groups:
        for name, m in g["methods"].items():
            ratio = g["ratios"].get(f"{ref}/{name}")
            lines.append(
                f"| {g['net']} | {g['batch']} | {name} | {m['images_per_s']:.0f} "
                f"| {m['step_ms']:.2f} | {m['gflops']:.1f} | {100 * m['fraction_of_ceiling']:.0f}% "
                f"| {'-' if ratio is None else f'{ratio:.2f}'} | {m['compile_s']:.1f} |"
            )
    for g in groups:
        for name, why in g["failed"].items():
            lines.append(f"{name} on {g['net']} at batch {g['batch']}: failed, {why}")
    lines += ["", *_targets(result)]
    for g in groups:
        lines += _other_ratios(g, ref)
        if g["layers"]:
            lines += ["", *format_layers(g)]
    lines += _epoch_lines(result.get("epoch"))
    load = meta["load_average_start"]
    if load is not None and load > meta["threads"]:
        lines += [
            "",
            f"note: the load average ({load:.1f}) exceeds the {meta['threads']} CPUs: other "
            "processes shared them, so the figures are noisy (PyTorch's OpenMP threads most).",
        ]
    return "\n".join(lines) + "\n"


def _targets(result: dict[str, Any]) -> list[str]:
    """The issue's targets per group: the reference against PyTorch and Equinox, % of ceiling."""
    ref = result["meta"]["reference"]
    lines = [
        f"| targets: {ref} | batch | / PyTorch (>= 1.0) | / Equinox (>= 1.5) "
        "| % of ceiling (CIFAR-10 >= 45%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for g in result["groups"]:
        cells = []
        for peer, target in (("PyTorch", 1.0), ("Equinox", 1.5)):
            r = g["ratios"].get(f"{ref}/{peer}")
            cells.append("-" if r is None else f"{r:.2f} {'met' if r >= target else 'not met'}")
        fraction = g["methods"][ref]["fraction_of_ceiling"]
        mark = (" met" if fraction >= 0.45 else " not met") if g["net"].startswith("cifar") else ""
        lines.append(
            f"| {g['net']} | {g['batch']} | {' | '.join(cells)} | {100 * fraction:.0f}%{mark} |"
        )
    return lines


def _other_ratios(group: dict[str, Any], ref: str) -> list[str]:
    """Lines for the ratios that are not the reference against a method."""
    lines = []
    for key, ratio in group["ratios"].items():
        a, b = key.split("/", 1)
        if a != ref:
            lines.append(
                f"{group['net']} at batch {group['batch']}: {a} ran {ratio:.2f}x as fast as {b}"
            )
    return ["", *lines] if lines else []


def format_layers(group: dict[str, Any]) -> list[str]:
    """Where time goes in one group: forward / backward ms of every piece, per method."""
    names = list(group["layers"])
    lines = [
        f"where time goes, {group['net']} at batch {group['batch']} (ms, forward / backward, "
        "each piece on its own):",
        "",
        "| piece | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    rows = group["layers"][names[0]]
    for i, row in enumerate(rows):
        cells = [_fwd_bwd(group["layers"][name][i]) for name in names]
        lines.append(f"| {row['layer']} ({row['kind']}) | " + " | ".join(cells) + " |")
    sums = [
        sum((r["forward_ms"] or 0) + (r["backward_ms"] or 0) for r in group["layers"][name])
        for name in names
    ]
    lines.append("| sum of the pieces | " + " | ".join(f"{s:.2f}" for s in sums) + " |")
    steps = [group["methods"][name]["step_ms"] for name in names]
    lines.append("| whole step | " + " | ".join(f"{s:.2f}" for s in steps) + " |")
    return lines


def _fwd_bwd(row: dict[str, Any]) -> str:
    backward = row["backward_ms"]
    return f"{row['forward_ms']:.3f}" + ("" if backward is None else f" / {backward:.3f}")


def _epoch_lines(epoch: dict[str, Any] | None) -> list[str]:
    if not epoch:
        return []
    several = epoch["several"]
    return [
        "",
        f"MNIST epoch through jaxnet.training.fit (batch {epoch['batch']}, {epoch['steps']} steps,"
        f" {epoch['train_images']} images): {epoch['epoch_s']:.2f} s (mean of "
        f"{len(epoch['epochs_s'])}); steps x step time in a tight loop "
        f"{epoch['steps_x_step_s']:.2f} s ({epoch['step_ms']:.2f} ms/step); ratio "
        f"{epoch['ratio']:.3f} (target <= 1.10)",
        f"the same with {several['steps_per_call']} steps per compiled call "
        f"(fit(steps_per_call={several['steps_per_call']})): {several['epoch_s']:.2f} s, "
        f"{several['speedup']:.2f}x one step per call",
    ]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def build_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.benchmark",
        description="Train-step throughput of jaxnet (analytic rules, autodiff), PyTorch and "
        "Equinox, and where the time goes per layer.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter windows")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES), metavar="B"
    )
    parser.add_argument("--nets", nargs="+", default=list(DEFAULT_NETS), metavar="NET")
    parser.add_argument("--json", type=Path, default=Path("benchmark.json"), metavar="PATH")
    parser.add_argument("--windows", type=int, default=None, help="timed rounds per group")
    parser.add_argument("--window-s", type=float, default=None, help="seconds per window")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--no-equinox", action="store_true", help="leave Equinox out")
    parser.add_argument(
        "--no-torch-compile",
        action="store_true",
        help="leave torch.compile out (left out with --quick: ~30 s to compile each shape)",
    )
    parser.add_argument(
        "--torch-variants",
        action="store_true",
        help="also time the PyTorch formulations not kept (hand-written update, contiguous "
        "memory, foreach SGD)",
    )
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer times")
    parser.add_argument("--no-epoch", action="store_true", help="skip the full-epoch check")
    parser.add_argument(
        "--reuse-freed-memory",
        action="store_true",
        help="make glibc keep freed memory for reuse (jaxnet.allocator.reuse_freed_memory()) "
        "before timing, for every method alike",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        help="also time the analytic rules data-parallel over N devices (on CPU: N virtual "
        "devices, made before JAX starts)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the benchmark, print the table and write the JSON."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.devices < 1:
        parser.error(f"--devices must be >= 1, got {args.devices}")
    parallel.request_cpu_devices(args.devices)
    reuse = allocator.reuse_freed_memory() if args.reuse_freed_memory else False
    if jax.device_count() < args.devices:
        parser.error(f"--devices {args.devices}: JAX sees only {jax.device_count()} device(s)")

    base = QUICK if args.quick else FULL
    settings = Settings(
        windows=args.windows if args.windows is not None else base.windows,
        window_s=args.window_s if args.window_s is not None else base.window_s,
    )
    if settings.windows < 1 or not settings.window_s > 0:
        parser.error("--windows must be >= 1 and --window-s > 0")
    if any(b < 1 for b in args.batches):
        parser.error(f"--batches must be positive, got {args.batches}")
    try:
        nets = tuple(architectures.get(name).name for name in args.nets)
    except ValueError as error:
        parser.error(str(error))
    layer_settings = LAYERS_QUICK if args.quick else LAYERS_FULL
    if args.windows is not None or args.window_s is not None:  # shorter pieces, same rounds
        layer_settings = replace(settings, window_s=settings.window_s / 8)
    plan = Plan(
        nets=nets,
        batches=tuple(args.batches),
        settings=settings,
        layer_settings=None if args.no_layers else layer_settings,
        devices=args.devices,
        torch_compile=not (args.no_torch_compile or args.quick),
        torch_variants=args.torch_variants,
        epoch=not args.no_epoch,
        quick=args.quick,
    )
    log = partial(print, file=sys.stderr, flush=True)
    peers = import_peers(use_torch=not args.no_torch, use_equinox=not args.no_equinox)
    result = run_benchmark(plan, peers, log, reuse_freed_memory=reuse)
    print(format_table(result), end="")
    io.write_text(args.json, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
