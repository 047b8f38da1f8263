"""One run's configuration: made once, checked once, saved as ``config.json``, read back the same.

A :class:`RunConfig` holds everything that decides a training run and what its outputs mean:
the training settings (:class:`~jaxnet.training.FitConfig`), the data (where it came from, the
validation split), and what turns an image into the network's input and its outputs into
names. ``experiments.cli`` makes it from a preset and the flags; :meth:`RunConfig.to_json` is
``config.json``; :meth:`RunConfig.read` turns a ``config.json`` back into one through the same
checks, for ``--resume``, ``experiments.predict`` and ``experiments.explain``. A damaged or
hand-edited file is one :class:`ConfigError` naming the file and the key, never a traceback or
a silently wrong answer.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from jaxnet.training.config import FitConfig, nonnegative_int, positive_int


class ConfigError(ValueError):
    """A ``config.json`` that cannot be read back; the message names the file and the key."""


_IMAGE_FOLDER_KEYS = {
    "path": ((str,), "a string"),
    "size": ((int,), "an integer"),
    "channels": ((int,), "an integer"),
    "centre": ((bool,), "true or false"),
    "test_fraction": ((int, float), "a number"),
    "seed": ((int,), "an integer"),
}
"""What is read back of ``image_folder`` (to read the folder the same way), and its types."""


@dataclass(frozen=True)
class RunConfig:
    """Everything ``config.json`` records of a run that its commands read back.

    Attributes:
        experiment: the run's name (``mnist``, ``cifar10_modified``, ``mnist_<folder>``).
        architecture: the ``jaxnet.architectures`` name.
        preset: the preset the run started from.
        fit: the training settings.
        val_size: training images held out for validation (the seeded split).
        train_limit: only the first that many training images were used (None: all).
        class_names: the ``K`` class names, in label order (the network's ``K`` outputs).
        mean: the training split's per-channel mean, subtracted after scaling the uint8
            pixels by ``fit.pixel_scale`` (the network's input).
        data_dir: ``--data-dir``, if given.
        idx_dir: ``--idx-dir``: an MNIST-format folder trained on instead of MNIST.
        image_folder: ``--image-dir``: the folder, its conversion, split and counts per class.
        resumed: one record per ``--resume`` that changed a setting (``from_iteration``,
            ``changed``).
    """

    experiment: str
    architecture: str
    preset: str
    fit: FitConfig
    val_size: int
    train_limit: int | None
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    data_dir: str | None = None
    idx_dir: str | None = None
    image_folder: dict[str, Any] | None = None
    resumed: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """``config.json``'s content (the input preparation as ``input: {scale, mean}``)."""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        record["fit"] = asdict(self.fit)
        record["input"] = {"scale": self.fit.pixel_scale, "mean": list(record.pop("mean"))}
        record["class_names"] = list(self.class_names)
        record["resumed"] = list(self.resumed)
        return record

    @classmethod
    def read(cls, path: Path) -> RunConfig:
        """The configuration in ``path`` (a run folder's ``config.json``).

        Raises:
            ConfigError: the file is not readable JSON, or a key is missing or holds a value
                the run could not have written; the message names the file and the key.
        """
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: not readable JSON ({err})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}: not a run's config (a JSON object is expected)")
        return _from_json(record, path)


def _from_json(record: dict[str, Any], where: Path) -> RunConfig:
    """:meth:`RunConfig.read` once the JSON is parsed: every key checked, in field order."""

    def bad(key: str, expected: str) -> ConfigError:
        return ConfigError(f"{where}: {key} must be {expected}, got {record.get(key)!r}")

    for key in ("experiment", "architecture", "preset"):
        if not isinstance(record.get(key), str):
            raise bad(key, "a string")
    settings = record.get("fit")
    if not isinstance(settings, dict):
        raise bad("fit", "a JSON object of the run's settings")
    names = {f.name for f in fields(FitConfig)}
    try:
        fit = FitConfig(**{k: v for k, v in settings.items() if k in names})
    except (TypeError, ValueError) as err:  # a setting missing or out of range
        raise ConfigError(f"{where}: the settings in fit are damaged ({err})") from None
    limit = record.get("train_limit")
    try:  # the checks the flags and the presets pass
        nonnegative_int("val_size", record.get("val_size"))
        if limit is not None:
            positive_int("train_limit", limit)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    names = record.get("class_names")
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
        raise ConfigError(
            f"{where}: class_names must list the network's classes (two or more strings), "
            f"got {names!r}"
        )
    from jaxnet import architectures

    try:
        arch = architectures.get(record["architecture"], num_classes=len(names))
    except ValueError as err:  # an unknown network
        raise ConfigError(f"{where}: {err}") from None
    mean = _input_mean(record, where, fit.pixel_scale, channels=arch.input_shape[2])
    for key in ("data_dir", "idx_dir"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise bad(key, "a string or null")
    resumed = record.get("resumed", [])
    if not (isinstance(resumed, list) and all(isinstance(r, dict) for r in resumed)):
        raise bad("resumed", "a list of JSON objects")
    return RunConfig(
        experiment=record["experiment"],
        architecture=record["architecture"],
        preset=record["preset"],
        fit=fit,
        val_size=record["val_size"],
        train_limit=limit,
        class_names=tuple(names),
        mean=mean,
        data_dir=record.get("data_dir"),
        idx_dir=record.get("idx_dir"),
        image_folder=_image_folder(record.get("image_folder"), where),
        resumed=tuple(resumed),
    )


def _finite_number(value: Any) -> bool:
    """A JSON number that is not NaN or infinite (Python's json reads both; a bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _input_mean(
    record: dict[str, Any], where: Path, scale: float, *, channels: int
) -> tuple[float, ...]:
    """``input``'s mean (finite, one per channel); its scale must be ``fit.pixel_scale``."""
    given = record.get("input")
    if not isinstance(given, dict) or "mean" not in given or "scale" not in given:
        raise ConfigError(
            f"{where} records no input scale and mean (a run made before they were recorded): "
            "train it again"
        )
    if not (_finite_number(given["scale"]) and given["scale"] > 0):
        raise ConfigError(
            f"{where}: input scale must be a finite number > 0, got {given['scale']!r}"
        )
    if given["scale"] != scale:
        raise ConfigError(
            f"{where}: input scale must equal fit.pixel_scale ({scale}), got {given['scale']!r}"
        )
    mean = given["mean"]
    if not (isinstance(mean, list) and len(mean) == channels and all(map(_finite_number, mean))):
        raise ConfigError(
            f"{where}: input mean must be a list of {channels} finite number(s) (one per "
            f"channel of {record['architecture']}), got {mean!r}"
        )
    return tuple(float(m) for m in mean)


def _image_folder(given: Any, where: Path) -> dict[str, Any] | None:
    """``image_folder`` (a run on ``--image-dir``) with every key that is read back; or None."""
    if given is None:
        return None
    if not isinstance(given, dict):
        raise ConfigError(f"{where}: image_folder must be a JSON object, got {given!r}")
    for key, (kinds, expected) in _IMAGE_FOLDER_KEYS.items():
        value = given.get(key)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ConfigError(f"{where}: image_folder.{key} must be {expected}, got {value!r}")
    return given
