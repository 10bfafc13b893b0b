"""The machine a benchmark ran on, written next to every number it produced."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench_machine import cpu_model, package_version

LIBRARIES = ("numpy", "scipy", "torch", "torch-geometric", "implicit", "scikit-surprise", "pyspark")


def _memory_gib() -> float | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def _java_version() -> str | None:
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stderr.strip().splitlines()
    return lines[0] if lines else None


def describe_machine() -> dict[str, Any]:
    """CPU, cores, memory, load, and the versions of every library a row depends on.

    The load average is recorded because the machine is shared: wall times
    measured under load are comparable only within one run.
    """
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "load_average_1_5_15": [round(value, 2) for value in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "java": _java_version(),
        "libraries": {name: package_version(name) for name in LIBRARIES},
    }
