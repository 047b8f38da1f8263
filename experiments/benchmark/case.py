"""What one run times: its plan, the training settings every method shares, the optional peers
that imported, and one case (a network at a batch size) with its data, weights and work."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import jax
import numpy as np
import optax

from experiments.benchmark.timing import FULL, LAYERS_FULL, Runner, Settings
from jaxnet.backends import onednn
from jaxnet.network import Architecture, init
from jaxnet.optim import momentum

DEFAULT_NETS = ("mnist", "cifar10_modified")
DEFAULT_BATCHES = (16, 64, 256)
LEARNING_RATE = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
MEAN = 0.5  # every step turns uint8 pixels into x / 255 - MEAN
DATA_BATCHES = 4  # distinct batches each method cycles through
TORCH_FORMAT = "channels_last"  # the PyTorch formulation kept (docs/performance.md)
TORCH_FOREACH = None  # PyTorch's default: a for-loop update on CPU, foreach on CUDA


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


def torch_sync(torch: Any, device: str) -> None:
    """Wait until PyTorch's queued work on ``device`` is done (CUDA runs asynchronously)."""
    if device == "cuda":
        torch.cuda.synchronize()


def on_xla(run: Runner) -> Runner:
    """``run`` with jaxnet's convolutions kept on XLA as it traces (``onednn.turned_off``)."""

    def wrapped(k: int) -> None:
        with onednn.turned_off():
            run(k)

    return wrapped


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


def jax_optimizer() -> optax.GradientTransformation:
    """The seed's momentum update with the shared settings, as every JAX method steps."""
    return momentum(LEARNING_RATE, MOMENTUM, WEIGHT_DECAY)


def torch_optimizer(case: Case, model: Any, foreach: bool | None = TORCH_FOREACH) -> Any:
    """``torch.optim.SGD`` over ``model``'s parameters with the shared settings."""
    return case.peers.torch.sgd(model, LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, foreach)
