"""Check every custom backward rule against JAX autodiff and central finite differences.

For each case, a scalar function ``L(args)`` is differentiated three ways in float64:

1. the analytic rules (``jax.custom_vjp`` layers of :mod:`jaxnet.layers`);
2. JAX autodiff of the very same forward functions (:mod:`jaxnet.autodiff`);
3. central finite differences, one coordinate at a time.

Errors are relative: the largest absolute difference divided by the largest entry of the
reference gradient, the worst over all arguments.

Finite differences need care to resolve 1e-10 in float64. The estimate is Richardson-extrapolated
central differences, ``R(h) = (4 D(h/2) - D(h)) / 3`` with ``D(t) = (L(x + t) - L(x - t)) / 2t``,
whose truncation error is ``O(h^4)``; rounding error is about ``eps |L| / h``. ReLU and max
pooling have kinks, where no finite difference means anything: a coordinate whose step crosses
one gives estimates that change with the step, so ``R(h)`` and ``R(h/2)`` disagree. Such
coordinates are counted and left out (the table says how many), never silently. Where the
rounding noise (``16 eps |L| / h``) is above the tolerance relative to an argument's gradient
(a parameter whose gradient is tiny next to the loss), the estimate converges only to that
noise: such coordinates are checked at the noise level and counted apart. A kink exactly
at the point itself cannot be seen this way (every step gives the mean of the two slopes), so
the cases below keep their inputs off kinks: ReLU inputs away from 0, pooling inputs distinct.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import autodiff, layers

TOLERANCE = 1e-10


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
    fd_checked: int
    fd_coarse: int
    fd_kinks: int
    time_custom: float
    time_autodiff: float

    def ok(self, tolerance: float = TOLERANCE) -> bool:
        """Whether both errors are within ``tolerance`` (NaN counts as a failure)."""
        return bool(self.err_autodiff <= tolerance and self.err_fd <= tolerance)


def relative_error(a: Sequence[jax.Array], b: Sequence[jax.Array]) -> float:
    """``max |a - b| / max |b|`` over a list of arrays, taking the worst argument."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(float(np.max(np.abs(y))), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.max(np.abs(x - y))) / scale)
    return worst


def _finite_differences(
    loss: Callable[..., jax.Array], args: tuple[jax.Array, ...], index: int, coords, h: float
) -> tuple[np.ndarray, np.ndarray]:
    """Richardson estimates ``R(h)`` and ``R(h/2)`` of ``dL/dargs[index]`` at ``coords``."""
    base = args[index]

    @jax.jit
    def at(coord, t):
        e = jnp.zeros(base.size, base.dtype).at[coord].set(t).reshape(base.shape)
        plus = list(args)
        minus = list(args)
        plus[index] = base + e
        minus[index] = base - e
        return (loss(*plus) - loss(*minus)) / (2 * t)

    steps = jnp.array([h, h / 2, h / 4], base.dtype)
    d = jax.vmap(lambda c: jax.vmap(lambda t: at(c, t))(steps))(coords)  # (n, 3)
    d = np.asarray(d)
    r1 = (4 * d[:, 1] - d[:, 0]) / 3
    r2 = (4 * d[:, 2] - d[:, 1]) / 3
    return r1, r2


