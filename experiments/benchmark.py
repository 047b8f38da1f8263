"""Train-step throughput: jaxnet's analytic rules against JAX autodiff and PyTorch eager.

    python -m experiments.benchmark                     # about 3 minutes on 2 CPU cores
    python -m experiments.benchmark --quick             # a smoke test, well under a minute
    python -m experiments.benchmark --batches 16 64 --nets mnist --json bench.json

What one run measures, all in one process:

- For each network (``--nets``: the MNIST network and the modified CIFAR-10 network by
  default) and batch size (``--batches``: 16, 64, 256), the images per second of one full
  train step (forward, loss, backward, the seed's momentum update) for
  ``jaxnet.make_train_step(..., rules="analytic")`` (the hand-written backward rules),
  ``rules="autodiff"`` (the same forward passes, differentiated by JAX), and PyTorch eager
  when ``torch`` imports (the optional extra ``pip install .[torch]``): the same
  architecture, the same initial weights, ``channels_last``, the same update written out as
  ``m = mu*m + (1-mu)*g; w -= lr*(m + wd*w)``. PyTorch gets as many threads as XLA uses (the
  CPUs this process may run on), and the device that matches JAX's (its CPU, or CUDA when JAX
  runs on a GPU; none on a TPU).
- How: each method is warmed up (its first call, compilation included, is reported apart as
  ``compile_s``), then timed in windows of about ``--window-s`` seconds each (a whole number
  of steps, ending with a device sync); the windows of all methods are interleaved, round by
  round, so that load from other processes falls on all of them alike. Throughput is the
  median over the windows; each ratio is the median of the per-round ratios.
- The float32 matrix-product rate (GFLOP/s of a 1024 x 1024 x 1024 product, XLA and PyTorch)
  is timed in the same rounds; the best of the two is the ceiling. Each method's GFLOP/s
  counts only the work a step needs: every layer's forward pass and ``dL/dw``, and ``dL/dx``
  for every layer but the first (elementwise work, pooling and the update are not counted).
- Full MNIST epochs through ``jaxnet.fit.fit(..., progress=False)`` (batch 64, the default
  experiment's settings, random uint8 images of MNIST's shape) against the number of steps
  times the step time of the same jitted fit step in a tight loop, timed right before and
  after: the fit loop adds no host work per step (target: within 10%). Then the same epochs
  with ``fit(..., steps_per_call=8)``: eight steps unrolled in one compiled program, one launch
  per eight steps.
- With ``--reuse-freed-memory`` the run first calls :func:`jaxnet.allocator.reuse_freed_memory`,
  for every method alike: no method then pays for page faults on its temporary buffers.

A Markdown table goes to the terminal and everything, the raw windows included, to
``--json`` (default ``benchmark.json``). The machine's load average is recorded with them:
on a shared machine the figures are noisy, and PyTorch's OpenMP threads suffer most from
other processes (they spin at barriers), so compare ratios from one run.

Formulations tried for the analytic rules
-----------------------------------------

Measured on the shared 2-core AMD EPYC (AVX-512) CPU, jax 0.10.2, float32. Figures are
microseconds per image: of one jitted piece (median of interleaved windows), or of a whole
MNIST train step (median or minimum step time, or the sum over XLA's kernels of each
kernel's minimum over 15 profiled steps). "Loaded" means other processes kept the load
average at 3-6 on the 2 cores; "quiet" means about 1.5. MNIST network unless stated;
``conv1`` is 5x5x1x16 on 28x28, ``conv2`` 5x5x16x16 on 14x14. XLA runs a convolution on its
YNNPACK kernels only when ``max(C_in, C_out) > 16`` (its feature axes), else on a generic
Eigen kernel; much of the work below is about which of the two a convolution gets.

Starting point (the committed rules), quiet, against the committed autodiff twin: whole
step ratio analytic/autodiff 0.95-1.23 at batch 16, 64, 256 (MNIST) and 0.98-1.06
(modified CIFAR-10), over three runs. The twin is already autodiff-friendly: its pooling
forward is a strictly-greater where-chain (no ``reduce_window``, so no select-and-scatter
backward) and its convolution one ``conv_general_dilated``, whose JAX transposes are the
same correlations the analytic rules write out.

Kept (quiet, one process, interleaved, against the committed code):

- Max pooling with tiling windows (2x2/2): windows read from one reshape to
  ``(N, Ho, 2, Wo, 2, C)``, backward one broadcast compare-and-select against the stored
  int32 argmax, instead of strided slices and one ``lax.pad`` per window offset (whose
  fusion recomputed the argmax per element: 37 at batch 64). Whole analytic step 1.16x,
  1.10x, 1.15x faster at batch 16, 64, 256. Loaded, batch 64: reshape with stacked
  per-offset selects 157, broadcast 137.
- conv1's forward with ``C_out`` zero-padded to 17, so that YNNPACK takes it: 87 -> 24
  (loaded, batch 64). It is the shared forward pass, so the autodiff twin gains as much.
- ``dL/dw`` at batch <= 16 (XLA's YNNPACK path needs the batch, the feature axis of this
  correlation, above 16): zero images pad a batch of 16 to 20, zero channels pad a smaller
  batch's ``C_out`` to 17. conv2 ``dL/dw`` at batch 16: 51 (Eigen) -> 34 (batch 20; ``C_out``
  17: 45; batch 24: 41; batch 32: 58-62); batch 8: 59 -> 35 (``C_out`` 17; batch 20: 64).
  Whole step at batch 16: loaded 1.13x (MNIST) and 1.11x (CIFAR-10) faster, quiet 0.99x and
  1.03x.
- All together, quiet, one process: MNIST analytic 1.21x, 1.21x, 1.34x the committed
  analytic rules at batch 16, 64, 256, and the twin 1.23x, 1.12x, 1.19x the committed twin
  (conv1's forward and the pooling forward are shared); modified CIFAR-10 analytic
  1.02-1.05x, twin 0.95-1.03x.

Around the step, offered as options because each is a trade (same machine, later session):

- Freed host memory kept for reuse (``--reuse-freed-memory``, :mod:`jaxnet.allocator`): XLA
  mallocs each step's temporary block; above 32 MiB glibc maps it afresh every step and every
  page faults in again. MNIST batch 256: 9000-12000 page faults per step -> about 1000, 54 ->
  43 ms per step; in three alternating benchmark runs the analytic rules went from 22-23% to
  32-37% of the matmul ceiling and autodiff from 17-21% to 26-31% (PyTorch gains too: 4446 ->
  6210 img/s in one pair of runs). CIFAR-10 modified, batch 256: 14000 -> 1600 faults, 229 ->
  195 ms. Batch 16 and 64: a few hundred faults either way, no difference beyond noise. Cost:
  a fragmented heap, the MNIST command's peak memory 625 -> 859 MiB. Hence opt-in.
- Several steps per compiled call (``fit(..., steps_per_call=K)``, ``--steps-per-call``): a
  rolled ``lax.scan`` over the fit step ran at 0.10-0.13x one step per call (XLA's CPU backend
  runs a loop body about 10x slower); unrolled, ``K = 8``, MNIST batch 16, 64, 256: 1.20,
  1.07, 1.30-1.50x with glibc's defaults (most of it the page faults above, paid once per call
  instead of per step) and 1.05, 1.09, 1.05x with freed memory kept; a whole fit epoch at
  batch 64: 1.04-1.20x (four runs; 1.03 and 1.13x in two more with freed memory kept).
  Compilation takes ``K`` times as long, and the result differs from single steps by float
  rounding (1e-9 after 8 steps), so ``K = 1`` stays the default.

Tried and not kept:

- Every stride-1 forward pass with ``C_out`` padded to 17 (YNNPACK): analytic 1.16-1.66x
  the committed autodiff twin and analytic/autodiff 1.5-1.7 in this benchmark, but only
  because the twin, sharing that forward, got 1.2-1.5x slower: JAX differentiates the
  padded convolution into convolutions with 17 input channels, and YNNPACK is
  pathologically slow for an odd ``C_in`` (batch 64, 32x32, 5x5, 17 outputs: ``C_in`` 3:
  692, 5: 356, 7: 420, 9: 501, against 1: 26, 2: 47, 4: 56). Padding to 20 instead: the
  twin still 0.75x at batch 256; padding ``C_in`` to 20: both 1.5-2.3x slower. Padding the
  CIFAR-10 conv1 (3 -> 16) to 4 -> 17: its forward 151 -> 56 in isolation, but the twin
  0.84-0.90x. A forward that handicaps the baseline is not a faster rule, so the forward
  is padded only where the twin gains too (one input channel).
- ``dL/dx`` through YNNPACK (``C_out`` padded to 17): loaded 37-42 against 49-54 for Eigen,
  but quiet the whole step was 1.03x, 1.08x, 1.14x slower (batch 16, 64, 256) than with
  Eigen, so ``dL/dx`` stays one plain transposed convolution.
- conv1 forward as 25 fused multiply-adds (an idea from the issue): 13 against 24 for
  YNNPACK in isolation, but XLA duplicates that cheap elementwise producer into every
  consumer fusion (ReLU output, pooling, pool backward), so the whole step got slower: 206
  vs 165 (batch 16), 192 vs 138 (64), 244 vs 218 (256), loaded. ``lax.optimization_barrier``
  does not stop it on CPU (the barrier is gone before fusion) and ``sum(stack(...))`` is
  simplified back into the same adds. The twin's derived ``dL/dw`` of that forward is 25
  reductions: its whole step was 3-4x slower.
- conv1 forward by other routes (loaded): im2col + dot 41-133, the patches op + dot
  32-110, im2col over the kernel width only 43-68, one convolution per kernel row 124-274,
  ``C_in`` padded to 4/8/16 on Eigen 108-249, ``C_out`` padded to 24 or 32: 23-35 (17:
  21-24).
- conv2 forward (loaded): im2col + dot 47-408 (building the patch matrix in XLA costs far
  more than the product), im2col over the kernel width 54-276, 25 shifted small dots
  82-243, one convolution per kernel row 38-98, ``C_out`` padded to 24 or 32: 46-61 (17:
  37-42, Eigen 48-54).
- ``dL/dw`` (loaded, conv1/conv2, batch 16-256): 25 per-offset dots 75-387, im2col 64-460,
  im2col built transposed for a canonical (YNNPACK) dot 45-520, one dot per kernel row
  43-353; the convolution with the batch as feature axis: 13-54.
- Pool residual (loaded, batch 64): int32 argmax 137, int8 argmax 144, recomputing it from
  the input 143.
- ReLU residual ``y`` (the output) instead of ``x``: no measurable difference (185 vs 187).

Why the analytic rules are not 1.5x autodiff here: the twin's forward passes are already
what JAX differentiates well, and JAX's transposes of ``conv_general_dilated`` are the very
correlations the rules write out, compiled to the same kernels. What is left to the rules is
kernel choice in the backward pass (``dL/dw`` at small batches) and a cheaper pooling
backward: analytic/autodiff 1.03-1.10 at batch 16, 1.16-1.17 at 64 and 1.22-1.28 at 256 on
MNIST (two quiet runs), 1.02-1.06 on the modified CIFAR-10 network, whose convolutions
dominate. Against PyTorch eager (oneDNN) the MNIST network runs at about parity; the
CIFAR-10 shapes run about twice as fast in oneDNN as in XLA's kernels.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import allocator, architectures, parallel
from jaxnet.network import Architecture, Conv, Dense, MaxPool, init
from jaxnet.optim import momentum
from jaxnet.train import make_train_step

DEFAULT_NETS = ("mnist", "cifar10_modified")
DEFAULT_BATCHES = (16, 64, 256)
METHODS = ("analytic", "autodiff", "torch")
LEARNING_RATE = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
MATMUL_N = 1024
DATA_BATCHES = 4  # distinct batches each method cycles through
EPOCH_IMAGES = {False: 58000, True: 4096}  # MNIST's 60000 less a 2000-image validation split
STEPS_PER_CALL = 8  # the epoch check's second fit run: steps per compiled call


@dataclass(frozen=True)
class Settings:
    """How long to time: ``windows`` interleaved rounds of about ``window_s`` seconds each."""

    windows: int
    window_s: float


FULL = Settings(windows=9, window_s=0.4)
QUICK = Settings(windows=3, window_s=0.1)

Runner = Callable[[int], None]
"""``run(k)``: take ``k`` steps (or products) and wait until the device is done."""


def cpu_threads() -> int:
    """The CPUs this process may run on: the size of XLA's CPU thread pool."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average, or ``None`` where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def import_torch() -> Any | None:
    """``torch`` if it is installed (the optional extra), else ``None``."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_device(torch: Any) -> str | None:
    """The PyTorch device that matches JAX's default backend: ``"cpu"``, ``"cuda"`` or ``None``.

    ``None`` (JAX on a TPU, or on a GPU that PyTorch cannot use) leaves PyTorch out rather than
    comparing different hardware.
    """
    backend = jax.default_backend()
    if backend == "cpu":
        return "cpu"
    if backend == "gpu" and torch.cuda.is_available():
        return "cuda"
    return None


def torch_sync(torch: Any, device: str) -> None:
    """Wait until PyTorch's queued work on ``device`` is done (CUDA runs asynchronously)."""
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Work per step
# ---------------------------------------------------------------------------------------------


