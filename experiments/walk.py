"""One image walked forward and backward through a trained network, with the analytic rules
and with autodiff: the numbers :mod:`experiments.explain` prints and draws and its page shows.

Every layer's dL/dy comes from one ``jax.grad`` call: a zero *probe* is added to each layer's
output, ``y_i = layer_i(y_{i-1}) + p_i``, and the loss is differentiated with respect to the
probes (and the input and parameters). Adding zero changes no value, and ``dL/dp_i = dL/dy_i``
exactly, so the analytic rules run unchanged and one backward pass yields every layer's
incoming gradient; what layer ``i`` passes on, its dL/dx, is layer ``i-1``'s dL/dy (the input
gradient for the first layer). The same is done with the autodiff twins and the two compared
(:func:`differences`); :func:`table` turns the walk into the rows the command prints and the
page shows, computed once for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any, NamedTuple

import numpy as np

from experiments.trained_run import TrainedRun, network_input


@dataclass(frozen=True)
class Walk:
    """One forward and backward pass through the network with one rule set.

    Attributes:
        loss: the loss of the chosen label.
        outputs: each layer's output ``y_i``, ``(1, *arch.output_shapes[i])``.
        dy: each layer's incoming gradient ``dL/dy_i``, shaped as ``outputs[i]``.
        dinput: ``dL/dx`` of the network's input, ``(1, H, W, C)``.
        dparams: ``dL/dW`` and ``dL/db`` of every parametrised layer, as the params.
    """

    loss: float
    outputs: list[np.ndarray]
    dy: list[np.ndarray]
    dinput: np.ndarray
    dparams: dict[str, dict[str, np.ndarray]]

    def dx(self, i: int) -> np.ndarray:
        """What layer ``i`` passes back: the previous layer's dL/dy, or the input gradient."""
        return self.dy[i - 1] if i > 0 else self.dinput


@dataclass(frozen=True)
class Explanation:
    """An image's walk through the network, analytic rules and autodiff side by side.

    Attributes:
        run: the run.
        image: the uint8 image as the network sees it, ``arch.input_shape``.
        x: the prepared input ``(1, H, W, C)`` (``image * scale - mean``).
        label: the class whose loss is differentiated.
        probabilities: ``(K,)`` softmax of the logits.
        analytic: the walk with the hand-written rules.
        autodiff: the same walk with JAX autodiff of the same forward functions.
        dtype: the floating dtype of the walk.
    """

    run: TrainedRun
    image: np.ndarray
    x: np.ndarray
    label: int
    probabilities: np.ndarray
    analytic: Walk
    autodiff: Walk
    dtype: np.dtype


def _probed_loss(arch, ops, params, x, probes, *, label):
    """The loss, with a zero probe added to each layer's output; also returns the outputs."""
    outputs = []
    for layer, probe in zip(arch.layers, probes, strict=True):
        x = layer.apply(params.get(layer.name), x, ops) + probe
        outputs.append(x)
    return ops.softmax_cross_entropy(x, label), outputs


@cache
def _gradient(arch: Any, rules: str) -> Callable:
    """``(params, x, probes, label=) -> ((loss, outputs), (dparams, dx, dprobes))``, jitted."""
    import jax

    from jaxnet.network import layer_ops

    loss = partial(_probed_loss, arch, layer_ops(rules))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def walk(arch: Any, params: dict, x: Any, label: int, rules: str) -> Walk:
    """Forward and backward through ``arch`` for one prepared image ``x`` ``(1, H, W, C)``, in
    one jax.grad call: the loss of ``label`` with the ``rules`` ``"analytic"``
    (:mod:`jaxnet.layers`) or ``"autodiff"`` (:mod:`jaxnet.autodiff`); ``params`` in the dtype of
    ``x``. The :class:`Walk` holds NumPy arrays."""
    import jax
    import jax.numpy as jnp

    probes = [jnp.zeros((1, *shape), x.dtype) for shape in arch.output_shapes]
    labels = jnp.asarray([label], jnp.int32)
    (loss, outputs), (dparams, dinput, dy) = _gradient(arch, rules)(params, x, probes, label=labels)
    to_np = partial(jax.tree.map, np.asarray)
    return Walk(float(loss), to_np(outputs), to_np(dy), np.asarray(dinput), to_np(dparams))


