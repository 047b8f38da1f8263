"""Networks as data: static layer specs, and the functions that give them parameters and run them.

A network is an :class:`Architecture`: a tuple of layer specs (:class:`Conv`, :class:`ReLU`,
:class:`MaxPool`, :class:`Dense`), the input shape ``(H, W, C)`` and the number of classes. The
specs are frozen dataclasses of Python ints and strings, so an architecture is hashable and can
be a static argument of ``jax.jit``. The arrays live apart from it, in a params pytree::

    {"conv1": {"w": (5, 5, 1, 16), "b": (16,)}, "conv2": {...}, "dense1": {"w": (10, 784), ...}}

keyed by layer name, one entry per layer with parameters (ReLU and pooling have none), so
``jax.tree.map`` over params, gradients and optimizer state always lines up.

Each spec owns what is particular to its kind (:class:`Layer`): its parameter shapes, its output
shape (and the check that its input fits), its line in the parameter table, its work in FLOPs
and how it is applied, through the layer functions :func:`layer_ops` picks (the analytic rules
or autodiff). Everything here loops over the layers and asks them.

The architecture is checked when it is built: channels chain from layer to layer, every output
is at least 1x1, a dense layer's ``n_in`` equals the flattened size of what reaches it, and the
network ends in ``num_classes`` logits. A mistake is a one-line ``ValueError`` naming the layer.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from jaxnet import autodiff
from jaxnet import layers as analytic
from jaxnet._validate import IntOrPair, int_at_least, int_pair, window_outputs

Params = Mapping[str, jax.Array]
"""One layer's parameters, ``{"w": ..., "b": ...}``."""

_OPS = {"analytic": analytic, "autodiff": autodiff}
RULES = tuple(_OPS)
"""The accepted values of every ``rules`` argument."""


