"""Fixtures for the experiment tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_helpers import make_idx_dir


@pytest.fixture
def idx_dir(tmp_path) -> Path:
    return make_idx_dir(tmp_path / "idx")
