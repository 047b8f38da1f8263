"""The network in Equinox, as its users write it (Equinox's "CNN on MNIST" example).

An ``eqx.Module`` holding a list of layers (``eqx.nn.Conv2d``, ``jax.nn.relu``,
``eqx.nn.MaxPool2d``, ``jnp.ravel``, ``eqx.nn.Linear``) applied to one ``(C, H, W)`` image and
mapped over the batch with ``jax.vmap``; the loss
``optax.softmax_cross_entropy_with_integer_labels``; one ``eqx.filter_jit`` step of
``eqx.filter_value_and_grad``, the optimizer update and ``eqx.apply_updates``. The optimizer
is jaxnet's own :func:`jaxnet.momentum` and the uint8 images are scaled inside the step, as
jaxnet's step does, so the two do the same work.
``eqx.nn.MaxPool2d`` is ``lax.reduce_window``, whose gradient XLA runs as select-and-scatter.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from experiments.peers import nchw_layers
from jaxnet.network import Architecture, Conv, Dense, MaxPool


class CNN(eqx.Module):
    """The architecture's layers in Equinox, with jaxnet's weights (:func:`jaxnet.init`)."""

    layers: list  # Equinox modules and plain functions, applied in order to one image

    def __init__(self, arch: Architecture, params: dict) -> None:
        self.layers = []
        key = jax.random.PRNGKey(0)  # Equinox's own initial weights are replaced by jaxnet's
        for layer, flatten, weights in nchw_layers(arch, params):
            if isinstance(layer, Conv):
                module = eqx.nn.Conv2d(
                    layer.c_in, layer.c_out, (layer.kh, layer.kw), layer.stride,
                    layer.padding, key=key,
                )  # fmt: skip
            elif isinstance(layer, Dense):
                module = eqx.nn.Linear(layer.n_in, layer.n_out, key=key)
            elif isinstance(layer, MaxPool):
                module = eqx.nn.MaxPool2d(layer.window, layer.stride)
            else:
                module = jax.nn.relu
            if weights is not None:  # a conv bias is (C_out, 1, 1) in Equinox
                w, b = (jnp.asarray(a) for a in weights)
                bias = b.reshape(module.bias.shape)
                module = eqx.tree_at(lambda m: (m.weight, m.bias), module, (w, bias))
            self.layers += [jnp.ravel, module] if flatten else [module]

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(num_classes,)`` of one float image ``x (C, H, W)``."""
        for layer in self.layers:
            x = layer(x)
        return x


def loss(model: CNN, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy of a float batch ``x (N, C, H, W)``, labels ``y (N,)``; and logits."""
    logits = jax.vmap(model)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


def make_train_step(
    optimizer: optax.GradientTransformation, mean: float, scale: float = 1 / 255
) -> Callable:
    """One jitted train step, as in Equinox's examples (``x * scale - mean`` inside it).

    Returns:
        ``step(model, opt_state, x, y) -> (model, opt_state, {"loss", "accuracy"})`` for uint8
        ``x (N, C, H, W)``, integer ``y (N,)`` and
        ``opt_state = optimizer.init(eqx.filter(model, eqx.is_array))``.
    """

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        x = x.astype(jnp.float32) * scale - mean
        (value, logits), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        model = eqx.apply_updates(model, updates)
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y)
        return model, opt_state, {"loss": value, "accuracy": accuracy}

    return step
