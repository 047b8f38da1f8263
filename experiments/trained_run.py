"""A finished run folder, read back: its network, weights, input preparation and class names.

What ``experiments.predict`` and ``experiments.explain`` share: :func:`load_run` reads the
``config.json`` and ``params.npz`` that ``experiments.mnist`` and ``experiments.cifar10`` write,
checking every value it uses once (a missing or wrong one is :class:`RunError`, whose message
names the key and the file); :func:`network_input` prepares uint8 images exactly as training
did; :func:`probabilities` runs the network on them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:  # jax loads only when a command needs it: --help stays fast
    from jaxnet.network import Architecture

BATCH = 500  # images per forward call: bounds memory for long lists of files


class RunError(Exception):
    """A run folder that cannot be used; the message names the file and what is wrong."""


class TrainedRun(NamedTuple):
    """A finished run folder, read back to classify images (a training in progress is
    :class:`jaxnet.training.Run`).

    Attributes:
        folder: the run folder.
        arch: the network (``jaxnet.architectures.get`` of ``config.json``'s architecture).
        params: the trained parameters, ``{layer: {"w", "b"}}`` as float32 jax arrays.
        scale: uint8 pixels are multiplied by this (1/255, or 1 for raw values) ...
        mean: ... and this float32 ``(C,)`` training mean is subtracted.
        class_names: the ``K`` class names, in label order.
        flip: the run was evaluated with flip test-time augmentation (``flip_test``), and so
            are its predictions.
        image_folder: for a run trained on ``--image-dir``, what ``config.json`` records of
            the folder (its path, conversion and split); None for MNIST and CIFAR-10.
    """

    folder: Path
    arch: Architecture
    params: dict
    scale: float
    mean: np.ndarray
    class_names: tuple[str, ...]
    flip: bool = False
    image_folder: dict | None = None

    @property
    def centre(self) -> bool:
        """One-channel images are read as MNIST digits (centred), unless the run was trained
        on an image folder with a plain resize."""
        return self.image_folder is None or bool(self.image_folder.get("centre", True))


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not folder.is_dir():
        raise RunError(f"{folder}: no such run folder")
    if not path.is_file():
        raise RunError(
            f"{folder}: no config.json (not a run folder of experiments.mnist or "
            "experiments.cifar10)"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(config, dict):
        raise RunError(f"{path}: not a run's config (a JSON object is expected)")
    return config


def load_run(folder: str | os.PathLike[str]) -> TrainedRun:
    """Read a finished run folder: its network, parameters, input preparation and class names.

    Args:
        folder: a folder written by ``python -m experiments.mnist`` or ``experiments.cifar10``.

    Returns:
        The :class:`TrainedRun`.

    Raises:
        RunError: the folder, ``config.json`` or ``params.npz`` is missing or unreadable,
            a value ``config.json`` holds is missing or of the wrong kind (an unknown network,
            no input scale and mean, a scale or mean that is not finite, a ``flip_test`` that
            is not true or false, ...), or ``params.npz`` does not fit the network (another
            architecture). Each value is checked here, once: the message names the key.
    """
    import jax

    from jaxnet import architectures, checkpoint, network

    folder = Path(folder)
    config = _read_config(folder)
    where = folder / "config.json"
    names = _class_names(config, where)
    try:
        arch = architectures.get(config.get("architecture"), num_classes=len(names))
    except ValueError as err:
        raise RunError(f"{where}: {err}") from None
    scale, mean = _input(config, where, arch)
    flip = _flip_test(config, where)
    image_folder = _image_folder(config, where)

    path = folder / "params.npz"
    if not path.is_file():
        raise RunError(f"{folder}: no params.npz (the run has not finished)")
    template = jax.eval_shape(lambda: network.init(arch, jax.random.PRNGKey(0)))
    try:
        params, _ = checkpoint.load_pytree(path, like=template)
    except checkpoint.CheckpointMismatchError as err:
        detail = str(err).split(": ", 1)[-1]
        raise RunError(
            f"{path} does not fit the {arch.name!r} network that config.json names ({detail})"
        ) from None
    except (checkpoint.CheckpointError, OSError) as err:
        raise RunError(str(err)) from None
    return TrainedRun(folder, arch, params, scale, mean, names, flip, image_folder)


def _class_names(config: dict[str, Any], where: Path) -> tuple[str, ...]:
    """``class_names``: a list of at least two strings (the network's ``K`` outputs)."""
    names = config.get("class_names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise RunError(
            f"{where}: class_names must list the network's classes (two or more strings), "
            f"got {names!r}"
        )
    return tuple(names)


def _input(config: dict[str, Any], where: Path, arch: Architecture) -> tuple[float, np.ndarray]:
    """``input``'s ``scale`` (a finite number > 0) and ``mean`` (finite, one per channel)."""
    record = config.get("input")
    if not isinstance(record, dict) or "mean" not in record or "scale" not in record:
        raise RunError(
            f"{where} records no input scale and mean (a run made before they were recorded): "
            "train it again"
        )
    scale, mean = record["scale"], record["mean"]
    if not (_finite_number(scale) and scale > 0):
        raise RunError(f"{where}: input scale must be a finite number > 0, got {scale!r}")
    channels = arch.input_shape[2]
    numbers = mean if isinstance(mean, list) else [mean]  # one number: every channel's
    if (isinstance(mean, list) and len(mean) != channels) or not all(
        _finite_number(m) for m in numbers
    ):
        raise RunError(
            f"{where}: input mean must be a list of {channels} finite number(s) (one per "
            f"channel of {arch.name}), got {mean!r}"
        )
    return float(scale), np.asarray(mean, np.float32)


def _finite_number(value: Any) -> bool:
    """A JSON number that is not NaN or infinite (Python's json reads both; a bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _flip_test(config: dict[str, Any], where: Path) -> bool:
    """``fit.flip_test``: true or false (false when the run records no ``fit``)."""
    fit = config.get("fit", {})
    if not isinstance(fit, dict):
        raise RunError(f"{where}: fit must be a JSON object of the run's settings, got {fit!r}")
    flip = fit.get("flip_test", False)
    if not isinstance(flip, bool):
        raise RunError(f"{where}: fit.flip_test must be true or false, got {flip!r}")
    return flip


_IMAGE_FOLDER_KEYS = {
    "path": ((str,), "a string"),
    "size": ((int,), "an integer"),
    "channels": ((int,), "an integer"),
    "centre": ((bool,), "true or false"),
    "test_fraction": ((int, float), "a number"),
    "seed": ((int,), "an integer"),
}
"""What explain reads of ``image_folder`` (to draw the run's test split again), and its types."""


def _image_folder(config: dict[str, Any], where: Path) -> dict | None:
    """``image_folder`` (a run on ``--image-dir``), with every key explain reads; or None."""
    record = config.get("image_folder")
    if record is None:
        return None
    if not isinstance(record, dict):
        raise RunError(f"{where}: image_folder must be a JSON object, got {record!r}")
    for key, (kinds, expected) in _IMAGE_FOLDER_KEYS.items():
        value = record.get(key)
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if not isinstance(value, kinds) or wrong_bool:
            raise RunError(f"{where}: image_folder.{key} must be {expected}, got {value!r}")
    return record


def network_input(run: TrainedRun, images: np.ndarray, dtype: Any = np.float32) -> Any:
    """uint8 images prepared as in training: ``images * scale - mean`` (``jaxnet.step.preprocess``).

    Args:
        run: the run.
        images: uint8 ``(N, H, W, C)``, ``(H, W, C) == run.arch.input_shape``.
        dtype: the floating dtype of the result.

    Returns:
        A jax array ``(N, H, W, C)`` of ``dtype``.
    """
    import jax.numpy as jnp

    from jaxnet.step import preprocess

    return preprocess(jnp.asarray(images), run.mean, run.scale, dtype)


def probabilities(run: TrainedRun, images: np.ndarray) -> np.ndarray:
    """The softmax of the network's logits for each image (with the run's flip averaging).

    Args:
        run: the run.
        images: uint8 ``(N, H, W, C)`` shaped like the training data.

    Returns:
        float64 ``(N, K)``, each row summing to 1.
    """
    import jax

    from jaxnet.step import predict_logits

    rows = []
    for start in range(0, len(images), BATCH):
        x = network_input(run, images[start : start + BATCH])
        logits = predict_logits(run.arch, run.params, x, flip=run.flip)
        rows.append(np.asarray(jax.nn.softmax(logits), np.float64))
    return np.concatenate(rows) if rows else np.zeros((0, run.arch.num_classes))