def layer_ops(rules: str) -> ModuleType:
    """The layer functions a network runs with: :mod:`jaxnet.layers` for ``rules="analytic"``
    (each layer's hand-derived ``custom_vjp`` rule), :mod:`jaxnet.autodiff` for ``"autodiff"``
    (JAX differentiates the forward passes itself); ValueError for any other ``rules``.

    Both modules hold ``conv2d``, ``dense``, ``maxpool2d``, ``relu`` and
    ``softmax_cross_entropy`` with the same forward passes; they differ only in how the gradient
    is found.
    """
    if rules not in _OPS:
        raise ValueError(f"rules must be one of {RULES}, got {rules!r}")
    return _OPS[rules]


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _pair_str(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


class Layer(abc.ABC):
    """What every layer spec knows about its own kind; the specs are the subclasses below.

    A subclass is a frozen dataclass of Python ints (and its ``name``), declares which of them
    are ints (``_ints``) and which are ints-or-pairs (``_pairs``, stored as pairs), each with
    its minimum, and implements :meth:`output_shape`, :meth:`describe` and :meth:`apply`; a
    layer with weights also :meth:`param_shapes`, :attr:`fan_in` and :meth:`param_arithmetic`.

    Attributes:
        kind: the kind in one word (``"conv"``), the prefix of default names (``conv1``).
        name: the layer's key in the params dict; every spec takes it as its last field,
            ``None`` by default, and then :class:`Architecture` names the layer by kind and
            position (``conv1``, ``relu1``, ``pool1``, ``dense1``, ``conv2``, ...).
    """

    kind: ClassVar[str]
    _ints: ClassVar[dict[str, int]] = {}
    _pairs: ClassVar[dict[str, int]] = {}
    name: str | None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise TypeError(f"{owner}: name must be a non-empty str or None, got {self.name!r}")
        if self.name:
            owner = f"{owner} {self.name!r}"
        for attr, minimum in self._ints.items():
            value = int_at_least(f"{owner}: {attr}", getattr(self, attr), minimum)
            object.__setattr__(self, attr, value)
        for attr, minimum in self._pairs.items():
            value = int_pair(f"{owner}: {attr}", getattr(self, attr), minimum)
            object.__setattr__(self, attr, value)

    def _where(self) -> str:
        """How an error message names the layer: ``layer 'conv1' (Conv)``."""
        return f"layer {self.name!r} ({type(self).__name__})"

    def _image(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """``shape`` as ``(H, W, C)``; ValueError if it is a flat vector."""
        if len(shape) != 3:
            raise ValueError(
                f"{self._where()} needs an image input (H, W, C), got a flat vector of shape "
                f"{shape} (place it before the dense layers)"
            )
        return shape

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes of the layer's parameters by name; ``{}`` for a layer without any."""
        return {}

    def param_count(self) -> int:
        """The number of trainable scalars, the sum of the sizes of :meth:`param_shapes`."""
        return sum(math.prod(shape) for shape in self.param_shapes().values())

    def param_arithmetic(self) -> str:
        """How :meth:`param_count` is reached, as the report writes it (``"0"`` here)."""
        return "0"

    @property
    def fan_in(self) -> int:
        """The number of weighted inputs each output value sums (0 for a layer without weights)."""
        return 0

    def flops(self, output_shape: tuple[int, ...]) -> int:
        """Floating-point operations of the weight product for one sample, forward pass.

        Each output value sums ``fan_in`` products: ``2 * prod(output_shape) * fan_in``, i.e.
        ``2 Ho Wo KH KW C_in C_out`` for a convolution, ``2 n_in n_out`` for a dense layer, 0
        without weights; biases are not counted. ``output_shape`` is the layer's per-sample
        output (from ``Architecture.output_shapes``).
        """
        return 2 * math.prod(output_shape) * self.fan_in

    @abc.abstractmethod
    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The per-sample output shape for the per-sample ``input_shape``.

        Raises:
            ValueError: an input the layer cannot take, in one line naming the layer.
        """

    @abc.abstractmethod
    def describe(self) -> str:
        """The layer in words, as the parameter table writes it (``conv 5x5x1x16, pad 2``)."""

    @abc.abstractmethod
    def apply(self, params: Params | None, x: jax.Array, ops: ModuleType) -> jax.Array:
        """Run the layer on a batch.

        Args:
            params: the layer's ``{"w": ..., "b": ...}``, or ``None`` for a layer without any.
            x: the batch, ``(N, *input_shape)``.
            ops: the layer functions, from :func:`layer_ops`.

        Returns:
            ``(N, *output_shape)``.
        """


@dataclass(frozen=True)
class Conv(Layer):
    """A 2-D convolution layer (:func:`jaxnet.conv2d`): kernel ``(kh, kw, c_in, c_out)``, HWIO.

    Maps ``(H, W, c_in)`` to ``(Ho, Wo, c_out)`` with ``Ho = (H + 2 ph - kh) // sh + 1``.
    Parameters: ``w`` of shape ``(kh, kw, c_in, c_out)`` and ``b`` of shape ``(c_out,)``.

    Attributes:
        kh, kw: kernel height and width, >= 1.
        c_in, c_out: input and output channels, >= 1.
        padding: zeros on each side, an int or ``(ph, pw)``, >= 0; stored as a pair.
        stride: an int or ``(sh, sw)``, >= 1; stored as a pair.
    """

    kind: ClassVar[str] = "conv"
    _ints: ClassVar[dict[str, int]] = {"kh": 1, "kw": 1, "c_in": 1, "c_out": 1}
    _pairs: ClassVar[dict[str, int]] = {"padding": 0, "stride": 1}

    kh: int
    kw: int
    c_in: int
    c_out: int
    padding: IntOrPair = 0
    stride: IntOrPair = 1
    name: str | None = None

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{"w": (kh, kw, c_in, c_out), "b": (c_out,)}``."""
        return {"w": (self.kh, self.kw, self.c_in, self.c_out), "b": (self.c_out,)}

    def param_arithmetic(self) -> str:
        """``kh*kw*c_in*c_out + c_out = total``, e.g. ``5*5*1*16 + 16 = 416``."""
        w = f"{self.kh}*{self.kw}*{self.c_in}*{self.c_out}"
        return f"{w} + {self.c_out} = {self.param_count()}"

    @property
    def fan_in(self) -> int:
        return self.kh * self.kw * self.c_in

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(H, W, c_in) -> (Ho, Wo, c_out)``; ValueError for other channels or no output."""
        h, w, c = self._image(input_shape)
        if self.c_in != c:
            raise ValueError(
                f"{self._where()}: c_in = {self.c_in} but its input {_shape_str(input_shape)} "
                f"has {c} channels"
            )
        kernel = (self.kh, self.kw)
        return (
            *window_outputs(self._where(), (h, w), kernel, self.padding, self.stride),
            self.c_out,
        )

    def describe(self) -> str:
        """``conv 5x5x1x16, pad 2`` (and ``, stride 2`` when it is not 1)."""
        text = f"conv {self.kh}x{self.kw}x{self.c_in}x{self.c_out}, pad {_pair_str(self.padding)}"
        if self.stride != (1, 1):
            text += f", stride {_pair_str(self.stride)}"
        return text

    def apply(self, params: Params | None, x: jax.Array, ops: ModuleType) -> jax.Array:
        """``ops.conv2d(x, w, b)`` with this layer's padding and stride."""
        return ops.conv2d(x, params["w"], params["b"], padding=self.padding, stride=self.stride)


@dataclass(frozen=True)
class ReLU(Layer):
    """An elementwise ReLU (:func:`jaxnet.relu`); no parameters, any input shape."""

    kind: ClassVar[str] = "relu"

    name: str | None = None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape

    def describe(self) -> str:
        return "ReLU"

    def apply(self, params: Params | None, x: jax.Array, ops: ModuleType) -> jax.Array:
        return ops.relu(x)


@dataclass(frozen=True)
class MaxPool(Layer):
    """Max pooling (:func:`jaxnet.maxpool2d`), no padding; no parameters.

    Maps ``(H, W, C)`` to ``(Ho, Wo, C)`` with ``Ho = (H - kh) // sh + 1``.

    Attributes:
        window: an int or ``(kh, kw)``, >= 1; stored as a pair.
        stride: an int or ``(sh, sw)``, >= 1; stored as a pair.
    """

    kind: ClassVar[str] = "pool"
    _pairs: ClassVar[dict[str, int]] = {"window": 1, "stride": 1}

    window: IntOrPair = 2
    stride: IntOrPair = 2
    name: str | None = None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(H, W, C) -> (Ho, Wo, C)``; ValueError if the window does not fit."""
        h, w, c = self._image(input_shape)
        return (*window_outputs(self._where(), (h, w), self.window, stride=self.stride), c)

    def describe(self) -> str:
        return f"max pool {self.window[0]}x{self.window[1]}, stride {_pair_str(self.stride)}"

    def apply(self, params: Params | None, x: jax.Array, ops: ModuleType) -> jax.Array:
        """``ops.maxpool2d(x)`` with this layer's window and stride."""
        return ops.maxpool2d(x, window=self.window, stride=self.stride)


@dataclass(frozen=True)
class Dense(Layer):
    """A fully connected layer (:func:`jaxnet.dense`); flattens its input to ``n_in`` features.

    Maps any input of ``n_in`` values to ``(n_out,)``. Parameters: ``w`` of shape
    ``(n_out, n_in)`` (the seed's layout) and ``b`` of shape ``(n_out,)``.

    Attributes:
        n_in, n_out: input and output sizes, >= 1.
    """

    kind: ClassVar[str] = "dense"
    _ints: ClassVar[dict[str, int]] = {"n_in": 1, "n_out": 1}

    n_in: int
    n_out: int
    name: str | None = None

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{"w": (n_out, n_in), "b": (n_out,)}``."""
        return {"w": (self.n_out, self.n_in), "b": (self.n_out,)}

    def param_arithmetic(self) -> str:
        """``n_in*n_out + n_out = total`` (the report's order), e.g. ``784*10 + 10 = 7850``."""
        return f"{self.n_in}*{self.n_out} + {self.n_out} = {self.param_count()}"

    @property
    def fan_in(self) -> int:
        return self.n_in

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(n_out,)``; ValueError unless the input holds ``n_in`` values."""
        size = math.prod(input_shape)
        if self.n_in != size:
            raise ValueError(
                f"{self._where()}: n_in = {self.n_in} but its input {_shape_str(input_shape)} "
                f"flattens to {size} values"
            )
        return (self.n_out,)

    def describe(self) -> str:
        return f"dense {self.n_in} -> {self.n_out}"

    def apply(self, params: Params | None, x: jax.Array, ops: ModuleType) -> jax.Array:
        return ops.dense(x, params["w"], params["b"])


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
        TypeError: a layer that is not a :class:`Layer` spec.
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
            if not isinstance(layer, Layer):
                raise TypeError(
                    f"Architecture: layer {i} must be a Conv, ReLU, MaxPool or Dense spec, "
                    f"got {layer!r}"
                )
        shape = tuple(self.input_shape)
        if len(shape) != 3:
            raise ValueError(f"Architecture: input_shape must be (H, W, C), got {shape!r}")
        shape = tuple(int_at_least("Architecture: input_shape entries", s, 1) for s in shape)
        int_at_least("Architecture: num_classes", self.num_classes, 2)
        object.__setattr__(self, "input_shape", shape)

        counts: Counter[str] = Counter()
        named = []
        for layer in layers_:
            counts[layer.kind] += 1
            if layer.name is None:
                layer = dataclasses.replace(layer, name=f"{layer.kind}{counts[layer.kind]}")
            named.append(layer)
        duplicates = sorted(n for n, c in Counter(layer.name for layer in named).items() if c > 1)
        if duplicates:
            raise ValueError(f"Architecture: layer names must be unique, repeated: {duplicates}")

        shapes = []
        for layer in named:
            shape = layer.output_shape(shape)
            shapes.append(shape)
        if shape != (self.num_classes,):
            raise ValueError(
                f"{named[-1]._where()} is the last and outputs {_shape_str(shape)}, expected "
                f"num_classes = {self.num_classes} logits"
            )
        object.__setattr__(self, "layers", tuple(named))
        object.__setattr__(self, "output_shapes", tuple(shapes))

    @property
    def parametrised(self) -> tuple[Layer, ...]:
        """The layers that have parameters (conv and dense), in order; the params dict's keys."""
        return tuple(layer for layer in self.layers if layer.param_shapes())


def init(
    arch: Architecture, key: jax.Array, dtype: jnp.dtype = jnp.float32
) -> dict[str, dict[str, jax.Array]]:
    """Initialise the parameters: He-style weights, zero biases, as the assignment's starters do.

    Weights are ``N(0, 1) * sqrt(2 / fan_in)`` (conv ``fan_in = kh * kw * c_in``, dense
    ``n_in``), biases 0. Deterministic in ``key``: the weights of all layers are consecutive
    slices of one standard-normal draw, in layer order. Runs as one jitted computation (one
    compilation per architecture and dtype, not one per weight shape).

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
    shapes = [layer.param_shapes() for layer in arch.parametrised]
    sizes = [math.prod(s["w"]) for s in shapes]
    z = jax.random.normal(key, (sum(sizes),), dtype)
    params, offset = {}, 0
    for layer, s, n in zip(arch.parametrised, shapes, sizes, strict=True):
        params[layer.name] = {
            "w": z[offset : offset + n].reshape(s["w"]) * math.sqrt(2.0 / layer.fan_in),
            "b": jnp.zeros(s["b"], dtype),
        }
        offset += n
    return params


def count_params(arch: Architecture) -> int:
    """The number of trainable parameters of ``arch``: the scalars in ``init(arch, key)``."""
    return sum(layer.param_count() for layer in arch.layers)


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


def parameter_rows(arch: Architecture) -> list[ParamRow]:
    """The parameter table of ``arch`` as data: one :class:`ParamRow` per layer, in order
    (ReLU and pooling included, with 0 parameters)."""
    return [
        ParamRow(layer.name, layer.describe(), shape, layer.param_count(), layer.param_arithmetic())
        for layer, shape in zip(arch.layers, arch.output_shapes, strict=True)
    ]


def parameter_table(arch: Architecture) -> str:
    """The report's parameter table (Tables 1 and 3) of ``arch`` in Markdown, ending in a newline.

    Columns: layer, type, output shape (per sample, ``HxWxC`` or ``n``), trainable parameters
    with their arithmetic (``5*5*1*16 + 16 = 416``). The first row is the input, the last the
    total.
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
        for pname, shape in layer.param_shapes().items():
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
    ops = layer_ops(rules)
    _check_params(arch, params)
    if tuple(x.shape[1:]) != arch.input_shape:  # per image: true under evaluate's vmap too
        raise ValueError(
            f"x must have shape (N, {', '.join(map(str, arch.input_shape))}) for this "
            f"architecture, got images of shape {tuple(x.shape[1:])}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"x must be a floating-point batch, got dtype {x.dtype} (scale uint8 images first, "
            "or let jaxnet.make_train_step / jaxnet.evaluate do it)"
        )
    for layer in arch.layers:
        x = layer.apply(params.get(layer.name), x, ops)
    return x
