"""Checkpoints: pytrees of arrays in ``.npz`` files that numpy alone can read.

One array per pytree leaf, keyed by its :func:`jax.tree_util.keystr` path (``['conv1']['w']``,
``[0].ema['conv1']['w']`` inside an ``optax.chain`` state), and ``__metadata__``: UTF-8 JSON as
uint8, ``{"format", "version", "metadata"}``, the last the caller's dict (config, iteration,
history ...). With numpy alone::

    z = np.load("ckpt_00001000.npz")
    w = z["['conv1']['w']"]
    metadata = json.loads(z["__metadata__"].tobytes())["metadata"]

Restoring takes a template, as Orbax and Equinox's ``tree_deserialise_leaves`` do: the caller
knows the structure (a fresh training state, or its ``jax.eval_shape``) and the file supplies
the leaves, each checked against the template's key path, shape and dtype. Files are written
through :func:`jaxnet.io.atomic_write`; reading checks the zip and every entry's CRC. Every
failure is a :class:`CheckpointError`, one line naming the file and what is wrong with it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxnet._validate import int_at_least
from jaxnet.io import atomic_write

FORMAT_NAME = "jaxnet.checkpoint"
FORMAT_VERSION = 2  # 2: no leaves table or tree structure in the header; 1 still loads
METADATA_KEY = "__metadata__"  # no pytree path takes this form


class CheckpointError(Exception):
    """A checkpoint cannot be read or does not fit its template; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class CorruptCheckpointError(CheckpointError):
    """The file is truncated, not a zip, fails a CRC, or its header or arrays are malformed."""


class CheckpointMismatchError(CheckpointError):
    """A valid checkpoint whose key paths, shapes or dtypes differ from the template's."""


