"""The machine facts a run folder and the benchmark record."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import jax
import numpy as np

from experiments import machine


def test_cpu_model_is_the_first_model_name_in_cpuinfo(monkeypatch):
    text = "processor\t: 0\nmodel name\t: Test CPU @ 2.0GHz\nmodel name\t: Other\n"
    real = Path.read_text
    monkeypatch.setattr(
        Path, "read_text", lambda p, *a, **k: text if str(p) == "/proc/cpuinfo" else real(p)
    )
    assert machine.cpu_model() == "Test CPU @ 2.0GHz"


def test_cpu_model_falls_back_to_platform_without_cpuinfo(monkeypatch):
    def unreadable(path, *args, **kwargs):
        raise OSError("no such file")

    monkeypatch.setattr(Path, "read_text", unreadable)
    assert machine.cpu_model() == (platform.processor() or platform.machine())


def test_load_average_is_the_one_minute_figure():
    if not hasattr(os, "getloadavg"):
        assert machine.load_average() is None
        return
    assert machine.load_average() >= 0.0


def test_peak_rss_grows_with_an_allocation():
    before = machine.peak_rss_mb()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert machine.peak_rss_mb() >= before
    assert machine.peak_rss_mb() >= block.nbytes / 2**20


def test_environment_names_the_libraries_and_the_device():
    env = machine.environment()
    assert env["jax"] == jax.__version__
    assert env["numpy"] == np.__version__
    assert env["device"] == f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
    assert env["device_count"] == str(jax.device_count())
    assert all(isinstance(v, str) and v for v in env.values())
