"""The benchmark's record as Markdown for the terminal."""

from __future__ import annotations

import statistics
from typing import Any


def format_table(result: dict[str, Any]) -> str:
    """Set-up, one row per method, the targets, the other ratios, where time goes, the epoch
    check, and a note when other processes loaded the machine."""
    meta, groups = result["meta"], result["groups"]
    ref, load = meta["reference"], meta["load_average_start"]
    malloc = "freed memory kept for reuse" if meta.get("reuse_freed_memory") else "glibc defaults"
    matmul = ", ".join(
        f"{lib} {statistics.median(g['matmul_gflops'][lib] for g in groups):.0f}"
        for lib in groups[0]["matmul_gflops"]
    )
    lines = [
        f"CPU: {meta['cpu']}, {meta['threads']} threads (XLA and PyTorch); jax {meta['jax']}, "
        f"torch {meta['torch'] or 'not installed'}, equinox {meta['equinox'] or 'not installed'}"
        f"; load average {_fmt(load)} -> {_fmt(meta['load_average_end'])}; malloc: {malloc}",
        f"PyTorch: {meta['pytorch_formulation']}",
        f"Equinox: {meta['equinox_formulation']}",
        *meta["notes"],
        f"float32 {meta['matmul_n']}^3 matrix product, GFLOP/s: {matmul}; "
        f"ceiling {result['ceiling_gflops']:.0f}",
        "",
        f"| network | batch | method | img/s | ms/step | GFLOP/s | % of ceiling | {ref} / it "
        "| first call s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for g in groups:
        for name, m in g["methods"].items():
            ratio = g["ratios"].get(f"{ref}/{name}")
            lines.append(
                f"| {g['net']} | {g['batch']} | {name} | {m['images_per_s']:.0f} "
                f"| {m['step_ms']:.2f} | {m['gflops']:.1f} | {100 * m['fraction_of_ceiling']:.0f}% "
                f"| {'-' if ratio is None else f'{ratio:.2f}'} | {m['compile_s']:.1f} |"
            )
    for g in groups:
        for name, why in g["failed"].items():
            lines.append(f"{name} on {g['net']} at batch {g['batch']}: failed, {why}")
    lines += ["", *_targets(ref, groups)]
    for g in groups:
        others = []
        for key, ratio in g["ratios"].items():
            a, b = key.split("/", 1)
            if a != ref:  # the reference against each method is in the table above
                others.append(
                    f"{g['net']} at batch {g['batch']}: {a} ran {ratio:.2f}x as fast as {b}"
                )
        lines += ["", *others] if others else []
        lines += ["", *format_layers(g)] if g["layers"] else []
    lines += _epoch_lines(result.get("epoch"))
    if load is not None and load > meta["threads"]:
        lines += [
            "",
            f"note: the load average ({load:.1f}) exceeds the {meta['threads']} CPUs: other "
            "processes shared them, so the figures are noisy (PyTorch's OpenMP threads most).",
        ]
    return "\n".join(lines) + "\n"


def _targets(ref: str, groups: list[dict[str, Any]]) -> list[str]:
    """The issue's targets per group: the reference against PyTorch and Equinox, % of ceiling."""
    lines = [
        f"| targets: {ref} | batch | / PyTorch (>= 1.0) | / Equinox (>= 1.5) "
        "| % of ceiling (CIFAR-10 >= 45%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for g in groups:
        cells = []
        for peer, target in (("PyTorch", 1.0), ("Equinox", 1.5)):
            r = g["ratios"].get(f"{ref}/{peer}")
            cells.append("-" if r is None else f"{r:.2f} {'met' if r >= target else 'not met'}")
        fraction = g["methods"][ref]["fraction_of_ceiling"]
        mark = (" met" if fraction >= 0.45 else " not met") if g["net"].startswith("cifar") else ""
        lines.append(
            f"| {g['net']} | {g['batch']} | {' | '.join(cells)} | {100 * fraction:.0f}%{mark} |"
        )
    return lines


def format_layers(group: dict[str, Any]) -> list[str]:
    """Where time goes in one group: forward / backward ms of every piece, per method."""
    layers = group["layers"]
    names = list(layers)

    def row(label: str, cells: list[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    def fwd_bwd(piece: dict[str, Any]) -> str:
        backward = piece["backward_ms"]
        return f"{piece['forward_ms']:.3f}" + ("" if backward is None else f" / {backward:.3f}")

    sums = [sum((r["forward_ms"] or 0) + (r["backward_ms"] or 0) for r in layers[n]) for n in names]
    return [
        f"where time goes, {group['net']} at batch {group['batch']} (ms, forward / backward, "
        "each piece on its own):",
        "",
        row("piece", names),
        "|---|" + "---:|" * len(names),
        *(
            row(f"{piece['layer']} ({piece['kind']})", [fwd_bwd(layers[n][i]) for n in names])
            for i, piece in enumerate(layers[names[0]])
        ),
        row("sum of the pieces", [f"{s:.2f}" for s in sums]),
        row("whole step", [f"{group['methods'][n]['step_ms']:.2f}" for n in names]),
    ]


def _epoch_lines(epoch: dict[str, Any] | None) -> list[str]:
    if not epoch:
        return []
    several = epoch["several"]
    return [
        "",
        f"MNIST epoch through jaxnet.training.fit (batch {epoch['batch']}, {epoch['steps']} steps,"
        f" {epoch['train_images']} images): {epoch['epoch_s']:.2f} s (mean of "
        f"{len(epoch['epochs_s'])}); steps x step time in a tight loop "
        f"{epoch['steps_x_step_s']:.2f} s ({epoch['step_ms']:.2f} ms/step); ratio "
        f"{epoch['ratio']:.3f} (target <= 1.10)",
        f"the same with {several['steps_per_call']} steps per compiled call "
        f"(fit(steps_per_call={several['steps_per_call']})): {several['epoch_s']:.2f} s, "
        f"{several['speedup']:.2f}x one step per call",
    ]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"
