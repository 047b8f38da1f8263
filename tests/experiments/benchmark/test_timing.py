"""Windows in rotating rounds, and the median of per-round ratios."""

from __future__ import annotations

from bench_helpers import TINY

from experiments.benchmark.timing import interleaved, median_ratio


def test_interleaved_gives_one_time_per_round_for_every_runner():
    calls = {"a": 0, "b": 0}

    def runner(name):
        def run(k):
            calls[name] += k

        return run

    timed = interleaved({"a": runner("a"), "b": runner("b")}, TINY)
    assert set(timed) == {"a", "b"}
    for per_window, seconds in timed.values():
        assert per_window >= 1 and len(seconds) == TINY.windows
    assert median_ratio([1.0, 2.0, 4.0], [2.0, 2.0, 2.0]) == 1.0
