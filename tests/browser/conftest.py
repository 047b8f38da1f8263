"""The browser tests build their run folders with tests/experiments/run_folders.py."""

from __future__ import annotations

import sys
from pathlib import Path

EXPERIMENT_HELPERS = str(Path(__file__).parents[1] / "experiments")
if EXPERIMENT_HELPERS not in sys.path:
    sys.path.append(EXPERIMENT_HELPERS)