def step_flops(arch: Architecture, batch: int) -> int:
    """Floating-point operations that one train step needs in its products, for ``batch`` images.

    Per convolution ``2 N Ho Wo KH KW C_in C_out`` and per dense layer ``2 N n_in n_out``, each
    counted once for the forward pass, once for ``dL/dw``, and once for ``dL/dx`` unless the
    layer is the network's first (nothing needs the gradient of the input). Biases, ReLU,
    pooling, the loss and the update are not counted.

    Args:
        arch: the network.
        batch: images per step, >= 1.

    Returns:
        The count for one step.
    """
    total, first = 0, True
    for layer, shape in zip(arch.layers, arch.output_shapes, strict=True):
        if isinstance(layer, Conv):
            ho, wo = shape[0], shape[1]
            one = 2 * batch * ho * wo * layer.kh * layer.kw * layer.c_in * layer.c_out
        elif isinstance(layer, Dense):
            one = 2 * batch * layer.n_in * layer.n_out
        else:
            continue
        total += one * (2 if first else 3)
        first = False
    return total


# ---------------------------------------------------------------------------------------------
# Runners: each takes k steps and syncs
# ---------------------------------------------------------------------------------------------


def _batches(arch: Architecture, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``DATA_BATCHES`` float32 image batches ``(K, B, H, W, C)`` (centred) and int32 labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (DATA_BATCHES, batch, *arch.input_shape)).astype(np.float32)
    x = x / 255.0 - 0.5
    y = rng.integers(0, arch.num_classes, (DATA_BATCHES, batch)).astype(np.int32)
    return x.astype(np.float32), y


