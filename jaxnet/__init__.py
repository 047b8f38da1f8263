"""jaxnet: a small CNN library in JAX whose every gradient is a hand-derived backward rule."""

from jaxnet import autodiff
from jaxnet.layers import conv2d, dense, maxpool2d, relu, softmax_cross_entropy

__version__ = "0.1.0"

__all__ = [
    "autodiff",
    "conv2d",
    "dense",
    "maxpool2d",
    "relu",
    "softmax_cross_entropy",
]
