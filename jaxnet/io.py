"""The one atomic writer: a file appears whole or not at all.

Every file jaxnet writes (checkpoints, parameters, figures, tables, JSON, CSV, the data cache)
goes through :func:`atomic_write`, so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "check_writable", "write_json", "write_text"]


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where unsupported."""
    if os.name != "posix":  # pragma: no cover - Windows cannot open a folder
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; when the block ends without error, it is ``path``.

    The temporary file, ``.<name>.<hex>.tmp`` in ``path``'s folder (created if needed), is made
    exclusively with mode ``0o666`` less the umask (as ``open`` would make ``path``). At the end
    it is flushed and ``fsync``-ed, renamed over ``path`` with ``os.replace`` (atomic on POSIX
    and Windows), and the folder ``fsync``-ed so the rename survives a power cut. If anything
    fails on the way, the temporary file is removed and the old ``path``, if any, is untouched.
    ``mode``: ``"wb"`` (binary) or ``"w"`` (text, UTF-8).

    Raises:
        ValueError: ``mode`` is neither ``"wb"`` nor ``"w"``.
        OSError: the file could not be written (no space left, no permission): its
            ``filename`` is ``path``, never the temporary file, so a message names what the
            user asked for.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as err:  # a full disk, a read-only folder: name the file that was written
        raise OSError(err.errno, err.strerror or str(err), str(dest)) from err
    _fsync_dir(dest.parent)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8); returns ``path`` as a :class:`Path`."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON (NaN allowed, as Python's ``json`` writes it), atomically."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def check_writable(path: str | os.PathLike[str], flag: str) -> Path:
    """Check, before any work, that a file can be written at ``path``, a command's output named
    by its ``flag`` (``--figure``); return ``path`` as a :class:`~pathlib.Path`.

    The nearest existing ancestor must be a folder this process may write into; ``path`` itself
    must not be a folder. A write can still fail later (a full disk): :func:`atomic_write`'s
    ``OSError`` then names ``path``.

    Raises:
        ValueError: ``"{flag} {path}: ..."``: a folder, under a regular file, or in a folder
            that is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder (Is a directory)")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is not a folder (Not a directory)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {parent} is not writable (Permission denied)")
    return path
