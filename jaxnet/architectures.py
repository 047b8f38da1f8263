"""The seed's three networks, as :class:`jaxnet.network.Architecture` values.

- :func:`mnist`: the report's Table 1 (28x28x1 in, 10 classes).
- :func:`cifar10_baseline`: the assignment's CIFAR-10 starter network (32x32x3 in).
- :func:`cifar10_modified`: the report's Table 3 (32x32x3 in).

Each takes ``num_classes`` (default 10, the report's): the last dense layer's outputs, for an
image folder with another number of classes; nothing else about the network changes. Each
returns the architecture named after its function. Look one up by name with :func:`get`
(``"mnist"``, ``"cifar10_baseline"`` or ``"baseline"``, ``"cifar10_modified"`` or
``"modified"``).
"""

from __future__ import annotations

from collections.abc import Callable

from jaxnet.network import Architecture, Conv, Dense, MaxPool, ReLU


def _conv_relu(k: int, c_in: int, c_out: int) -> tuple[Conv, ReLU]:
    """A ``k x k`` convolution with same-size padding (``k // 2``), then a ReLU."""
    return Conv(k, k, c_in, c_out, padding=k // 2), ReLU()


def mnist(num_classes: int = 10) -> Architecture:
    """The report's MNIST network (Table 1): 14682 parameters.

    ``conv 5x5x1x16 pad 2 -> ReLU -> pool 2 -> conv 5x5x16x16 pad 2 -> ReLU -> pool 2 ->
    dense 784 -> 10``. Per-sample shapes: ``(28, 28, 1) -> (28, 28, 16) -> (14, 14, 16) ->
    (14, 14, 16) -> (7, 7, 16) -> (10,)``. Parameters 416, 6416, 7850.
    """
    layers = (
        *_conv_relu(5, 1, 16),
        MaxPool(),
        *_conv_relu(5, 16, 16),
        MaxPool(),
        Dense(7 * 7 * 16, num_classes),
    )
    return Architecture(layers, (28, 28, 1), num_classes, "mnist")


def cifar10_baseline(num_classes: int = 10) -> Architecture:
    """The assignment's CIFAR-10 starter network: 48602 parameters.

    ``conv 5x5x3x16 pad 2 -> ReLU -> pool 2 -> conv 5x5x16x16 pad 2 -> ReLU -> dense 4096 -> 10``.
    Per-sample shapes: ``(32, 32, 3) -> (32, 32, 16) -> (16, 16, 16) -> (16, 16, 16) -> (10,)``.
    Parameters 1216, 6416, 40970.
    """
    layers = (
        *_conv_relu(5, 3, 16),
        MaxPool(),
        *_conv_relu(5, 16, 16),
        Dense(16 * 16 * 16, num_classes),
    )
    return Architecture(layers, (32, 32, 3), num_classes, "cifar10_baseline")


def cifar10_modified(num_classes: int = 10) -> Architecture:
    """The report's modified CIFAR-10 network (Table 3): 51766 parameters.

    Five convolutions with same-size padding, two poolings, a hidden dense layer of 20 units,
    ReLU after every convolution and after the hidden dense layer::

        conv 5x5x3x16   (32, 32, 16)   1216
        pool            (16, 16, 16)
        conv 5x5x16x24  (16, 16, 24)   9624
        conv 5x5x24x24  (16, 16, 24)  14424
        pool            (8, 8, 24)
        conv 3x3x24x16  (8, 8, 16)     3472
        conv 3x3x16x16  (8, 8, 16)     2320
        dense 1024->20  (20,)         20500
        dense 20->10    (10,)           210

    The report's table text says 64 units for the hidden dense layer, but its own count,
    ``1024*20 + 20 = 20500``, means 20: this is the network the count describes.
    """
    layers = (
        *_conv_relu(5, 3, 16),
        MaxPool(),
        *_conv_relu(5, 16, 24),
        *_conv_relu(5, 24, 24),
        MaxPool(),
        *_conv_relu(3, 24, 16),
        *_conv_relu(3, 16, 16),
        Dense(8 * 8 * 16, 20),
        ReLU(),
        Dense(20, num_classes),
    )
    return Architecture(layers, (32, 32, 3), num_classes, "cifar10_modified")


ARCHITECTURES: dict[str, Callable[..., Architecture]] = {
    "mnist": mnist,
    "cifar10_baseline": cifar10_baseline,
    "cifar10_modified": cifar10_modified,
}
"""The networks by canonical name, each a function returning a fresh :class:`Architecture`."""

ALIASES: dict[str, str] = {"baseline": "cifar10_baseline", "modified": "cifar10_modified"}
"""Short names accepted by :func:`get` (``--arch baseline|modified`` on the command line)."""


def get(name: str, num_classes: int = 10) -> Architecture:
    """The network called ``name``, with ``num_classes`` outputs.

    Args:
        name: ``"mnist"``, ``"cifar10_baseline"`` (or ``"baseline"``), ``"cifar10_modified"``
            (or ``"modified"``).
        num_classes: outputs of the last dense layer, ``K >= 2`` (10 for the report's data
            sets; an image folder's class count for one's own images).

    Returns:
        The architecture.

    Raises:
        ValueError: an unknown name (the message lists the known ones), or ``num_classes < 2``.
    """
    key = ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in ARCHITECTURES:
        known = ", ".join(sorted([*ARCHITECTURES, *ALIASES]))
        raise ValueError(f"unknown architecture {name!r}; known: {known}")
    return ARCHITECTURES[key](num_classes)