def _json_default(value: Any) -> Any:
    """JSON for numpy / jax scalars and arrays in metadata (history rows often hold them)."""
    if isinstance(value, np.generic | np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-able")


def save_pytree(
    path: str | os.PathLike[str], tree: Any, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Save a pytree of numeric arrays and a JSON-able dict to ``path`` (exactly), atomically.

    Args:
        path: the destination file (its folder is created if needed); returned as a ``Path``.
        tree: a pytree of arrays or scalars of any shape; ``jax.Array`` leaves are fetched.
        metadata: e.g. ``{"config": {...}, "iteration": 1000, "history": [...]}``; numpy
            and jax values are converted.

    Raises:
        TypeError: a leaf that is not a numeric array, or metadata that is not JSON-able.
        OSError: the file cannot be written (the destination is then untouched).
    """
    arrays = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key, dtype = jax.tree_util.keystr(key_path), getattr(leaf, "dtype", None)
        dtype = np.asarray(leaf).dtype if dtype is None else dtype
        if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc":
            raise TypeError(
                f"cannot checkpoint the leaf at {key or '<root>'}: dtype {dtype}, expected "
                "bool, int, uint, float or complex"
            )
        arrays[key] = np.asarray(leaf)
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "metadata": dict(metadata or {})}
    try:
        text = json.dumps(header, default=_json_default)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot save the checkpoint metadata: {e}") from None
    arrays[METADATA_KEY] = np.frombuffer(text.encode("utf-8"), np.uint8)
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return Path(path)


def _corrupt(path: Path, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"checkpoint {path} is truncated or corrupt: {what}")


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metadata and the arrays by key path, every entry read whole (so its CRC is checked)."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    arrays, what = {}, "not a valid zip/npz file"
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                what = f"entry {name!r} is damaged"
                data = io.BytesIO(zf.read(name))
                arrays[name.removesuffix(".npy")] = np.lib.format.read_array(data)
    except (zipfile.BadZipFile, EOFError, ValueError, zlib.error) as e:
        raise _corrupt(path, f"{what} ({e})") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} could not be read: {e}") from None
    if METADATA_KEY not in arrays:
        raise _corrupt(path, f"it has no {METADATA_KEY} entry (not a jaxnet checkpoint?)")
    try:
        header = json.loads(arrays.pop(METADATA_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, f"its {METADATA_KEY} entry is not valid JSON ({e})") from None
    if not (isinstance(header, dict) and header.get("format") == FORMAT_NAME):
        raise _corrupt(path, f"its {METADATA_KEY} entry is not a {FORMAT_NAME} header")
    if not isinstance(header.get("version"), int) or header["version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {header.get('version')!r}; this jaxnet reads "
            f"versions up to {FORMAT_VERSION}: upgrade jaxnet"
        )
    if not isinstance(header.get("metadata"), dict):
        raise _corrupt(path, "its header has no metadata dict")
    return header["metadata"], arrays


def _listed(items: Sequence[str], most: int = 5) -> str:
    more = len(items) - most
    return ", ".join(items[:most]) + (f" and {more} more" if more > 0 else "")


def _spec(leaf: Any) -> tuple[tuple[int, ...], str]:
    """An array's (or template leaf's) shape and dtype name."""
    if not hasattr(leaf, "dtype"):
        leaf = np.asarray(leaf)
    return tuple(leaf.shape), str(np.dtype(leaf.dtype))


def _check_against(path: Path, stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointMismatchError` listing every difference with the template."""
    problems, differ = [], []
    if missing := [k for k in wanted if k not in stored]:
        problems.append(f"missing from the file: {_listed(missing)}")
    if extra := [k for k in stored if k not in wanted]:
        problems.append(f"not in the template: {_listed(extra)}")
    for key in (k for k in wanted if k in stored):
        (shape, dtype), (saved_shape, saved_dtype) = _spec(wanted[key]), _spec(stored[key])
        if saved_shape != shape:
            differ.append(f"{key} has shape {saved_shape} in the file, {shape} expected")
        elif saved_dtype != dtype:
            differ.append(f"{key} has dtype {saved_dtype} in the file, {dtype} expected")
    if differ:
        problems.append(_listed(differ))
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit the structure it is restored into (another "
            f"network, or another version's training state): {'; '.join(problems)}"
        )


def load_pytree(path: str | os.PathLike[str], like: Any) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint into the structure of the template ``like``.

    Args:
        path: a file written by :func:`save_pytree`.
        like: a pytree with the saved structure, shapes and dtypes (e.g. a fresh training state
            or its ``jax.eval_shape``); its values are not used.

    Returns:
        ``(tree, metadata)``: ``like``'s treedef (NamedTuples included) holding the saved leaves,
        ``jax.Array`` on the template leaf's sharding where the template holds a ``jax.Array``
        or ``jax.ShapeDtypeStruct``, else ``np.ndarray``; and the metadata as JSON returns it.

    Raises:
        FileNotFoundError: no such file.
        CorruptCheckpointError: truncated, not a zip, a failed CRC, a bad header or array.
        CheckpointMismatchError: other key paths, shapes or dtypes than ``like``'s.
        CheckpointError: the file cannot be read or has a newer format version.
    """
    path = Path(path)
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    wanted = {jax.tree_util.keystr(p): leaf for p, leaf in flat}
    metadata, stored = _read_file(path)
    _check_against(path, stored, wanted)
    on_device = (jax.Array, jax.ShapeDtypeStruct)
    values = [
        jax.device_put(stored[k], leaf.sharding) if isinstance(leaf, on_device) else stored[k]
        for k, leaf in wanted.items()
    ]
    return jax.tree_util.tree_unflatten(treedef, values), metadata


class CheckpointManager:
    """Numbered checkpoints in one folder, ``ckpt_00001000.npz``, the newest ``keep`` kept.

    ``save`` writes atomically, then deletes the oldest (never the one it wrote): a crash keeps
    every checkpoint that existed before. ``restore`` loads the newest one that reads back; a
    corrupt newest one is reported with a warning and renamed ``<name>.corrupt``. Creating a
    manager removes a killed write's temporary files: one process writes into a folder.

    Args:
        directory: the folder; created (with parents) if missing.
        keep: how many checkpoints to keep, an int >= 1 (else ``TypeError`` or ``ValueError``).
    """

    PATTERN = re.compile(r"ckpt_(\d{8,})\.npz")

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        self.directory, self.keep = Path(directory), int_at_least("keep", keep, 1)
        self.directory.mkdir(parents=True, exist_ok=True)
        for tmp in self.directory.glob(".ckpt_*.tmp"):
            tmp.unlink(missing_ok=True)

    def path_for(self, step: int) -> Path:
        """The file of step ``step``: ``<directory>/ckpt_{step:08d}.npz``."""
        return self.directory / f"ckpt_{step:08d}.npz"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Every ``(step, path)`` checkpoint in the folder, oldest step first."""
        matches = ((self.PATTERN.fullmatch(p.name), p) for p in self.directory.iterdir())
        return sorted((int(m.group(1)), p) for m, p in matches if m and p.is_file())

    def latest(self) -> Path | None:
        """The checkpoint of the highest step (not read), or None when there is none."""
        found = self.checkpoints()
        return found[-1][1] if found else None

    def save(self, step: int, tree: Any, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write :meth:`path_for` ``step`` with :func:`save_pytree`, then drop all but ``keep``.

        Raises:
            TypeError: ``step`` is not an int, or a leaf or the metadata cannot be saved.
            ValueError: ``step`` < 0.
            OSError: the write failed; older checkpoints are untouched.
        """
        path = save_pytree(self.path_for(int_at_least("step", step, 0)), tree, metadata)
        others = [p for _, p in self.checkpoints() if p != path]
        for old in others[: max(0, len(others) - (self.keep - 1))]:
            old.unlink(missing_ok=True)
        return path

    def restore(self, like: Any) -> tuple[Any, dict[str, Any]] | None:
        """``(tree, metadata)`` of the newest readable checkpoint (see :func:`load_pytree`).

        Returns None when the folder holds no checkpoint. Raises
        :class:`CheckpointMismatchError` if the newest one is of another architecture (no
        fallback: the older ones are too), :class:`CheckpointError` if none can be read.
        """
        found, failures = self.checkpoints(), []
        for i, (_, path) in enumerate(reversed(found)):
            try:
                return load_pytree(path, like)
            except CheckpointMismatchError:
                raise
            except CheckpointError as e:  # corrupt, unreadable or of a newer format
                failures.append(str(e))
                if isinstance(e, CorruptCheckpointError):
                    with contextlib.suppress(OSError):
                        path.replace(path.with_name(path.name + ".corrupt"))
                    failures[-1] += f"; renamed it to {path.name}.corrupt"
                if i + 1 < len(found):
                    warnings.warn(f"{failures[-1]}; trying the previous checkpoint", stacklevel=2)
        if failures:
            raise CheckpointError(
                f"no readable checkpoint in {self.directory}: {' | '.join(failures)}"
            )
        return None
