import jax
import jax.numpy as jnp
import pytest
from data_files import real_data_root

from experiments import gradcheck as cli
from jaxnet import gradcheck, layers


def test_command_prints_table_and_passes(capsys, tmp_path):
    assert cli.main(["--data-dir", str(tmp_path)]) == 0  # no real data there: those rows left out
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
    assert "network mnist (zero-background images)" in out
    assert "all 13 checks within 1e-10" in out


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
    monkeypatch.setattr(gradcheck, "network_cases", lambda **kwargs: [])
    monkeypatch.setattr(cli, "real_data_cases", lambda *args: ([], []))
    assert cli.main([]) == 1
    assert "FAILED" in capsys.readouterr().out


def _check_loss(name, loss, x) -> gradcheck.Result:
    """One case, ``loss`` as both the custom and the autodiff side, at the float64 point ``x``."""
    with jax.enable_x64(True):
        x = jnp.array(x, jnp.float64)
        (result,) = gradcheck.run([gradcheck.Case(name, loss, loss, (x,), step=1e-3)])
    return result


def relu_sum(x):
    return jnp.sum(layers.relu(x))


def test_kinks_are_counted_not_hidden():
    # relu within a step of its kink: finite differences there are meaningless.
    result = _check_loss("relu at kink", relu_sum, [2e-4, 1e-4, -1e-4, 0.5])
    assert result.fd_kinks + result.fd_coarse == 3
    assert result.fd_checked == 1
    assert result.ok()


def test_kink_at_the_point_is_found_from_one_sided_differences():
    # relu at exactly 0: central differences give 0.5, the rule 0 (the left derivative).
    result = _check_loss("relu at 0", relu_sum, [0.0, 0.0, 0.5, -0.5])
    assert (result.fd_at_kink, result.fd_checked, result.fd_kinks) == (2, 2, 0)
    assert result.err_kink < 1e-12 and result.ok()


def test_a_rule_off_both_one_sided_derivatives_at_a_kink_fails():
    # jnp.maximum's derivative at the tie is 0.5, neither one-sided derivative
    result = _check_loss("maximum at 0", lambda x: jnp.sum(jnp.maximum(x, 0.0)), [0.0, 0.5])
    assert result.fd_at_kink == 1
    assert result.err_kink == pytest.approx(0.5)
    assert not result.ok()


def _zero_background_results():
    with jax.enable_x64(True):
        return gradcheck.run(gradcheck.network_cases(batch=4, fd_samples=6, zero_background=True))


@pytest.mark.slow
def test_networks_on_zero_background_images_agree_with_autodiff():
    images = gradcheck.zero_background_images((28, 28, 1), 4)
    assert (images == 0).mean() > 0.5  # mostly black, as MNIST
    results = _zero_background_results()
    for r in results:
        assert r.err_autodiff <= 1e-10, r
        assert r.ok(), r
    assert sum(r.fd_at_kink for r in results) > 0  # the kinks are there, and counted


@pytest.mark.slow
def test_networks_on_the_real_first_batch(capsys):
    root = real_data_root()
    with jax.enable_x64(True):
        cases, missing = cli.real_data_cases(str(root), steps=20, batch=16)
    assert missing == [] and len(cases) == 6
    results = gradcheck.run(cases)
    for r in results:
        assert r.err_autodiff <= 1e-10, r
        assert r.ok(), r
    at_init = [r for r in results if "at initialisation" in r.name]
    assert sum(r.fd_at_kink for r in at_init) > 0
