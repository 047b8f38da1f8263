"""``python -m experiments.benchmark``: the machine's facts, each group timed, the whole run, the
flags."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import jax

from experiments.benchmark.case import (
    DEFAULT_BATCHES,
    DEFAULT_NETS,
    TORCH_FORMAT,
    Case,
    Peers,
    Plan,
    import_peers,
    step_flops,
)
from experiments.benchmark.epoch import bench_epoch
from experiments.benchmark.methods import (
    MATMUL_N,
    Method,
    matmul_runners,
    ratio_pairs,
    step_methods,
)
from experiments.benchmark.pieces import layer_times
from experiments.benchmark.tables import format_table
from experiments.benchmark.timing import (
    FULL,
    LAYERS_FULL,
    LAYERS_QUICK,
    QUICK,
    Runner,
    Settings,
    interleaved,
    median_ratio,
)
from experiments.machine import cpu_model, load_average
from jaxnet import allocator, architectures, io, parallel


def one_line(error: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160] if text else '(no message)'}"


def bench_group(
    case: Case, methods: Sequence[Method], settings: Settings, layer_settings: Settings | None
) -> dict[str, Any]:
    """Time every method (and the matrix product) on one network and batch size.

    Args:
        case: the network, batch and peers.
        methods: the rows (:func:`step_methods`), the reference first.
        settings: rounds and seconds per window.
        layer_settings: the same for :func:`layer_times`; ``None`` leaves them out.

    Returns:
        The group's JSON record: ``net``, ``batch``, ``flops_per_step``, ``methods`` (per
        method ``images_per_s``, ``step_ms``, ``gflops``, ``compile_s``, ``calls_per_window``,
        ``window_step_s``), ``failed`` (optional method -> why), ``matmul_gflops`` (per
        library), ``ratios`` (``"a/b"``: how many times as fast ``a`` ran as ``b``) and
        ``layers`` (:func:`layer_times`, or ``None``).
    """
    runners: dict[str, Runner] = {}
    first: dict[str, float] = {}
    failed: dict[str, str] = {}
    for method in methods:
        try:
            run = method.build(case)
            if run is None:
                continue
            start = time.perf_counter()
            run(1)
            first[method.name] = time.perf_counter() - start
        except Exception as error:
            if not method.optional:
                raise
            failed[method.name] = one_line(error)
            continue
        runners[method.name] = run
    runners.update(matmul_runners(case.peers))
    timed = interleaved(runners, settings)

    flops = step_flops(case.arch, case.batch)
    records = {}
    for name in first:
        calls, seconds = timed[name]
        step_s = statistics.median(seconds)
        records[name] = {
            "images_per_s": case.batch / step_s,
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
    ratios = {
        f"{a}/{b}": median_ratio(timed[a][1], timed[b][1]) for a, b in ratio_pairs(list(first))
    }
    layers = None
    if layer_settings is not None:
        layers = layer_times(case, [m for m in methods if m.name in first], layer_settings)
    return {
        "net": case.arch.name,
        "batch": case.batch,
        "flops_per_step": flops,
        "methods": records,
        "failed": failed,
        "matmul_gflops": matmul,
        "ratios": ratios,
        "layers": layers,
    }


def run_benchmark(
    plan: Plan | None = None,
    peers: Peers | None = None,
    log: Callable[[str], None] = print,
    reuse_freed_memory: bool = False,
) -> dict[str, Any]:
    """Run the whole benchmark and return its JSON record.

    Args:
        plan: what to time (default: ``Plan()``, the full run).
        peers: the optional libraries (default: :func:`import_peers`, all that are installed).
        log: called with one line of progress per group.
        reuse_freed_memory: recorded in the metadata: whether the caller made glibc keep
            freed memory (:func:`jaxnet.allocator.reuse_freed_memory`).

    Returns:
        ``{"meta": ..., "ceiling_gflops": ..., "groups": [...], "epoch": ... or None}``; see
        :func:`bench_group` and :func:`bench_epoch`. Each method of each group also gets
        ``fraction_of_ceiling``.
    """
    plan = Plan() if plan is None else plan
    peers = import_peers() if peers is None else peers
    threads = parallel.xla_cpu_threads()
    if peers.torch is not None:
        peers.torch.torch.set_num_threads(threads)
    methods = step_methods(peers, plan)
    meta = {
        "jax": jax.__version__,
        "torch": None if peers.torch is None else peers.torch.torch.__version__,
        "equinox": None if peers.equinox is None else peers.equinox.eqx.__version__,
        "torch_device": peers.torch_device if peers.torch is not None else None,
        "pytorch_formulation": f"nn.Sequential, {TORCH_FORMAT}, torch.optim.SGD(dampening=mu, "
        "foreach default: a for-loop on CPU), nn.CrossEntropyLoss",
        "equinox_formulation": "eqx.nn layers on one NCHW image, jax.vmap over the batch, "
        "eqx.filter_jit + eqx.filter_value_and_grad, jaxnet.momentum",
        "reference": methods[0].name,
        "notes": list(peers.notes),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "threads": threads,
        "device": str(jax.devices()[0]),
        "device_count": jax.device_count(),
        "reuse_freed_memory": reuse_freed_memory,
        "load_average_start": load_average(),
        "windows": plan.settings.windows,
        "window_s": plan.settings.window_s,
        "matmul_n": MATMUL_N,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for note in peers.notes:
        log(note)
    groups = []
    for net in plan.nets:
        for batch in plan.batches:
            log(f"timing {net} at batch {batch} ...")
            case = Case(architectures.get(net), batch, peers)
            groups.append(bench_group(case, methods, plan.settings, plan.layer_settings))
    ceiling = max(
        statistics.median([g["matmul_gflops"][lib] for g in groups])
        for lib in groups[0]["matmul_gflops"]
    )
    for group in groups:
        for record in group["methods"].values():
            record["fraction_of_ceiling"] = record["gflops"] / ceiling
    epoch_record = None
    if plan.epoch:
        log("timing a full MNIST epoch through jaxnet.training.fit ...")
        epoch_record = bench_epoch(plan.quick)
    meta["load_average_end"] = load_average()
    return {"meta": meta, "ceiling_gflops": ceiling, "groups": groups, "epoch": epoch_record}


def build_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.benchmark",
        description="Train-step throughput of jaxnet (analytic rules, autodiff), PyTorch and "
        "Equinox, and where the time goes per layer.",
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
    parser.add_argument("--no-equinox", action="store_true", help="leave Equinox out")
    parser.add_argument(
        "--no-torch-compile",
        action="store_true",
        help="leave torch.compile out (left out with --quick: ~30 s to compile each shape)",
    )
    parser.add_argument(
        "--torch-variants",
        action="store_true",
        help="also time the PyTorch formulations not kept (hand-written update, contiguous "
        "memory, foreach SGD)",
    )
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer times")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the benchmark, print the table and write the JSON."""
    parser = build_parser()
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
        nets = tuple(architectures.get(name).name for name in args.nets)
    except ValueError as error:
        parser.error(str(error))
    layer_settings = LAYERS_QUICK if args.quick else LAYERS_FULL
    if args.windows is not None or args.window_s is not None:  # shorter pieces, same rounds
        layer_settings = replace(settings, window_s=settings.window_s / 8)
    plan = Plan(
        nets=nets,
        batches=tuple(args.batches),
        settings=settings,
        layer_settings=None if args.no_layers else layer_settings,
        devices=args.devices,
        torch_compile=not (args.no_torch_compile or args.quick),
        torch_variants=args.torch_variants,
        epoch=not args.no_epoch,
        quick=args.quick,
    )
    log = partial(print, file=sys.stderr, flush=True)
    peers = import_peers(use_torch=not args.no_torch, use_equinox=not args.no_equinox)
    result = run_benchmark(plan, peers, log, reuse_freed_memory=reuse)
    print(format_table(result), end="")
    io.write_text(args.json, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0
