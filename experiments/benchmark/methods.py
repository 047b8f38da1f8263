"""The rows of the benchmark, library by library: each method's whole train step as a runner,
and its pieces (each layer's forward and backward pass, the loss and the update, each run on
its own: where time goes); and the matrix product that sets the ceiling."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import partial, reduce
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.benchmark.case import (
    LEARNING_RATE,
    MEAN,
    MOMENTUM,
    TORCH_FOREACH,
    TORCH_FORMAT,
    WEIGHT_DECAY,
    Case,
    Method,
    Peers,
    Pieces,
    Plan,
    jax_optimizer,
    on_xla,
)
from experiments.benchmark.timing import Runner, repeat
from jaxnet import parallel
from jaxnet.backends import onednn
from jaxnet.network import layer_ops
from jaxnet.step import make_train_step, preprocess

MATMUL_N = 1024
TORCH_VARIANTS = (  # the PyTorch formulations not kept (docs/performance.md): memory, foreach
    ("PyTorch contiguous", "contiguous_format", TORCH_FOREACH),
    ("PyTorch foreach SGD", TORCH_FORMAT, True),
    ("PyTorch contiguous, foreach SGD", "contiguous_format", True),
)


def _jax_loop(step: Callable, state: tuple, xs: list, ys: list) -> Runner:
    """Calls of ``step(*state, x, y) -> (*state, metrics)`` on the batches in turn."""
    batches = itertools.cycle(zip(xs, ys, strict=True))

    def call() -> tuple:
        nonlocal state
        *state, _ = step(*state, *next(batches))
        return state

    return repeat(call, jax.block_until_ready)


def _calls(wait: Callable[[Any], Any], fn: Callable, *args: Any, **kwargs: Any) -> Runner:
    """The runner of ``fn(*args, **kwargs)`` that ``wait``s on the last result."""
    return repeat(partial(fn, *args, **kwargs), wait)


def jax_pieces(
    prepare: Callable,
    layers: Sequence[tuple[str, Callable, Any]],
    loss: Callable,
    params: Any,
    *,
    x: jax.Array,
    y: jax.Array,
) -> Pieces:
    """Each piece of a JAX train step jitted on its own, on one uint8 batch ``x``, labels ``y``.

    ``prepare`` turns ``x`` into the float input; ``layers`` are ``(row, f(p, h) -> output, p)``
    in order (``p`` is ``None`` without parameters); ``loss(logits, y)`` is the mean loss. A
    layer's forward piece is ``jit(f)(p, h)``; its backward piece applies the pullback of
    ``jax.vjp`` (its residuals computed beforehand) to a random cotangent: ``dL/dp`` and, but
    for the first layer, ``dL/dh``, as in the step. The update piece is :func:`jax_optimizer`'s
    update and new ``params`` alone.
    """
    calls = partial(_calls, jax.block_until_ready)
    pull = jax.jit(lambda vjp, g: vjp(g))
    pieces = {("input", "forward"): calls(jax.jit(prepare), x)}
    h = jax.jit(prepare)(x)
    for i, (row, f, p) in enumerate(layers):
        if i == 0:  # nothing needs dL/dx of the input
            out, vjp = jax.jit(lambda p, h, f=f: jax.vjp(lambda q: f(q, h), p))(p, h)
        else:
            out, vjp = jax.jit(partial(jax.vjp, f))(p, h)
        g = jax.random.normal(jax.random.PRNGKey(i), out.shape, out.dtype)
        pieces[(row, "forward")] = calls(jax.jit(f), p, h)
        pieces[(row, "backward")] = calls(pull, vjp, g)
        h = out
    _, vjp = jax.jit(lambda z, y: jax.vjp(lambda z: loss(z, y), z))(h, y)
    pieces[("loss", "forward")] = calls(jax.jit(loss), h, y)
    pieces[("loss", "backward")] = calls(pull, vjp, jnp.ones((), h.dtype))

    optimizer = jax_optimizer()

    def update(g, s, p):
        updates, s = optimizer.update(g, s, p)
        return optax.apply_updates(p, updates), s

    grads = jax.tree.map(jnp.ones_like, params)
    pieces[("update", "forward")] = calls(jax.jit(update), grads, optimizer.init(params), params)
    return pieces


def _per_layer(modules: Sequence[Any], is_flatten: Callable[[Any], bool]) -> list[list]:
    """A peer's modules grouped one group per jaxnet layer: a flatten joins the layer after it."""
    groups, pending = [], []
    for module in modules:
        pending.append(module)
        if not is_flatten(module):
            groups.append(pending)
            pending = []
    return groups


