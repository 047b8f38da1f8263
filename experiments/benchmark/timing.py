"""Interleaved timing: runners, windows of calls, rounds whose order rotates, medians and ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Settings:
    """How long to time: ``windows`` interleaved rounds of about ``window_s`` seconds each."""

    windows: int
    window_s: float


FULL, QUICK = Settings(windows=9, window_s=0.4), Settings(windows=3, window_s=0.1)
LAYERS_FULL, LAYERS_QUICK = Settings(windows=5, window_s=0.05), Settings(windows=2, window_s=0.01)

Runner = Callable[[int], None]
"""``run(k)``: take ``k`` steps (or products) and wait until the device is done."""


def repeat(call: Callable[[], Any], wait: Callable[[Any], Any]) -> Runner:
    """The runner that calls ``call()`` ``k`` times, then ``wait``s on the last result."""

    def run(k: int) -> None:
        out = None
        for _ in range(k):
            out = call()
        wait(out)

    return run


def seconds(run: Runner, k: int = 1) -> float:
    """Wall-clock seconds of ``run(k)``."""
    start = time.perf_counter()
    run(k)
    return time.perf_counter() - start


def interleaved(
    runners: dict[str, Runner], settings: Settings
) -> dict[str, tuple[int, list[float]]]:
    """Time every runner in ``settings.windows`` rounds, one window each per round, the order
    rotating from round to round (so no runner always follows the same one): name -> ``(calls
    per window, [seconds per call in each round])``, in ``runners``' order."""
    names = list(runners)
    calls = {  # the calls that fill about one window, from the time of two
        name: max(1, round(settings.window_s / max(seconds(runners[name], 2) / 2, 1e-9)))
        for name in names
    }
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(settings.windows):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(seconds(runners[name], calls[name]) / calls[name])
    return {name: (calls[name], times[name]) for name in names}


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median over rounds of ``denominator[r] / numerator[r]`` (a speed ratio of times)."""
    return statistics.median(d / n for n, d in zip(numerator, denominator, strict=True))
