"""The machine a run ran on, as the run folder's ``config.json`` and the benchmark record it."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average, or ``None`` where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def environment() -> dict[str, str]:
    """The processor, the libraries' versions and JAX's devices, each as a string."""
    import jax
    import jaxlib
    import optax

    device = jax.devices()[0]
    return {
        "processor": cpu_model(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": f"{device.platform}: {device.device_kind}",
        "device_count": str(jax.device_count()),
        "cpu_count": str(os.cpu_count()),
    }
