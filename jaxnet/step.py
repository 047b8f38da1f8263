"""The loss, the one train-step body, and evaluation over a whole set.

:func:`preprocess` is the one image preprocessing; :func:`train_step` the one body of every train
step (:func:`make_train_step` jits it; the fit loop calls it inside its own step);
:func:`evaluate` runs a set of any size in fixed, padded batches, compiling once per batch size.
With ``mesh=`` both run data-parallel (:mod:`jaxnet.parallel`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxnet import parallel
from jaxnet._validate import int_at_least
from jaxnet.network import Architecture, forward, layer_ops

Params = dict[str, dict[str, jax.Array]]
Metrics = dict[str, jax.Array]
TrainStep = Callable[
    [Params, optax.OptState, jax.Array, jax.Array], tuple[Params, optax.OptState, Metrics]
]


def _check_mean(arch: Architecture, mean: object) -> np.ndarray:
    """``mean`` as a float64 NumPy array of shape ``()`` or ``(C,)``; ValueError otherwise."""
    try:
        m = np.asarray(mean, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"mean must be a float or a (C,) array of floats, got {mean!r}") from None
    c = arch.input_shape[2]
    if m.shape not in ((), (c,)):
        raise ValueError(
            f"mean must be a scalar or have shape ({c},) (one per channel), got shape {m.shape}"
        )
    if not np.all(np.isfinite(m)):
        raise ValueError(f"mean must be finite, got {mean!r}")
    return m


def _params_dtype(params: Params) -> jnp.dtype:
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("params must hold at least one array")
    return jnp.result_type(leaves[0])


def preprocess(
    x: jax.Array, mean: jax.Array | float, scale: jax.Array | float, dtype: jnp.dtype
) -> jax.Array:
    """The one image preprocessing: uint8 pixels times ``scale``, minus ``mean``.

    ``scale`` 1/255 maps pixels to ``[0, 1]`` (the MNIST starter), 1 keeps raw values (the
    CIFAR-10 starter). A floating batch is taken as already prepared and returned unchanged.

    Args:
        x: ``(N, H, W, C)``, uint8 or floating point.
        mean: a scalar or a per-channel ``(C,)`` mean, in units of the scaled image.
        scale: the factor applied to uint8 pixel values before the mean is subtracted.
        dtype: the floating dtype of the result (the params' dtype) for uint8 input.

    Returns:
        ``(N, H, W, C)`` floating point: ``x.astype(dtype) * scale - mean`` for uint8 ``x``.

    Raises:
        TypeError: ``x`` is an integer batch other than uint8.
    """
    if x.dtype == jnp.uint8:
        return x.astype(dtype) * jnp.asarray(scale, dtype) - jnp.asarray(mean, dtype)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a uint8 or floating-point batch, got dtype {x.dtype}")
    return x


def loss_and_logits(
    arch: Architecture,
    params: Params,
    x: jax.Array,
    y: jax.Array,
    rules: str,
    *,
    label_smoothing: float,
) -> tuple[jax.Array, jax.Array]:
    """``(loss, logits)``: :func:`loss_fn`'s scalar loss and the ``(N, num_classes)`` logits."""
    logits = forward(arch, params, x, rules)
    return layer_ops(rules).softmax_cross_entropy(logits, y, label_smoothing), logits


def loss_fn(
    arch: Architecture,
    params: Params,
    x: jax.Array,
    y: jax.Array,
    rules: str = "analytic",
    *,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """The mean softmax cross-entropy of a batch: differentiate it with ``jax.grad(..., 1)``.

    Args:
        params: ``{layer name: {"w": ..., "b": ...}}`` as from :func:`jaxnet.init`.
        x: a float batch ``(N, H, W, C)`` in the params' dtype.
        y: integer labels ``(N,)`` in ``[0, num_classes)``.
        rules: ``"analytic"`` or ``"autodiff"``, for every layer and the loss.
        label_smoothing: ``eps`` in ``[0, 1)``: targets ``(1 - eps) onehot + eps / K``.

    Returns:
        The scalar mean loss, in the params' dtype.
    """
    return loss_and_logits(arch, params, x, y, rules, label_smoothing=label_smoothing)[0]


def train_step(
    arch: Architecture,
    params: Params,
    opt_state: optax.OptState,
    x: jax.Array,
    y: jax.Array,
    *,
    optimizer: optax.GradientTransformation,
    rules: str,
    mean: np.ndarray | jax.Array,
    scale: float,
    label_smoothing: float = 0.0,
    diagnostics: bool = False,
) -> tuple[Params, optax.OptState, Metrics]:
    """The one train-step body: preprocess, loss and gradient, optimizer update (traceable).

    Args:
        arch, optimizer, rules, mean, scale: as :func:`make_train_step`.
        params: ``{layer name: {"w", "b"}}``; opt_state: the optimizer's state for them.
        x: ``(B, H, W, C)`` uint8 images or an already prepared float batch.
        y: ``(B,)`` integer labels.
        label_smoothing: as :func:`loss_fn` (the metrics' loss is the smoothed one).
        diagnostics: also return :func:`layer_diagnostics` of this step (a Python bool:
            a separate compiled step, so the steps without them pay nothing).

    Returns:
        ``(params, opt_state, {"loss": (), "accuracy": ()})``, the metrics of the batch before
        the update; with ``diagnostics``, also ``"grad_norm"`` and ``"update_ratio"``, each
        ``(L,)`` over ``arch.parametrised``.
    """
    x = preprocess(x, mean, scale, _params_dtype(params))
    (loss, logits), grads = jax.value_and_grad(
        lambda p: loss_and_logits(arch, p, x, y, rules, label_smoothing=label_smoothing),
        has_aux=True,
    )(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    metrics = {"loss": loss}
    if diagnostics:
        metrics.update(layer_diagnostics(arch, grads, updates, params))
    params = optax.apply_updates(params, updates)
    metrics["accuracy"] = jnp.mean(jnp.argmax(logits, axis=-1) == y).astype(logits.dtype)
    return params, opt_state, metrics


def layer_diagnostics(
    arch: Architecture, grads: Params, updates: Params, params: Params
) -> dict[str, jax.Array]:
    """Per parametrised layer, the gradient norm and the update-to-weight ratio (traceable).

    For each layer of ``arch.parametrised``, in order, and its weights ``w`` only (not ``b``):

    - ``grad_norm``: ``||dL/dw||``, the Frobenius (L2) norm of the batch loss's gradient;
    - ``update_ratio``: ``||delta w|| / ||w||``, the norm of the optimizer's update (what the
      step adds to ``w``: ``w_new - w``, momentum, weight decay and learning rate included)
      over the norm of the weights before the update (``inf`` or NaN if ``w`` is all zero).

    Args:
        grads, updates, params: ``{layer name: {"w", "b"}}`` pytrees of one step.

    Returns:
        ``{"grad_norm": (L,), "update_ratio": (L,)}`` float32, ``L = len(arch.parametrised)``.
    """
    names = [layer.name for layer in arch.parametrised]

    def norms(tree: Params) -> jax.Array:
        return jnp.stack([jnp.linalg.norm(tree[n]["w"].astype(jnp.float32)) for n in names])

    return {"grad_norm": norms(grads), "update_ratio": norms(updates) / norms(params)}


def make_train_step(
    arch: Architecture,
    optimizer: optax.GradientTransformation,
    rules: str = "analytic",
    mean: float | np.ndarray = 0.0,
    *,
    mesh: Mesh | int | None = None,
    scale: float = 1 / 255,
    label_smoothing: float = 0.0,
) -> TrainStep:
    """Build the jitted train step: loss, gradient, optimizer update and new params in one region.

    The returned ``step(params, opt_state, x, y) -> (params, opt_state, metrics)`` takes
    ``(B, H, W, C)`` uint8 images (preprocessed inside the jit) or a prepared float batch and
    ``(B,)`` labels; donates ``params`` and ``opt_state`` (carry on with the returned ones);
    returns ``{"loss": (), "accuracy": ()}`` of the batch before the update, as jax scalars (no
    host sync); and compiles once per input shape and dtype.

    With a ``mesh`` of ``D`` devices, ``B`` (a multiple of ``D``, checked by each call) is split
    ``B / D`` rows per device, params and optimizer state are replicated (by the first call), and
    the update equals the one-device update up to float reduction order (``step.mesh``;
    ``step.jitted`` is the sharded jit, for ``lower``). On several processes, pass
    ``jaxnet.parallel.shard_batch(local rows)`` and ``jaxnet.parallel.replicate(...)`` instead.

    Args:
        optimizer: any optax ``GradientTransformation`` (:func:`jaxnet.momentum`, ``optax.adam``).
        rules: ``"analytic"`` or ``"autodiff"``.
        mean: subtracted after scaling: a float or a per-channel ``(C,)`` array.
        mesh: ``None`` (one device), a data mesh, or a device count ``D``.
        scale: the factor applied to uint8 pixels before ``mean`` is subtracted.
        label_smoothing: as :func:`loss_fn`.

    Raises:
        ValueError: an unknown ``rules``, a ``mean`` of the wrong shape, a bad mesh; from the
            step with a mesh, a batch size that does not divide over it.
        TypeError: ``arch``, ``optimizer`` or ``mesh`` of the wrong kind.
    """
    if not isinstance(arch, Architecture):
        raise TypeError(f"arch must be an Architecture, got {type(arch).__name__}")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    layer_ops(rules)  # ValueError for an unknown rules, before any tracing
    mean_np = _check_mean(arch, mean)

    step = partial(
        train_step,
        arch,
        optimizer=optimizer,
        rules=rules,
        mean=mean_np,
        scale=scale,
        label_smoothing=label_smoothing,
    )
    if mesh is None:
        return jax.jit(step, donate_argnums=(0, 1))
    mesh = parallel.as_mesh(mesh)
    rep, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    jitted = jax.jit(
        parallel.partitionable(step),
        in_shardings=(rep, rep, batch, batch),
        out_shardings=(rep, rep, rep),
        donate_argnums=(0, 1),
    )
    return _DataParallelStep(jitted, mesh)


class _DataParallelStep:
    """The sharded step ``jitted`` (for ``lower``, ``trace``, its cache) behind a batch-size check.

    The first call replicates ``params`` and ``opt_state`` over ``mesh``: the jit keys its cache
    on each argument's sharding, so single-device arrays and then replicated ones would compile
    twice.
    """

    def __init__(self, jitted: Callable, mesh: Mesh) -> None:
        self.jitted, self.mesh, self._replicated = jitted, mesh, False

    def __call__(
        self, params: Params, opt_state: optax.OptState, x: jax.Array, y: jax.Array
    ) -> tuple[Params, optax.OptState, Metrics]:
        parallel.check_batch(x.shape[0], self.mesh.size)
        if not self._replicated:  # later calls get the step's own (replicated) outputs
            self._replicated = True
            params, opt_state = parallel.replicate((params, opt_state), self.mesh)
        return self.jitted(params, opt_state, x, y)


class EvalResult(NamedTuple):
    """What :func:`evaluate` returns.

    Attributes:
        predictions: ``(N,)`` int64 NumPy array, the arg-max class of each example.
        loss: the mean softmax cross-entropy over the ``N`` examples.
        accuracy: the fraction of ``predictions`` equal to the labels.
    """

    predictions: np.ndarray
    loss: float
    accuracy: float


def predict_logits(
    arch: Architecture, params: Params, x: jax.Array, rules: str = "analytic", flip: bool = False
) -> jax.Array:
    """The logits a trained network gives a prepared batch ``(N, H, W, C)``: ``(N, K)``.

    With ``flip`` (test-time augmentation, for photographs) they are the mean of the logits of
    each image and of its left-right mirror image.
    """
    logits = forward(arch, params, x, rules)
    if flip:
        logits = (logits + forward(arch, params, x[:, :, ::-1], rules)) / 2
    return logits


def _eval_batch_impl(how, params, batch, prep):
    """Summed loss over the ``valid`` rows ``()`` and predictions ``(B,)`` of one batch.

    ``how = (arch, rules, flip)`` is static, ``batch = (x, y, valid)`` split over a mesh's
    devices, ``prep = (mean, scale)`` replicated. Each example runs alone (a batch of one), so
    its result does not depend on its neighbours; with ``flip`` its logits are the mean of the
    image's and its mirror image's.
    """
    (arch, rules, flip), (x, y, valid), (mean, scale) = how, batch, prep
    x = preprocess(x, mean, scale, _params_dtype(params))
    logits = jax.vmap(lambda xi: predict_logits(arch, params, xi[None], rules, flip)[0])(x)
    loss = layer_ops(rules).softmax_cross_entropy
    losses = jax.vmap(lambda li, yi: loss(li[None], yi[None]))(logits, y)
    loss_sum = jnp.sum(jnp.where(valid, losses, jnp.zeros((), losses.dtype)))
    return loss_sum, jnp.argmax(logits, axis=-1)


@cache
def _eval_batch(mesh: Mesh | None) -> Callable:
    """:func:`_eval_batch_impl` jitted; with a mesh, split over it and its results replicated
    (readable on every process)."""
    if mesh is None:
        return jax.jit(_eval_batch_impl, static_argnums=0)
    rep, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(
        parallel.partitionable(_eval_batch_impl),
        static_argnums=0,
        in_shardings=(rep, (batch, batch, batch), (rep, rep)),
        out_shardings=(rep, rep),
    )


def evaluate(
    arch: Architecture,
    params: Params,
    x: np.ndarray | jax.Array,
    y: np.ndarray | jax.Array,
    *,
    batch_size: int = 500,
    mean: float | np.ndarray = 0.0,
    rules: str = "analytic",
    mesh: Mesh | int | None = None,
    scale: float = 1 / 255,
    flip: bool = False,
) -> EvalResult:
    """Predictions, mean loss and accuracy of the network over a whole set.

    Batches of ``batch_size`` (the last padded and masked: one compilation per batch size and
    dtypes) go to the device one at a time, so a uint8 set stays uint8 on the host. With a
    ``mesh`` each batch is split over its devices; on several processes each passes the whole
    set, copies only its devices' rows and gets the whole result.

    Args:
        params: ``{layer name: {"w": ..., "b": ...}}``.
        x: ``(N, H, W, C)`` uint8 images or a prepared float batch, ``N >= 1``.
        y: ``(N,)`` integer labels in ``[0, num_classes)``.
        batch_size: examples per compiled batch, >= 1 (a multiple of the mesh's size).
        mean, rules, mesh, scale: as :func:`make_train_step`.
        flip: test-time augmentation: each example's logits are the mean of the image's and of
            its left-right mirror image's (for photographs, not digits).

    Returns:
        An :class:`EvalResult`: ``predictions (N,)``, ``loss``, ``accuracy``.

    Raises:
        ValueError: an empty set, ``y`` not one label per image, a ``batch_size`` < 1, a bad
            ``mean``, a bad mesh, or a ``batch_size`` that does not divide over the mesh; from
            the first batch, images the network does not take or a bad ``rules``
            (:func:`jaxnet.forward` checks them).
        TypeError: non-integer labels, images neither uint8 nor floating point
            (:func:`preprocess`), or a ``batch_size`` that is not an int.
    """
    mean_np = _check_mean(arch, mean)
    batch_size = int_at_least("batch_size", batch_size, 1)
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"y must hold integer labels, got dtype {y.dtype}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("cannot evaluate an empty set (x has 0 examples)")

    xp = np if isinstance(x, np.ndarray) else jnp
    dtype = _params_dtype(params)
    prep = (mean_np.astype(dtype), np.asarray(scale, dtype))
    if mesh is not None:
        mesh = parallel.as_mesh(mesh)  # each batch put: shard_global checks it divides
        params, prep = parallel.replicate((params, prep), mesh)
    sums, preds = [], []
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        valid, pad = np.arange(batch_size) < len(xb), batch_size - len(xb)
        if pad:
            xb = xp.concatenate([xb, xp.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = xp.concatenate([yb, xp.zeros((pad,), yb.dtype)])
        batch = (xb, yb, valid)
        if mesh is not None:  # committed and sharded, NumPy or JAX (one trace); on several
            # processes each puts only its own devices' rows
            batch = tuple(parallel.shard_global(a, mesh) for a in batch)
        loss_sum, pred = _eval_batch(mesh)((arch, rules, bool(flip)), params, batch, prep)
        sums.append(loss_sum)
        preds.append(pred)
    predictions = np.asarray(jnp.concatenate(preds))[:n].astype(np.int64)
    loss = float(jnp.sum(jnp.stack(sums))) / n
    accuracy = float(np.mean(predictions == np.asarray(y)))
    return EvalResult(predictions, loss, accuracy)
