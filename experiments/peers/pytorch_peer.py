"""The network in PyTorch, as its users write it: ``nn.Sequential``, ``torch.optim.SGD``.

:func:`sequential`, :func:`sgd` and :func:`make_train_step` are the formulation the benchmark
keeps: ``channels_last`` memory and PyTorch's default SGD update (a for-loop over the
parameters on CPU), each the faster one here (``docs/performance.md``).
:func:`hand_written_step`, the benchmark's earlier runner, is kept to show that they are at
least as fast.

The optimizer against the seed's rule ``m = mu*m + (1-mu)*g; w -= alpha*(m + lambda*w)``:
``dampening=mu`` gives the same moving average, but PyTorch adds the weight decay to the
gradient before averaging, ``m = mu*m + (1-mu)*(g + lambda*w); w -= alpha*m``, and its first
step sets ``m = g + lambda*w`` (no dampening) where the seed's starts from ``m = 0``. The work
per step is the same (one more multiply-add per parameter in either place), so the speeds
compare; the parameters agree with the seed's rule only for ``lambda = 0`` and a momentum
buffer started at zero (as the tests start it), and with weight decay they follow
``optax.chain(optax.add_decayed_weights(lambda), optax.ema(mu, debias=False),
optax.scale(-alpha))``. The tests check both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from experiments.peers import nchw_layers
from jaxnet.network import Architecture, Conv, Dense, MaxPool

Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``step(x, y) -> (loss, accuracy)`` for uint8 images ``x (N, C, H, W)`` in the model's memory
format and int64 labels ``y (N,)``; both results are of the batch before the update."""


def sequential(
    arch: Architecture,
    params: dict,
    device: str = "cpu",
    memory_format: torch.memory_format = torch.channels_last,
) -> nn.Sequential:
    """The network with jaxnet's weights, float images ``(N, C, H, W)`` -> logits, its kernels
    in ``memory_format`` (feed images in the same format)."""
    modules: list[nn.Module] = []
    for layer, flatten, weights in nchw_layers(arch, params):
        if isinstance(layer, Conv):
            module = nn.Conv2d(
                layer.c_in, layer.c_out, (layer.kh, layer.kw), layer.stride, layer.padding
            )
        elif isinstance(layer, Dense):
            module = nn.Linear(layer.n_in, layer.n_out)
        elif isinstance(layer, MaxPool):
            module = nn.MaxPool2d(layer.window, layer.stride)
        else:
            module = nn.ReLU()
        if weights is not None:
            with torch.no_grad():
                module.weight.copy_(torch.from_numpy(weights[0]))
                module.bias.copy_(torch.from_numpy(weights[1]))
        modules += [nn.Flatten(), module] if flatten else [module]
    return nn.Sequential(*modules).to(device=device, memory_format=memory_format)


def sgd(
    model: nn.Module, lr: float, momentum: float, weight_decay: float, foreach: bool | None = None
) -> torch.optim.SGD:
    """``torch.optim.SGD`` with ``dampening=momentum``, the seed's moving average of gradients
    (see above for how it differs); ``foreach=None`` is PyTorch's default update."""
    return torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=momentum,
        dampening=momentum,
        weight_decay=weight_decay,
        foreach=foreach,
    )


def make_train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, mean: float, scale: float = 1 / 255
) -> Step:
    """One train step as a PyTorch user writes it, ``x * scale - mean`` inside it; ``model`` may
    be :func:`sequential`'s or it compiled."""
    loss_fn = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float().mul_(scale).sub_(mean)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        optimizer.step()
        return loss.detach(), (logits.detach().argmax(dim=1) == y).float().mean()

    return step


def hand_written_step(
    arch: Architecture,
    params: dict,
    lr: float,
    momentum: float,
    weight_decay: float,
    *,
    mean: float,
    scale: float = 1 / 255,
    device: str = "cpu",
) -> tuple[Step, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The benchmark's earlier PyTorch step: ``F.*`` calls on ``channels_last`` weights, and the
    seed's update written out, one parameter at a time.

    Returns ``(step, weights)``: the step as :func:`make_train_step`'s, and the tensors it
    updates, ``{layer name: (w, b)}``.
    """
    layers, weights = [], {}
    for layer, _, pair in nchw_layers(arch, params):
        if pair is not None:
            w, b = (torch.from_numpy(a).to(device) for a in pair)
            if w.dim() == 4:
                w = w.contiguous(memory_format=torch.channels_last)
            weights[layer.name] = (w.requires_grad_(), b.requires_grad_())
        layers.append((layer, weights.get(layer.name)))
    flat = [t for pair in weights.values() for t in pair]
    moments = [torch.zeros_like(p) for p in flat]

    def forward(h: torch.Tensor) -> torch.Tensor:
        for layer, pair in layers:
            if isinstance(layer, Conv):
                h = F.conv2d(h, *pair, stride=layer.stride, padding=layer.padding)
            elif isinstance(layer, Dense):
                h = F.linear(h.flatten(1), *pair)
            elif isinstance(layer, MaxPool):
                h = F.max_pool2d(h, layer.window, layer.stride)
            else:
                h = F.relu(h)
        return h

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = forward(x.float().mul_(scale).sub_(mean))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        with torch.no_grad():
            for p, m in zip(flat, moments, strict=True):
                m.mul_(momentum).add_(p.grad, alpha=1 - momentum)
                p.sub_((m + weight_decay * p).mul_(lr))
                p.grad = None
        return loss.detach(), (logits.detach().argmax(dim=1) == y).float().mean()

    return step, weights


def batch(
    x: np.ndarray, y: np.ndarray, device: str = "cpu", memory_format=torch.channels_last
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC images and their labels as a PyTorch step takes them: uint8 ``(N, C, H, W)``
    in ``memory_format`` (``channels_last`` is NHWC in memory, as ``x`` already is) and int64."""
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    labels = torch.from_numpy(y.astype(np.int64))
    return images.to(device).contiguous(memory_format=memory_format), labels.to(device)
