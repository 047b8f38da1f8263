"""The five layers with no custom rule: JAX differentiates their forward passes itself.

Each function here is the forward function that the custom-rule layer in :mod:`jaxnet.layers`
wraps, so the two differ only in how the gradient is found. What holds, exactly:

- ``dense``, ``relu``, ``maxpool2d``, ``softmax_cross_entropy``: the rule's forward *is* this
  function, in every dtype and on every backend.
- ``conv2d`` in float64, on GPU or TPU, under a mesh, with ``JAXNET_CONV=xla`` or without the
  oneDNN extension: likewise the same function (XLA's convolution).
- ``conv2d`` in float32 on the CPU with the oneDNN extension: the rule's forward runs oneDNN
  (:func:`jaxnet.backends.onednn.pick`), this twin XLA's convolution. The values agree to
  float rounding (the tests check 1e-5), not bit for bit.

So where the forward is one function the two gradients agree up to the rounding of the backward
pass alone, ties and zeros included; in float32 on the CPU with oneDNN they agree to rounding
(a near-tie in a pooling window, or a ReLU input near 0, may round to the other side). Compare
them with :mod:`jaxnet.gradcheck` or ``python -m experiments.gradcheck``.
"""

from jaxnet.layers.conv import conv2d_forward as conv2d
from jaxnet.layers.dense import dense_forward as dense
from jaxnet.layers.loss import softmax_cross_entropy_forward as softmax_cross_entropy
from jaxnet.layers.pool import maxpool2d_forward as maxpool2d
from jaxnet.layers.relu import relu_forward as relu

__all__ = ["conv2d", "dense", "maxpool2d", "relu", "softmax_cross_entropy"]
