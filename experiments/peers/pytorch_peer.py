"""The network in PyTorch, as its users write it: ``nn.Sequential``, ``torch.optim.SGD``.

- :func:`sequential`: ``nn.Conv2d`` / ``nn.ReLU`` / ``nn.MaxPool2d`` / ``nn.Flatten`` /
  ``nn.Linear`` in the architecture's order, with jaxnet's initial weights, in
  ``channels_last`` memory (the faster format here; see ``docs/performance.md``).
- :func:`sgd`: ``torch.optim.SGD(momentum=mu, dampening=mu, weight_decay=lambda)``, PyTorch's
  default update (a for-loop over the parameters on CPU, the faster one here).
- :func:`make_train_step`: uint8 images scaled inside the step, ``zero_grad(set_to_none=True)``,
  ``nn.CrossEntropyLoss``, ``backward``, ``optimizer.step()``, the batch accuracy.
- :func:`hand_written_step`: the benchmark's earlier PyTorch runner (``F.*`` calls and the
  seed's update written out by hand), kept to show that the code above is at least as fast.

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

from experiments.peers import nchw_weights
from jaxnet.network import Architecture, Conv, Dense, MaxPool

Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``step(x, y) -> (loss, accuracy)`` for uint8 images ``x (N, C, H, W)`` and labels ``y (N,)``."""


def sequential(
    arch: Architecture,
    params: dict,
    device: str = "cpu",
    memory_format: torch.memory_format = torch.channels_last,
) -> nn.Sequential:
    """The network as an ``nn.Sequential`` with jaxnet's weights.

    Args:
        arch: the network.
        params: jaxnet's params for it (:func:`jaxnet.init`).
        device: ``"cpu"`` or ``"cuda"``.
        memory_format: of the convolution kernels (``torch.channels_last`` or
            ``torch.contiguous_format``); feed images in the same format.

    Returns:
        A module mapping float images ``(N, C, H, W)`` to logits ``(N, num_classes)``.
    """
    weights = nchw_weights(arch, params)
    modules: list[nn.Module] = []
    shape = arch.input_shape
    for layer, out_shape in zip(arch.layers, arch.output_shapes, strict=True):
        if isinstance(layer, Conv):
            module = nn.Conv2d(
                layer.c_in, layer.c_out, (layer.kh, layer.kw), layer.stride, layer.padding
            )
        elif isinstance(layer, Dense):
            if len(shape) == 3:
                modules.append(nn.Flatten())
            module = nn.Linear(layer.n_in, layer.n_out)
        elif isinstance(layer, MaxPool):
            module = nn.MaxPool2d(layer.window, layer.stride)
        else:
            module = nn.ReLU()
        if layer.name in weights:
            w, b = weights[layer.name]
            with torch.no_grad():
                module.weight.copy_(torch.from_numpy(w))
                module.bias.copy_(torch.from_numpy(b))
        modules.append(module)
        shape = out_shape
    return nn.Sequential(*modules).to(device=device, memory_format=memory_format)


def sgd(
    model: nn.Module,
    lr: float,
    momentum: float,
    weight_decay: float,
    foreach: bool | None = None,
) -> torch.optim.SGD:
    """``torch.optim.SGD`` with ``dampening=momentum``: the seed's moving average of gradients.

    Args:
        model: the parameters' owner.
        lr, momentum, weight_decay: ``alpha``, ``mu``, ``lambda``.
        foreach: ``True``: one multi-tensor update; ``False``: a loop over the parameters;
            ``None``: PyTorch's default (the loop on CPU, foreach on CUDA).

    Returns:
        The optimizer; see the module docstring for how it differs from the seed's rule.
    """
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
    """One train step as a PyTorch user writes it.

    Args:
        model: maps float images ``(N, C, H, W)`` to logits (``sequential``, or it compiled).
        optimizer: over ``model``'s parameters.
        mean: subtracted after scaling, as jaxnet's ``make_train_step(mean=)``.
        scale: applied to the uint8 pixels first.

    Returns:
        ``step(x, y) -> (loss, accuracy)``, uint8 ``x (N, C, H, W)`` in the model's memory
        format, int64 ``y (N,)``; both results are tensors of the batch before the update.
    """
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
    """The benchmark's earlier PyTorch step: ``F.*`` calls and the seed's update by hand.

    Weights in ``channels_last``; the update is jaxnet's, ``m = mu*m + (1-mu)*g;
    w -= lr*(m + wd*w)``, one parameter at a time.

    Args:
        arch: the network.
        params: jaxnet's params.
        lr, momentum, weight_decay: ``alpha``, ``mu``, ``lambda``.
        mean, scale: as :func:`make_train_step`.
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        ``(step, weights)``: ``step(x, y) -> (loss, accuracy)`` as :func:`make_train_step`
        (``x`` channels_last), and the tensors it updates, ``{layer name: (w, b)}`` (NCHW).
    """
    weights = {}
    for name, (w, b) in nchw_weights(arch, params).items():
        tw = torch.from_numpy(w).to(device)
        if tw.dim() == 4:
            tw = tw.contiguous(memory_format=torch.channels_last)
        weights[name] = (tw.requires_grad_(True), torch.from_numpy(b).to(device).requires_grad_())
    flat = [t for pair in weights.values() for t in pair]
    moments = [torch.zeros_like(p) for p in flat]

    def forward(h: torch.Tensor) -> torch.Tensor:
        for layer in arch.layers:
            if isinstance(layer, Conv):
                h = F.conv2d(h, *weights[layer.name], stride=layer.stride, padding=layer.padding)
            elif isinstance(layer, Dense):
                h = F.linear(h.flatten(1), *weights[layer.name])
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


def images(x: np.ndarray, device: str = "cpu", memory_format=torch.channels_last) -> torch.Tensor:
    """uint8 NHWC images ``(N, H, W, C)`` as the NCHW tensor a PyTorch step takes.

    Args:
        x: the images.
        device: where the tensor lives.
        memory_format: ``torch.channels_last`` (NHWC in memory, as ``x`` already is) or
            ``torch.contiguous_format``.

    Returns:
        ``(N, C, H, W)`` uint8.
    """
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    return t.to(device).contiguous(memory_format=memory_format)
