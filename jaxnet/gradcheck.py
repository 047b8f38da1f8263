"""Check every custom backward rule against JAX autodiff and central finite differences.

Each case is a scalar function ``L(args)`` differentiated three ways in float64: by the analytic
rules (the ``jax.custom_vjp`` layers of :mod:`jaxnet.layers`), by JAX autodiff of the very same
forward functions (:mod:`jaxnet.autodiff`), and by finite differences, one coordinate at a time.
An error is relative: the largest absolute difference over the largest entry of the reference
gradient, the worst over all arguments.

To resolve 1e-10 in float64 the estimate is Richardson-extrapolated central differences,
``R(h) = (4 D(h/2) - D(h)) / 3`` with ``D(t) = (L(x + t) - L(x - t)) / 2t``: truncation error
``O(h^4)``, rounding error about ``eps |L| / h``. Each coordinate is one of four kinds, each
counted in the table, never silently left out:

- checked: ``R(h)`` and ``R(h/2)`` agree to the tolerance;
- to rounding noise: they agree only to the rounding noise ``16 eps |L| / h`` (a parameter whose
  gradient is tiny next to the loss): checked at that noise;
- at a kink: a kink exactly at the point (a ReLU input of exactly 0, as a zero bias on a black
  background gives, or a pooling window of equal values), where every central step gives the
  mean of the two slopes. The one-sided differences ``(L(x + t) - L(x)) / t`` and
  ``(L(x) - L(x - t)) / t`` (Richardson-extrapolated, ``O(h^2)``) both converge, to different
  slopes; the rule must equal one of them (the subgradient its convention takes: step(0) = 0,
  ties to the first maximum) to ``KINK_TOLERANCE``;
- skipped: a kink within the step (ReLU, max pooling), where no estimate converges.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import architectures, autodiff, layers
from jaxnet.network import init
from jaxnet.step import loss_fn, preprocess

TOLERANCE = 1e-10
KINK_TOLERANCE = 1e-5  # one-sided estimates are O(h^2): coarser than the central ones


@dataclass(frozen=True)
class Case:
    """One gradient check: a scalar loss written twice, with custom rules and with autodiff.

    Attributes:
        name: row label.
        custom: ``L(*args) -> scalar`` built from the custom-rule layers.
        autodiff: the same ``L`` built from the autodiff twins.
        args: float64 arguments; every one is differentiated.
        fd_samples: how many coordinates of each argument to check by finite differences
            (``None``: all of them).
        step: the finite-difference step ``h``.
    """

    name: str
    custom: Callable[..., jax.Array]
    autodiff: Callable[..., jax.Array]
    args: tuple[jax.Array, ...]
    fd_samples: int | None = None
    step: float = 1e-3


@dataclass(frozen=True)
class Result:
    """Outcome of one :class:`Case`; errors are relative, times are seconds per call."""

    name: str
    shapes: str
    err_autodiff: float
    err_fd: float
    err_kink: float
    fd_checked: int
    fd_coarse: int
    fd_at_kink: int
    fd_kinks: int
    time_custom: float
    time_autodiff: float

    def ok(self, tolerance: float = TOLERANCE) -> bool:
        """Both errors within ``tolerance``, every kink within ``KINK_TOLERANCE`` (NaN fails)."""
        return bool(
            self.err_autodiff <= tolerance
            and self.err_fd <= tolerance
            and self.err_kink <= KINK_TOLERANCE
        )


def _scale(g: np.ndarray) -> float:
    """The largest entry of a reference gradient (errors are relative to it), at least tiny."""
    return max(float(np.max(np.abs(g))), np.finfo(np.float64).tiny)


def relative_error(a: Sequence[jax.Array], b: Sequence[jax.Array]) -> float:
    """``max |a - b| / max |b|`` over a list of arrays, taking the worst argument."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.max(np.abs(x - y))) / _scale(y))
    return worst


def _richardson(d: np.ndarray, order: int) -> np.ndarray:
    """Extrapolate ``(n, 3)`` estimates at steps ``h, h/2, h/4`` whose error is ``O(t^order)``
    to ``(n, 2)`` estimates at ``h`` and ``h/2``, with the leading error term cancelled."""
    return (2**order * d[:, 1:] - d[:, :-1]) / (2**order - 1)


