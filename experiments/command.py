"""What an experiment command is and accepts: its presets, its flags, and the settings they give.

An experiment module (``experiments/mnist.py``, ``experiments/cifar10.py``) describes itself as
an :class:`Experiment` (its network, its :class:`Preset` s, how to load its data);
:func:`build_parser` makes its flags (one per :class:`~jaxnet.training.FitConfig` field, whose
type, check and help come from the field, plus the run's own flags); :func:`fit_config` turns
a preset and the flags given into the run's settings. :func:`experiments.cli.main` runs it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, fields
from pathlib import Path
from typing import Any

from experiments.console import DATA_FLAGS
from jaxnet.training.config import (
    RESUMABLE,
    FitConfig,
    flag_name,
    nonnegative_int,
    positive,
    positive_int,
)


@dataclass(frozen=True)
class Preset:
    """A named set of training settings.

    Attributes:
        fit: :class:`~jaxnet.training.FitConfig` fields it overrides; the flags given override
            it in turn.
        iterations: optimizer steps, or
        epochs: passes over the training split, turned into iterations.
        train_limit: keep only the first that many training images (before the validation
            split), as the CIFAR-10 starter loads two of the five batches.
        val_size: training images held out for validation.
    """

    fit: dict[str, Any]
    iterations: int | None = None
    epochs: float | None = None
    train_limit: int | None = None
    val_size: int = 2000

    @property
    def description(self) -> str:
        """The preset as the flags that give the same settings, for ``--help``."""
        words = [_as_flag(name, value) for name, value in self.fit.items()]
        length = self.iterations if self.epochs is None else self.epochs
        words.append(_as_flag("iterations" if self.epochs is None else "epochs", length))
        if self.train_limit is not None:
            words.append(f"on the first {self.train_limit} training images")
        return " ".join(words)


def _as_flag(name: str, value: Any) -> str:
    """``("flip", False)`` -> ``--no-flip``; ``("warmup", 200)`` -> ``--warmup 200``."""
    if isinstance(value, bool):
        return f"--{'' if value else 'no-'}{flag_name(name)}"
    return (
        f"--{flag_name(name)} {value:g}"
        if isinstance(value, float)
        else f"--{flag_name(name)} {value}"
    )


@dataclass(frozen=True)
class Experiment:
    """One experiment command.

    Attributes:
        name: default run folder name (``runs/<name>``, :func:`default_out`) and title.
        architecture: the ``jaxnet.architectures`` name.
        presets: ``{"best": ..., "seed": ...}`` (and ``"long"``); ``best`` is the default.
        load: ``(args) -> (jaxnet.datasets.Dataset, record)``, may raise
            ``jaxnet.datasets.DataError``; ``record`` holds the
            :class:`~experiments.run_config.RunConfig` fields of where the data came from
            (``{}``, ``{"idx_dir": ...}``, ``{"image_folder": ...}``); a resumed run's are in
            ``args.saved``.
        module: the command, for messages: ``experiments.mnist``, or with the flags that pick
            the network (``experiments.cifar10 --arch baseline``), so that the resume line it
            prints continues the same run.
        seed_accuracy: the seed report's test accuracy, for the summary line.
        extra_args: adds the experiment's own flags to the parser.
    """

    name: str
    architecture: str
    presets: dict[str, Preset]
    load: Callable[[argparse.Namespace], Any]
    module: str
    seed_accuracy: float | None = None
    extra_args: Callable[[argparse.ArgumentParser], None] | None = None


class Refused(Exception):
    """A setting or run folder refused before any training: exit status 2, as argparse."""


def unchangeable(flag: str, was: Any, given: Any) -> Refused:
    """The refusal of a setting ``--resume`` cannot change (it shapes the network, the data or
    their order, which the checkpoint already holds)."""
    return Refused(
        f"--resume cannot change {flag} (the run has {was}, given {given}): only "
        f"{', '.join('--' + flag_name(n) for n in RESUMABLE)} may change; start a new run with "
        "another --out for the rest"
    )


def _checked(kind: type, name: str, check: Callable[[str, Any], None]) -> Callable[[str], Any]:
    """An argparse ``type=``: ``kind(text)``, then ``check``; its message on failure."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            message = f"{name} must be a number ({kind.__name__}), got {text!r}"
            raise argparse.ArgumentTypeError(message) from None
        try:
            check(name, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value

    return parse


def _add_setting(parser: argparse._ActionsContainer, f: Field) -> None:
    """The flag of one FitConfig field (its help and check from the field's metadata); absent
    from the namespace unless given."""
    check, flag = f.metadata["check"], flag_name(f.name)
    default = "" if f.default is MISSING else f" (default: the preset's, else {f.default})"
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": f.metadata["help"] + default}
    if f.type == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    elif hasattr(check, "choices"):
        kwargs["choices"] = check.choices
    else:
        kind = {"int": int, "float": float}[f.type]
        kwargs["type"] = _checked(kind, flag, check)
    parser.add_argument(f"--{flag}", **kwargs)


_RUN_FLAGS: dict[str, dict[str, Any]] = {
    **DATA_FLAGS,
    "--val-size": {
        "type": _checked(int, "val-size", nonnegative_int),
        "help": "training images held out for validation (seeded split)",
    },
    "--devices": {
        "type": _checked(int, "devices", positive_int),
        "help": "train data-parallel on this many devices (default: all local devices); the "
        "batch size must be a multiple. On CPU, N virtual devices are made for N > 1",
    },
    "--steps-per-call": {
        "type": _checked(int, "steps-per-call", positive_int),
        "default": 1,
        "help": "optimizer steps per compiled call (K > 1: one launch per K steps, the same "
        "training up to float rounding, a K times longer compilation)",
    },
    "--reuse-freed-memory": {
        "action": "store_true",
        "help": "make glibc keep freed memory for reuse (jaxnet.allocator.reuse_freed_memory()):"
        " large-batch CPU steps faster, peak memory higher (README's Speed section)",
    },
    "--no-progress": {"action": "store_true", "help": "no progress bar"},
    "--distributed": {
        "action": "store_true",
        "help": "join a multi-process run whose processes JAX finds itself (SLURM, Open MPI): "
        "train data-parallel over every process's devices; process 0 alone writes the run "
        "folder",
    },
    "--coordinator": {
        "metavar": "HOST:PORT",
        "help": "join a multi-process run by hand: process 0's address, with --num-processes "
        "and --process-id (as jax.distributed.initialize names them)",
    },
    "--num-processes": {
        "type": _checked(int, "num-processes", positive_int),
        "help": "the processes of a multi-process run (with --coordinator)",
    },
    "--process-id": {
        "type": _checked(int, "process-id", nonnegative_int),
        "help": "this process, 0 .. N-1 (with --coordinator); process 0 writes the run folder",
    },
}
"""The flags of a command that are not training settings (each group below is exclusive)."""
_EITHER_OR = (
    {
        "--resume": {
            "action": "store_true",
            "help": "continue the run in --out from its newest checkpoint",
        },
        "--overwrite": {
            "action": "store_true",
            "help": "replace a run already in --out (its outputs and checkpoints)",
        },
    },
    {
        "--epochs": {
            "type": _checked(float, "epochs", positive),
            "help": "passes over the training split (converted to iterations)",
        }
    },
)


def build_parser(exp: Experiment, prog: str, description: str) -> argparse.ArgumentParser:
    """The flags every experiment takes: the run's own, then one per FitConfig field."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    presets = "; ".join(f"{k}: {v.description}" for k, v in exp.presets.items())
    p.add_argument(
        "--preset",
        choices=sorted(exp.presets),
        default=None,
        help=f"'seed': the report's own settings; 'best' (default): ours; 'long' (where "
        f"there is one): ours, longer. {presets}",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"run folder for checkpoints, figures, tables and metrics (default: runs/{exp.name} "
        f"for the best preset, runs/{exp.name}_PRESET for another, so that no preset's run "
        "replaces another's)",
    )
    for flag, kwargs in _RUN_FLAGS.items():
        p.add_argument(flag, **kwargs)
    groups = [p.add_mutually_exclusive_group() for _ in _EITHER_OR]
    for group, flags in zip(groups, _EITHER_OR, strict=True):
        for flag, kwargs in flags.items():
            group.add_argument(flag, **kwargs)
    length = groups[1]
    for f in fields(FitConfig):  # --iterations or --epochs
        _add_setting(length if f.name == "iterations" else p, f)
    if exp.extra_args is not None:
        exp.extra_args(p)
    return p


def chosen_preset(args: argparse.Namespace) -> str:
    """``--preset``, else ``best``. (The parser leaves ``args.preset`` None when the flag is
    not given, so that ``--resume`` can tell a preset given from the default.)"""
    return args.preset or "best"


def default_out(exp: Experiment, preset: str) -> Path:
    """The run folder when ``--out`` is not given: ``runs/<name>``, ``runs/<name>_<preset>``
    for a preset other than ``best``."""
    return Path("runs") / (exp.name if preset == "best" else f"{exp.name}_{preset}")


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~jaxnet.training.FitConfig` settings given as flags (the parser leaves the
    others out of ``args``)."""
    return {f.name: getattr(args, f.name) for f in fields(FitConfig) if hasattr(args, f.name)}


def epochs_to_iterations(epochs: float, n_train: int, batch_size: int) -> int:
    """``--epochs`` as optimizer steps: ``epochs`` passes of ``n_train // batch_size`` steps,
    rounded, at least 1."""
    return max(1, round(epochs * (n_train // batch_size)))


def fit_config(exp: Experiment, args: argparse.Namespace, n_train: int) -> FitConfig:
    """The run's :class:`~jaxnet.training.FitConfig`: the preset, then the flags given.

    Raises:
        ValueError: a setting the config refuses (warm-up longer than the run, ...).
    """
    preset = exp.presets[chosen_preset(args)]
    given = given_settings(args)
    settings = {**preset.fit, **given}
    if "iterations" not in given:
        epochs = args.epochs if args.epochs is not None else preset.epochs
        settings["iterations"] = (
            epochs_to_iterations(epochs, n_train, settings["batch_size"])
            if epochs is not None
            else preset.iterations
        )
    if "warmup" not in given:  # a preset's warm-up, cut to fit a short run
        settings["warmup"] = min(settings.get("warmup", 0), settings["iterations"] - 1)
    return FitConfig(**settings)
