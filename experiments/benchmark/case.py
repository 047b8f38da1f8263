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
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
MEAN = 0.5  # every step turns uint8 pixels into x / 255 - MEAN
DATA_BATCHES = 4  # distinct batches each method cycles through
TORCH_FORMAT = "channels_last"  # the PyTorch formulation kept (docs/performance.md)
TORCH_FOREACH = None  # PyTorch's default: a for-loop update on CPU, foreach on CUDA


@dataclass(frozen=True)
class Plan:
    """What one benchmark run times."""

    nets: tuple[str, ...] = DEFAULT_NETS  # jaxnet.architectures names
    batches: tuple[int, ...] = DEFAULT_BATCHES
    settings: Settings = FULL  # of the whole steps
    layer_settings: Settings | None = LAYERS_FULL  # of the per-layer times; None: none
    devices: int = 1  # > 1 adds the analytic rules data-parallel over that many devices
    torch_compile: bool = True  # about half a minute of compilation per shape on 2 cores
    torch_variants: bool = False  # the PyTorch formulations not kept, to compare
    epoch: bool = True  # the fit() epoch check ...
    quick: bool = False  # ... on a small data set


@dataclass(frozen=True)
class Peers:
    """The optional libraries that imported (each ``None`` where not), and why any is out."""

    torch: ModuleType | None = None  # experiments.peers.pytorch_peer (torch is its .torch)
    equinox: ModuleType | None = None  # experiments.peers.equinox_peer
    onednn: ModuleType | None = None  # jaxnet.backends.onednn where it is available()
    torch_device: str = "cpu"  # matching JAX's (torch_device)
    notes: tuple[str, ...] = ()  # one line per peer left out

    def torch_wait(self, _: Any = None) -> None:
        """Wait until PyTorch's queued work is done (CUDA runs asynchronously); a runner's
        ``wait``, the result it is handed unused."""
        if self.torch_device == "cuda":
            self.torch.torch.cuda.synchronize()


def torch_device(torch: Any) -> str | None:
    """The PyTorch device that matches JAX's default backend: ``"cpu"``, ``"cuda"`` or ``None``
    (JAX on a TPU, or on a GPU PyTorch cannot use: PyTorch is left out, not compared on other
    hardware)."""
    backend = jax.default_backend()
    if backend == "cpu":
        return "cpu"
    return "cuda" if backend == "gpu" and torch.cuda.is_available() else None


def _import(library: str, notes: list[str]) -> ModuleType | None:
    """The peer module of ``library``, or ``None`` and a note saying what is missing."""
    module = f"experiments.peers.{library.lower()}_peer"
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = error.name or module
        notes.append(f'{library}: left out ({missing} not installed: pip install -e ".[peers]")')
        return None


def import_peers(use_torch: bool = True, use_equinox: bool = True) -> Peers:
    """The peers that are installed (and wanted), and jaxnet's oneDNN backend if available."""
    notes: list[str] = []
    torch_peer = _import("PyTorch", notes) if use_torch else None
    device = "cpu" if torch_peer is None else torch_device(torch_peer.torch)
    if device is None:
        notes.append(f"PyTorch: left out (no device to match JAX's {jax.default_backend()})")
        torch_peer, device = None, "cpu"
    equinox_peer = _import("Equinox", notes) if use_equinox else None
    kernels = onednn if onednn.available() else None
    if kernels is None:
        notes.append(
            "jaxnet's oneDNN convolutions: not available here (the analytic rules use XLA's)"
        )
    return Peers(torch_peer, equinox_peer, kernels, device, tuple(notes))


def step_flops(arch: Architecture, batch: int) -> int:
    """Floating-point operations in the products of one train step on ``batch`` images.

    Per convolution ``2 N Ho Wo KH KW C_in C_out`` and per dense layer ``2 N n_in n_out``, each
    counted for the forward pass, for ``dL/dw``, and for ``dL/dx`` but in the network's first
    layer (nothing needs the gradient of the input). Biases, ReLU, pooling, the loss and the
    update are not counted.
    """
    total, first = 0, True
    for layer, shape in zip(arch.layers, arch.output_shapes, strict=True):
        if layer.fan_in:
            total += batch * layer.flops(shape) * (2 if first else 3)
            first = False
    return total


def on_xla(run: Runner) -> Runner:
    """``run`` with jaxnet's convolutions kept on XLA as it traces (``onednn.turned_off``)."""

    def wrapped(k: int) -> None:
        with onednn.turned_off():
            run(k)

    return wrapped


def jax_optimizer() -> optax.GradientTransformation:
    """The seed's momentum update with the shared settings, as every JAX method steps."""
    return momentum(LEARNING_RATE, MOMENTUM, WEIGHT_DECAY)


@dataclass(frozen=True)
class Case:
    """One network at one batch size, with the peers; ``seed`` gives the weights and data."""

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

    def torch_model(
        self, memory_format: str = TORCH_FORMAT, foreach: bool | None = TORCH_FOREACH
    ) -> tuple[Any, Any]:
        """The PyTorch peer's model and its ``torch.optim.SGD`` with the shared settings."""
        tp = self.peers.torch
        fmt = getattr(tp.torch, memory_format)
        model = tp.sequential(self.arch, self.params(), self.peers.torch_device, fmt)
        return model, tp.sgd(model, LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, foreach)

    def torch_batches(self, memory_format: str = TORCH_FORMAT) -> list[tuple[Any, Any]]:
        """The data as the PyTorch peer's ``(images, labels)`` tensors, on its device."""
        tp = self.peers.torch
        fmt = getattr(tp.torch, memory_format)
        xs, ys = self.data()
        return [tp.batch(x, y, self.peers.torch_device, fmt) for x, y in zip(xs, ys, strict=True)]


Pieces = dict[tuple[str, str], Runner]
"""``(row, "forward" | "backward") -> runner``: rows input, the layers, loss, update."""


@dataclass(frozen=True)
class Method:
    """A row of the benchmark: its name (and key in the JSON record) and how to build it.

    ``build(case)`` gives a :data:`Runner` whose first call compiles, or ``None`` where the
    method does not apply (a batch that does not split); ``layers(case)``, its pieces
    (:func:`~experiments.benchmark.run.layer_times`). A failure to build or run an
    ``optional`` method is recorded in one line instead of raised.
    """

    name: str
    build: Callable[[Case], Runner | None]
    layers: Callable[[Case], Pieces] | None = None
    optional: bool = False
