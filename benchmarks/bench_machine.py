"""The machine a benchmark ran on, written next to every number it produced.

One description for every script in ``benchmarks/``: the machine is shared,
so the load average at the time matters as much as the CPU model.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def package_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_basics(*distributions: str) -> dict[str, Any]:
    """CPU, cores, 1-minute load, OS and Python, plus the version of each named distribution.

    Version keys use underscores (``torch-geometric`` -> ``torch_geometric``) so
    the markdown writers can index them like the other fields.
    """
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{name.replace("-", "_"): package_version(name) for name in distributions},
    }
