"""experiments.walk: every layer's gradient against autodiff, the probes, the default label."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_folders import image_for, write_run

import jaxnet
from experiments import trained_run, walk
from jaxnet import autodiff

TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.fixture(scope="module", params=["mnist", "cifar10_modified"])
def run(request, tmp_path_factory) -> trained_run.TrainedRun:
    folder = tmp_path_factory.mktemp(request.param) / "run"
    return trained_run.load_run(write_run(folder, request.param))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_layer_gradient_equals_autodiff(run, dtype):
    expl = walk.explain(run, image_for(run.arch), label=3, dtype=dtype)
    tol = TOLERANCE[dtype]
    a, b = expl.analytic, expl.autodiff
    assert len(a.dy) == len(run.arch.layers)
    for i, layer in enumerate(run.arch.layers):
        assert a.dy[i].shape == (1, *run.arch.output_shapes[i]) and a.dy[i].dtype == dtype
        assert relative(a.dy[i], b.dy[i]) < tol, layer.name
        assert relative(a.dx(i), b.dx(i)) < tol, layer.name
    for name in a.dparams:
        for k in ("w", "b"):
            assert relative(a.dparams[name][k], b.dparams[name][k]) < tol, (name, k)
    for absolute, rel in walk.differences(expl):
        assert rel < tol and absolute < tol * 10


def test_the_probes_give_what_jax_derives_through_the_rest_of_the_network(run):
    """Independently of the probes: dL/dy_i is the gradient of the network after layer i."""
    expl = walk.explain(run, image_for(run.arch, 1), label=5)
    arch = run.arch
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), run.params)
        x = jnp.asarray(expl.x)
        logits = jaxnet.forward(arch, params, x, "autodiff")
        np.testing.assert_allclose(expl.analytic.outputs[-1], logits, rtol=1e-13, atol=1e-13)
        for i in range(len(arch.layers)):

            def rest(y, i=i):
                for layer in arch.layers[i + 1 :]:
                    y = layer.apply(params.get(layer.name), y, autodiff)
                return autodiff.softmax_cross_entropy(y, jnp.asarray([5]))

            expected = jax.grad(rest)(jnp.asarray(expl.autodiff.outputs[i]))
            assert relative(expl.analytic.dy[i], expected) < 1e-10, arch.layers[i].name
        dx, dparams = jax.grad(
            lambda x, p: jaxnet.loss_fn(arch, p, x, jnp.asarray([5]), "autodiff"), (0, 1)
        )(x, params)
        assert relative(expl.analytic.dinput, dx) < 1e-10
        for name, grads in dparams.items():
            assert relative(expl.analytic.dparams[name]["w"], grads["w"]) < 1e-10
    assert expl.probabilities.sum() == pytest.approx(1.0)
    assert expl.label == 5


def test_without_a_label_the_network_answer_is_explained(run):
    expl = walk.explain(run, image_for(run.arch, 2))
    assert expl.label == int(np.argmax(expl.probabilities))
