"""reuse_freed_memory: glibc keeps freed blocks, so a second large allocation faults no pages.

Each check runs in a fresh interpreter: the setting is process-wide and would otherwise
change how the rest of the test session allocates.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from jaxnet import allocator

# malloc, touch and free a 64 MiB block (above glibc's largest mmap threshold, 32 MiB), twice,
# and print the minor page faults of the second round over the block's number of 4 KiB pages.
# (Through libc itself: NumPy asks for huge pages on large arrays, which fault 512 at a time.)
PROBE = """
import ctypes, ctypes.util, resource, sys
from jaxnet.allocator import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 1 << 26
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def touch():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
touch()
before = faults()
touch()
print(applied, (faults() - before) / (size // 4096))
"""

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc"
)


def huge_pages_always() -> bool:
    """Transparent huge pages for every mapping: a fresh block then faults 512 pages at a time."""
    try:
        setting = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    return "[always]" in setting


def probe(mode: str) -> tuple[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], float(out[1])


@glibc
def test_a_freed_block_is_reused_without_page_faults():
    applied, faulted = probe("reuse")
    assert applied == "True"
    assert faulted < 0.05  # the pages of the first block are still mapped


@glibc
@pytest.mark.skipif(huge_pages_always(), reason="huge pages hide the faults of a fresh block")
def test_by_default_glibc_hands_large_blocks_back():
    # The control: without the setting every page of the second block is faulted in anew.
    applied, faulted = probe("default")
    assert applied == "None"
    assert faulted > 0.9


def test_elsewhere_nothing_is_changed(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda *args, **kwargs: ("musl", "1.2"))
    assert allocator.reuse_freed_memory() is False
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert allocator.reuse_freed_memory() is False
