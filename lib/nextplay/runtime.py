"""What nextplay needs from the environment it runs in, checked before a stage starts.

On a runtime it does not support a job would otherwise fail minutes in, at the first import of a
Spark 4 module or an MLflow 3 call, with a traceback that names neither the runtime nor the fix.
`problems` reads only installed versions (importlib.metadata) and, on Databricks, the runtime's own
version (`DATABRICKS_RUNTIME_VERSION`), so the CLI answers in its first second without importing
Spark, torch or MLflow. The supported runtimes and why: README, "On Databricks".
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from typing import Callable, Mapping

PYTHON = (3, 11)
# Distribution -> the oldest version nextplay runs on, and what needs it.
PACKAGES: dict[str, tuple[tuple[int, ...], str]] = {
    "pyspark": ((4, 0), "Spark 4.0 (nextplay sql uses pyspark.logger)"),
    "mlflow": ((3, 0), "MLflow 3 (models are logged by name)"),
}
# The oldest Databricks ML runtime with Spark 4.0 and MLflow 3: 17.3 LTS.
DATABRICKS = (17, 3)


def release() -> str:
    """The installed nextplay release: `--version`, and recorded in every saved and logged model."""
    return _installed("nextplay") or "unknown (not installed)"


class UnsupportedRuntime(RuntimeError):
    """The environment lacks what nextplay needs; the message says what, in one line."""


def _numbers(text: str) -> tuple[int, ...]:
    """(17, 3) of '17.3.x-cpu-ml-scala2.13', (4, 0, 5) of '4.0.5', () of what has no leading number."""
    match = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def problems(env: Mapping[str, str] = os.environ, installed: Callable[[str], str | None] = _installed,
             python: tuple[int, ...] = tuple(sys.version_info[:3])) -> list[str]:
    """One line per unmet need; empty when nextplay can run here. A package that is not installed at
    all is left to the stage that imports it (the CLI's help and config checks need none)."""
    found: list[str] = []
    runtime = env.get("DATABRICKS_RUNTIME_VERSION")
    if runtime is not None and _numbers(runtime)[:2] < DATABRICKS:
        found.append(f"nextplay needs Databricks Runtime {DATABRICKS[0]}.{DATABRICKS[1]} LTS ML or later (Spark 4.0, "
                     f"MLflow 3); this cluster runs {runtime}: set the bundle's ml_runtime variable")
    if python[:2] < PYTHON:
        found.append(f"nextplay needs Python {PYTHON[0]}.{PYTHON[1]} or later; this is {'.'.join(map(str, python))}")
    for name, (oldest, why) in PACKAGES.items():
        version = installed(name)
        if version is not None and _numbers(version)[:len(oldest)] < oldest:
            found.append(f"nextplay needs {name} >= {'.'.join(map(str, oldest))} for {why}; {version} is installed")
    return found


def check() -> None:
    """Raise UnsupportedRuntime naming the first unmet need (module docstring)."""
    unmet = problems()
    if unmet:
        raise UnsupportedRuntime(unmet[0])