def explain(
    run: TrainedRun, image: np.ndarray, label: int | None = None, dtype: Any = np.float64
) -> Explanation:
    """Walk one uint8 image through the run's network, analytic rules and autodiff.

    Args:
        run: the run (:func:`experiments.trained_run.load_run`).
        image: uint8 ``arch.input_shape``, as the data loaders or :func:`jaxnet.images.read`
            give it.
        label: the class whose loss is differentiated; ``None``: the network's answer.
        dtype: ``np.float64`` (the parameters are widened; x64 is on for the call) or
            ``np.float32``.
    """
    import jax
    import jax.numpy as jnp

    dtype = np.dtype(dtype)
    with jax.enable_x64(dtype == np.float64):
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), run.params)
        x = network_input(run, image[None], dtype)
        if label is None:
            from jaxnet.network import forward

            label = int(jnp.argmax(forward(run.arch, params, x)[0]))
        analytic = walk(run.arch, params, x, label, "analytic")
        autodiff = walk(run.arch, params, x, label, "autodiff")
        probabilities = np.asarray(jax.nn.softmax(analytic.outputs[-1][0]), np.float64)
        return Explanation(
            run, image, np.asarray(x), label, probabilities, analytic, autodiff, dtype
        )


def differences(expl: Explanation) -> list[tuple[float, float]]:
    """Per layer, the worst absolute and relative difference of the rules from autodiff.

    Over what the layer's backward rule computes: its dL/dx and, for conv and dense layers,
    dL/dW and dL/db. Relative: ``max |a - b| / max |b|`` (:func:`jaxnet.gradcheck.relative_error`),
    the worst of those arrays.

    Returns:
        ``[(absolute, relative), ...]``, one per layer in forward order, then one for the loss
        (its dL/dz, the last layer's dL/dy).
    """
    from jaxnet.gradcheck import relative_error

    def worst(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
        absolute = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)
        return absolute, relative_error([x for x, _ in pairs], [y for _, y in pairs])

    a, b = expl.analytic, expl.autodiff
    out = []
    for i, layer in enumerate(expl.run.arch.layers):
        pairs = [(a.dx(i), b.dx(i))]
        if layer.name in a.dparams:
            pairs += [(a.dparams[layer.name][k], b.dparams[layer.name][k]) for k in ("w", "b")]
        out.append(worst(pairs))
    out.append(worst([(a.dy[-1], b.dy[-1])]))
    return out


def _shape(a: np.ndarray) -> str:
    return "x".join(map(str, a.shape[1:]))


class ForwardRow(NamedTuple):
    """One line of the forward table, as printed: the layer, its kind, output shape and range."""

    name: str
    kind: str
    shape: str
    min: str
    max: str


class BackwardRow(NamedTuple):
    """One line of the backward table, as printed (``"-"`` where the loss has no dL/dy).

    ``absolute`` and ``relative`` are :func:`differences` formatted to two digits.
    """

    name: str
    receives: str
    dy_max: str
    passes: str
    dx_max: str
    absolute: str
    relative: str


class Table(NamedTuple):
    """The numbers the command prints, as strings: one computation for the table and the page.

    Attributes:
        forward: ``input``, then one row per layer in forward order.
        answer: the top three classes and their probabilities, ``"7 99.12%, ..."``.
        backward: ``loss``, then one row per layer in backward order.
        differences: :func:`differences` itself (floats), per layer in forward order, then the
            loss.
    """

    forward: list[ForwardRow]
    answer: str
    backward: list[BackwardRow]
    differences: list[tuple[float, float]]


def table(expl: Explanation) -> Table:
    """The printed table's rows, computed once for :func:`experiments.explain.format_table` and
    the HTML page (:mod:`experiments.explain_page`)."""
    from jaxnet.network import parameter_rows

    arch, a = expl.run.arch, expl.analytic
    names = expl.run.class_names
    kinds = [row.kind for row in parameter_rows(arch)]
    rows = [("input", "image * scale - mean", expl.x)]
    rows += zip([layer.name for layer in arch.layers], kinds, a.outputs, strict=True)
    forward = [ForwardRow(n, k, _shape(y), f"{y.min():.4g}", f"{y.max():.4g}") for n, k, y in rows]
    top = np.argsort(-expl.probabilities, kind="stable")[:3]
    answer = ", ".join(f"{names[c]} {expl.probabilities[c]:.2%}" for c in top)

    diffs = differences(expl)

    def backward_row(name: str, dy: np.ndarray | None, dx: np.ndarray, diff: tuple) -> BackwardRow:
        receives = ("-", "-") if dy is None else (_shape(dy), f"{np.abs(dy).max():.3e}")
        passes = (_shape(dx), f"{np.abs(dx).max():.3e}")
        return BackwardRow(name, *receives, *passes, f"{diff[0]:.1e}", f"{diff[1]:.1e}")

    backward = [backward_row("loss", None, a.dy[-1], diffs[-1])]
    for i in reversed(range(len(arch.layers))):
        backward.append(backward_row(arch.layers[i].name, a.dy[i], a.dx(i), diffs[i]))
    return Table(forward, answer, backward, diffs)
