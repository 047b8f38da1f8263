"""The Equinox peer computes jaxnet's network: the same logits and loss, the same first step."""

from __future__ import annotations

import jax
import numpy as np
import peer_helpers as peers
import pytest

from experiments.benchmark.case import MEAN
from jaxnet import architectures, init, momentum

equinox_peer = pytest.importorskip("experiments.peers.equinox_peer")


@pytest.mark.parametrize("net", peers.NETS)
def test_equinox_computes_jaxnet_loss_with_the_same_weights(net):
    arch = architectures.get(net)
    x, y = peers.batch_with_ties(arch)
    params, xf, loss_j, logits_j = peers.jaxnet_on_the_batch(arch, x, y)
    loss_e, logits_e = equinox_peer.loss(
        equinox_peer.CNN(arch, params), xf.transpose(0, 3, 1, 2), y
    )
    np.testing.assert_allclose(logits_e, logits_j, rtol=1e-5, atol=1e-5)
    assert abs(float(loss_e) - loss_j) < 1e-5


@pytest.mark.parametrize("net", peers.NETS)
def test_equinox_step_updates_like_jaxnet(net):
    eqx = equinox_peer.eqx
    arch = architectures.get(net)
    x, y = peers.batch_with_ties(arch, 4)
    optimizer = momentum(peers.LR, peers.MU, peers.WD)
    expected, loss_j = peers.jaxnet_after_one_step(arch, optimizer, x, y)
    model = equinox_peer.CNN(arch, init(arch, jax.random.PRNGKey(0)))
    step = equinox_peer.make_train_step(optimizer, MEAN)
    state = optimizer.init(eqx.filter(model, eqx.is_array))
    model, _, metrics = step(model, state, x.transpose(0, 3, 1, 2), y)
    layers = [m for m in model.layers if isinstance(m, (eqx.nn.Conv2d, eqx.nn.Linear))]
    got = {
        layer.name: (np.asarray(m.weight), np.asarray(m.bias).ravel())
        for layer, m in zip(arch.parametrised, layers, strict=True)
    }
    peers.assert_same_params(got, expected)
    assert abs(float(metrics["loss"]) - loss_j) < 1e-5
