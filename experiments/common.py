"""What every experiment command shares: flags, presets, the run folder, and its outputs.

An experiment module (``experiments/mnist.py``, ``experiments/cifar10.py``) names its
architecture, its presets and how to load its data; :func:`main` does the rest:

1. parse and check the flags (a bad setting exits with status 2 before any work, as argparse
   does), refuse a folder that holds another run unless ``--resume`` or ``--overwrite``;
2. load the data (a missing or bad file is one line on stderr and status 1);
3. train with :func:`jaxnet.fit.fit` (progress bar, checkpoints, Ctrl-C, NaN guard);
4. evaluate on the test set and write ``config.json``, ``history.csv``, ``metrics.json``,
   ``params.npz``, the figures and the Markdown tables into the run folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

OUTPUT_FILES = (
    "config.json",
    "history.csv",
    "metrics.json",
    "params.npz",
    "kernels.png",
    "misclassified.png",
    "confusion_matrix.png",
    "learning_curves.png",
    "parameters.md",
    "per_class.md",
)
CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class Preset:
    """A named set of training settings.

    Attributes:
        fit: :class:`jaxnet.fit.FitConfig` fields (``batch_size``, ``learning_rate``,
            ``momentum``, ``weight_decay``, ``schedule``, ``warmup``, ``augment``, ...); the
            flags override them, and the run's seed, rules and intervals come from the flags.
        iterations: optimizer steps, or
        epochs: passes over the training split, turned into iterations.
        train_limit: keep only the first that many training images (before the validation
            split), as the CIFAR-10 starter loads two of the five batches.
        val_size: training images held out for validation.
        description: one line for ``--help``.
    """

    fit: dict[str, Any]
    iterations: int | None = None
    epochs: float | None = None
    train_limit: int | None = None
    val_size: int = 2000
    description: str = ""


@dataclass(frozen=True)
class Experiment:
    """One experiment command.

    Attributes:
        name: default run folder name (``runs/<name>``) and title.
        architecture: the ``jaxnet.architectures`` name.
        presets: ``{"best": ..., "seed": ...}``; ``best`` is the default.
        load: ``(args) -> jaxnet.datasets.Dataset``, may raise ``jaxnet.datasets.DataError``.
        module: the command, for messages (``experiments.mnist``).
        extra_args: adds the experiment's own flags to the parser.
        seed_accuracy: the seed report's test accuracy, for the summary line.
    """

    name: str
    architecture: str
    presets: dict[str, Preset]
    load: Callable[[argparse.Namespace], Any]
    module: str
    seed_accuracy: float | None = None
    extra_args: Callable[[argparse.ArgumentParser], None] | None = None


def build_parser(exp: Experiment, prog: str, description: str) -> argparse.ArgumentParser:
    """The flags every experiment takes; ``None`` defaults mean "from the preset"."""
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--preset",
        choices=sorted(exp.presets),
        default="best",
        help="'seed' reproduces the report's own settings; 'best' is our schedule. "
        + "; ".join(f"{k}: {v.description}" for k, v in exp.presets.items()),
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs") / exp.name,
        help="run folder for checkpoints, figures, tables and metrics",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data root holding mnist/ and cifar10/ (default: $JAXNET_DATA, else a "
        "per-user cache, downloading there when missing)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the size and md5 check of data files found locally",
    )
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iterations", type=int, default=None, help="optimizer steps in all")
    length.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="passes over the training split (converted to iterations)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="images per step")
    p.add_argument("--learning-rate", type=float, default=None, help="peak step size alpha")
    p.add_argument(
        "--momentum",
        type=float,
        default=None,
        help="mu in m = mu*m + (1-mu)*g (the report's eq. 30)",
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="lambda in w -= alpha*(m + lambda*w) (eq. 31)",
    )
    p.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default=None,
        help="learning-rate schedule: constant (the seed's) or warm-up + cosine decay",
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random crop with zero padding (and, for CIFAR-10, a horizontal flip) of training "
        "images, on the device",
    )
    p.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="training images held out for validation (seeded split)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for initialisation, split, data order and augmentation",
    )
    p.add_argument(
        "--rules",
        choices=("analytic", "autodiff"),
        default="analytic",
        help="gradients from the hand-written rules or from JAX autodiff",
    )
    p.add_argument("--log-every", type=int, default=100, help="iterations per history row")
    p.add_argument(
        "--eval-every", type=int, default=500, help="iterations between validation evaluations"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=1000,
        help="iterations between checkpoints (one is also saved at the end and at Ctrl-C)",
    )
    run = p.add_mutually_exclusive_group()
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its newest checkpoint"
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in --out (its outputs and checkpoints)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="train data-parallel on this many devices (default: all local devices); the "
        "batch size must be a multiple. On CPU, N virtual devices are made for N > 1",
    )
    p.add_argument(
        "--steps-per-call",
        type=int,
        default=1,
        help="optimizer steps per compiled call (K > 1: one launch per K steps, the same "
        "training up to float rounding, a K times longer compilation)",
    )
    p.add_argument(
        "--reuse-freed-memory",
        action="store_true",
        help="make glibc keep freed memory for reuse (jaxnet.allocator.reuse_freed_memory()): "
        "large-batch CPU steps 1.2-1.7x faster, peak memory 100-250 MiB higher",
    )
    if exp.extra_args is not None:
        exp.extra_args(p)
    return p


def _occupied(out: Path) -> bool:
    return (out / "config.json").exists() or (out / CHECKPOINT_DIR).exists()


def resolve_config(exp: Experiment, args: argparse.Namespace, n_train: int | None):
    """The :class:`jaxnet.fit.FitConfig` from the preset and the flags that override it."""
    from jaxnet.fit import FitConfig

    preset = exp.presets[args.preset]
    flags = {
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "schedule": args.schedule,
        "augment": args.augment,
    }
    settings = {**preset.fit, **{k: v for k, v in flags.items() if v is not None}}
    if args.iterations is not None:
        iterations = args.iterations
    else:
        epochs = args.epochs if args.epochs is not None else preset.epochs
        if epochs is not None:
            if n_train is None:
                raise ValueError("--epochs needs the training set size")
            iterations = max(1, round(epochs * (n_train // max(settings["batch_size"], 1))))
        else:
            iterations = preset.iterations
    settings["warmup"] = min(settings.get("warmup", 0), max(iterations - 1, 0))
    return FitConfig(
        **settings,
        iterations=iterations,
        seed=args.seed,
        rules=args.rules,
        log_every=args.log_every,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
    )


def _environment() -> dict[str, str]:
    import jax
    import jaxlib
    import optax

    device = jax.devices()[0]
    processor = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "processor": processor,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": f"{device.platform}: {device.device_kind}",
        "device_count": str(jax.device_count()),
        "cpu_count": str(os.cpu_count()),
    }


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n")
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _error(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def main(exp: Experiment, argv: list[str] | None, prog: str, description: str) -> int:
    """Run one experiment command; returns the process exit status."""
    parser = build_parser(exp, prog, description)
    args = parser.parse_args(argv)
    out: Path = args.out

    # Settings first: refuse before any work (status 2, as argparse does).
    if args.epochs is not None and not args.epochs > 0:
        parser.error(f"--epochs must be positive, got {args.epochs}")
    if args.val_size is not None and args.val_size < 0:
        parser.error(f"--val-size must be >= 0, got {args.val_size}")
    if args.devices is not None and args.devices < 1:
        parser.error(f"--devices must be at least 1, got {args.devices}")
    if args.steps_per_call < 1:
        parser.error(f"--steps-per-call must be at least 1, got {args.steps_per_call}")
    if args.devices is not None and args.devices > 1:
        from jaxnet.parallel import request_cpu_devices

        request_cpu_devices(args.devices)  # before JAX starts its backend
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} exists and is not a folder")
    if _occupied(out) and not (args.resume or args.overwrite):
        parser.error(
            f"{out} holds another run: pass --resume to continue it or --overwrite to "
            "replace it, or choose another --out"
        )
    saved = None
    if args.resume:
        if not (out / "config.json").exists():
            parser.error(f"--resume: {out} holds no run to resume (no config.json)")
        saved = json.loads((out / "config.json").read_text())
        if saved.get("architecture") != exp.architecture:
            parser.error(
                f"--resume: {out} holds a run of {saved.get('architecture')!r}, "
                f"not {exp.architecture!r}"
            )
    else:
        try:
            resolve_config(exp, args, n_train=10**9).validate()
        except ValueError as err:
            parser.error(str(err))

    import jax

    from jaxnet import allocator, architectures
    from jaxnet.data import channel_mean, train_val_split
    from jaxnet.datasets import DataError
    from jaxnet.fit import FitConfig

    devices = args.devices if args.devices is not None else jax.local_device_count()
    if devices > jax.device_count():
        parser.error(
            f"--devices {devices}: JAX sees only {jax.device_count()} device(s) "
            f"({jax.devices()[0].platform})"
        )

    try:
        dataset = exp.load(args)
    except DataError as err:
        return _error(str(err), 1)

    if saved is not None:  # a resumed run keeps every setting it started with
        names = {f.name for f in fields(FitConfig)}
        config = FitConfig(**{k: v for k, v in saved["fit"].items() if k in names})
        val_size, seed = int(saved["val_size"]), config.seed
        train_limit = saved.get("train_limit")
        print(f"resuming with the settings saved in {out / 'config.json'}", file=sys.stderr)
    else:
        preset = exp.presets[args.preset]
        val_size = args.val_size if args.val_size is not None else preset.val_size
        seed = args.seed
        train_limit = preset.train_limit
    if train_limit is not None and train_limit < len(dataset.train_labels):
        dataset = dataset._replace(
            train_images=dataset.train_images[:train_limit],
            train_labels=dataset.train_labels[:train_limit],
        )
    n_all = len(dataset.train_labels)
    if val_size >= n_all:
        parser.error(f"--val-size {val_size} leaves no training images (the set has {n_all})")
    if val_size:
        train_x, train_y, val_x, val_y = train_val_split(
            dataset.train_images, dataset.train_labels, val_size, seed
        )
    else:
        train_x, train_y = dataset.train_images, dataset.train_labels
        val_x, val_y = train_x[:0], train_y[:0]
    # The split holds the training images now: let the loaded copy go (one data set less in
    # memory while training). A fresh empty array, not a view, which would keep it alive.
    dataset = dataset._replace(
        train_images=np.empty((0, *train_x.shape[1:]), train_x.dtype),
        train_labels=np.empty((0,), train_y.dtype),
    )
    if saved is None:
        try:
            config = resolve_config(exp, args, n_train=len(train_y))
            config.validate(len(train_y))
        except ValueError as err:
            parser.error(str(err))

    for what, size in (("batch size", config.batch_size), ("eval batch", config.eval_batch_size)):
        if size % devices:
            parser.error(
                f"{what} {size} does not divide over {devices} devices: use a multiple of "
                f"{devices}, or --devices 1"
            )
    args.devices = devices

    arch = architectures.get(exp.architecture)
    if tuple(dataset.train_images.shape[1:]) != tuple(arch.input_shape):
        return _error(
            f"the data's images are {dataset.train_images.shape[1:]}, the "
            f"{exp.architecture} network takes {tuple(arch.input_shape)}",
            1,
        )

    environment = _environment()
    if args.reuse_freed_memory and allocator.reuse_freed_memory():
        environment["malloc"] = "glibc, freed memory kept for reuse"
    if saved is not None:
        run_config = {**saved, "environment": environment}
    else:
        run_config = {
            "experiment": exp.name,
            "architecture": exp.architecture,
            "preset": args.preset,
            "val_size": val_size,
            "train_limit": train_limit,
            "data_dir": str(args.data_dir) if args.data_dir else None,
            "fit": asdict(config),
            "environment": environment,
        }
        if args.overwrite and out.exists():
            shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
            for name in OUTPUT_FILES:
                (out / name).unlink(missing_ok=True)
    # What turns an image into this network's input and its output into names (predict, explain).
    run_config["input"] = {
        "scale": config.pixel_scale,
        "mean": config.input_mean(channel_mean(train_x)).tolist(),
    }
    run_config["class_names"] = list(dataset.class_names)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", run_config)

    return _train_and_report(
        exp, arch, dataset, config, run_config, (train_x, train_y, val_x, val_y), args
    )


def _train_and_report(exp, arch, dataset, config, run_config, split, args) -> int:
    from jaxnet import metrics, network, plots
    from jaxnet.checkpoint import CheckpointManager, save_params
    from jaxnet.data import channel_mean
    from jaxnet.fit import DivergedError, TrainData, fit, history_to_csv
    from jaxnet.train import evaluate

    out: Path = args.out
    train_x, train_y, val_x, val_y = split
    mean = channel_mean(train_x)
    data = TrainData(train_x, train_y, val_x, val_y, mean)
    manager = CheckpointManager(out / CHECKPOINT_DIR, keep=3)
    mesh = args.devices if args.devices > 1 else None
    print(
        f"{exp.name}: {config.iterations} iterations of batch {config.batch_size} on "
        f"{len(train_y)} training images ({len(val_y)} held out for validation); "
        f"run folder {out}",
        file=sys.stderr,
    )
    try:
        result = fit(
            arch,
            data,
            config,
            checkpoints=manager,
            resume=args.resume,
            metadata={"run_config": run_config},
            progress=not args.no_progress,
            on_log=lambda history: history_to_csv(history, out / "history.csv"),
            mesh=mesh,
            steps_per_call=args.steps_per_call,
        )
    except DivergedError as err:
        return _error(str(err), 1)
    history = result.history
    history_to_csv(history, out / "history.csv")
    if result.interrupted:
        print(
            f"interrupted: a checkpoint is saved in {out / CHECKPOINT_DIR}; resume with\n  "
            f"python -m {exp.module} --out {out} --resume",
            file=sys.stderr,
        )
        return 130

    test = evaluate(
        arch,
        result.params,
        dataset.test_images,
        dataset.test_labels,
        config.eval_batch_size,
        config.input_mean(mean),
        mesh=mesh,
        scale=config.pixel_scale,
    )
    k = len(dataset.class_names)
    confusion = metrics.confusion_matrix(dataset.test_labels, test.predictions, k)
    precision, recall = metrics.precision_recall(confusion)
    n_params = network.count_params(arch)
    last_val = next((r for r in reversed(history) if not math.isnan(r["val_accuracy"])), None)
    report = {
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        "val_accuracy": last_val["val_accuracy"] if last_val else None,
        "per_class": {
            name: {
                "precision": _num(precision[i]),
                "recall": _num(recall[i]),
                "support": int(confusion[i].sum()),
            }
            for i, name in enumerate(dataset.class_names)
        },
        "confusion_matrix": confusion.tolist(),
        "class_names": list(dataset.class_names),
        "parameter_count": n_params,
        "iterations": config.iterations,
        "train_time_s": result.train_time_s,
        "images_per_second": config.iterations * config.batch_size / result.train_time_s
        if result.train_time_s > 0
        else None,
        "device": run_config["environment"]["device"],
        "peak_rss_mb": _peak_rss_mb(),
    }
    _write_json(out / "metrics.json", report)
    save_params(out / "params.npz", result.params)
    first = arch.layers[0].name
    plots.plot_kernels(
        np.asarray(result.params[first]["w"]),
        out / "kernels.png",
        title=f"{exp.name}: first-layer kernels",
    )
    plots.plot_misclassified(
        dataset.test_images,
        dataset.test_labels,
        test.predictions,
        dataset.class_names,
        out / "misclassified.png",
    )
    plots.plot_confusion_matrix(confusion, dataset.class_names, out / "confusion_matrix.png")
    plots.plot_learning_curves(history, out / "learning_curves.png")
    _write_text(out / "parameters.md", network.parameter_table(arch) + "\n")
    _write_text(
        out / "per_class.md", metrics.per_class_table(confusion, dataset.class_names) + "\n"
    )

    seed = f" (seed report: {exp.seed_accuracy:.1%})" if exp.seed_accuracy else ""
    print(
        f"{exp.name}: test accuracy {test.accuracy:.2%}{seed}, test loss {test.loss:.4f}, "
        f"{n_params} parameters, {result.train_time_s:.0f} s training, peak memory "
        f"{report['peak_rss_mb']:.0f} MiB; outputs in {out}"
    )
    return 0


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _num(x: float) -> float | None:
    return None if math.isnan(float(x)) else float(x)