def jax_runner(
    arch: Architecture, batch: int, rules: str, seed: int = 0, devices: int = 1
) -> tuple[Runner, float]:
    """A runner for ``jaxnet.make_train_step(arch, momentum(...), rules)`` and its first call.

    Args:
        arch: the network.
        batch: images per step.
        rules: ``"analytic"`` or ``"autodiff"``.
        seed: initial weights and data.
        devices: more than 1: data-parallel over that many devices (each batch split over
            them, :mod:`jaxnet.parallel`).

    Returns:
        ``(run, first_call_s)``: ``run(k)`` takes ``k`` steps on float32 batches already on
        the device and blocks until they are done; ``first_call_s`` is the time of the first
        step, compilation included.
    """
    optimizer = momentum(LEARNING_RATE, MOMENTUM, WEIGHT_DECAY)
    mesh = parallel.make_mesh(devices) if devices > 1 else None
    step = make_train_step(arch, optimizer, rules=rules, mesh=mesh)
    params = init(arch, jax.random.PRNGKey(seed))
    opt_state = optimizer.init(params)
    xs, ys = _batches(arch, batch, seed)
    put = jax.device_put if mesh is None else partial(parallel.shard_batch, mesh=mesh)
    xs_dev = [put(x) for x in xs]
    ys_dev = [put(y) for y in ys]
    state = {"params": params, "opt_state": opt_state, "i": 0}

    def run(k: int) -> None:
        p, s, i = state["params"], state["opt_state"], state["i"]
        for _ in range(k):
            p, s, _ = step(p, s, xs_dev[i % DATA_BATCHES], ys_dev[i % DATA_BATCHES])
            i += 1
        jax.block_until_ready(p)
        state.update(params=p, opt_state=s, i=i)

    start = time.perf_counter()
    run(1)
    return run, time.perf_counter() - start


