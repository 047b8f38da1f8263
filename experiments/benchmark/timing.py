"""Interleaved timing: windows of calls, rounds whose order rotates, medians and ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """How long to time: ``windows`` interleaved rounds of about ``window_s`` seconds each."""

    windows: int
    window_s: float


FULL = Settings(windows=9, window_s=0.4)
QUICK = Settings(windows=3, window_s=0.1)
LAYERS_FULL = Settings(windows=5, window_s=0.05)
LAYERS_QUICK = Settings(windows=2, window_s=0.01)


Runner = Callable[[int], None]
"""``run(k)``: take ``k`` steps (or products) and wait until the device is done."""


def calibrate(run: Runner, window_s: float) -> int:
    """How many calls of ``run(1)`` fill about ``window_s`` seconds (at least 1)."""
    start = time.perf_counter()
    run(2)
    per_call = (time.perf_counter() - start) / 2
    return max(1, round(window_s / max(per_call, 1e-9)))


def interleaved(
    runners: dict[str, Runner], settings: Settings
) -> dict[str, tuple[int, list[float]]]:
    """Time every runner in ``settings.windows`` rounds, one window each per round.

    The order rotates from round to round, so no runner always follows the same one.

    Args:
        runners: name -> ``run(k)``.
        settings: rounds and seconds per window.

    Returns:
        name -> ``(calls per window, [seconds per call in each round])``, in ``runners``' order.
    """
    names = list(runners)
    calls = {name: calibrate(runners[name], settings.window_s) for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(settings.windows):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name](calls[name])
            seconds[name].append((time.perf_counter() - start) / calls[name])
    return {name: (calls[name], seconds[name]) for name in names}


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median over rounds of ``denominator[r] / numerator[r]`` (a speed ratio of times)."""
    return statistics.median(d / n for n, d in zip(numerator, denominator, strict=True))
