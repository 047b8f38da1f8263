"""The machine facts a run folder and the benchmark record."""

from __future__ import annotations

import platform
from pathlib import Path

import jax
import numpy as np
import pytest

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


@pytest.mark.skipif(not Path("/proc/loadavg").exists(), reason="Linux's /proc/loadavg")
def test_load_average_is_the_one_minute_figure():
    first = float(Path("/proc/loadavg").read_text().split()[0])
    assert machine.load_average() == pytest.approx(first, abs=0.5)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux's /proc/self/status")
def test_peak_rss_is_the_kernels_high_water_mark_in_mib():
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched: the peak is at least this
    status = Path("/proc/self/status").read_text()
    hwm_kib = int(
        next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]
    )
    assert machine.peak_rss_mb() == pytest.approx(hwm_kib / 1024, rel=0.05)
    assert machine.peak_rss_mb() >= block.nbytes / 2**20


def test_environment_names_the_libraries_and_the_device():
    env = machine.environment()
    assert env["jax"] == jax.__version__
    assert env["numpy"] == np.__version__
    assert env["device"] == f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
    assert env["device_count"] == str(jax.device_count())
    assert all(isinstance(v, str) and v for v in env.values())