def _median_time(fn: Callable[[], object], repeats: int = 7) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def check(case: Case, tolerance: float = TOLERANCE, seed: int = 0) -> Result:
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
    rng = np.random.default_rng(seed)
    err_fd = 0.0
    checked = coarse = kinks = 0
    for i, (arg, g) in enumerate(zip(case.args, g_custom, strict=True)):
        n = arg.size
        coords = np.arange(n)
        if case.fd_samples is not None and case.fd_samples < n:
            coords = np.sort(rng.choice(n, case.fd_samples, replace=False))
        r1, r2 = _finite_differences(case.custom, case.args, i, jnp.asarray(coords), case.step)
        g_all = np.asarray(g, np.float64)
        scale = max(float(np.max(np.abs(g_all))), np.finfo(np.float64).tiny)
        g_at = g_all.reshape(-1)[coords]
        spread = np.abs(r1 - r2)
        exact = spread <= tolerance * scale  # the estimate has converged to the tolerance
        rounding = ~exact & (spread <= noise)  # converged only to the rounding noise
        kinks += int(np.sum(~exact & ~rounding))
        checked += int(np.sum(exact))
        coarse += int(np.sum(rounding))
        if np.any(exact):
            err_fd = max(err_fd, float(np.max(np.abs(r1 - g_at)[exact])) / scale)
        # Coordinates the finite differences resolve only to their noise are still checked,
        # at that noise: a wrong rule shows there too.
        if np.any(rounding) and np.max(np.abs(r1 - g_at)[rounding]) > 4 * noise:
            err_fd = max(err_fd, float(np.max(np.abs(r1 - g_at)[rounding])) / scale)

    shapes = ", ".join("x".join(map(str, a.shape)) for a in case.args)
    return Result(
        name=case.name,
        shapes=shapes,
        err_autodiff=err_autodiff,
        err_fd=err_fd,
        fd_checked=checked,
        fd_coarse=coarse,
        fd_kinks=kinks,
        time_custom=_median_time(lambda: grad_custom(*case.args)),
        time_autodiff=_median_time(lambda: grad_autodiff(*case.args)),
    )


def _contracted(layer: Callable[..., jax.Array], cotangent: jax.Array) -> Callable[..., jax.Array]:
    """``L(*args) = sum(cotangent * layer(*args))``: its gradient is the layer's VJP."""
    return lambda *args: jnp.sum(cotangent * layer(*args))


def _normal(key, shape):
    return jax.random.normal(key, shape, jnp.float64)


def layer_cases(seed: int = 0) -> list[Case]:
    """One case per layer plus a small whole network (conv-relu-pool-dense-loss), float64.

    Call with float64 enabled.
    """
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 32))
    cases = []

    x, w, b = (
        _normal(next(keys), (3, 4, 2, 2)),
        _normal(next(keys), (5, 16)),
        _normal(next(keys), (5,)),
    )
    ct = _normal(next(keys), (3, 5))
    # dense and conv2d are linear in each argument: central differences are exact at any step,
    # and a long step keeps rounding error (eps |L| / h) small.
    cases.append(
        Case(
            "dense",
            _contracted(layers.dense, ct),
            _contracted(autodiff.dense, ct),
            (x, w, b),
            step=0.1,
        )
    )

    x = _normal(next(keys), (2, 5, 6, 3))
    x = jnp.where(jnp.abs(x) < 0.05, 0.5, x)  # keep finite-difference steps off the kink at 0
    ct = _normal(next(keys), x.shape)
    cases.append(
        Case("relu", _contracted(layers.relu, ct), _contracted(autodiff.relu, ct), (x,), step=0.04)
    )

    logits = 3.0 * _normal(next(keys), (6, 10))
    classes = jax.random.randint(next(keys), (6,), 0, 10)
    cases.append(
        Case(
            "softmax_cross_entropy",
            lambda z: layers.softmax_cross_entropy(z, classes),
            lambda z: autodiff.softmax_cross_entropy(z, classes),
            (logits,),
        )
    )

    x, w, b = (
        _normal(next(keys), (2, 7, 8, 3)),
        _normal(next(keys), (3, 3, 3, 4)),
        _normal(next(keys), (4,)),
    )
    for padding, stride in ((1, 1), (2, 2)):
        out = layers.conv2d(x, w, b, padding, stride).shape
        ct = _normal(next(keys), out)

        def conv_custom(x, w, b, p=padding, s=stride, ct=ct):
            return jnp.sum(ct * layers.conv2d(x, w, b, p, s))

        def conv_autodiff(x, w, b, p=padding, s=stride, ct=ct):
            return jnp.sum(ct * autodiff.conv2d(x, w, b, p, s))

        cases.append(
            Case(
                f"conv2d pad {padding} stride {stride}",
                conv_custom,
                conv_autodiff,
                (x, w, b),
                step=0.1,
            )
        )

    # Distinct values spaced far wider than the step: no step reorders a window.
    n = 2 * 8 * 7 * 3
    x = (jax.random.permutation(next(keys), n) / n - 0.5).reshape(2, 8, 7, 3).astype(jnp.float64)
    ct = _normal(next(keys), (2, 4, 3, 3))
    cases.append(
        Case(
            "maxpool2d 2x2",
            _contracted(layers.maxpool2d, ct),
            _contracted(autodiff.maxpool2d, ct),
            (x,),
            step=1e-3,
        )
    )

    labels = jax.random.randint(next(keys), (2,), 0, 5)
    args = (
        _normal(next(keys), (2, 8, 8, 2)),
        0.5 * _normal(next(keys), (3, 3, 2, 4)),
        0.1 * _normal(next(keys), (4,)),
        0.3 * _normal(next(keys), (5, 64)),
        0.1 * _normal(next(keys), (5,)),
    )

    def small_net(lib):
        def loss(x, cw, cb, dw, db):
            h = lib.maxpool2d(lib.relu(lib.conv2d(x, cw, cb, 1)))
            return lib.softmax_cross_entropy(lib.dense(h, dw, db), labels)

        return loss

    cases.append(
        Case("network conv-relu-pool-dense-loss", small_net(layers), small_net(autodiff), args)
    )
    return cases


