"""Checkpoints: pytrees of arrays saved atomically to ``.npz`` files that numpy alone can read.

File format (version 1). A checkpoint is an uncompressed ``.npz`` (a zip of ``.npy`` files):

- one array per pytree leaf, keyed by its pytree path as :func:`jax.tree_util.keystr` writes it,
  e.g. ``['conv1']['w']`` for ``params["conv1"]["w"]`` or ``[0].ema['conv1']['w']`` for the
  momentum buffer inside an ``optax.chain`` state;
- one entry ``__metadata__``: a 1-d uint8 array holding UTF-8 JSON, the *header*: the format name
  and version, the table of leaves (key path, shape, dtype), a description of the tree's
  containers (dicts, lists, tuples, ``None``, NamedTuples such as optax's states) and the caller's
  metadata (config, architecture, iteration, history, data-order state ...).

Reading it with numpy alone::

    z = np.load("ckpt_00001000.npz")
    w = z["['conv1']['w']"]
    header = json.loads(z["__metadata__"].tobytes())

Leaf dtypes numpy has no native type for are stored as raw bits: bfloat16 and the float8 / int4
family as unsigned integers of the same width, typed PRNG keys (``jax.random.key``) as their
uint32 key data (``jax.random.key_data``). The header records the real dtype and
:func:`load_pytree` restores it.

Writes are atomic: the file is written under a temporary name in the destination folder, flushed,
``fsync``-ed, renamed over the destination with ``os.replace``, and the folder is ``fsync``-ed. A
crash at any moment leaves either the previous file or the new one, never a partial file under
the final name (only a hidden ``.<name>.<random>.tmp`` file, which :class:`CheckpointManager`
cleans up).

Loading checks everything it can (zip structure, CRC of every entry, header, each array's shape
and dtype against the header) and raises :class:`CheckpointError`, one line naming the file and
what is wrong, instead of a traceback from inside numpy or zipfile.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "load_pytree",
    "read_header",
    "save_params",
    "save_pytree",
]

FORMAT_NAME = "jaxnet.checkpoint"
"""The header's ``format`` field."""

FORMAT_VERSION = 1
"""The header's ``version`` field; files of a newer version are refused."""

METADATA_KEY = "__metadata__"
"""The reserved ``.npz`` key of the JSON header (no pytree path can take this form)."""

_MAX_LISTED = 5  # differences listed in a mismatch message before "... and N more"


class CheckpointError(Exception):
    """A checkpoint cannot be read or does not fit what it is loaded into.

    The message is a single line that names the file and what is wrong with it, fit to print as
    it is. The subclasses say which: :class:`CorruptCheckpointError` (truncated or malformed file)
    or :class:`CheckpointMismatchError` (a valid file saved for another architecture).
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class CorruptCheckpointError(CheckpointError):
    """The file is truncated, not a zip, fails a CRC, or its header or arrays are malformed."""


class CheckpointMismatchError(CheckpointError):
    """A valid checkpoint whose key paths, shapes or dtypes differ from the template's."""


