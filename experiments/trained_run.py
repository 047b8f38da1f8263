"""A finished run folder, read back: its network, weights, input preparation and class names.

What ``experiments.predict`` and ``experiments.explain`` share: :func:`load_run` reads the
``config.json`` (through :class:`~experiments.run_config.RunConfig`'s checks) and ``params.npz``
that ``experiments.mnist`` and ``experiments.cifar10`` write (a missing or wrong value is
:class:`RunError`, whose message names the key and the file); :func:`network_input` prepares
uint8 images exactly as training did; :func:`probabilities` runs the network on them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from experiments.run_config import ConfigError, RunConfig

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


def load_run(folder: str | os.PathLike[str]) -> TrainedRun:
    """Read a finished run folder: its network, parameters, input preparation and class names.

    Args:
        folder: a folder written by ``python -m experiments.mnist`` or ``experiments.cifar10``.

    Returns:
        The :class:`TrainedRun`.

    Raises:
        RunError: the folder, ``config.json`` or ``params.npz`` is missing or unreadable,
            ``config.json`` does not read back (:meth:`RunConfig.read
            <experiments.run_config.RunConfig.read>` names the key), or ``params.npz`` does
            not fit the network (another architecture).
    """
    import jax

    from jaxnet import architectures, checkpoint, network

    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"{folder}: no such run folder")
    if not (folder / "config.json").is_file():
        raise RunError(
            f"{folder}: no config.json (not a run folder of experiments.mnist or "
            "experiments.cifar10)"
        )
    try:
        config = RunConfig.read(folder / "config.json")
    except ConfigError as err:
        raise RunError(str(err)) from None
    arch = architectures.get(config.architecture, num_classes=len(config.class_names))

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
    return TrainedRun(
        folder,
        arch,
        params,
        scale=config.fit.pixel_scale,
        mean=np.asarray(config.mean, np.float32),
        class_names=config.class_names,
        flip=config.fit.flip_test,
        image_folder=config.image_folder,
    )


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