def jaxnet_runner(
    case: Case, rules: str, devices: int = 1, xla_convs: bool = False
) -> Runner | None:
    """``jaxnet.make_train_step(arch, jaxnet.momentum(...), rules, mean=MEAN)`` on uint8 batches,
    params and optimizer state donated and carried from call to call.

    ``devices`` > 1: data-parallel over that many devices (:mod:`jaxnet.parallel`), ``None``
    where they do not divide the batch; ``xla_convs``: jaxnet's convolutions kept on XLA (else
    its default: oneDNN where it runs).
    """
    if devices > 1 and case.batch % devices:
        return None
    optimizer = jax_optimizer()
    mesh = parallel.make_mesh(devices) if devices > 1 else None
    step = make_train_step(case.arch, optimizer, rules=rules, mean=MEAN, mesh=mesh)
    params = case.params()
    put = jax.device_put if mesh is None else partial(parallel.shard_batch, mesh=mesh)
    xs, ys = ([put(a) for a in array] for array in case.data())
    run = _jax_loop(step, (params, optimizer.init(params)), xs, ys)
    return on_xla(run) if xla_convs else run


def jaxnet_layers(case: Case, rules: str, xla_convs: bool = False) -> Pieces:
    """The pieces of ``jaxnet.make_train_step``'s step (``xla_convs``: as ``jaxnet_runner``'s)."""
    ops = layer_ops(rules)
    params = case.params()
    layers = [
        (layer.name, partial(layer.apply, ops=ops), params.get(layer.name))
        for layer in case.arch.layers
    ]
    xs, ys = case.data()
    with onednn.turned_off() if xla_convs else nullcontext():
        pieces = jax_pieces(
            lambda x: preprocess(x, MEAN, 1 / 255, jnp.float32),
            layers,
            ops.softmax_cross_entropy,
            params,
            x=jax.device_put(xs[0]),
            y=jax.device_put(ys[0]),
        )
    return {key: on_xla(run) for key, run in pieces.items()} if xla_convs else pieces


def equinox_runner(case: Case) -> Runner:
    """The Equinox peer's ``eqx.filter_jit`` step on uint8 NCHW batches."""
    eq = case.peers.equinox
    optimizer = jax_optimizer()
    model = eq.CNN(case.arch, case.params())
    step = eq.make_train_step(optimizer, MEAN)
    state = (model, optimizer.init(eq.eqx.filter(model, eq.eqx.is_array)))
    xs, ys = case.data()
    xs = [jax.device_put(x.transpose(0, 3, 1, 2)) for x in xs]
    return _jax_loop(step, state, xs, [jax.device_put(y) for y in ys])


def equinox_layers(case: Case) -> Pieces:
    """The pieces of the Equinox peer's step: each layer ``jax.vmap``-ed over the batch."""
    eqx = case.peers.equinox.eqx
    model = case.peers.equinox.CNN(case.arch, case.params())

    def apply(params, h, static):
        modules = eqx.combine(params, static)
        return jax.vmap(lambda x: reduce(lambda x, module: module(x), modules, x))(h)

    groups = _per_layer(model.layers, lambda m: m is jnp.ravel)
    layers = []
    for layer, group in zip(case.arch.layers, groups, strict=True):
        params, static = eqx.partition(group, eqx.is_array)
        layers.append((layer.name, partial(apply, static=static), params))
    xs, ys = case.data()
    return jax_pieces(
        lambda x: x.astype(jnp.float32) * (1 / 255) - MEAN,
        layers,
        lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y).mean(),
        eqx.filter(model, eqx.is_array),
        x=jax.device_put(xs[0].transpose(0, 3, 1, 2)),
        y=jax.device_put(ys[0]),
    )


def _torch_loop(case: Case, step: Callable, memory_format: str = TORCH_FORMAT) -> Runner:
    """Calls of a PyTorch ``step(x, y)`` on the case's batches in turn."""
    batches = itertools.cycle(case.torch_batches(memory_format))
    return repeat(lambda: step(*next(batches)), case.peers.torch_wait)


def torch_runner(
    case: Case,
    memory_format: str = TORCH_FORMAT,
    foreach: bool | None = TORCH_FOREACH,
    compile: bool = False,
) -> Runner:
    """The PyTorch peer's step (``compile``: through ``torch.compile``, on the first call)."""
    tp = case.peers.torch
    model, optimizer = case.torch_model(memory_format, foreach)
    step = tp.make_train_step(tp.torch.compile(model) if compile else model, optimizer, MEAN)
    return _torch_loop(case, step, memory_format)


def torch_hand_written_runner(case: Case) -> Runner:
    """The benchmark's earlier PyTorch runner (``F.*`` calls, the update written out)."""
    step, _ = case.peers.torch.hand_written_step(
        case.arch, case.params(), LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, mean=MEAN,
        device=case.peers.torch_device,
    )  # fmt: skip
    return _torch_loop(case, step)