# ----------------------------------------------------------------------------------------------
# Atomic writes


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where unsupported."""
    if os.name != "posix":  # pragma: no cover - Windows cannot open a folder
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(dest: Path) -> Path:
    """The hidden temporary name a write of ``dest`` goes to first: ``.<name>.<hex>.tmp``."""
    return dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def _atomic_write(dest: Path) -> Iterator[io.BufferedWriter]:
    """Open a temporary file next to ``dest``; on success fsync it, rename it to ``dest``.

    The temporary file is created with ``O_EXCL`` and mode ``0o666`` less the umask (as ``open``
    would create ``dest``). On any exception it is removed and ``dest`` is left untouched.
    """
    tmp = _temp_name(dest)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(dest.parent)


# ----------------------------------------------------------------------------------------------
# Leaves: storage dtypes


def _is_prng_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _raw_dtype(dtype: np.dtype) -> np.dtype:
    """The unsigned integer type of the same width (how non-native dtypes are stored)."""
    return np.dtype(f"u{dtype.itemsize}")


def _leaf_record(key: str, leaf: Any) -> tuple[dict[str, Any], np.ndarray]:
    """The header entry of one leaf and the numpy array stored for it.

    Raises:
        TypeError: a leaf that is not a numeric array (strings, objects, dates).
    """
    if _is_prng_key(leaf):
        data = np.asarray(jax.random.key_data(leaf))
        record = {
            "key": key,
            "shape": list(leaf.shape),
            "dtype": str(leaf.dtype),
            "prng_impl": str(jax.random.key_impl(leaf)),
        }
        return record, data
    array = np.asarray(leaf)
    record = {"key": key, "shape": list(array.shape), "dtype": str(array.dtype)}
    if array.dtype.kind in "biufc":
        return record, array
    if array.dtype.kind == "V" and _known_dtype(str(array.dtype)) == array.dtype:
        return record, array.view(_raw_dtype(array.dtype))  # bfloat16, float8, int4 ...
    raise TypeError(
        f"cannot checkpoint the leaf at {key or '<root>'}: dtype {array.dtype} is not a numeric "
        "array dtype (expected bool, int, uint, float, complex, bfloat16 or a PRNG key)"
    )


def _known_dtype(name: str) -> np.dtype | None:
    """``name`` as a numpy dtype (numpy's own or one jax registers, e.g. bfloat16), else None."""
    try:
        return np.dtype(jnp.dtype(name))
    except TypeError:
        return None


def _stored_form(record: Mapping[str, Any]) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of the array stored for a header entry (raises ValueError if bad)."""
    shape = tuple(int(n) for n in record["shape"])
    if "prng_impl" in record:
        impl = record["prng_impl"]
        data = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=impl)))
        return shape + tuple(data.shape), np.dtype(data.dtype)
    dtype = _known_dtype(record["dtype"])
    if dtype is None:
        raise ValueError(f"unknown dtype {record['dtype']!r}")
    return shape, (dtype if dtype.kind in "biufc" else _raw_dtype(dtype))


def _from_stored(record: Mapping[str, Any], stored: np.ndarray) -> Any:
    """The leaf a stored array stands for: the array itself, a bit-view, or a typed PRNG key."""
    if "prng_impl" in record:
        return jax.random.wrap_key_data(stored, impl=record["prng_impl"])
    dtype = np.dtype(jnp.dtype(record["dtype"]))
    return stored if stored.dtype == dtype else stored.view(dtype)


# ----------------------------------------------------------------------------------------------
# Tree structure: a JSON description of every container, so plain trees load without a template


def _describe(node: Any, path: tuple[Any, ...], keys: list[str]) -> dict[str, Any]:
    """A JSON-able description of ``node``'s containers; appends each leaf's keystr to ``keys``.

    Node kinds: ``leaf``, ``none``, ``dict`` (keys in insertion order), ``list``, ``tuple``,
    ``namedtuple`` (field names and the type's name) and ``node`` (any other registered pytree
    node, its children keyed by keystr).
    """
    tu = jax.tree_util
    if node is None:
        return {"t": "none"}
    if type(node) is dict:
        dict_keys = list(node)
        if all(type(k) in (str, int) for k in dict_keys):
            return {
                "t": "dict",
                "keys": dict_keys,
                "children": [_describe(node[k], (*path, tu.DictKey(k)), keys) for k in dict_keys],
            }
    elif type(node) in (list, tuple):
        return {
            "t": type(node).__name__,
            "children": [
                _describe(c, (*path, tu.SequenceKey(i)), keys) for i, c in enumerate(node)
            ],
        }
    elif isinstance(node, tuple) and hasattr(type(node), "_fields"):
        fields = list(type(node)._fields)
        return {
            "t": "namedtuple",
            "type": f"{type(node).__module__}.{type(node).__qualname__}",
            "fields": fields,
            "children": [
                _describe(getattr(node, f), (*path, tu.GetAttrKey(f)), keys) for f in fields
            ],
        }
    treedef = tu.tree_structure(node)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:  # a leaf (not an empty node)
        keys.append(tu.keystr(path))
        return {"t": "leaf"}
    # Any other pytree node (OrderedDict, a dict with other keys, a registered class):
    # its children one level down, with the keys jax gives them.
    children, _ = tu.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    return {
        "t": "node",
        "type": f"{type(node).__module__}.{type(node).__qualname__}",
        "keys": [_tag_key(k) for k, _ in children],
        "children": [_describe(c, (*path, *k), keys) for k, c in children],
    }


def _tag_key(entries: tuple[Any, ...]) -> list[Any]:
    """A custom node's child key as JSON: ``["dict", k]``, ``["attr", name]``, ``["seq", i]``
    or, for anything else, ``["raw", keystr]``."""
    tu = jax.tree_util
    if len(entries) == 1:
        (entry,) = entries
        if isinstance(entry, tu.DictKey) and type(entry.key) in (str, int):
            return ["dict", entry.key]
        if isinstance(entry, tu.GetAttrKey):
            return ["attr", entry.name]
        if isinstance(entry, tu.SequenceKey):
            return ["seq", entry.idx]
    return ["raw", tu.keystr(entries)]


def _untag_key(tagged: Sequence[Any]) -> tuple[Any, Any]:
    """The key entry a :func:`_tag_key` tag stands for, and the dict key to rebuild it under."""
    tu = jax.tree_util
    tag, value = tagged
    entry = {"dict": tu.DictKey, "attr": tu.GetAttrKey, "seq": tu.SequenceKey, "raw": _RawKey}
    return entry[tag](value), value


def _rebuild(desc: Mapping[str, Any], path: tuple[Any, ...], leaves: Mapping[str, Any]) -> Any:
    """The tree a :func:`_describe` description stands for, its leaves taken from ``leaves``.

    NamedTuples and other custom nodes come back as dicts (see :func:`load_pytree`).
    """
    tu = jax.tree_util
    kind = desc["t"]
    if kind == "leaf":
        return leaves[tu.keystr(path)]
    if kind == "none":
        return None
    if kind == "dict":
        return {
            k: _rebuild(c, (*path, tu.DictKey(k)), leaves)
            for k, c in zip(desc["keys"], desc["children"], strict=True)
        }
    if kind in ("list", "tuple"):
        items = [
            _rebuild(c, (*path, tu.SequenceKey(i)), leaves) for i, c in enumerate(desc["children"])
        ]
        return items if kind == "list" else tuple(items)
    if kind == "namedtuple":
        return {
            f: _rebuild(c, (*path, tu.GetAttrKey(f)), leaves)
            for f, c in zip(desc["fields"], desc["children"], strict=True)
        }
    if kind == "node":
        out = {}
        for tagged, c in zip(desc["keys"], desc["children"], strict=True):
            entry, key = _untag_key(tagged)
            out[key] = _rebuild(c, (*path, entry), leaves)
        return out
    raise ValueError(f"unknown node kind {kind!r}")


class _RawKey:
    """A key entry whose keystr is a given string (to rebuild paths below custom nodes)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


# ----------------------------------------------------------------------------------------------
# Saving


def _json_default(value: Any) -> Any:
    """JSON for numpy / jax scalars and arrays in metadata (history rows often hold them)."""
    if isinstance(value, np.generic | np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-able")


def _build_header(tree: Any, metadata: Mapping[str, Any] | None) -> tuple[bytes, dict[str, Any]]:
    """The JSON header (as UTF-8 bytes) and the arrays to store, keyed by pytree path."""
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    records, arrays = [], {}
    for path, leaf in flat:
        key = jax.tree_util.keystr(path)
        if key in arrays or key == METADATA_KEY:
            what = "is reserved" if key == METADATA_KEY else "is shared by two leaves"
            raise ValueError(f"the pytree path {key!r} {what}; rename a key")
        record, arrays[key] = _leaf_record(key, leaf)
        records.append(record)
    described: list[str] = []
    structure = _describe(tree, (), described)
    if sorted(described) != sorted(
        r["key"] for r in records
    ):  # pragma: no cover - a jax we do not know
        structure = None  # the tree then needs a template to load
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "leaves": records,
        "structure": structure,
        "treedef": str(treedef),
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
        "metadata": dict(metadata or {}),
    }
    try:
        text = json.dumps(header, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot save the checkpoint metadata: {e}") from None
    return text.encode("utf-8"), arrays


def _write_npz(f: io.BufferedWriter, header: bytes, arrays: Mapping[str, np.ndarray]) -> None:
    """Write the arrays and the header into an uncompressed zip, as ``np.savez`` does."""
    entries = {**arrays, METADATA_KEY: np.frombuffer(header, dtype=np.uint8)}
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, array in entries.items():
            with zf.open(f"{key}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def save_pytree(
    path: str | os.PathLike[str], tree: Any, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Save a pytree of arrays and JSON metadata to ``path``, atomically.

    The file is written exactly at ``path`` (no ``.npz`` is appended). Leaves are copied to host
    memory; ``jax.Array`` leaves are fetched from their device.

    Args:
        path: the destination file; its folder must exist.
        tree: a pytree whose leaves are arrays or scalars of any shape (0-d included): bool,
            integer, float (float64 too), complex, bfloat16 and other jax dtypes, or typed PRNG
            keys. Containers: dicts, lists, tuples, ``None``, NamedTuples (optax states) and any
            other registered pytree node.
        metadata: a JSON-able dict (numpy scalars and arrays, tuples and paths are converted),
            e.g. ``{"config": {...}, "architecture": "...", "iteration": 1000, "history": [...]}``.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        TypeError: a leaf that is not a numeric array, or metadata that is not JSON-able.
        ValueError: two leaves with the same pytree path.
        OSError: the file cannot be written (the destination is then untouched).
    """
    path = Path(path)
    header, arrays = _build_header(tree, metadata)
    with _atomic_write(path) as f:
        _write_npz(f, header, arrays)
    return path


def save_params(path: str | os.PathLike[str], params: Any) -> Path:
    """Save a model's parameters (e.g. an experiment's final ``params.npz``), atomically.

    The same format as :func:`save_pytree` with no metadata: ``np.load(path)["['conv1']['w']"]``
    reads a weight with numpy alone; ``load_pytree(path)`` restores the dict.

    Args:
        path: the destination file.
        params: the parameter pytree (a dict per layer keyed by layer name).

    Returns:
        ``path`` as a ``Path``.
    """
    return save_pytree(path, params)


# ----------------------------------------------------------------------------------------------
# Loading


def _corrupt(path: Path, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"checkpoint {path} is truncated or corrupt: {what}")


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise _corrupt(path, f"not a valid zip/npz file ({e})") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} could not be read: {e}") from None


def _read_member(zf: zipfile.ZipFile, path: Path, name: str) -> np.ndarray:
    """One ``.npy`` entry, fully read (so its CRC is checked), as a numpy array."""
    try:
        data = zf.read(name)
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, ValueError, zlib.error) as e:
        raise _corrupt(path, f"entry {name!r} is damaged ({e})") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} could not be read: {e}") from None


def _read_header_from(zf: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    name = f"{METADATA_KEY}.npy"
    if name not in zf.namelist():
        raise _corrupt(path, f"it has no {METADATA_KEY} entry (not a jaxnet checkpoint?)")
    raw = _read_member(zf, path, name)
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, f"its {METADATA_KEY} entry is not valid JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise _corrupt(path, f"its {METADATA_KEY} entry is not a {FORMAT_NAME} header")
    version = header.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this jaxnet reads versions up "
            f"to {FORMAT_VERSION}: upgrade jaxnet"
        )
    leaves, metadata = header.get("leaves"), header.get("metadata")
    if not isinstance(leaves, list) or not isinstance(metadata, dict):
        raise _corrupt(path, "its header lacks the leaves table or the metadata")
    for record in leaves:
        if not (
            isinstance(record, dict)
            and isinstance(record.get("key"), str)
            and isinstance(record.get("shape"), list)
            and isinstance(record.get("dtype"), str)
        ):
            raise _corrupt(path, f"its header has a malformed leaf entry {record!r}")
    return header


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of a checkpoint, without reading its arrays.

    Args:
        path: a file written by :func:`save_pytree`.

    Returns:
        A dict: ``format``, ``version``, ``leaves`` (one ``{"key", "shape", "dtype"}`` per leaf,
        in flattening order), ``structure`` (the containers), ``treedef`` (``str`` of the
        treedef, for people), ``jax_version``, ``numpy_version`` and ``metadata`` (the caller's
        dict, e.g. to compare a run's config before building a template).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is truncated, corrupt or of a newer format.
    """
    path = Path(path)
    with _open_zip(path) as zf:
        return _read_header_from(zf, path)


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _expected_stored(leaf: Any) -> tuple[tuple[int, ...], str, str | None]:
    """A template leaf's shape, dtype name and PRNG implementation (None for plain arrays)."""
    if _is_prng_key(leaf):
        spec = jax.random.key_impl(leaf) if isinstance(leaf, jax.Array) else None
        impl = str(spec) if spec is not None else None
        return tuple(leaf.shape), str(leaf.dtype), impl
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return tuple(leaf.shape), str(np.dtype(leaf.dtype)), None
    array = np.asarray(leaf)
    return array.shape, str(array.dtype), None


def _check_against(path: Path, header: Mapping[str, Any], like: Any) -> tuple[list, Any]:
    """The template's (keystr, leaf) list and treedef; raises on any difference with the file."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    expected = [(jax.tree_util.keystr(p), leaf) for p, leaf in flat]
    records = {r["key"]: r for r in header["leaves"]}
    missing = [k for k, _ in expected if k not in records]
    wanted = {k for k, _ in expected}
    extra = [k for k in records if k not in wanted]
    problems = []
    if missing:
        problems.append(f"missing from the file: {_listed(missing)}")
    if extra:
        problems.append(f"not in the template: {_listed(extra)}")
    differ = []
    for key, leaf in expected:
        if key not in records:
            continue
        record = records[key]
        shape, dtype, impl = _expected_stored(leaf)
        saved_shape = tuple(record["shape"])
        if saved_shape != shape:
            differ.append(f"{key} has shape {saved_shape} in the file, {shape} expected")
        elif record["dtype"] != dtype:
            differ.append(f"{key} has dtype {record['dtype']} in the file, {dtype} expected")
        elif impl is not None and record.get("prng_impl") != impl:
            differ.append(f"{key} is a {record.get('prng_impl')} key in the file, {impl} expected")
    if differ:
        problems.append(_listed(differ))
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path} was saved for a different architecture: {'; '.join(problems)}"
        )
    return expected, treedef


def _place_like(value: Any, leaf: Any) -> Any:
    """``value`` as the same kind of object as the template leaf (jax array on its sharding)."""
    if isinstance(value, np.ndarray) and isinstance(leaf, jax.Array | jax.ShapeDtypeStruct):
        return jax.device_put(value, getattr(leaf, "sharding", None))
    return value


def load_pytree(path: str | os.PathLike[str], like: Any = None) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_pytree`: the exact tree, dtypes and metadata.

    With ``like``, the tree is rebuilt into the template's structure (its treedef: NamedTuples,
    custom nodes and all) after checking that every key path, shape and dtype agrees; leaves come
    back as the template's leaves are: ``jax.Array`` (on the template leaf's sharding) where the
    template holds a ``jax.Array`` or ``jax.ShapeDtypeStruct``, else ``np.ndarray``.

    Without ``like``, the tree is rebuilt from the structure the file records: dicts (in their
    saved order), lists, tuples and ``None`` come back exactly, with ``np.ndarray`` leaves (so
    float64 stays float64 whether or not x64 is enabled) and typed PRNG keys as ``jax.Array``.
    Limitation: NamedTuples (optax's ``EmaState``, ``ScaleByAdamState``, ``EmptyState`` ...) and
    other custom pytree nodes come back as dicts keyed by field name (or keystr): pass ``like``
    (e.g. ``optimizer.init(params)``) to get the real types back.

    Args:
        path: a file written by :func:`save_pytree`.
        like: an optional template pytree with the same structure, shapes and dtypes (e.g.
            freshly initialised ``{"params": ..., "opt_state": ...}``, or its
            ``jax.eval_shape``); its values are not used.

    Returns:
        ``(tree, metadata)``: the restored pytree and the metadata dict given to
        :func:`save_pytree`, as JSON returns it (tuples become lists, numpy scalars Python
        numbers).

    Raises:
        FileNotFoundError: no such file.
        CorruptCheckpointError: the file is truncated, not a zip, fails a CRC check, lacks its
            header, or an array disagrees with the header.
        CheckpointMismatchError: ``like`` has other key paths, shapes or dtypes ("saved for a
            different architecture").
        CheckpointError: the file cannot be read or has a newer format version.
    """
    path = Path(path)
    with _open_zip(path) as zf:
        header = _read_header_from(zf, path)
        template = _check_against(path, header, like) if like is not None else None
        names = set(zf.namelist()) - {f"{METADATA_KEY}.npy"}
        leaves: dict[str, Any] = {}
        for record in header["leaves"]:
            key = record["key"]
            name = f"{key}.npy"
            if name not in names:
                raise _corrupt(path, f"the array {key} listed in its header is missing")
            names.discard(name)
            stored = _read_member(zf, path, name)
            try:
                shape, dtype = _stored_form(record)
            except (KeyError, TypeError, ValueError) as e:
                raise _corrupt(path, f"its header entry for {key} is malformed ({e})") from None
            if stored.shape != shape or stored.dtype != dtype:
                raise _corrupt(
                    path,
                    f"the array {key} has shape {stored.shape} and dtype {stored.dtype}; "
                    f"its header says {shape} and {dtype}",
                )
            leaves[key] = _from_stored(record, stored)
        if names:
            raise _corrupt(path, f"entries not listed in its header: {_listed(sorted(names))}")
    if template is not None:
        expected, treedef = template
        values = [_place_like(leaves[k], leaf) for k, leaf in expected]
        return jax.tree_util.tree_unflatten(treedef, values), header["metadata"]
    structure = header.get("structure")
    if structure is None:
        raise CheckpointError(f"checkpoint {path} records no tree structure: pass like=")
    try:
        tree = _rebuild(structure, (), leaves)
    except (KeyError, TypeError, ValueError) as e:
        raise _corrupt(path, f"its tree structure is malformed ({e})") from None
    return tree, header["metadata"]


# ----------------------------------------------------------------------------------------------
# A folder of numbered checkpoints


class CheckpointManager:
    """Numbered checkpoints in one folder: ``ckpt_00001000.npz``, newest ``keep`` kept.

    ``save`` writes atomically and only then deletes old checkpoints, so a crash at any moment
    leaves at least every checkpoint that existed before the call. ``restore`` loads the newest
    checkpoint that reads back; a newest one that is truncated or corrupt (a failing disk) is
    reported with a warning, renamed to ``<name>.corrupt`` (out of the rotation, kept for
    inspection) and the previous one is loaded instead.

    Steps are expected to increase from one ``save`` to the next; the checkpoint just written is
    never deleted, even if an older run left checkpoints of higher steps.

    Creating a manager removes temporary files left by a write that was killed (hidden
    ``.ckpt_*.tmp`` files): only one process should write checkpoints into a folder.

    Args:
        directory: the folder; created (with parents) if missing.
        keep: how many checkpoints to keep, >= 1.

    Raises:
        ValueError: ``keep`` < 1.
    """

    PATTERN = re.compile(r"ckpt_(\d{8,})\.npz")

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)
        for tmp in self.directory.glob(".ckpt_*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()

    def path_for(self, step: int) -> Path:
        """The file of step ``step``: ``<directory>/ckpt_{step:08d}.npz``."""
        return self.directory / f"ckpt_{step:08d}.npz"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Every ``(step, path)`` checkpoint in the folder, oldest step first."""
        found = []
        for p in self.directory.iterdir():
            m = self.PATTERN.fullmatch(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest(self) -> Path | None:
        """The checkpoint of the highest step, or None when there is none (not checked)."""
        found = self.checkpoints()
        return found[-1][1] if found else None

    def save(self, step: int, tree: Any, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the checkpoint of ``step`` atomically, then delete all but the newest ``keep``.

        Args:
            step: the iteration, an int >= 0 (names the file; an existing file of the same step
                is replaced atomically).
            tree: the training state pytree (see :func:`save_pytree`).
            metadata: a JSON-able dict (see :func:`save_pytree`).

        Returns:
            The path written.

        Raises:
            TypeError: ``step`` is not an int, or a leaf or the metadata cannot be saved.
            ValueError: ``step`` < 0.
            OSError: the write failed; older checkpoints are untouched.
        """
        if isinstance(step, bool) or not isinstance(step, int | np.integer):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        path = save_pytree(self.path_for(int(step)), tree, metadata)
        others = [p for _, p in self.checkpoints() if p != path]
        for old in others[: max(0, len(others) - (self.keep - 1))]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        return path

    def restore(self, like: Any = None) -> tuple[Any, dict[str, Any]] | None:
        """Load the newest checkpoint that reads back, falling back past corrupt ones.

        Args:
            like: the template pytree (see :func:`load_pytree`).

        Returns:
            ``(tree, metadata)`` of the newest valid checkpoint, or None when the folder holds
            no checkpoint at all.

        Raises:
            CheckpointMismatchError: the newest checkpoint was saved for another architecture
                (no fallback: the older ones were too).
            CheckpointError: checkpoints exist but none can be read.
        """
        failures = []
        found = self.checkpoints()
        for i, (_, path) in enumerate(reversed(found)):
            try:
                return load_pytree(path, like)
            except CheckpointMismatchError:
                raise
            except (CheckpointError, FileNotFoundError) as e:
                failures.append(str(e))
                if isinstance(e, CorruptCheckpointError):
                    with contextlib.suppress(OSError):
                        os.replace(path, path.with_name(path.name + ".corrupt"))
                    note = f"; renamed it to {path.name}.corrupt"
                else:
                    note = ""
                if i + 1 < len(found):
                    warnings.warn(f"{e}{note}; trying the previous checkpoint", stacklevel=2)
        if failures:
            raise CheckpointError(
                f"no readable checkpoint in {self.directory}: {' | '.join(failures)}"
            )
        return None
