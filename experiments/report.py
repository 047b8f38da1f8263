"""Gather finished runs into ``report.md``: our numbers beside the seed report's.

    python -m experiments.report                 # reads runs/*/, writes runs/report.md
    python -m experiments.report --runs DIR --out FILE

Every folder under ``--runs`` that holds a finished run (``metrics.json`` and ``config.json``)
becomes a section with its test accuracy next to the seed's, per-class precision and recall,
the parameter table, training time, hardware, and its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from experiments.console import error
from experiments.run_folder import FIGURES, TABLES
from jaxnet.io import write_text

SEED_ACCURACY = {"mnist": 0.972, "cifar10_baseline": 0.48, "cifar10_modified": 0.58}
"""The seed report's test accuracy (Lund FMAN45, assignment 3) per network: the one table the
commands' summary lines and this report quote."""
SEED_NOTES = {
    "mnist": "Seed: 97.2% (its Table 2), with the starter's settings.",
    "cifar10_baseline": "Seed: about 48% with the starter's settings.",
    "cifar10_modified": (
        "Seed: 58% (its Table 3 network). The seed's Table 4 of per-class precision and "
        "recall cannot be right: on CIFAR-10's balanced test set (1000 images per class) the "
        "mean of the per-class recalls equals the accuracy, yet its recalls average 0.51 "
        "while it reports 58%. Ours below are computed from the confusion matrix: precision "
        "= TP / predicted as that class, recall = TP / actually that class."
    ),
}


def find_runs(root: Path) -> list[Path]:
    """Run folders under ``root`` (itself included) that hold a finished run, sorted."""
    found = [p.parent for p in root.glob("*/metrics.json") if (p.parent / "config.json").exists()]
    if (root / "metrics.json").exists() and (root / "config.json").exists():
        found.append(root)
    return sorted(found)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _load(run: Path) -> tuple[dict, dict]:
    try:
        return (
            json.loads((run / "config.json").read_text()),
            json.loads((run / "metrics.json").read_text()),
        )
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{run}: cannot read its config.json or metrics.json ({err})") from None


def _seed_network(config: dict) -> str | None:
    """The run's network, as the seed report has it; None for a run on one's own images."""
    return None if config.get("image_folder") else config.get("architecture")


def render(runs: list[Path], out: Path) -> str:
    """The Markdown report for ``runs``; figure links are relative to ``out``'s folder."""
    table = [
        "# jaxnet: reproduction of the FMAN45 CNN report",
        "",
        "Each row is one run of `python -m experiments.<name>` on the real test set. The seed "
        "column is the report's own figure.",
        "",
        "| run | network | preset | test accuracy | seed report | parameters | iterations x "
        "batch | training time | device |",
        "|---|---|---|---:|---:|---:|---|---:|---|",
    ]
    sections = []
    for run in runs:
        config, metrics = _load(run)
        arch, preset = config.get("architecture", "?"), config.get("preset", "?")
        fit, env, seed = config.get("fit", {}), config.get("environment", {}), _seed_network(config)
        accuracy, took = _pct(metrics.get("test_accuracy")), metrics.get("train_time_s", 0)
        table.append(
            f"| `{run.name}` | {arch} | {preset} "
            f"| **{accuracy}** | {_pct(SEED_ACCURACY.get(seed))} "
            f"| {metrics.get('parameter_count', '?')} "
            f"| {fit.get('iterations', '?')} x {fit.get('batch_size', '?')} "
            f"| {took:.0f} s | {metrics.get('device', '?')} |"
        )
        sections += [
            "",
            f"## `{run.name}`: {arch}, preset `{preset}`",
            "",
            f"Test accuracy **{accuracy}** (test loss "
            f"{metrics.get('test_loss', float('nan')):.4f}); {SEED_NOTES.get(seed, '')}",
            "",
            f"Settings: `{json.dumps(fit, sort_keys=True)}`. Hardware: "
            f"{env.get('device', '?')} ({env.get('processor', '?')}), "
            f"{env.get('cpu_count', '?')} CPU cores, "
            f"{env.get('platform', '?')}; jax {env.get('jax', '?')}. Training took {took:.0f} s.",
        ]
        for name in TABLES:
            if (run / name).exists():
                sections += ["", (run / name).read_text().rstrip()]
        for name, title in FIGURES.items():
            if (run / name).exists():
                sections += ["", f"![{title}]({os.path.relpath(run / name, out.parent)})"]
    return "\n".join(table + sections) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="folder of run folders")
    parser.add_argument("--out", type=Path, help="report file (default: RUNS/report.md)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else args.runs / "report.md"
    runs = find_runs(args.runs)
    if not runs:
        return error(f"no finished runs (metrics.json and config.json) under {args.runs}", 1)
    try:
        text = render(runs, out)
    except ValueError as err:
        return error(str(err), 1)
    write_text(out, text)
    print(f"wrote {out} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