def network_cases(seed: int = 0, batch: int = 2, fd_samples: int = 12) -> list[Case]:
    """The report's three networks, loss of a random uint8 batch w.r.t. every parameter.

    Finite differences are taken at ``fd_samples`` random coordinates of each parameter array
    (all of them would take ``2 * 3`` forward passes per parameter). Call with float64 enabled.
    """
    from jaxnet import architectures
    from jaxnet.network import init
    from jaxnet.train import loss_fn, prepare_images

    cases = []
    for name in ("mnist", "cifar10_baseline", "cifar10_modified"):
        arch = architectures.get(name)
        key_x, key_y = jax.random.split(jax.random.PRNGKey(seed + 1))
        params = init(arch, jax.random.PRNGKey(seed), jnp.float64)
        leaves, treedef = jax.tree.flatten(params)
        images = jax.random.randint(key_x, (batch, *arch.input_shape), 0, 256).astype(jnp.uint8)
        x = prepare_images(images, 0.5, jnp.float64)
        y = jax.random.randint(key_y, (batch,), 0, arch.num_classes)

        def network_loss(rules, arch=arch, treedef=treedef, x=x, y=y):
            return lambda *ps: loss_fn(arch, jax.tree.unflatten(treedef, ps), x, y, rules)

        cases.append(
            Case(
                f"network {name} (all parameters)",
                network_loss("analytic"),
                network_loss("autodiff"),
                tuple(leaves),
                fd_samples=fd_samples,
            )
        )
    return cases


def run(cases: Sequence[Case] | None = None, tolerance: float = TOLERANCE) -> list[Result]:
    """Check ``cases`` in float64 and return one result each.

    The default is every layer (:func:`layer_cases`) and the three networks
    (:func:`network_cases`).
    """
    with jax.enable_x64(True):
        cases = layer_cases() + network_cases() if cases is None else cases
        return [check(case, tolerance) for case in cases]


def format_table(results: Sequence[Result], tolerance: float = TOLERANCE) -> str:
    """A Markdown table: one row per result, errors, coordinates checked, times, verdict."""
    lines = [
        "| case | argument shapes | rel. err vs autodiff | rel. err vs finite diff. "
        "| FD coords: checked / to rounding noise / skipped at kinks | custom fwd+bwd (ms) "
        "| autodiff fwd+bwd (ms) | ok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.shapes} | {r.err_autodiff:.1e} | {r.err_fd:.1e} "
            f"| {r.fd_checked} / {r.fd_coarse} / {r.fd_kinks} | {1e3 * r.time_custom:.3f} "
            f"| {1e3 * r.time_autodiff:.3f} | {'yes' if r.ok(tolerance) else 'NO'} |"
        )
    return "\n".join(lines)
