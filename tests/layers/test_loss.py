import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from layer_helpers import normal, rel_err

from jaxnet import autodiff, softmax_cross_entropy

CONFIGS = [(1, 2), (4, 10), (16, 10), (7, 3), (32, 20)]


def make(config, dtype=jnp.float64, scale=3.0):
    n, k = config
    logits = scale * normal(0, (n, k), dtype)
    labels = jax.random.randint(jax.random.PRNGKey(1), (n,), 0, k)
    return logits, labels


def test_large_logits_stay_finite_in_float32():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]], jnp.float32)
    labels = jnp.array([1, 0])
    loss, grad = jax.value_and_grad(softmax_cross_entropy)(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, 2e4, rtol=1e-6)  # each row: lse - picked = 2e4
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0.0], [-0.5, 0.5, 0.0]], atol=1e-6)


def test_jit_and_vmap(x64, compare_rules):
    logits, labels = make((6, 5))
    zs, ls = jnp.stack([logits, -logits]), jnp.stack([labels, labels[::-1]])
    compare_rules(softmax_cross_entropy, autodiff.softmax_cross_entropy, (zs, ls), (0,), vmap=0)


def test_label_out_of_range_gives_nan():
    loss = softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 3]))
    assert np.isnan(loss)


@pytest.mark.parametrize(
    ("logits", "labels", "error", "match"),
    [
        (jnp.zeros((2, 3)), jnp.zeros(2), TypeError, "labels must be an integer array"),
        (jnp.zeros((2, 3), jnp.int32), jnp.zeros(2, jnp.int32), TypeError, "logits must be a"),
        (jnp.zeros(3), jnp.zeros(1, jnp.int32), ValueError, "logits must have rank 2"),
        (jnp.zeros((2, 3)), jnp.zeros((2, 1), jnp.int32), ValueError, "labels must have rank 1"),
        (jnp.zeros((2, 3)), jnp.zeros(3, jnp.int32), ValueError, r"labels must have shape \(2,\)"),
    ],
)
def test_bad_arguments(logits, labels, error, match):
    with pytest.raises(error, match=match):
        softmax_cross_entropy(logits, labels)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_loss_and_rule_eq29_with_and_without_smoothing(x64, compare_rules, config, eps):
    # loss = -sum_k t_k log p_k averaged over rows, t = (1 - eps) onehot + eps / K (eq. 26 for
    # eps = 0); the rule is eq. 29, (p - t) / N, and it agrees with autodiff of the same forward
    # and with finite differences.
    logits, labels = make(config)
    n, k = config
    target = (1 - eps) * jax.nn.one_hot(labels, k) + eps / k
    log_p = jax.nn.log_softmax(logits)
    ref = -jnp.mean(jnp.sum(target * log_p, axis=1))
    assert rel_err(softmax_cross_entropy(logits, labels, eps), ref) < 1e-14
    assert rel_err(autodiff.softmax_cross_entropy(logits, labels, eps), ref) < 1e-14
    (g,) = compare_rules(
        lambda z, c: softmax_cross_entropy(z, c, eps),
        lambda z, c: autodiff.softmax_cross_entropy(z, c, eps),
        (logits, labels),
        (0,),
    )
    assert g.shape == logits.shape
    dl = jax.grad(softmax_cross_entropy)(logits, labels, eps)
    assert rel_err(dl, (jnp.exp(log_p) - target) / n) < 1e-14
    check_grads(lambda z: softmax_cross_entropy(z, labels, eps), (logits,), order=1, modes=["rev"])


def test_no_smoothing_is_the_reports_loss_bit_for_bit():
    logits, labels = make((16, 10), jnp.float32)
    a = jax.value_and_grad(softmax_cross_entropy)(logits, labels)
    b = jax.value_and_grad(softmax_cross_entropy)(logits, labels, 0.0)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    ("smoothing", "error"), [(1.0, ValueError), (-0.1, ValueError), (True, TypeError)]
)
def test_bad_smoothing(smoothing, error):
    logits, labels = make((4, 10), jnp.float32)
    with pytest.raises(error, match="smoothing"):
        softmax_cross_entropy(logits, labels, smoothing)
