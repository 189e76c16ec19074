"""What the figures were measured on: a figure without its machine cannot be compared to anything."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Any

PACKAGES = ("torch", "pyspark", "delta-spark", "petastorm", "horovod", "mlflow", "pyarrow", "numpy", "pandas")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return float("nan")


def _java() -> str:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        return (out.stderr or out.stdout).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def load_average() -> list[float]:
    """1/5/15-minute load: on a shared machine this says how much the figures were disturbed."""
    return [round(x, 2) for x in os.getloadavg()]


def describe() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return {
        "nproc": os.cpu_count(), "cpu_model": _cpu_model(), "memory_gib": _memory_gib(),
        "os": platform.platform(), "python": platform.python_version(), "java": _java(),
        "versions": versions, "load_average_at_start": load_average(),
    }