def torch_model(
    torch: Any, arch: Architecture, seed: int = 0, device: str = "cpu"
) -> tuple[Callable, list]:
    """The network in PyTorch with jaxnet's initial weights: ``(loss_fn, params)``.

    Kernels go from HWIO to OIHW in ``channels_last`` memory; a dense layer flattens its input
    in NHWC order, as jaxnet does, so the same weights give the same logits.

    Args:
        torch: the ``torch`` module.
        arch: the network.
        seed: jaxnet's initialisation seed.
        device: where the tensors live (``"cpu"`` or ``"cuda"``).

    Returns:
        ``loss_fn(x, y) -> (loss, logits)`` for ``x`` of shape ``(N, C, H, W)`` and the
        parameter tensors in layer order (``w, b`` per layer), each requiring grad.
    """
    import torch.nn.functional as F

    params = init(arch, jax.random.PRNGKey(seed))
    weights: dict[str, tuple[Any, Any]] = {}
    flat = []
    for layer in arch.parametrised:
        w = np.asarray(params[layer.name]["w"])
        b = np.asarray(params[layer.name]["b"])
        if isinstance(layer, Conv):
            tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).to(device)
            tw = tw.contiguous(memory_format=torch.channels_last)
        else:
            tw = torch.from_numpy(w.copy()).to(device)
        tb = torch.from_numpy(b.copy()).to(device)
        tw.requires_grad_(True)
        tb.requires_grad_(True)
        weights[layer.name] = (tw, tb)
        flat += [tw, tb]

    def loss_fn(x: Any, y: Any) -> tuple[Any, Any]:
        h = x
        for layer in arch.layers:
            if isinstance(layer, Conv):
                w, b = weights[layer.name]
                h = F.conv2d(h, w, b, stride=layer.stride, padding=layer.padding)
            elif isinstance(layer, Dense):
                w, b = weights[layer.name]
                if h.dim() == 4:
                    h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
                h = F.linear(h, w, b)
            elif isinstance(layer, MaxPool):
                h = F.max_pool2d(h, layer.window, layer.stride)
            else:
                h = F.relu(h)
        return F.cross_entropy(h, y), h

    return loss_fn, flat


