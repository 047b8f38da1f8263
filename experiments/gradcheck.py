"""Compare every custom backward rule with JAX autodiff and finite differences (float64).

Usage: ``python -m experiments.gradcheck [--tolerance 1e-10] [--data-dir DIR] [--steps 300]``.

Rows: each layer on random inputs; a small whole network; the report's three networks at
initialisation on random pixels and on zero-background images (exact zeros at every ReLU, ties
in every pooling window); and, when the real data sets are found (``--data-dir``, else
``$JAXNET_DATA``, else the cache; never downloaded here), the three networks on the first batch
of the real training set, at initialisation and after ``--steps`` training steps. Prints a
Markdown table and exits with status 1 when any error is over its tolerance.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import architectures, datasets, gradcheck
from jaxnet.backends import onednn
from jaxnet.network import init
from jaxnet.optim import momentum
from jaxnet.step import make_train_step, preprocess

NETWORKS = {"mnist": "mnist", "cifar10_baseline": "cifar10", "cifar10_modified": "cifar10"}


def train_briefly(arch, images: np.ndarray, labels: np.ndarray, steps: int, batch: int) -> dict:
    """Parameters after ``steps`` momentum steps (float32) over consecutive batches, from seed 0."""
    params = init(arch, jax.random.PRNGKey(0))
    optimizer = momentum(0.05, momentum=0.9, weight_decay=5e-4)
    step = make_train_step(arch, optimizer)
    opt_state = optimizer.init(params)
    batches = len(images) // batch
    for i in range(steps):
        rows = slice((i % batches) * batch, (i % batches + 1) * batch)
        params, opt_state, _ = step(params, opt_state, images[rows], labels[rows])
    return params


def real_data_cases(data_dir: str | None, steps: int, batch: int) -> tuple[list, list[str]]:
    """Cases for the three networks on the first real training batch; and what was not found.

    Call with float64 enabled (training runs in float32 inside).
    """
    loaders = {"mnist": datasets.load_mnist, "cifar10": datasets.load_cifar10}
    loaded, missing = {}, []
    for name, load in loaders.items():
        try:
            loaded[name] = load(data_dir, download=False)
        except datasets.DataError as err:
            missing.append(f"{name}: {err}")
    cases = []
    for net, data_name in NETWORKS.items():
        if data_name not in loaded:
            continue
        arch, data = architectures.get(net), loaded[data_name]
        x = preprocess(jnp.asarray(data.train_images[:batch]), 0.0, 1 / 255, jnp.float64)
        y = jnp.asarray(data.train_labels[:batch])
        with jax.enable_x64(False):
            trained = train_briefly(arch, data.train_images, data.train_labels, steps, batch)
        states = {
            "at initialisation": init(arch, jax.random.PRNGKey(0), jnp.float64),
            f"after {steps} steps": jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), trained),
        }
        for when, params in states.items():
            name = f"network {net} (real {data_name} batch of {batch}, {when})"
            cases.append(gradcheck.network_case(name, arch, params, x, y))
    return cases, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.gradcheck", description=__doc__)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=gradcheck.TOLERANCE,
        help="largest relative error accepted (default: %(default)g)",
    )
    parser.add_argument("--data-dir", help="the data root (default: $JAXNET_DATA)")
    steps = "training steps before the second real-data row"
    parser.add_argument("--steps", type=int, default=300, help=steps)
    parser.add_argument("--batch", type=int, default=64, help="real-data batch size")
    args = parser.parse_args(argv)
    with jax.enable_x64(True):
        cases = gradcheck.layer_cases() + gradcheck.network_cases()
        cases += gradcheck.network_cases(batch=8, zero_background=True)
        real, missing = real_data_cases(args.data_dir, args.steps, args.batch)
    results = gradcheck.run(cases + real, args.tolerance)
    print(gradcheck.format_table(results, args.tolerance))
    for line in missing:
        print(f"real-data rows left out, not found: {line}")
    built = "built" if onednn.available() else "not built"
    print(
        f"convolution kernels: XLA's in every row (float64; jaxnet's oneDNN kernels, {built} "
        "here, run float32 only: tests/backends/ checks them against XLA)"
    )
    failed = [r.name for r in results if not r.ok(args.tolerance)]
    if failed:
        print(f"FAILED: relative error over {args.tolerance:g} in: {', '.join(failed)}")
        return 1
    print(f"all {len(results)} checks within {args.tolerance:g} (float64)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
