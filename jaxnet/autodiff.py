"""The five layers with no custom rule: JAX differentiates their forward passes itself.

Each function here *is* the forward function that the custom-rule layer in :mod:`jaxnet.layers`
wraps, so the two can only differ in their gradients. Compare them with
:mod:`jaxnet.gradcheck` or ``python -m experiments.gradcheck``.
"""

from jaxnet.layers.conv import conv2d_forward as conv2d
from jaxnet.layers.dense import dense_forward as dense
from jaxnet.layers.loss import softmax_cross_entropy_forward as softmax_cross_entropy
from jaxnet.layers.pool import maxpool2d_forward as maxpool2d
from jaxnet.layers.relu import relu_forward as relu

__all__ = ["conv2d", "dense", "maxpool2d", "relu", "softmax_cross_entropy"]
