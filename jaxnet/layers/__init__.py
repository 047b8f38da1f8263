"""The five layers, each a pure function with a hand-derived ``jax.custom_vjp`` rule."""

from jaxnet.layers.conv import conv2d, conv2d_forward
from jaxnet.layers.dense import dense, dense_forward
from jaxnet.layers.loss import softmax_cross_entropy, softmax_cross_entropy_forward
from jaxnet.layers.pool import maxpool2d, maxpool2d_forward
from jaxnet.layers.relu import relu, relu_forward

__all__ = [
    "conv2d",
    "conv2d_forward",
    "dense",
    "dense_forward",
    "maxpool2d",
    "maxpool2d_forward",
    "relu",
    "relu_forward",
    "softmax_cross_entropy",
    "softmax_cross_entropy_forward",
]
