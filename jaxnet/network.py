"""Networks as data: static layer specs, and the functions that give them parameters and run them.

A network is an :class:`Architecture`: a tuple of layer specs (:class:`Conv`, :class:`ReLU`,
:class:`MaxPool`, :class:`Dense`), the input shape ``(H, W, C)`` and the number of classes. The
specs are frozen dataclasses of Python ints and strings, so an architecture is hashable and can
be a static argument of ``jax.jit``. The arrays live apart from it, in a params pytree::

    {"conv1": {"w": (5, 5, 1, 16), "b": (16,)}, "conv2": {...}, "dense1": {"w": (10, 784), ...}}

keyed by layer name, one entry per layer with parameters (ReLU and pooling have none), so
``jax.tree.map`` over params, gradients and optimizer state always lines up.

The architecture is checked when it is built: channels chain from layer to layer, every output
is at least 1x1, a dense layer's ``n_in`` equals the flattened size of what reaches it, and the
network ends in ``num_classes`` logits. A mistake is a one-line ``ValueError`` naming the layer.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnet import autodiff
from jaxnet import layers as analytic

RULES = ("analytic", "autodiff")

# ---------------------------------------------------------------------------------------------
# Layer specs
# ---------------------------------------------------------------------------------------------


def _positive_int(owner: str, name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


def _int_pair(owner: str, name: str, value: object, minimum: int) -> tuple[int, int]:
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2:
        raise ValueError(f"{owner}: {name} must be an int or a pair of ints, got {value!r}")
    return tuple(_positive_int(owner, name, v, minimum) for v in items)


def _owner(kind: str, name: str | None) -> str:
    return f"{kind} {name!r}" if name else kind


def _check_name(kind: str, name: object) -> None:
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"{kind}: name must be a non-empty str or None, got {name!r}")


@dataclass(frozen=True)
class Conv:
    """A 2-D convolution layer (:func:`jaxnet.conv2d`): kernel ``(kh, kw, c_in, c_out)``, HWIO.

    Maps ``(H, W, c_in)`` to ``(Ho, Wo, c_out)`` with ``Ho = (H + 2 ph - kh) // sh + 1``.
    Parameters: ``w`` of shape ``(kh, kw, c_in, c_out)`` and ``b`` of shape ``(c_out,)``.

    Attributes:
        kh, kw: kernel height and width, >= 1.
        c_in, c_out: input and output channels, >= 1.
        padding: zeros on each side, an int or ``(ph, pw)``, >= 0; stored as a pair.
        stride: an int or ``(sh, sw)``, >= 1; stored as a pair.
        name: the layer's key in the params dict; ``None`` lets :class:`Architecture` name it
            ``conv1``, ``conv2``, ... in order.
    """

    kh: int
    kw: int
    c_in: int
    c_out: int
    padding: int | tuple[int, int] = 0
    stride: int | tuple[int, int] = 1
    name: str | None = None

    def __post_init__(self) -> None:
        _check_name("Conv", self.name)
        owner = _owner("Conv", self.name)
        for attr in ("kh", "kw", "c_in", "c_out"):
            _positive_int(owner, attr, getattr(self, attr))
        object.__setattr__(self, "padding", _int_pair(owner, "padding", self.padding, 0))
        object.__setattr__(self, "stride", _int_pair(owner, "stride", self.stride, 1))


@dataclass(frozen=True)
class ReLU:
    """An elementwise ReLU (:func:`jaxnet.relu`); no parameters, any input shape.

    Attributes:
        name: the layer's name; ``None`` lets :class:`Architecture` name it ``relu1``, ...
    """

    name: str | None = None

    def __post_init__(self) -> None:
        _check_name("ReLU", self.name)


@dataclass(frozen=True)
class MaxPool:
    """Max pooling (:func:`jaxnet.maxpool2d`), no padding; no parameters.

    Maps ``(H, W, C)`` to ``(Ho, Wo, C)`` with ``Ho = (H - kh) // sh + 1``.

    Attributes:
        window: an int or ``(kh, kw)``, >= 1; stored as a pair.
        stride: an int or ``(sh, sw)``, >= 1; stored as a pair.
        name: the layer's name; ``None`` lets :class:`Architecture` name it ``pool1``, ...
    """

    window: int | tuple[int, int] = 2
    stride: int | tuple[int, int] = 2
    name: str | None = None

    def __post_init__(self) -> None:
        _check_name("MaxPool", self.name)
        owner = _owner("MaxPool", self.name)
        object.__setattr__(self, "window", _int_pair(owner, "window", self.window, 1))
        object.__setattr__(self, "stride", _int_pair(owner, "stride", self.stride, 1))


@dataclass(frozen=True)
class Dense:
    """A fully connected layer (:func:`jaxnet.dense`); flattens its input to ``n_in`` features.

    Maps any input of ``n_in`` values to ``(n_out,)``. Parameters: ``w`` of shape
    ``(n_out, n_in)`` (the seed's layout) and ``b`` of shape ``(n_out,)``.

    Attributes:
        n_in, n_out: input and output sizes, >= 1.
        name: the layer's key in the params dict; ``None`` lets :class:`Architecture` name it
            ``dense1``, ``dense2``, ... in order.
    """

    n_in: int
    n_out: int
    name: str | None = None

    def __post_init__(self) -> None:
        _check_name("Dense", self.name)
        owner = _owner("Dense", self.name)
        _positive_int(owner, "n_in", self.n_in)
        _positive_int(owner, "n_out", self.n_out)


Layer = Conv | ReLU | MaxPool | Dense
"""Any layer spec."""

_PREFIX = {Conv: "conv", ReLU: "relu", MaxPool: "pool", Dense: "dense"}
_PARAMETRISED = (Conv, Dense)

# ---------------------------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------------------------


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _output_shape(layer: Layer, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The per-sample output shape of ``layer`` given its input ``shape``; ValueError if invalid."""
    where = f"layer {layer.name!r} ({type(layer).__name__})"
    if isinstance(layer, ReLU):
        return shape
    if isinstance(layer, Dense):
        size = math.prod(shape)
        if layer.n_in != size:
            raise ValueError(
                f"{where}: n_in = {layer.n_in} but its input {_shape_str(shape)} flattens to "
                f"{size} values"
            )
        return (layer.n_out,)
    if len(shape) != 3:
        raise ValueError(
            f"{where} needs an image input (H, W, C), got a flat vector of shape {shape} "
            "(place it before the dense layers)"
        )
    h, w, c = shape
    if isinstance(layer, Conv):
        if layer.c_in != c:
            raise ValueError(
                f"{where}: c_in = {layer.c_in} but its input {_shape_str(shape)} has {c} channels"
            )
        (ph, pw), (sh, sw) = layer.padding, layer.stride
        if h + 2 * ph < layer.kh or w + 2 * pw < layer.kw:
            raise ValueError(
                f"{where}: kernel {layer.kh}x{layer.kw} with padding {layer.padding} leaves no "
                f"output on input {_shape_str(shape)}"
            )
        return ((h + 2 * ph - layer.kh) // sh + 1, (w + 2 * pw - layer.kw) // sw + 1, layer.c_out)
    (kh, kw), (sh, sw) = layer.window, layer.stride
    if h < kh or w < kw:
        raise ValueError(f"{where}: window {kh}x{kw} leaves no output on input {_shape_str(shape)}")
    return ((h - kh) // sh + 1, (w - kw) // sw + 1, c)


@dataclass(frozen=True)
class Architecture:
    """A network as static data: its layers in order, its input shape and its number of classes.

    Hashable and comparable (two architectures built alike are equal), so it can be a static
    argument of ``jax.jit``. Layers given without a name are named by kind and position
    (``conv1``, ``relu1``, ``pool1``, ``dense1``, ``conv2``, ...).

    Attributes:
        layers: the layer specs, in order; the last one must output ``(num_classes,)`` logits.
        input_shape: the per-sample input ``(H, W, C)``, NHWC without the batch axis.
        num_classes: the number of classes ``K`` (>= 2).
        name: an optional label (``"mnist"``, ...), part of equality.
        output_shapes: computed, the per-sample output shape of each layer, e.g.
            ``(28, 28, 16)`` or ``(10,)``.

    Raises:
        ValueError: empty or badly chained layers (with a one-line message naming the layer),
            duplicate names, a bad input shape, or a last layer that does not give
            ``(num_classes,)``.
        TypeError: a layer that is not a :data:`Layer` spec.
    """

    layers: tuple[Layer, ...]
    input_shape: tuple[int, int, int]
    num_classes: int
    name: str = ""
    output_shapes: tuple[tuple[int, ...], ...] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        layers_ = tuple(self.layers)
        if not layers_:
            raise ValueError("Architecture: layers must not be empty")
        for i, layer in enumerate(layers_):
            if not isinstance(layer, (Conv, ReLU, MaxPool, Dense)):
                raise TypeError(
                    f"Architecture: layer {i} must be a Conv, ReLU, MaxPool or Dense spec, "
                    f"got {layer!r}"
                )
        shape = tuple(self.input_shape)
        if len(shape) != 3:
            raise ValueError(f"Architecture: input_shape must be (H, W, C), got {shape!r}")
        for s in shape:
            _positive_int("Architecture", "input_shape entries", s)
        _positive_int("Architecture", "num_classes", self.num_classes, 2)

        counts: Counter[type] = Counter()
        named = []
        for layer in layers_:
            counts[type(layer)] += 1
            if layer.name is None:
                layer = dataclasses.replace(
                    layer, name=f"{_PREFIX[type(layer)]}{counts[type(layer)]}"
                )
            named.append(layer)
        duplicates = sorted(n for n, c in Counter(layer.name for layer in named).items() if c > 1)
        if duplicates:
            raise ValueError(f"Architecture: layer names must be unique, repeated: {duplicates}")

        shapes = []
        for layer in named:
            shape = _output_shape(layer, shape)
            shapes.append(shape)
        if shape != (self.num_classes,):
            raise ValueError(
                f"layer {named[-1].name!r} ({type(named[-1]).__name__}) is the last and outputs "
                f"{_shape_str(shape)}, expected num_classes = {self.num_classes} logits"
            )
        object.__setattr__(self, "layers", tuple(named))
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "output_shapes", tuple(shapes))

    @property
    def parametrised(self) -> tuple[Conv | Dense, ...]:
        """The layers that have parameters (conv and dense), in order; the params dict's keys."""
        return tuple(layer for layer in self.layers if isinstance(layer, _PARAMETRISED))


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


def param_shapes(layer: Layer) -> dict[str, tuple[int, ...]]:
    """The shapes of a layer's parameters.

    Args:
        layer: a layer spec.

    Returns:
        ``{"w": (kh, kw, c_in, c_out), "b": (c_out,)}`` for :class:`Conv`,
        ``{"w": (n_out, n_in), "b": (n_out,)}`` for :class:`Dense`, ``{}`` otherwise.
    """
    if isinstance(layer, Conv):
        return {"w": (layer.kh, layer.kw, layer.c_in, layer.c_out), "b": (layer.c_out,)}
    if isinstance(layer, Dense):
        return {"w": (layer.n_out, layer.n_in), "b": (layer.n_out,)}
    return {}


def init(
    arch: Architecture, key: jax.Array, dtype: jnp.dtype = jnp.float32
) -> dict[str, dict[str, jax.Array]]:
    """Initialise the parameters: He-style weights, zero biases, as the assignment's starters do.

    Conv weights are ``N(0, 1) * sqrt(2 / (kh * kw * c_in))``, dense weights
    ``N(0, 1) * sqrt(2 / n_in)``, biases 0. Deterministic in ``key``: the weights of all layers
    are consecutive slices of one standard-normal draw, in layer order. Runs as one jitted
    computation (one compilation per architecture and dtype, not one per weight shape).

    Args:
        arch: the network.
        key: a JAX PRNG key (``jax.random.key(seed)`` or ``jax.random.PRNGKey(seed)``).
        dtype: a floating dtype; ``float64`` needs ``jax.enable_x64``.

    Returns:
        ``{layer name: {"w": w, "b": b}}`` for each conv and dense layer, with ``w`` of shape
        ``(kh, kw, c_in, c_out)`` (conv) or ``(n_out, n_in)`` (dense) and ``b`` of shape
        ``(c_out,)`` or ``(n_out,)``, all of ``dtype``.

    Raises:
        TypeError: ``arch`` is not an :class:`Architecture`, ``dtype`` is not floating, or it is
            64-bit while x64 is off (JAX would silently give 32 bits).
    """
    if not isinstance(arch, Architecture):
        raise TypeError(f"arch must be an Architecture, got {type(arch).__name__}")
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    if dtype.itemsize == 8 and not jax.config.jax_enable_x64:
        raise TypeError(f"dtype {dtype} needs 64-bit JAX: wrap the call in jax.enable_x64(True)")
    return _init(arch, key, dtype)


@partial(jax.jit, static_argnums=(0, 2))
def _init(arch: Architecture, key: jax.Array, dtype: jnp.dtype) -> dict:
    shapes = [param_shapes(layer) for layer in arch.parametrised]
    sizes = [math.prod(s["w"]) for s in shapes]
    z = jax.random.normal(key, (sum(sizes),), dtype)
    params, offset = {}, 0
    for layer, s, n in zip(arch.parametrised, shapes, sizes, strict=True):
        fan_in = math.prod(s["w"][:3]) if isinstance(layer, Conv) else layer.n_in
        params[layer.name] = {
            "w": z[offset : offset + n].reshape(s["w"]) * math.sqrt(2.0 / fan_in),
            "b": jnp.zeros(s["b"], dtype),
        }
        offset += n
    return params


def count_params(arch: Architecture) -> int:
    """The number of trainable parameters (weights and biases of every layer).

    Args:
        arch: the network.

    Returns:
        The total, equal to the number of scalars in ``init(arch, key)``.
    """
    return sum(row.params for row in parameter_rows(arch))


class ParamRow(NamedTuple):
    """One row of the parameter table.

    Attributes:
        layer: the layer's name (``conv1``).
        kind: its type in words (``conv 5x5x1x16, pad 2``).
        output_shape: the per-sample output shape, ``(H, W, C)`` or ``(n,)``.
        params: the number of trainable parameters.
        arithmetic: how ``params`` is reached (``5*5*1*16 + 16 = 416``), or ``"0"``.
    """

    layer: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    arithmetic: str


def _pair_str(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def _describe(layer: Layer) -> str:
    if isinstance(layer, Conv):
        text = f"conv {layer.kh}x{layer.kw}x{layer.c_in}x{layer.c_out}"
        text += f", pad {_pair_str(layer.padding)}"
        if layer.stride != (1, 1):
            text += f", stride {_pair_str(layer.stride)}"
        return text
    if isinstance(layer, MaxPool):
        return f"max pool {layer.window[0]}x{layer.window[1]}, stride {_pair_str(layer.stride)}"
    if isinstance(layer, Dense):
        return f"dense {layer.n_in} -> {layer.n_out}"
    return "ReLU"


def parameter_rows(arch: Architecture) -> list[ParamRow]:
    """The parameter table as data: one :class:`ParamRow` per layer, in order.

    Args:
        arch: the network.

    Returns:
        A list with one row per layer (ReLU and pooling included, with 0 parameters).
    """
    rows = []
    for layer, shape in zip(arch.layers, arch.output_shapes, strict=True):
        shapes = param_shapes(layer)
        if shapes:
            w, b = shapes["w"], shapes["b"]
            if isinstance(layer, Dense):  # written n_in*n_out as the report does
                w = w[::-1]
            n = math.prod(w) + math.prod(b)
            arithmetic = f"{'*'.join(map(str, w))} + {b[0]} = {n}"
        else:
            n, arithmetic = 0, "0"
        rows.append(ParamRow(layer.name, _describe(layer), shape, n, arithmetic))
    return rows


def parameter_table(arch: Architecture) -> str:
    """The report's parameter table (Tables 1 and 3) in Markdown.

    Columns: layer, type, output shape (per sample, ``HxWxC`` or ``n``), trainable parameters
    with their arithmetic (``5*5*1*16 + 16 = 416``). The first row is the input, the last the
    total.

    Args:
        arch: the network.

    Returns:
        The table, one line per row, ending in a newline.
    """
    lines = [
        "| Layer | Type | Output shape | Trainable parameters |",
        "|---|---|---|---:|",
        f"| input | input | {_shape_str(arch.input_shape)} | 0 |",
    ]
    rows = parameter_rows(arch)
    for row in rows:
        lines.append(
            f"| {row.layer} | {row.kind} | {_shape_str(row.output_shape)} | {row.arithmetic} |"
        )
    lines.append(f"| **total** | | | **{sum(row.params for row in rows)}** |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Forward pass
# ---------------------------------------------------------------------------------------------


def _ops(rules: str) -> ModuleType:
    if rules == "analytic":
        return analytic
    if rules == "autodiff":
        return autodiff
    raise ValueError(f"rules must be one of {RULES}, got {rules!r}")


def _check_params(arch: Architecture, params: dict) -> None:
    """Raise ValueError unless ``params`` has exactly the layers and shapes ``arch`` needs."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict keyed by layer name, got {type(params).__name__}")
    expected = [layer.name for layer in arch.parametrised]
    if sorted(params) != sorted(expected):
        raise ValueError(
            f"params must have the layers {expected}, got {sorted(params)} (built for another "
            "architecture?)"
        )
    for layer in arch.parametrised:
        for pname, shape in param_shapes(layer).items():
            got = getattr(params[layer.name].get(pname), "shape", None)
            if got is None or tuple(got) != shape:
                raise ValueError(
                    f"params[{layer.name!r}][{pname!r}] must have shape {shape}, got {got}"
                )


def forward(
    arch: Architecture,
    params: dict[str, dict[str, jax.Array]],
    x: jax.Array,
    rules: str = "analytic",
) -> jax.Array:
    """Run the network: the logits for a batch of images.

    Works under ``jit`` (``arch`` and ``rules`` are static), ``grad`` and ``vmap``.

    Args:
        arch: the network.
        params: as returned by :func:`init`, ``{layer name: {"w": ..., "b": ...}}``.
        x: a float batch ``(N, H, W, C)`` with ``(H, W, C) == arch.input_shape``, in the dtype
            of ``params``.
        rules: ``"analytic"`` (each layer's hand-derived ``custom_vjp`` rule) or ``"autodiff"``
            (the same forward passes from :mod:`jaxnet.autodiff`, differentiated by JAX).

    Returns:
        Logits ``(N, num_classes)``, in the dtype of ``x``.

    Raises:
        ValueError: an unknown ``rules``, ``x`` of the wrong shape, or ``params`` that do not
            fit ``arch``.
        TypeError: ``x`` not floating point, or its dtype differs from the params'.
    """
    ops = _ops(rules)
    _check_params(arch, params)
    if x.ndim != 4 or tuple(x.shape[1:]) != arch.input_shape:
        raise ValueError(
            f"x must have shape (N, {', '.join(map(str, arch.input_shape))}) for this "
            f"architecture, got {tuple(x.shape)}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"x must be a floating-point batch, got dtype {x.dtype} (scale uint8 images first, "
            "or let jaxnet.make_train_step / jaxnet.evaluate do it)"
        )
    for layer in arch.layers:
        if isinstance(layer, Conv):
            p = params[layer.name]
            x = ops.conv2d(x, p["w"], p["b"], padding=layer.padding, stride=layer.stride)
        elif isinstance(layer, Dense):
            p = params[layer.name]
            x = ops.dense(x, p["w"], p["b"])
        elif isinstance(layer, MaxPool):
            x = ops.maxpool2d(x, window=layer.window, stride=layer.stride)
        else:
            x = ops.relu(x)
    return x
