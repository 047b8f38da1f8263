"""The ``fit()`` check: whole epochs through the training loop against steps x step time."""

from __future__ import annotations

import pytest

from experiments.benchmark import epoch


def test_epoch_check_reports_epoch_and_step_times(monkeypatch):
    monkeypatch.setattr(epoch, "EPOCH_IMAGES", {True: 256, False: 256})
    record = epoch.bench_epoch(quick=True, batch=64, epochs=2)
    assert record["steps"] == 4 and len(record["epochs_s"]) == 2
    assert record["epoch_s"] > 0 and record["steps_x_step_s"] > 0
    assert record["ratio"] == pytest.approx(
        record["epoch_s"] / (record["steps"] * record["step_ms"] / 1e3)
    )
    several = record["several"]
    assert several["steps_per_call"] == epoch.STEPS_PER_CALL and len(several["epochs_s"]) == 2
    assert several["speedup"] == pytest.approx(record["epoch_s"] / several["epoch_s"])
