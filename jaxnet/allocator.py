"""Keep freed host memory for reuse, so that jitted CPU steps stop paying for page faults.

Each time XLA's CPU runtime runs a compiled step, it allocates that step's temporary buffer
(all of the step's intermediate arrays, packed into one block) with ``malloc`` and frees it
when the step ends. glibc's ``malloc`` serves a block above its mmap threshold (which adapts,
but never above 32 MiB) with a fresh ``mmap`` and hands it back with ``munmap``: the next step
gets new pages, and the kernel faults in and zeroes every 4 KiB page of them again, thousands
per step at large batches (figures: ``docs/performance.md``).

:func:`reuse_freed_memory` asks glibc to serve every block from its heap and to keep freed
memory there rather than return it to the system, so each step reuses the pages of the one
before. It changes how this process allocates, for every library in it (PyTorch too), which
is why jaxnet's functions never call it themselves; the experiment commands and the benchmark
call it when given ``--reuse-freed-memory``, and a program can call it once at start-up.

It is a trade, so it is not on by default. Below a 32 MiB temporary block glibc already
reuses the block and nothing is gained. The heap also fragments: blocks freed in its middle are
kept but not always reusable, so the peak resident memory grows. PyTorch's CPU tuning guide
gets the same speed by another route (preloading jemalloc or tcmalloc); this needs nothing
installed.
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
