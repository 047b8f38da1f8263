"""What the commands print and parse alike: the error line, output that survives a closed pipe,
the data flags (the training commands and explain), and the ``RUN_DIR`` argument (predict,
explain)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

DATA_FLAGS: dict[str, dict[str, Any]] = {
    "--data-dir": {
        "type": Path,
        "help": "data root holding mnist/ and cifar10/ (default: $JAXNET_DATA, else a per-user "
        "cache, downloading there when missing)",
    },
    "--no-verify": {
        "action": "store_true",
        "help": "skip the size and md5 check of data files found locally",
    },
}
"""Where the real data sets are read from, as ``argparse.add_argument`` keyword arguments."""


def run_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The parser of a command on a finished run (predict, explain): its ``RUN_DIR`` argument."""
    p = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run folder")
    return p


def error(message: str, status: int = 2) -> int:
    """One line on stderr, ``error: message``; returns ``status`` (every command's error line)."""
    print(f"error: {message}", file=sys.stderr)
    return status


def say(text: str) -> None:
    """Print ``text``; if the reader has gone (``... | head``), the rest of the output is dropped
    without a traceback and the command carries on (its figure is still written)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
