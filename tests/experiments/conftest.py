"""Fixtures for the experiment tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_helpers import make_idx_dir


@pytest.fixture(autouse=True)
def malloc_calls(monkeypatch) -> list[bool]:
    """Record the commands' call to reuse_freed_memory instead of changing this process's malloc.

    The setting is process-wide; the commands run in-process here, and the rest of the test
    session should allocate as it always does. (Subprocess runs make the real call.)
    """
    from jaxnet import allocator

    calls: list[bool] = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: calls.append(True) or True)
    return calls


@pytest.fixture
def idx_dir(tmp_path) -> Path:
    return make_idx_dir(tmp_path / "idx")
