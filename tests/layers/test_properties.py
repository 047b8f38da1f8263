"""The property sweeps of ``properties.py``, each in a child process, and the XLA aborts.

A child that dies of a signal (XLA aborts with SIGABRT inside its algebraic simplifier on some
strided convolutions) fails its test with the configuration it was on, instead of killing the
whole test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent

# Convolutions that abort the interpreter when written with the padding inside
# lax.conv_general_dilated's window and differentiated (x shape, w shape, padding, stride).
XLA_ABORTS = [
    ((2, 8, 3, 1), (2, 3, 1, 1), (1, 1), (2, 2)),  # the case
    ((2, 8, 3, 3), (2, 3, 3, 4), (1, 1), (2, 2)),
    ((2, 8, 4, 1), (5, 2, 1, 1), (0, 1), (3, 2)),  # these two found by random sweeps
    ((2, 6, 6, 3), (5, 2, 3, 4), (0, 1), (2, 2)),
]


def run_child(args: list[str], code: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    command = [sys.executable, *(["-c", code] if code else [str(HERE / "properties.py")]), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def explain(result: subprocess.CompletedProcess) -> str:
    """The verdict on a failed child: the signal and the last example, or its output's tail."""
    examples = [line for line in result.stdout.splitlines() if line.startswith("EXAMPLE")]
    last = examples[-1] if examples else "(none started)"
    if result.returncode < 0:
        return f"the interpreter died of signal {-result.returncode} on {last}"
    return f"exit status {result.returncode}; last {last}\n{result.stdout[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["conv", "maxpool", "relu", "dense", "loss"])
def test_property_sweep(layer):
    result = run_child([layer])
    assert result.returncode == 0, explain(result)
    assert f"{layer}: " in result.stdout and "examples passed" in result.stdout


def test_an_abort_in_the_child_fails_with_its_example():
    code = "import os; print('EXAMPLE {\"k\": 3}', flush=True); os.abort()"
    result = run_child([], code)
    assert result.returncode < 0
    assert (
        explain(result)
        == f'the interpreter died of signal {-result.returncode} on EXAMPLE {{"k": 3}}'
    )


@pytest.mark.parametrize(("x", "w", "padding", "stride"), XLA_ABORTS)
def test_configurations_that_abort_xla_compile_in_both_rules(x, w, padding, stride):
    code = f"""
import jax, jax.numpy as jnp, numpy as np, references as ref
import jaxnet
x, w, b = jnp.ones({x}), jnp.ones({w}), jnp.zeros({w[3]})
g = jnp.ones(ref.conv(x, w, b, {padding}, {stride}).shape)
want = ref.conv_vjp(x, w, g, {padding}, {stride})
for conv in (jaxnet.conv2d, jaxnet.autodiff.conv2d):
    _, pullback = jax.vjp(lambda x, w, b: conv(x, w, b, {padding}, {stride}), x, w, b)
    for got, expected in zip(jax.jit(pullback)(g), want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
print("compiled")
"""
    result = run_child([], code)
    assert result.returncode == 0 and "compiled" in result.stdout, (
        explain(result) + result.stderr[-2000:]
    )
