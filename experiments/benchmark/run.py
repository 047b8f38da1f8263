"""``python -m experiments.benchmark``: each group timed, whole steps and per layer; the whole
run; the flags."""

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
    Method,
    Peers,
    Plan,
    import_peers,
    step_flops,
)
from experiments.benchmark.epoch import bench_epoch
from experiments.benchmark.methods import MATMUL_N, matmul_runners, ratio_pairs, step_methods
from experiments.benchmark.tables import format_table
from experiments.benchmark.timing import (
    FULL,
    LAYERS_FULL,
    LAYERS_QUICK,
    QUICK,
    Settings,
    interleaved,
    median_ratio,
    seconds,
)
from experiments.machine import cpu_model, load_average
from jaxnet import allocator, architectures, io, parallel
from jaxnet.network import parameter_rows


def one_line(error: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160] if text else '(no message)'}"


def layer_times(case: Case, methods: Sequence[Method], settings: Settings) -> dict[str, list]:
    """Every piece of every method's step (those with ``layers``) timed on its own, in
    interleaved windows: ``{method: [row, ...]}``, a row per piece in step order (``input``,
    each layer, ``loss``, ``update``) with ``layer``, ``kind``, ``forward_ms`` and
    ``backward_ms`` (``None`` for input and update), medians over the rounds."""
    runners = {
        f"{method.name}|{row}|{phase}": run
        for method in methods
        if method.layers is not None
        for (row, phase), run in method.layers(case).items()
    }
    for run in runners.values():
        run(1)  # compile
    kinds = {"input": "uint8 -> float", "loss": "softmax cross-entropy", "update": "optimizer"}
    kinds.update({row.layer: row.kind for row in parameter_rows(case.arch)})
    out: dict[str, list] = {}
    for key, (_, times) in interleaved(runners, settings).items():
        method, row, phase = key.split("|")
        rows = out.setdefault(method, [])
        if not rows or rows[-1]["layer"] != row:
            rows.append({"layer": row, "kind": kinds[row], "forward_ms": None, "backward_ms": None})
        rows[-1][f"{phase}_ms"] = statistics.median(times) * 1e3
    return out


def bench_group(
    case: Case, methods: Sequence[Method], settings: Settings, layer_settings: Settings | None
) -> dict[str, Any]:
    """Time every method (and the matrix product) on one network and batch size.

    Returns:
        The group's JSON record: ``net``, ``batch``, ``flops_per_step``, ``methods`` (per
        method ``images_per_s``, ``step_ms``, ``gflops``, ``compile_s``, ``calls_per_window``,
        ``window_step_s``), ``failed`` (optional method -> why), ``matmul_gflops`` (per
        library), ``ratios`` (``"a/b"``: how many times as fast ``a`` ran as ``b``) and
        ``layers`` (:func:`layer_times` with ``layer_settings``, or ``None``).
    """
    runners, first, failed = {}, {}, {}
    for method in methods:
        try:
            if (run := method.build(case)) is not None:
                first[method.name] = seconds(run)
                runners[method.name] = run
        except Exception as error:
            if not method.optional:
                raise
            failed[method.name] = one_line(error)
    timed = interleaved({**runners, **matmul_runners(case.peers)}, settings)
    flops = step_flops(case.arch, case.batch)
    records = {}
    for name in first:
        calls, times = timed[name]
        step_s = statistics.median(times)
        records[name] = {
            "images_per_s": case.batch / step_s,
            "step_ms": step_s * 1e3,
            "gflops": flops / step_s / 1e9,
            "compile_s": max(first[name] - step_s, 0.0),
            "calls_per_window": calls,
            "window_step_s": times,
        }
    return {
        "net": case.arch.name,
        "batch": case.batch,
        "flops_per_step": flops,
        "methods": records,
        "failed": failed,
        "matmul_gflops": {
            name.removeprefix("matmul_"): 2 * MATMUL_N**3 / statistics.median(times) / 1e9
            for name, (_, times) in timed.items()
            if name.startswith("matmul_")
        },
        "ratios": {
            f"{a}/{b}": median_ratio(timed[a][1], timed[b][1]) for a, b in ratio_pairs(list(first))
        },
        "layers": None
        if layer_settings is None
        else layer_times(case, [m for m in methods if m.name in first], layer_settings),
    }


def run_benchmark(
    plan: Plan | None = None,
    peers: Peers | None = None,
    log: Callable[[str], None] = print,
    reuse_freed_memory: bool = False,
) -> dict[str, Any]:
    """Run the whole benchmark (default: the full ``Plan()`` with every peer installed).

    Args:
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
    add = parser.add_argument
    add("--quick", action="store_true", help="fewer, shorter windows")
    add("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES), metavar="B")
    add("--nets", nargs="+", default=list(DEFAULT_NETS), metavar="NET")
    add("--json", type=Path, default=Path("benchmark.json"), metavar="PATH")
    add("--windows", type=int, default=None, help="timed rounds per group")
    add("--window-s", type=float, default=None, help="seconds per window")
    for flag, text in (
        ("--no-torch", "leave PyTorch out"),
        ("--no-equinox", "leave Equinox out"),
        ("--no-torch-compile", "leave torch.compile out (left out with --quick: ~30 s to "
         "compile each shape)"),
        ("--torch-variants", "also time the PyTorch formulations not kept (hand-written "
         "update, contiguous memory, foreach SGD)"),
        ("--no-layers", "skip the per-layer times"),
        ("--no-epoch", "skip the full-epoch check"),
        ("--reuse-freed-memory", "make glibc keep freed memory for reuse "
         "(jaxnet.allocator.reuse_freed_memory()) before timing, for every method alike"),
    ):  # fmt: skip
        add(flag, action="store_true", help=text)
    add("--devices", type=int, default=1, help="also time the analytic rules data-parallel "
        "over N devices (on CPU: N virtual devices, made before JAX starts)")  # fmt: skip
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
    base, layer_settings = (QUICK, LAYERS_QUICK) if args.quick else (FULL, LAYERS_FULL)
    settings = Settings(
        windows=base.windows if args.windows is None else args.windows,
        window_s=base.window_s if args.window_s is None else args.window_s,
    )
    if settings.windows < 1 or not settings.window_s > 0:
        parser.error("--windows must be >= 1 and --window-s > 0")
    if any(b < 1 for b in args.batches):
        parser.error(f"--batches must be positive, got {args.batches}")
    try:
        nets = tuple(architectures.get(name).name for name in args.nets)
    except ValueError as error:
        parser.error(str(error))
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
    peers = import_peers(use_torch=not args.no_torch, use_equinox=not args.no_equinox)
    log = partial(print, file=sys.stderr, flush=True)
    result = run_benchmark(plan, peers, log, reuse_freed_memory=reuse)
    print(format_table(result), end="")
    io.write_text(args.json, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0