def torch_runner(
    torch: Any, arch: Architecture, batch: int, threads: int, seed: int = 0, device: str = "cpu"
) -> tuple[Runner, float]:
    """A runner for one PyTorch eager train step with the seed's momentum update.

    The update is written out as in :func:`jaxnet.momentum`:
    ``m = mu*m + (1-mu)*g; w -= lr*(m + wd*w)``.

    Args:
        torch: the ``torch`` module.
        arch: the network.
        batch: images per step.
        threads: ``torch.set_num_threads`` (XLA's thread count).
        seed: initial weights and data.
        device: ``"cpu"`` or ``"cuda"`` (:func:`torch_device`).

    Returns:
        ``(run, first_call_s)`` as :func:`jax_runner`.
    """
    torch.set_num_threads(threads)
    loss_fn, params = torch_model(torch, arch, seed, device)
    moments = [torch.zeros_like(p) for p in params]
    xs, ys = _batches(arch, batch, seed)
    xs_t = [
        torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        .to(device)
        .contiguous(memory_format=torch.channels_last)
        for x in xs
    ]
    ys_t = [torch.from_numpy(y.astype(np.int64)).to(device) for y in ys]
    state = {"i": 0}

    def one(x: Any, y: Any) -> None:
        loss, logits = loss_fn(x, y)
        loss.backward()
        with torch.no_grad():
            (logits.argmax(dim=1) == y).float().mean()  # the accuracy jaxnet's step returns
            for p, m in zip(params, moments, strict=True):
                m.mul_(MOMENTUM).add_(p.grad, alpha=1 - MOMENTUM)
                p.sub_((m + WEIGHT_DECAY * p).mul_(LEARNING_RATE))
                p.grad = None

    def run(k: int) -> None:
        i = state["i"]
        for _ in range(k):
            one(xs_t[i % DATA_BATCHES], ys_t[i % DATA_BATCHES])
            i += 1
        torch_sync(torch, device)
        state["i"] = i

    start = time.perf_counter()
    run(1)
    return run, time.perf_counter() - start


