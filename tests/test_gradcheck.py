import jax
import jax.numpy as jnp
import pytest

from experiments import gradcheck as cli
from jaxnet import gradcheck, layers


def test_command_prints_table_and_passes(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in (
        "dense",
        "relu",
        "softmax_cross_entropy",
        "conv2d",
        "maxpool2d",
        "network conv",
        "network mnist",
        "network cifar10_baseline",
        "network cifar10_modified",
    ):
        assert f"| {name}" in out
    assert "all 10 checks within 1e-10" in out


@jax.custom_vjp
def _wrong_relu(x):
    return layers.relu(x)


def _wrong_relu_fwd(x):
    return layers.relu(x), x


def _wrong_relu_bwd(x, g):
    return (jnp.where(x > 0, g, 0.0) * 1.001,)  # off by 0.1 %


_wrong_relu.defvjp(_wrong_relu_fwd, _wrong_relu_bwd)


def _wrong_case():
    x = jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float64).reshape(3, 4) + 0.01
    return gradcheck.Case(
        "wrong relu",
        lambda x: jnp.sum(_wrong_relu(x) ** 2),
        lambda x: jnp.sum(layers.relu(x) ** 2),
        (x,),
        step=1e-3,
    )


def test_a_wrong_rule_is_caught():
    with jax.enable_x64(True):
        (result,) = gradcheck.run([_wrong_case()])
    assert result.err_autodiff == pytest.approx(1e-3, rel=1e-6)
    assert result.err_fd == pytest.approx(1e-3 / 1.001, rel=1e-6)  # scaled by the custom grad
    assert not result.ok()
    assert "NO" in gradcheck.format_table([result])


def test_command_fails_on_a_wrong_rule(monkeypatch, capsys):
    monkeypatch.setattr(gradcheck, "layer_cases", lambda: [_wrong_case()])
    monkeypatch.setattr(gradcheck, "network_cases", lambda: [])
    assert cli.main([]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_kinks_are_counted_not_hidden():
    # relu within a step of its kink: finite differences there are meaningless.
    with jax.enable_x64(True):
        x = jnp.array([2e-4, 1e-4, -1e-4, 0.5], jnp.float64)
        case = gradcheck.Case(
            "relu at kink",
            lambda x: jnp.sum(layers.relu(x)),
            lambda x: jnp.sum(layers.relu(x)),
            (x,),
            step=1e-3,
        )
        (result,) = gradcheck.run([case])
    assert result.fd_kinks + result.fd_coarse == 3
    assert result.fd_checked == 1
    assert result.ok()
