"""What the peers' tests share: a batch with ties, jaxnet's weights after one step, the check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmark.case import MEAN
from experiments.peers import nchw_weights
from jaxnet import init
from jaxnet.step import loss_and_logits, make_train_step

NETS = ["mnist", "cifar10_modified"]
LR, MU, WD = 0.1, 0.9, 5e-3


def batch_with_ties(arch, n=3, seed=0):
    """Random uint8 images and labels; each image's top rows black."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *arch.input_shape), dtype=np.uint8)
    x[:, :4] = 0  # a black band, as real images have: ReLU and pooling ties
    return x, rng.integers(0, arch.num_classes, n).astype(np.int32)


def jaxnet_on_the_batch(arch, x, y):
    """jaxnet's initial weights, the images as the network sees them, its loss and logits."""
    params = init(arch, jax.random.PRNGKey(0))
    xf = jnp.asarray(x / 255.0 - MEAN, jnp.float32)
    loss, logits = loss_and_logits(arch, params, xf, y, "analytic", label_smoothing=0.0)
    return params, xf, float(loss), logits


def jaxnet_after_one_step(arch, optimizer, x, y):
    """jaxnet's weights (NCHW) after one step from its initial weights, and that step's loss."""
    params = init(arch, jax.random.PRNGKey(0))
    step = make_train_step(arch, optimizer, mean=MEAN)
    params, _, metrics = step(params, optimizer.init(params), x, y)
    return nchw_weights(arch, params), float(metrics["loss"])


def assert_same_params(got, expected):
    """The same layers, each weight and bias equal to 1e-5."""
    assert got.keys() == expected.keys()
    for name in expected:
        for a, b in zip(got[name], expected[name], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)