def matmul_runners(torch: Any | None, threads: int, device: str = "cpu") -> dict[str, Runner]:
    """Runners for one float32 ``MATMUL_N``-cubed product in XLA (and PyTorch if given)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((MATMUL_N, MATMUL_N)).astype(np.float32)
    b = rng.standard_normal((MATMUL_N, MATMUL_N)).astype(np.float32)
    a_dev, b_dev = jax.device_put(a), jax.device_put(b)
    product = jax.jit(jnp.dot)

    def run_xla(k: int) -> None:
        out = None
        for _ in range(k):
            out = product(a_dev, b_dev)
        jax.block_until_ready(out)

    run_xla(1)
    runners = {"matmul_xla": run_xla}
    if torch is not None:
        torch.set_num_threads(threads)
        a_t, b_t = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)

        def run_torch(k: int) -> None:
            for _ in range(k):
                torch.mm(a_t, b_t)
            torch_sync(torch, device)

        run_torch(1)
        runners["matmul_torch"] = run_torch
    return runners


# ---------------------------------------------------------------------------------------------
# Interleaved timing
# ---------------------------------------------------------------------------------------------


def calibrate(run: Runner, window_s: float) -> int:
    """How many calls of ``run(1)`` fill about ``window_s`` seconds (at least 1)."""
    start = time.perf_counter()
    run(2)
    per_call = (time.perf_counter() - start) / 2
    return max(1, round(window_s / max(per_call, 1e-9)))


def interleaved(
    runners: dict[str, Runner], settings: Settings
) -> dict[str, tuple[int, list[float]]]:
    """Time every runner in ``settings.windows`` rounds, one window each per round.

    The order rotates from round to round, so no runner always follows the same one.

    Args:
        runners: name -> ``run(k)``.
        settings: rounds and seconds per window.

    Returns:
        name -> ``(calls per window, [seconds per call in each round])``.
    """
    names = list(runners)
    calls = {name: calibrate(runners[name], settings.window_s) for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(settings.windows):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name](calls[name])
            seconds[name].append((time.perf_counter() - start) / calls[name])
    return {name: (calls[name], seconds[name]) for name in names}


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median over rounds of ``denominator[r] / numerator[r]`` (a speed ratio of times)."""
    return statistics.median(d / n for n, d in zip(numerator, denominator, strict=True))


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def bench_group(
    net: str,
    batch: int,
    settings: Settings,
    torch: Any | None,
    threads: int,
    devices: int = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """Time the three methods (and the matrix product) on one network and batch size.

    Args:
        net: an architecture name (:func:`jaxnet.architectures.get`).
        batch: images per step.
        settings: rounds and seconds per window.
        torch: the ``torch`` module, or ``None`` to leave PyTorch out.
        threads: PyTorch's thread count.
        devices: more than 1 adds the method ``"analytic xN"``: the analytic rules
            data-parallel over N devices (where N divides ``batch``), and its ratio to one device.
        device: PyTorch's device (:func:`torch_device`).

    Returns:
        The group's JSON record: ``net``, ``batch``, ``flops_per_step``, ``methods`` (per
        method ``images_per_s``, ``step_ms``, ``gflops``, ``compile_s``, ``calls_per_window``,
        ``window_step_s``), ``matmul_gflops`` (per library) and ``ratios``.
    """
    arch = architectures.get(net)
    runners: dict[str, Runner] = {}
    first: dict[str, float] = {}
    for rules in ("analytic", "autodiff"):
        runners[rules], first[rules] = jax_runner(arch, batch, rules)
    parallel_name = f"analytic x{devices}"
    if devices > 1 and batch % devices == 0:
        runners[parallel_name], first[parallel_name] = jax_runner(
            arch, batch, "analytic", devices=devices
        )
    if torch is not None:
        runners["torch"], first["torch"] = torch_runner(torch, arch, batch, threads, device=device)
    runners.update(matmul_runners(torch, threads, device))
    timed = interleaved(runners, settings)

    flops = step_flops(arch, batch)
    methods = {}
    for name in (m for m in (*METHODS, parallel_name) if m in timed):
        calls, seconds = timed[name]
        step_s = statistics.median(seconds)
        methods[name] = {
            "images_per_s": batch / step_s,
            "step_ms": step_s * 1e3,
            "gflops": flops / step_s / 1e9,
            "compile_s": max(first[name] - step_s, 0.0),
            "calls_per_window": calls,
            "window_step_s": seconds,
        }
    matmul = {
        name.removeprefix("matmul_"): 2 * MATMUL_N**3 / statistics.median(timed[name][1]) / 1e9
        for name in timed
        if name.startswith("matmul_")
    }
    ratios = {"analytic/autodiff": median_ratio(timed["analytic"][1], timed["autodiff"][1])}
    if "torch" in timed:
        ratios["analytic/torch"] = median_ratio(timed["analytic"][1], timed["torch"][1])
    if parallel_name in timed:
        ratios[f"{parallel_name}/analytic"] = median_ratio(
            timed[parallel_name][1], timed["analytic"][1]
        )
    return {
        "net": arch.name,
        "batch": batch,
        "flops_per_step": flops,
        "methods": methods,
        "matmul_gflops": matmul,
        "ratios": ratios,
    }


def bench_epoch(
    quick: bool = False, batch: int = 64, epochs: int = 2, steps_per_call: int = STEPS_PER_CALL
) -> dict[str, Any]:
    """Full MNIST epochs through :func:`jaxnet.fit.fit` against steps x step time.

    The settings are the default MNIST experiment's (batch 64, cosine schedule, random shifts
    of up to 2 pixels); the images are random uint8 of MNIST's shape (58000 training images,
    as after the experiment's 2000-image validation split; 4096 with ``quick``). ``fit`` runs
    ``epochs + 1`` epochs, logging once per epoch, and the last ``epochs`` are timed from its
    history (the first one holds the compilation). The step time comes from the same jitted
    fit step that ``fit`` builds, called in a tight loop for one epoch's worth of steps right
    before and right after the ``fit`` calls (so all see the same load). ``fit`` runs twice:
    one step per call, then ``steps_per_call`` steps per compiled call.

    Args:
        quick: a small data set.
        batch: images per step.
        epochs: timed epochs, >= 1.
        steps_per_call: the second ``fit`` run's steps per call (``fit(steps_per_call=)``).

    Returns:
        ``epoch_s`` (mean of the timed epochs, each in ``epochs_s``), ``steps``, ``step_ms``,
        ``steps_x_step_s`` and ``ratio`` (epoch time over steps x step time), and ``several``:
        the same for ``steps_per_call`` steps per call, with ``speedup`` (one step per call's
        epoch time over this one's).
    """
    from jaxnet import data as data_lib
    from jaxnet.fit import FitConfig, TrainData, fit, initial_state, make_fit_step

    arch = architectures.mnist()
    n = EPOCH_IMAGES[quick]
    steps = n // batch
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, *arch.input_shape), dtype=np.uint8)
    labels = rng.integers(0, arch.num_classes, n).astype(np.int32)
    mean = np.array([images.mean() / 255.0], np.float32)
    config = FitConfig(
        iterations=(epochs + 1) * steps,
        batch_size=batch,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        warmup=min(200, steps),
        augment=True,
        crop_pad=2,
        flip=False,
        log_every=steps,
        eval_every=steps,
        checkpoint_every=(epochs + 2) * steps,
    )

    step = make_fit_step(arch, config, config.input_mean(mean))
    images_dev, labels_dev = jax.device_put(images), jax.device_put(labels)
    order = jax.device_put(data_lib.epoch_batches(n, batch, config.seed, 0))
    holder = {"state": initial_state(arch, config), "i": 0}

    def tight_loop(k: int) -> float:
        state, i = holder["state"], holder["i"]
        start = time.perf_counter()
        for _ in range(k):
            state = step(state, images_dev, labels_dev, order, np.int32(i))
            i += 1
        jax.block_until_ready(state)
        holder.update(state=state, i=i)
        return time.perf_counter() - start

    def fit_epochs(k: int) -> list[float]:
        no_images = np.zeros((0, *arch.input_shape), np.uint8)
        data = TrainData(images, labels, no_images, np.zeros(0, np.int32), mean)
        history = fit(arch, data, config, progress=False, steps_per_call=k).history
        elapsed = {round(row["iteration"]): row["elapsed_s"] for row in history}
        marks = [elapsed[e * steps] for e in range(1, epochs + 2)]
        return [b - a for a, b in itertools.pairwise(marks)]

    tight_loop(1)  # compile
    before = tight_loop(steps)
    epochs_s = fit_epochs(1)
    several_s = fit_epochs(steps_per_call)
    after = tight_loop(steps)

    epoch_s, several_epoch_s = statistics.mean(epochs_s), statistics.mean(several_s)
    step_s = (before + after) / (2 * steps)
    return {
        "net": arch.name,
        "batch": batch,
        "train_images": n,
        "steps": steps,
        "epoch_s": epoch_s,
        "epochs_s": epochs_s,
        "step_ms": step_s * 1e3,
        "steps_x_step_s": steps * step_s,
        "tight_loop_s": [before, after],
        "ratio": epoch_s / (steps * step_s),
        "several": {
            "steps_per_call": steps_per_call,
            "epoch_s": several_epoch_s,
            "epochs_s": several_s,
            "ratio": several_epoch_s / (steps * step_s),
            "speedup": epoch_s / several_epoch_s,
        },
    }


