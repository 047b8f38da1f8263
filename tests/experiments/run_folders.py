"""Run folders written directly, as ``experiments.cli`` writes them, for predict and explain.

A real run (``experiments.mnist``) takes seconds to train; these tests need only a network with
parameters. ``test_predict`` checks once, on a real run, that this layout is the one the
training commands write. ``image_for`` is an input for such a run's network.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from data_files import CIFAR_CLASSES

from experiments.run_config import RunConfig
from jaxnet import architectures, init
from jaxnet.checkpoint import save_pytree
from jaxnet.io import write_json
from jaxnet.training import FitConfig


def random_params(arch_name: str, seed: int = 0) -> dict:
    """He-initialised weights and small random biases (no exact zeros at ReLU's kink)."""
    arch = architectures.get(arch_name)
    params = init(arch, jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    return {
        name: {"w": p["w"], "b": np.float32(0.1) * rng.standard_normal(p["b"].shape, np.float32)}
        for name, p in params.items()
    }


def write_run(folder: Path, arch_name: str = "mnist", params: dict | None = None, **config) -> Path:
    """A finished run folder: the ``config.json`` a training command writes and ``params.npz``;
    ``config`` entries replace its keys (``None`` removes one; a ``fit`` dict is merged into the
    settings)."""
    arch = architectures.get(arch_name)
    grey = arch.input_shape[2] == 1
    record = RunConfig(
        experiment=arch_name,
        architecture=arch_name,
        preset="best",
        fit=FitConfig(iterations=1, batch_size=1, learning_rate=0.1),
        val_size=0,
        train_limit=None,
        class_names=tuple(str(d) for d in range(10)) if grey else CIFAR_CLASSES,
        mean=(0.13,) if grey else (0.49, 0.48, 0.45),
    ).to_json()
    if isinstance(config.get("fit"), dict):
        config["fit"] = {**record["fit"], **config["fit"]}
    record.update(config)
    write_json(folder / "config.json", {k: v for k, v in record.items() if v is not None})
    save_pytree(folder / "params.npz", random_params(arch_name) if params is None else params)
    return folder


def image_for(arch, seed: int = 0) -> np.ndarray:
    """A uint8 image with a black background (exact zeros, as MNIST has) and a bright patch."""
    h, w, c = arch.input_shape
    image = np.zeros((h, w, c), np.uint8)
    patch = image[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3]
    patch[...] = np.random.default_rng(seed).integers(0, 256, patch.shape)
    return image