def _finite_differences(
    loss: Callable[..., jax.Array], args: tuple[jax.Array, ...], index: int, coords, h: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Central, right and left estimates of ``dL/dargs[index]`` at ``coords``, each ``(n, 2)``:
    column 0 from step ``h``, column 1 from step ``h/2`` (whether they agree is convergence)."""
    base = args[index]

    @jax.jit
    def at(coord, t, *args):  # args as arguments, not constants XLA would fold at compile time
        e = jnp.zeros(base.size, base.dtype).at[coord].set(t).reshape(base.shape)
        plus, minus = list(args), list(args)
        plus[index], minus[index] = args[index] + e, args[index] - e
        return loss(*plus), loss(*minus)

    steps = jnp.array([h, h / 2, h / 4], base.dtype)
    up, down = jax.vmap(lambda c: jax.vmap(lambda t: at(c, t, *args))(steps))(coords)  # (n, 3)
    up, down, t = np.asarray(up), np.asarray(down), np.asarray(steps)
    here = float(loss(*args))
    central = _richardson((up - down) / (2 * t), order=2)
    return central, _richardson((up - here) / t, order=1), _richardson((here - down) / t, order=1)


class _FiniteDifferenceTally:
    """The count of each kind of coordinate (see the module docstring) and the worst errors."""

    def __init__(self) -> None:
        self.err = self.err_kink = 0.0
        self.checked = self.coarse = self.at_kink = self.crossing = 0

    def add(self, estimates, g: np.ndarray, scale: float, tol: float, noise: float) -> None:
        """Sort the coordinates of one argument; ``g`` is the rule's gradient at them."""
        central, right, left = estimates
        kink_tol = KINK_TOLERANCE * scale + noise
        spread = np.abs(central[:, 0] - central[:, 1])
        one_sided = (np.abs(right[:, 1] - right[:, 0]) <= kink_tol) & (
            np.abs(left[:, 1] - left[:, 0]) <= kink_tol
        )
        right, left = right[:, 1], left[:, 1]  # the finer one-sided estimates
        at_kink = one_sided & (np.abs(right - left) > kink_tol)
        exact = ~at_kink & (spread <= tol * scale)
        rounding = ~at_kink & ~exact & (spread <= noise)
        err = np.abs(central[:, 0] - g)
        if np.any(exact):
            self.err = max(self.err, float(np.max(err[exact])) / scale)
        if np.any(rounding) and np.max(err[rounding]) > 4 * noise:
            self.err = max(self.err, float(np.max(err[rounding])) / scale)
        if np.any(at_kink):
            side = np.minimum(np.abs(right - g), np.abs(left - g))[at_kink]
            self.err_kink = max(self.err_kink, float(np.max(side)) / scale)
        self.checked += int(np.sum(exact))
        self.coarse += int(np.sum(rounding))
        self.at_kink += int(np.sum(at_kink))
        self.crossing += int(np.sum(~exact & ~rounding & ~at_kink))


def _median_time(fn: Callable[[], object], repeats: int = 7) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def check(case: Case, tolerance: float = TOLERANCE) -> Result:
    """Run one case: custom vs autodiff, custom vs finite differences, and timings.

    Must be called with float64 enabled (``with jax.enable_x64(True):``), as :func:`run` does.
    """
    argnums = tuple(range(len(case.args)))
    grad_custom = jax.jit(jax.value_and_grad(case.custom, argnums))
    grad_autodiff = jax.jit(jax.value_and_grad(case.autodiff, argnums))
    _, g_custom = grad_custom(*case.args)
    _, g_autodiff = grad_autodiff(*case.args)
    err_autodiff = relative_error(g_custom, g_autodiff)

    loss_value = abs(float(case.custom(*case.args)))
    # Rounding in L(x + t) - L(x - t) leaves about eps |L| / t of noise in each estimate.
    noise = 16 * np.finfo(np.float64).eps * max(loss_value, 1.0) / case.step
    rng = np.random.default_rng(0)  # which coordinates fd_samples picks
    fd = _FiniteDifferenceTally()
    for i, (arg, g) in enumerate(zip(case.args, g_custom, strict=True)):
        n = arg.size
        coords = np.arange(n)
        if case.fd_samples is not None and case.fd_samples < n:
            coords = np.sort(rng.choice(n, case.fd_samples, replace=False))
        est = _finite_differences(case.custom, case.args, i, jnp.asarray(coords), case.step)
        g_all = np.asarray(g, np.float64)
        fd.add(est, g_all.reshape(-1)[coords], _scale(g_all), tolerance, noise)

    shapes = ", ".join("x".join(map(str, a.shape)) for a in case.args)
    return Result(
        name=case.name,
        shapes=shapes,
        err_autodiff=err_autodiff,
        err_fd=fd.err,
        err_kink=fd.err_kink,
        fd_checked=fd.checked,
        fd_coarse=fd.coarse,
        fd_at_kink=fd.at_kink,
        fd_kinks=fd.crossing,
        time_custom=_median_time(lambda: grad_custom(*case.args)),
        time_autodiff=_median_time(lambda: grad_autodiff(*case.args)),
    )


def _normal(key, shape):
    return jax.random.normal(key, shape, jnp.float64)


def _layer_case(key, name: str, args: tuple, *static, step: float, label: str = "") -> Case:
    """``L(*args) = sum(c * layer(*args, *static))`` with the rule and with the twin, for a random
    cotangent ``c`` drawn from ``key``: its gradient is the layer's VJP for ``c``."""
    cotangent = _normal(key, getattr(layers, name)(*args, *static).shape)

    def loss(lib):
        return lambda *args: jnp.sum(cotangent * getattr(lib, name)(*args, *static))

    return Case(label or name, loss(layers), loss(autodiff), args, step=step)


def layer_cases(seed: int = 0) -> list[Case]:
    """One case per layer plus a small whole network (conv-relu-pool-dense-loss), float64.

    Call with float64 enabled.
    """
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 32))
    # dense and conv2d are linear in each argument: central differences are exact at any step,
    # and a long step keeps rounding error (eps |L| / h) small.
    args = tuple(_normal(next(keys), s) for s in ((3, 4, 2, 2), (5, 16), (5,)))
    cases = [_layer_case(next(keys), "dense", args, step=0.1)]

    x = _normal(next(keys), (2, 5, 6, 3))
    x = jnp.where(jnp.abs(x) < 0.05, 0.5, x)  # keep finite-difference steps off the kink at 0
    cases.append(_layer_case(next(keys), "relu", (x,), step=0.04))

    logits = 3.0 * _normal(next(keys), (6, 10))
    classes = jax.random.randint(next(keys), (6,), 0, 10)

    def softmax_loss(lib):
        return lambda z: lib.softmax_cross_entropy(z, classes)

    cases.append(
        Case("softmax_cross_entropy", softmax_loss(layers), softmax_loss(autodiff), (logits,))
    )

    args = tuple(_normal(next(keys), s) for s in ((2, 7, 8, 3), (3, 3, 3, 4), (4,)))
    for padding, stride in ((1, 1), (2, 2)):
        label = f"conv2d pad {padding} stride {stride}"
        cases.append(
            _layer_case(next(keys), "conv2d", args, padding, stride, step=0.1, label=label)
        )

    # Distinct values spaced far wider than the step: no step reorders a window.
    n = 2 * 8 * 7 * 3
    x = (jax.random.permutation(next(keys), n) / n - 0.5).reshape(2, 8, 7, 3).astype(jnp.float64)
    cases.append(_layer_case(next(keys), "maxpool2d", (x,), step=1e-3, label="maxpool2d 2x2"))

    labels = jax.random.randint(next(keys), (2,), 0, 5)
    scales = ((2, 8, 8, 2), 1.0), ((3, 3, 2, 4), 0.5), ((4,), 0.1), ((5, 64), 0.3), ((5,), 0.1)
    args = tuple(scale * _normal(next(keys), shape) for shape, scale in scales)

    def small_net(lib):
        def loss(x, cw, cb, dw, db):
            h = lib.maxpool2d(lib.relu(lib.conv2d(x, cw, cb, 1)))
            return lib.softmax_cross_entropy(lib.dense(h, dw, db), labels)

        return loss

    cases.append(
        Case("network conv-relu-pool-dense-loss", small_net(layers), small_net(autodiff), args)
    )
    return cases


