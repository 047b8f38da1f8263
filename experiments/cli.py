"""Run an experiment command: from its parsed flags to the trained, evaluated run folder.

:func:`main` takes an :class:`~experiments.command.Experiment` and the command line:

1. parse the flags (:func:`experiments.command.build_parser`); take the run folder's lock
   (held until the process ends); refuse a bad setting, a folder another process holds or that
   cannot be written, a folder that holds another run without ``--resume`` or
   ``--overwrite``, or a setting ``--resume`` cannot change, with status 2, before any work;
2. load the data (a missing or bad file is one line on stderr and status 1; an unusable
   ``--image-dir`` status 2), hold out the validation split, and make the run's
   :class:`~experiments.run_config.RunConfig` (a new run: the preset, then the flags given; a
   resumed one: its ``config.json``), then write it as ``config.json``;
3. train with :func:`jaxnet.training.fit` (progress bar, checkpoints, NaN stop; Ctrl-C or
   SIGTERM saves a checkpoint and exits with 128 + the signal; a run that cannot be resumed
   from its checkpoint is one line on stderr and status 1);
4. evaluate the test set and write the run folder (:class:`experiments.run_folder.RunFolder`).

A file that cannot be written (a full disk) is one line naming it, status 1; the checkpoints
written before it stay, and ``--resume`` continues from the newest.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from experiments import image_dir
from experiments.command import (
    Experiment,
    Refused,
    build_parser,
    chosen_preset,
    default_out,
    epochs_to_iterations,
    fit_config,
    given_settings,
    unchangeable,
)
from experiments.console import error
from experiments.machine import environment, peak_rss_mb
from experiments.run_config import ConfigError, RunConfig
from experiments.run_folder import FolderInUse, RunFolder
from jaxnet.training.config import RESUMABLE, flag_name


def main(exp: Experiment, argv: list[str] | None, prog: str, description: str) -> int:
    """Run one experiment command; returns the process exit status."""
    parser = build_parser(exp, prog, description)
    args = parser.parse_args(argv)
    exp = image_dir.named(exp, args)
    if args.out is None:
        args.out = default_out(exp, chosen_preset(args))
    folder = RunFolder(args.out)
    try:
        return _run(exp, parser, args, folder)
    finally:
        folder.release()


def _run(exp: Experiment, parser: argparse.ArgumentParser, args: argparse.Namespace, folder):
    """:func:`main` once the flags are parsed and the folder named; the exit status."""
    try:
        args.writer = _join(args)
        args.saved = _check_folder(exp, args, folder)  # a resumed run's RunConfig, else None
        if args.saved is not None and args.saved.experiment != exp.name:
            # A resumed run keeps the name it started with (a run on --image-dir is named
            # after its folder), and a data set of one's own has no seed report to compare.
            exp = replace(exp, name=args.saved.experiment, seed_accuracy=None)
        args.devices = _device_count(args.devices, distributed=_joined(args))
        from jaxnet.datasets import DataError, ImageFolderError

        try:
            dataset, data_record = exp.load(args)
        except DataError as err:  # a folder named on the command line: a usage error, as argparse
            return error(str(err), 2 if isinstance(err, ImageFolderError) else 1)
        config, dataset, split = _settle(exp, args, dataset, data_record)
    except Refused as err:
        parser.error(str(err))
    from jaxnet import architectures

    arch = architectures.get(exp.architecture, num_classes=len(dataset.class_names))
    if tuple(dataset.test_images.shape[1:]) != tuple(arch.input_shape):
        return error(
            f"the data's images are {dataset.test_images.shape[1:]}, the "
            f"{exp.architecture} network takes {tuple(arch.input_shape)}",
            1,
        )
    from jaxnet import allocator

    recorded = {**config.to_json(), "environment": environment()}
    if args.reuse_freed_memory and allocator.reuse_freed_memory():
        recorded["environment"]["malloc"] = "glibc, freed memory kept for reuse"
    if args.overwrite and args.writer:
        folder.clear()
    try:
        if args.writer:
            folder.write_config(recorded)
    except OSError as err:
        return error(f"cannot write {err.filename}: {err.strerror}", 1)
    return _train_and_report(
        exp, folder, args, arch=arch, config=config, dataset=dataset, split=split
    )


def _check_folder(exp: Experiment, args: argparse.Namespace, folder: RunFolder) -> RunConfig | None:
    """Refuse a folder that is not free for this command; the saved config of a resumed run."""
    if folder.path.exists() and not folder.path.is_dir():
        raise Refused(f"--out {folder.path} exists and is not a folder")
    if args.writer:
        try:
            folder.lock()
        except FolderInUse as err:
            raise Refused(str(err)) from None
        except OSError as err:
            raise Refused(f"--out {folder.path}: cannot write there ({err.strerror})") from None
    if args.writer and folder.occupied and not (args.resume or args.overwrite):
        raise Refused(
            f"{folder.path} holds another run: pass --resume to continue it or --overwrite to "
            "replace it, or choose another --out"
        )
    if not args.resume:
        return None
    if not folder.config_path.exists():
        raise Refused(f"--resume: {folder.path} holds no run to resume (no config.json)")
    try:
        saved = RunConfig.read(folder.config_path)
    except ConfigError as err:
        raise Refused(f"--resume: {err}") from None
    if saved.architecture != exp.architecture:
        raise Refused(
            f"--resume: {folder.path} holds a run of {saved.architecture!r}, "
            f"not {exp.architecture!r}"
        )
    return saved


def _joined(args: argparse.Namespace) -> bool:
    """Whether the command was asked to join a multi-process run."""
    return args.distributed or args.coordinator is not None


def _join(args: argparse.Namespace) -> bool:
    """Join the multi-process run asked for, before JAX starts; whether this process writes.

    Process 0 of a multi-process run writes the run folder; the others write nothing. A
    coordinator that cannot be reached makes JAX abort the process after its timeout (that is
    JAX's own behaviour, not an exception jaxnet can turn into a line).
    """
    by_hand = (args.coordinator, args.num_processes, args.process_id)
    if args.distributed and any(a is not None for a in by_hand):
        raise Refused("--distributed finds the processes itself: give it without --coordinator")
    if not _joined(args):
        if any(a is not None for a in by_hand):
            raise Refused("--num-processes and --process-id need --coordinator HOST:PORT")
        return True
    from jaxnet import parallel

    try:
        parallel.initialize_distributed(*by_hand)
    except (TypeError, ValueError, RuntimeError) as err:
        raise Refused(str(err).replace("coordinator_address", "--coordinator")) from None
    import jax

    return jax.process_index() == 0


def _device_count(asked: int | None, distributed: bool = False) -> int:
    """The devices to train on (``--devices``, else every local one, or every process's in a
    multi-process run); before JAX starts."""
    if asked is not None and asked > 1 and not distributed:
        from jaxnet.parallel import request_cpu_devices

        request_cpu_devices(asked)  # before JAX starts its backend
    import jax

    every = jax.device_count() if distributed else jax.local_device_count()
    devices = asked if asked is not None else every
    if devices > jax.device_count():
        raise Refused(
            f"--devices {devices}: JAX sees only {jax.device_count()} device(s) "
            f"({jax.devices()[0].platform})"
        )
    return devices


def _settle(exp: Experiment, args: argparse.Namespace, dataset: Any, data_record: dict):
    """The run's :class:`RunConfig`, the data set and its training split.

    A resumed run keeps every setting it started with (:func:`_resumed`); a new one takes the
    preset, then the flags given.
    """
    from jaxnet.training.data import channel_mean, train_val_split

    saved: RunConfig | None = args.saved
    if saved is not None:
        val_size, train_limit = saved.val_size, saved.train_limit
    else:
        preset = exp.presets[chosen_preset(args)]
        val_size = args.val_size if args.val_size is not None else preset.val_size
        train_limit = preset.train_limit
    images, labels = dataset.train_images[:train_limit], dataset.train_labels[:train_limit]
    n_train = len(labels) - val_size
    if n_train <= 0:
        n = len(labels)
        raise Refused(f"--val-size {val_size} leaves no training images (the set has {n})")
    try:
        config = None if saved is None else _resumed(args, saved, n_train)
        fit = fit_config(exp, args, n_train) if config is None else config.fit
        fit.check_data(n_train, devices=args.devices)
    except ValueError as err:
        raise Refused(str(err)) from None
    split = train_val_split(images, labels, val_size, fit.seed)
    # The split holds the training images now: let the loaded copy go (one data set less in
    # memory while training). A fresh empty array, not a view, which would keep it alive.
    empty = np.empty((0, *images.shape[1:]), images.dtype)
    dataset = dataset._replace(train_images=empty, train_labels=np.empty((0,), labels.dtype))
    mean = tuple(channel_mean(split[0], fit.pixel_scale).tolist())
    if config is not None:  # a resumed run: the mean computed again from its (same) split
        return replace(config, mean=mean), dataset, split
    config = RunConfig(
        experiment=exp.name,
        architecture=exp.architecture,
        preset=chosen_preset(args),
        fit=fit,
        val_size=val_size,
        train_limit=train_limit,
        class_names=tuple(dataset.class_names),
        mean=mean,
        data_dir=str(args.data_dir) if args.data_dir else None,
        **data_record,  # where the data came from
    )
    return config, dataset, split


def _resumed(args: argparse.Namespace, saved: RunConfig, n_train: int) -> RunConfig:
    """The configuration a resumed run continues with.

    The settings in :data:`~jaxnet.training.config.RESUMABLE` (the length, the learning rate and
    its schedule, the intervals) may be given anew and hold from the newest checkpoint's
    iteration on, recorded under ``resumed``; any other setting given with a value other than
    the run's is refused, naming it: it shapes the data or the network the checkpoint holds.

    Raises:
        Refused: a setting that cannot change, or a length not past the newest checkpoint.
        ValueError: the new settings do not fit together (warm-up longer than the run).
    """
    where = args.out / "config.json"
    before = saved.fit
    given = given_settings(args)
    run_flags = {"val_size": args.val_size, "preset": args.preset}
    given.update({name: value for name, value in run_flags.items() if value is not None})
    if args.epochs is not None:
        given["iterations"] = epochs_to_iterations(args.epochs, n_train, before.batch_size)
    changed = {k: v for k, v in given.items() if v != getattr(before, k, getattr(saved, k, None))}
    for name, value in changed.items():
        if name not in RESUMABLE:
            was = getattr(before, name, getattr(saved, name, None))
            raise unchangeable(f"--{flag_name(name)}", was, value)
    start = _newest_checkpoint(args.out)
    if changed.get("iterations", math.inf) <= start:
        raise Refused(
            f"--iterations {changed['iterations']} is not past the run's newest checkpoint "
            f"(iteration {start})"
        )
    if not changed:
        print(f"resuming with the settings saved in {where}", file=sys.stderr)
        return saved
    words = ", ".join(f"{flag_name(k)} {getattr(before, k)} -> {v}" for k, v in changed.items())
    print(f"resuming from iteration {start} with {words} (recorded in {where})", file=sys.stderr)
    record = {"from_iteration": start, "changed": changed}
    return replace(saved, fit=replace(before, **changed), resumed=(*saved.resumed, record))


def _newest_checkpoint(out: Path) -> int:
    """The iteration of the run's newest checkpoint (0 when it has none yet)."""
    found = RunFolder(out).checkpoints().checkpoints()
    return found[-1][0] if found else 0


def _train_and_report(exp, folder, args, *, arch, config: RunConfig, dataset, split) -> int:
    """Train, then evaluate the test set and write the run folder; the exit status."""
    from jaxnet.checkpoint import CheckpointError
    from jaxnet.training import DivergedError, TrainData, fit

    train_x, train_y, val_x, val_y = split
    mesh = args.devices if args.devices > 1 else None
    print(
        f"{exp.name}: {config.fit.iterations} iterations of batch {config.fit.batch_size} on "
        f"{len(train_y)} training images ({len(val_y)} held out for validation); "
        f"run folder {folder.path}",
        file=sys.stderr,
    )
    resume = f"  python -m {exp.module} --out {folder.path} --resume"
    try:
        run = fit(
            arch,
            TrainData(train_x, train_y, val_x, val_y, np.asarray(config.mean, np.float32)),
            config.fit,
            folder.checkpoints(),
            resume=args.resume,
            progress=args.writer and not args.no_progress,
            on_log=folder.write_history if args.writer else None,
            mesh=mesh,
            steps_per_call=args.steps_per_call,
        )
        if args.writer:
            folder.write_history(run.history)
        if run.interrupted:
            name = signal.Signals(run.interrupted).name
            print(
                f"interrupted by {name}: a checkpoint is saved in {folder.path / 'checkpoints'}; "
                f"resume with\n{resume}",
                file=sys.stderr,
            )
            return 128 + run.interrupted
        return _report(
            exp,
            folder,
            run,
            arch=arch,
            config=config,
            dataset=dataset,
            mesh=mesh,
            writer=args.writer,
        )
    except DivergedError as err:
        return error(str(err), 1)
    except CheckpointError as err:  # only --resume reads checkpoints; nothing is deleted
        return error(f"cannot resume: {err}", 1)
    except OSError as err:  # a full disk: the checkpoints saved before stay
        return error(
            f"cannot write {err.filename}: {err.strerror}; the checkpoints saved before are "
            f"intact: make room, then resume with\n{resume}",
            1,
        )


def _report(exp, folder, run, *, arch, config: RunConfig, dataset, mesh, writer: bool) -> int:
    """Evaluate the test set, write the run folder's results, print the summary line."""
    from jaxnet.step import evaluate

    settings = config.fit
    test = evaluate(
        arch,
        run.reported_params,
        dataset.test_images,
        dataset.test_labels,
        batch_size=settings.eval_batch_size,
        mean=np.asarray(config.mean, np.float32),
        mesh=mesh,
        scale=settings.pixel_scale,
        flip=settings.flip_test,
    )
    if not writer:  # another process of a multi-process run: process 0 writes and reports
        return 0
    column = "val_accuracy_averaged" if settings.weight_average else "val_accuracy"
    val = [r[column] for r in run.history if not math.isnan(r.get(column, math.nan))]
    seconds = run.train_time_s
    speed = settings.iterations * settings.batch_size / seconds if seconds > 0 else None
    figures = {
        "val_accuracy": val[-1] if val else None,
        "weights": f"moving average (decay {settings.weight_average:g})"
        if settings.weight_average
        else "the last step's",
        "iterations": settings.iterations,
        "train_time_s": seconds,
        "images_per_second": speed,
        "device": folder.config.get("environment", {}).get("device"),
        "peak_rss_mb": peak_rss_mb(),
    }
    report = folder.write_results(exp.name, arch, run, dataset=dataset, test=test, report=figures)
    seed = f" (seed report: {exp.seed_accuracy:.1%})" if exp.seed_accuracy else ""
    print(
        f"{exp.name}: test accuracy {test.accuracy:.2%}{seed}, test loss {test.loss:.4f}, "
        f"{report['parameter_count']} parameters, {seconds:.0f} s training, peak memory "
        f"{report['peak_rss_mb']:.0f} MiB; outputs in {folder.path}"
    )
    return 0
