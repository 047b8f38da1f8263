"""Keep freed host memory for reuse, so that jitted CPU steps stop paying for page faults.

Each run of a compiled step, XLA's CPU runtime ``malloc``s the step's temporary buffer (all its
intermediate arrays in one block) and frees it at the end. glibc serves a block above its mmap
threshold (adaptive, at most 32 MiB) with a fresh ``mmap`` and returns it with ``munmap``, so
the kernel faults in and zeroes every 4 KiB page again, thousands per step at large batches
(figures: ``docs/performance.md``). :func:`reuse_freed_memory` makes each step reuse the pages
of the one before.

It is a trade, so it is off by default: below a 32 MiB block nothing is gained, and the heap
fragments (peak resident memory grows). It changes how the whole process allocates (PyTorch
too), so jaxnet's functions never call it: the experiment commands and the benchmark do when
given ``--reuse-freed-memory``, and a program may, once at start-up. (PyTorch's CPU tuning
guide gets the same speed by preloading jemalloc or tcmalloc; this needs nothing installed.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

KEEP_FREED_BYTES = 1 << 30
"""Freed memory at the top of the heap that glibc keeps instead of returning (1 GiB)."""


def reuse_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed blocks for reuse instead of unmapping them.

    Sets ``M_MMAP_MAX`` to 0 (no block gets its own ``mmap``) and ``M_TRIM_THRESHOLD`` to
    :data:`KEEP_FREED_BYTES` (free memory at the top of the heap is kept up to that size).
    Call it once, before the first train step; calling it again changes nothing.

    Returns:
        True where the settings took effect (Linux with glibc); False elsewhere (macOS,
        Windows, musl), where nothing is changed and allocation behaves as before.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
