"""jaxnet: a small CNN library in JAX whose every gradient is a hand-derived backward rule."""

from jaxnet import architectures, autodiff, parallel
from jaxnet.layers import conv2d, dense, maxpool2d, relu, softmax_cross_entropy
from jaxnet.network import (
    Architecture,
    Conv,
    Dense,
    MaxPool,
    ReLU,
    count_params,
    forward,
    init,
    parameter_rows,
    parameter_table,
)
from jaxnet.optim import momentum
from jaxnet.step import EvalResult, evaluate, loss_fn, make_train_step

__version__ = "0.1.0"

__all__ = [
    "Architecture",
    "Conv",
    "Dense",
    "EvalResult",
    "MaxPool",
    "ReLU",
    "architectures",
    "autodiff",
    "conv2d",
    "count_params",
    "dense",
    "evaluate",
    "forward",
    "init",
    "loss_fn",
    "make_train_step",
    "maxpool2d",
    "momentum",
    "parallel",
    "parameter_rows",
    "parameter_table",
    "relu",
    "softmax_cross_entropy",
]
