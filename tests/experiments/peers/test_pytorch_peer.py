"""The PyTorch peer computes jaxnet's network: the same logits and loss, the same first step."""

from __future__ import annotations

import numpy as np
import optax
import peer_helpers as peers
import pytest

from experiments.benchmark.case import MEAN
from jaxnet import architectures, momentum

torch_peer = pytest.importorskip("experiments.peers.pytorch_peer")


@pytest.mark.parametrize("net", peers.NETS)
def test_pytorch_computes_jaxnet_loss_with_the_same_weights(net):
    torch = torch_peer.torch
    arch = architectures.get(net)
    x, y = peers.batch_with_ties(arch)
    params, _, loss_j, logits_j = peers.jaxnet_on_the_batch(arch, x, y)
    model = torch_peer.sequential(arch, params)
    images, _ = torch_peer.batch(x, y)
    logits_t = model(images.float() / 255 - MEAN).detach().numpy()
    np.testing.assert_allclose(logits_t, logits_j, rtol=1e-5, atol=1e-5)
    loss_t = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits_t), torch.from_numpy(y).long()
    )
    assert abs(loss_t.item() - loss_j) < 1e-5


def zero_momentum(optimizer) -> None:
    """Start every momentum buffer at zero, as the seed does (PyTorch's first step copies ``g``)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p]["momentum_buffer"] = torch_peer.torch.zeros_like(p)


@pytest.mark.parametrize("net", peers.NETS)
@pytest.mark.parametrize("weight_decay", [0.0, peers.WD])
def test_pytorch_steps_update_like_jaxnet_or_as_documented(net, weight_decay):
    """SGD(dampening=mu), momentum buffer from zero: the seed's rule without weight decay; with
    it, decay before the average. The hand-written step is the seed's rule exactly."""
    arch = architectures.get(net)
    x, y = peers.batch_with_ties(arch, 4)
    params, _, _, _ = peers.jaxnet_on_the_batch(arch, x, y)
    torch_decay_first = optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.ema(peers.MU, debias=False),
        optax.scale(-peers.LR),
    )
    expected, loss_j = peers.jaxnet_after_one_step(arch, torch_decay_first, x, y)
    model = torch_peer.sequential(arch, params)
    optimizer = torch_peer.sgd(model, peers.LR, peers.MU, weight_decay)
    zero_momentum(optimizer)
    loss, _ = torch_peer.make_train_step(model, optimizer, MEAN)(*torch_peer.batch(x, y))
    pairs = [m for m in model if hasattr(m, "weight")]
    got = {
        layer.name: (m.weight.detach().numpy(), m.bias.detach().numpy())
        for layer, m in zip(arch.parametrised, pairs, strict=True)
    }
    peers.assert_same_params(got, expected)
    assert abs(loss.item() - loss_j) < 1e-5

    expected, _ = peers.jaxnet_after_one_step(
        arch, momentum(peers.LR, peers.MU, weight_decay), x, y
    )
    step, weights = torch_peer.hand_written_step(
        arch, params, peers.LR, peers.MU, weight_decay, mean=MEAN
    )
    step(*torch_peer.batch(x, y))
    got = {name: tuple(t.detach().numpy() for t in pair) for name, pair in weights.items()}
    peers.assert_same_params(got, expected)