def torch_layers(case: Case) -> Pieces:
    """The pieces of the PyTorch peer's step, each module run on its own.

    A backward piece is ``torch.autograd.grad`` of the module's output (graph retained) with
    respect to its parameters and, but for the first layer, its input.
    """
    torch = case.peers.torch.torch
    model, _ = case.torch_model()
    groups = _per_layer(list(model), lambda m: isinstance(m, torch.nn.Flatten))
    x, y = case.torch_batches()[0]
    calls = partial(_calls, case.peers.torch_wait)

    def prepare() -> Any:
        return x.float().mul_(1 / 255).sub_(MEAN)

    pieces, h = {("input", "forward"): calls(prepare)}, prepare()
    for i, (layer, group) in enumerate(zip(case.arch.layers, groups, strict=True)):
        module = torch.nn.Sequential(*group)
        inp = h.detach().requires_grad_(i > 0)
        out = module(inp)
        wrt = ([inp] if i > 0 else []) + list(module.parameters())
        pieces[(layer.name, "forward")] = calls(module, inp)
        grad = calls(torch.autograd.grad, out, wrt, torch.randn_like(out), retain_graph=True)
        pieces[(layer.name, "backward")] = grad
        h = out.detach()
    logits, loss_fn = h.requires_grad_(True), torch.nn.CrossEntropyLoss()
    loss = loss_fn(logits, y)
    pieces[("loss", "forward")] = calls(loss_fn, logits, y)
    pieces[("loss", "backward")] = calls(torch.autograd.grad, loss, [logits], retain_graph=True)
    other, optimizer = case.torch_model()  # the graphs above keep model's
    for p in other.parameters():
        p.grad = torch.zeros_like(p)
    pieces[("update", "forward")] = calls(optimizer.step)
    return pieces


def matmul_runners(peers: Peers) -> dict[str, Runner]:
    """Runners for one float32 ``MATMUL_N``-cubed product in XLA (and PyTorch if it imported)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((MATMUL_N, MATMUL_N)).astype(np.float32) for _ in range(2))
    product, a_dev, b_dev = jax.jit(jnp.dot), jax.device_put(a), jax.device_put(b)
    runners = {"matmul_xla": repeat(lambda: product(a_dev, b_dev), jax.block_until_ready)}
    if peers.torch is not None:
        torch, device = peers.torch.torch, peers.torch_device
        a_t, b_t = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)
        runners["matmul_torch"] = repeat(lambda: torch.mm(a_t, b_t), peers.torch_wait)
    for run in runners.values():
        run(1)
    return runners


def step_methods(peers: Peers, plan: Plan) -> list[Method]:
    """The rows of one run (``plan``'s devices, torch_compile, torch_variants), in table order:
    the reference, jaxnet's default analytic path, first."""

    def jaxnet(name: str, rules: str, **options: bool) -> Method:
        step, layers = (partial(f, rules=rules, **options) for f in (jaxnet_runner, jaxnet_layers))
        return Method(name, step, layers)

    if peers.onednn is not None:
        methods = [
            jaxnet("analytic (oneDNN convs)", "analytic"),
            jaxnet("analytic (XLA convs)", "analytic", xla_convs=True),
        ]
    else:
        methods = [jaxnet("analytic", "analytic")]
    methods.append(jaxnet("autodiff", "autodiff"))
    if plan.devices > 1:
        multi = partial(jaxnet_runner, rules="analytic", devices=plan.devices)
        methods.append(Method(f"analytic x{plan.devices}", multi))
    if peers.equinox is not None:
        methods.append(Method("Equinox", equinox_runner, equinox_layers))
    if peers.torch is not None:
        methods.append(Method("PyTorch", torch_runner, torch_layers))
        if plan.torch_compile:
            compiled = partial(torch_runner, compile=True)
            methods.append(Method("torch.compile", compiled, optional=True))
        if plan.torch_variants:
            methods.append(Method("PyTorch hand-written", torch_hand_written_runner))
            methods += [
                Method(name, partial(torch_runner, memory_format=memory, foreach=foreach))
                for name, memory, foreach in TORCH_VARIANTS
            ]
    return methods


def ratio_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """The speed ratios a group reports, ``(faster?, than)``: the reference against each method;
    a data-parallel row against one device; each PyTorch variant against the PyTorch kept."""
    reference = names[0]
    pairs = []
    for name in names[1:]:
        pairs.append((name, reference) if name.startswith("analytic x") else (reference, name))
        if name.startswith("PyTorch ") and "PyTorch" in names:
            pairs.append((name, "PyTorch"))
    return pairs
