"""Where time goes: every layer's forward and backward pass, the loss and the update, each timed
on its own, for jaxnet, Equinox and PyTorch."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.benchmark.case import (
    MEAN,
    TORCH_FORMAT,
    Case,
    Method,
    jax_optimizer,
    on_xla,
    torch_optimizer,
    torch_sync,
)
from experiments.benchmark.timing import Runner, Settings, interleaved
from jaxnet.backends import onednn
from jaxnet.network import layer_ops, parameter_rows

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
    *,
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
    optimizer = jax_optimizer()
    with onednn.turned_off() if xla_convs else nullcontext():
        pieces = jax_pieces(
            lambda x: preprocess(x, MEAN, 1 / 255, jnp.float32),
            layers,
            ops.softmax_cross_entropy,
            _jax_update(optimizer, params),
            x=jax.device_put(xs[0]),
            y=jax.device_put(ys[0]),
        )
    return {key: on_xla(run) for key, run in pieces.items()} if xla_convs else pieces


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
    optimizer = jax_optimizer()
    return jax_pieces(
        lambda x: x.astype(jnp.float32) * (1 / 255) - MEAN,
        layers,
        lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y).mean(),
        _jax_update(optimizer, eqx.filter(model, eqx.is_array)),
        x=jax.device_put(xs[0].transpose(0, 3, 1, 2)),
        y=jax.device_put(ys[0]),
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
    optimizer = torch_optimizer(case, other)
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
