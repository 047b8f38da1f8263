"""Keep freed host memory for reuse, so that jitted CPU steps stop paying for page faults.

Each time XLA's CPU runtime runs a compiled step, it allocates that step's temporary buffer
(all of the step's intermediate arrays, packed into one block) with ``malloc`` and frees it
when the step ends. glibc's ``malloc`` serves a block above its mmap threshold (which adapts,
but never above 32 MiB) with a fresh ``mmap`` and hands it back with ``munmap``: the next step
gets new pages, and the kernel faults in and zeroes every 4 KiB page of them again. From
batch 256 on MNIST (a temporary block of about 40 MiB) that is about 9000-12000 page faults
per train step, and the step takes 1.3-1.6x as long (see ``experiments/benchmark.py``).

:func:`reuse_freed_memory` asks glibc to serve every block from its heap and to keep freed
memory there rather than return it to the system, so each step reuses the pages of the one
before. It changes how this process allocates, for every library in it (PyTorch too), which
is why jaxnet's functions never call it themselves: the commands in ``experiments`` do, and a
program that trains on the CPU can call it once at start-up. The cost is that a process keeps
up to :data:`KEEP_FREED_BYTES` of freed memory (its peak stays resident instead of shrinking).
PyTorch's CPU tuning guide gives the same advice by another route (preload jemalloc or
tcmalloc); this needs nothing installed.
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
