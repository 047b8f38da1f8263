"""What the benchmark tests share: timing settings that make every window instant."""

from __future__ import annotations

from experiments.benchmark.timing import Settings

TINY = Settings(windows=1, window_s=0.001)
"""One window per round, as short as a window can be: the tests check structure, never speed."""