def run_benchmark(
    nets: Sequence[str] = DEFAULT_NETS,
    batches: Sequence[int] = DEFAULT_BATCHES,
    settings: Settings = FULL,
    use_torch: bool = True,
    epoch: bool = True,
    quick: bool = False,
    log: Callable[[str], None] = print,
    devices: int = 1,
    reuse_freed_memory: bool = False,
) -> dict[str, Any]:
    """Run the whole benchmark and return its JSON record.

    Args:
        nets: architecture names.
        batches: batch sizes.
        settings: rounds and seconds per window.
        use_torch: include PyTorch eager when it imports.
        epoch: include the full-epoch check.
        quick: a small data set for the epoch check.
        log: called with one line of progress per group.
        devices: more than 1 adds a data-parallel row per group (see :func:`bench_group`).
        reuse_freed_memory: recorded in the metadata: whether the caller made glibc keep
            freed memory (:func:`jaxnet.allocator.reuse_freed_memory`).

    Returns:
        ``{"meta": ..., "ceiling_gflops": ..., "groups": [...], "epoch": ... or None}``; see
        :func:`bench_group` and :func:`bench_epoch`. Each method of each group also gets
        ``fraction_of_ceiling``.
    """
    torch = import_torch() if use_torch else None
    device = None if torch is None else torch_device(torch)
    if torch is not None and device is None:
        log(f"PyTorch has no device to match JAX's {jax.default_backend()}: left out")
        torch = None
    threads = cpu_threads()
    meta = {
        "jax": jax.__version__,
        "torch": None if torch is None else torch.__version__,
        "torch_device": device,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "threads": threads,
        "device": str(jax.devices()[0]),
        "device_count": jax.device_count(),
        "reuse_freed_memory": reuse_freed_memory,
        "load_average_start": load_average(),
        "windows": settings.windows,
        "window_s": settings.window_s,
        "matmul_n": MATMUL_N,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    groups = []
    for net in nets:
        for batch in batches:
            log(f"timing {net} at batch {batch} ...")
            groups.append(
                bench_group(net, batch, settings, torch, threads, devices, device or "cpu")
            )
    ceiling = max(
        statistics.median([g["matmul_gflops"][lib] for g in groups])
        for lib in groups[0]["matmul_gflops"]
    )
    for group in groups:
        for record in group["methods"].values():
            record["fraction_of_ceiling"] = record["gflops"] / ceiling
    epoch_record = None
    if epoch:
        log("timing a full MNIST epoch through jaxnet.fit.fit ...")
        epoch_record = bench_epoch(quick)
    meta["load_average_end"] = load_average()
    return {"meta": meta, "ceiling_gflops": ceiling, "groups": groups, "epoch": epoch_record}


def format_table(result: dict[str, Any]) -> str:
    """The benchmark as Markdown: the ceiling, one row per network and batch, the epoch check."""
    meta = result["meta"]
    lines = [
        f"CPU: {meta['cpu']}, {meta['threads']} threads (XLA and PyTorch); jax {meta['jax']}, "
        f"torch {meta['torch'] or 'not installed'}; load average {_fmt(meta['load_average_start'])}"
        f" -> {_fmt(meta['load_average_end'])}; malloc: "
        + ("freed memory kept for reuse" if meta.get("reuse_freed_memory") else "glibc defaults"),
    ]
    matmul = ", ".join(
        f"{lib} {statistics.median(g['matmul_gflops'][lib] for g in result['groups']):.0f}"
        for lib in result["groups"][0]["matmul_gflops"]
    )
    lines.append(
        f"float32 {meta['matmul_n']}^3 matrix product, GFLOP/s: {matmul}; "
        f"ceiling {result['ceiling_gflops']:.0f}"
    )
    lines.append("")
    lines.append(
        "| network | batch | analytic img/s | autodiff img/s | torch img/s | analytic/autodiff "
        "| analytic/torch | GFLOP/s (% of ceiling) analytic / autodiff / torch "
        "| compile s analytic / autodiff |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for g in result["groups"]:
        m = g["methods"]

        def ips(name: str, m: dict = m) -> str:
            return f"{m[name]['images_per_s']:.0f}" if name in m else "-"

        def gf(name: str, m: dict = m) -> str:
            if name not in m:
                return "-"
            return f"{m[name]['gflops']:.1f} ({100 * m[name]['fraction_of_ceiling']:.0f}%)"

        torch_ratio = g["ratios"].get("analytic/torch")
        lines.append(
            f"| {g['net']} | {g['batch']} | {ips('analytic')} | {ips('autodiff')} "
            f"| {ips('torch')} | {g['ratios']['analytic/autodiff']:.2f} "
            f"| {'-' if torch_ratio is None else f'{torch_ratio:.2f}'} "
            f"| {gf('analytic')} / {gf('autodiff')} / {gf('torch')} "
            f"| {m['analytic']['compile_s']:.1f} / {m['autodiff']['compile_s']:.1f} |"
        )
    for g in result["groups"]:
        for name, ratio in g["ratios"].items():
            if name.startswith("analytic x"):
                lines.append("")
                record = g["methods"][name.split("/")[0]]
                lines.append(
                    f"data-parallel, {g['net']} at batch {g['batch']}: {name.split('/')[0]} "
                    f"devices {record['images_per_s']:.0f} img/s, {ratio:.2f}x one device"
                )
    epoch = result.get("epoch")
    if epoch:
        lines.append("")
        lines.append(
            f"MNIST epoch through jaxnet.fit.fit (batch {epoch['batch']}, {epoch['steps']} steps,"
            f" {epoch['train_images']} images): {epoch['epoch_s']:.2f} s (mean of "
            f"{len(epoch['epochs_s'])}); steps x step time in a tight loop "
            f"{epoch['steps_x_step_s']:.2f} s ({epoch['step_ms']:.2f} ms/step); ratio "
            f"{epoch['ratio']:.3f} (target <= 1.10)"
        )
        several = epoch["several"]
        lines.append(
            f"the same with {several['steps_per_call']} steps per compiled call "
            f"(fit(steps_per_call={several['steps_per_call']})): {several['epoch_s']:.2f} s, "
            f"{several['speedup']:.2f}x one step per call"
        )
    load = meta["load_average_start"]
    if load is not None and load > meta["threads"]:
        lines.append("")
        lines.append(
            f"note: the load average ({load:.1f}) exceeds the {meta['threads']} CPUs: other "
            "processes shared them, so the figures are noisy (PyTorch's OpenMP threads most)."
        )
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the benchmark, print the table and write the JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.benchmark",
        description="Train-step throughput of jaxnet (analytic rules, autodiff) and PyTorch.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter windows")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES), metavar="B"
    )
    parser.add_argument("--nets", nargs="+", default=list(DEFAULT_NETS), metavar="NET")
    parser.add_argument("--json", type=Path, default=Path("benchmark.json"), metavar="PATH")
    parser.add_argument("--windows", type=int, default=None, help="timed rounds per group")
    parser.add_argument("--window-s", type=float, default=None, help="seconds per window")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--no-epoch", action="store_true", help="skip the full-epoch check")
    parser.add_argument(
        "--reuse-freed-memory",
        action="store_true",
        help="make glibc keep freed memory for reuse (jaxnet.allocator.reuse_freed_memory()) "
        "before timing, for every method alike",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        help="also time the analytic rules data-parallel over N devices (on CPU: N virtual "
        "devices, made before JAX starts)",
    )
    args = parser.parse_args(argv)
    if args.devices < 1:
        parser.error(f"--devices must be >= 1, got {args.devices}")
    parallel.request_cpu_devices(args.devices)
    reuse = allocator.reuse_freed_memory() if args.reuse_freed_memory else False
    if jax.device_count() < args.devices:
        parser.error(f"--devices {args.devices}: JAX sees only {jax.device_count()} device(s)")

    base = QUICK if args.quick else FULL
    settings = Settings(
        windows=args.windows if args.windows is not None else base.windows,
        window_s=args.window_s if args.window_s is not None else base.window_s,
    )
    if settings.windows < 1 or not settings.window_s > 0:
        parser.error("--windows must be >= 1 and --window-s > 0")
    if any(b < 1 for b in args.batches):
        parser.error(f"--batches must be positive, got {args.batches}")
    try:
        nets = [architectures.get(name).name for name in args.nets]
    except ValueError as error:
        parser.error(str(error))

    result = run_benchmark(
        nets,
        args.batches,
        settings,
        use_torch=not args.no_torch,
        epoch=not args.no_epoch,
        quick=args.quick,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        devices=args.devices,
        reuse_freed_memory=reuse,
    )
    print(format_table(result), end="")
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