def network_case(
    name: str, arch, params: dict, x: jax.Array, y: jax.Array, *, fd_samples: int = 12
) -> Case:
    """The loss of ``arch`` at ``params`` (float64) on a preprocessed float64 batch ``x``
    ``(N, H, W, C)`` with integer labels ``y`` ``(N,)``, as a function of every parameter array.

    Finite differences are taken at ``fd_samples`` random coordinates of each array (all of
    them would take ``2 * 3`` forward passes per parameter).
    """
    leaves, treedef = jax.tree.flatten(params)

    def network_loss(rules):
        return lambda *ps: loss_fn(arch, jax.tree.unflatten(treedef, ps), x, y, rules)

    return Case(name, network_loss("analytic"), network_loss("autodiff"), tuple(leaves), fd_samples)


def zero_background_images(shape: tuple[int, int, int], n: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 images ``(n, H, W, C)``: black, with one random-valued rectangle each.

    As on MNIST, most 5x5 patches are exactly zero, so a convolution with zero biases gives
    exact zeros at ReLU and ties in every pooling window over the background.
    """
    rng = np.random.default_rng(0)  # which coordinates fd_samples picks
    h, w, c = shape
    images = np.zeros((n, h, w, c), np.uint8)
    for image in images:
        top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
        bottom, right = top + rng.integers(2, h // 2 + 1), left + rng.integers(2, w // 2 + 1)
        image[top:bottom, left:right] = rng.integers(1, 256, (bottom - top, right - left, c))
    return images


def network_cases(
    seed: int = 0, batch: int = 2, fd_samples: int = 12, zero_background: bool = False
) -> list[Case]:
    """The report's three networks at initialisation, loss of a uint8 batch (scaled to [0, 1]).

    The batch is uniform random pixels, or with ``zero_background`` images that are black but
    for one rectangle (:func:`zero_background_images`): exact kinks everywhere, as on real
    data. Call with float64 enabled.
    """
    key_x, key_y = jax.random.split(jax.random.PRNGKey(seed + 1))
    cases = []
    for name in ("mnist", "cifar10_baseline", "cifar10_modified"):
        arch = architectures.get(name)
        params = init(arch, jax.random.PRNGKey(seed), jnp.float64)
        if zero_background:
            images = zero_background_images(arch.input_shape, batch, seed)
        else:
            images = jax.random.randint(key_x, (batch, *arch.input_shape), 0, 256)
        x = preprocess(jnp.asarray(images, jnp.uint8), 0.0, 1 / 255, jnp.float64)
        y = jax.random.randint(key_y, (batch,), 0, arch.num_classes)
        what = "zero-background images" if zero_background else "all parameters"
        cases.append(
            network_case(f"network {name} ({what})", arch, params, x, y, fd_samples=fd_samples)
        )
    return cases


def run(cases: Sequence[Case], tolerance: float = TOLERANCE) -> list[Result]:
    """Check ``cases`` (:func:`layer_cases`, :func:`network_cases`, your own) in float64."""
    with jax.enable_x64(True):
        return [check(case, tolerance) for case in cases]


def format_table(results: Sequence[Result], tolerance: float = TOLERANCE) -> str:
    """A Markdown table: one row per result, errors, coordinates checked, times, verdict."""
    lines = [
        "| case | argument shapes | rel. err vs autodiff | rel. err vs finite diff. "
        "| FD coords: checked / to rounding noise / at a kink / skipped (kink within the step) "
        "| rel. err at kinks vs nearer one-sided | custom fwd+bwd (ms) | autodiff fwd+bwd (ms) "
        "| ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.shapes} | {r.err_autodiff:.1e} | {r.err_fd:.1e} "
            f"| {r.fd_checked} / {r.fd_coarse} / {r.fd_at_kink} / {r.fd_kinks} "
            f"| {r.err_kink:.1e} | {1e3 * r.time_custom:.3f} "
            f"| {1e3 * r.time_autodiff:.3f} | {'yes' if r.ok(tolerance) else 'NO'} |"
        )
    return "\n".join(lines)
