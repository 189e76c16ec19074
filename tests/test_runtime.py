"""A job on a runtime nextplay does not support fails in its first second, in one line naming what it needs."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from nextplay import runtime

ROOT = Path(__file__).resolve().parents[1]
CURRENT = {"pyspark": "4.0.5", "mlflow": "3.17.2"}


def test_the_supported_runtimes_pass() -> None:
    for version in ("17.3", "17.3.x-cpu-ml-scala2.13", "18.0", "18.1.x-gpu-ml-scala2.13"):
        assert runtime.problems({"DATABRICKS_RUNTIME_VERSION": version}, CURRENT.get, (3, 12, 3)) == [], version
    assert runtime.problems({}, CURRENT.get, (3, 11, 7)) == []
    assert runtime.problems({}, {}.get, (3, 11, 7)) == [], "a package not installed is the importing stage's to report"
    assert runtime.problems() == [], "this environment is supported"


def test_an_older_databricks_runtime_is_named_with_the_one_it_needs() -> None:
    [line] = runtime.problems({"DATABRICKS_RUNTIME_VERSION": "16.4"}, CURRENT.get, (3, 12, 3))
    assert "Databricks Runtime 17.3 LTS ML or later" in line and "runs 16.4" in line and "ml_runtime" in line


def test_old_packages_and_python_are_named() -> None:
    lines = runtime.problems({}, {"pyspark": "3.5.2", "mlflow": "2.21.0"}.get, (3, 10, 12))
    assert [line.split(" ")[2] for line in lines] == ["Python", "pyspark", "mlflow"]
    assert "3.5.2 is installed" in lines[1] and "2.21.0 is installed" in lines[2]


def test_the_cli_refuses_an_old_runtime_before_loading_spark() -> None:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "import sys\nfrom nextplay.cli import main\nrc = main(['sessionize'])\n"
                           "print(sorted(m for m in ('pyspark', 'torch', 'mlflow') if m in sys.modules))\nsys.exit(rc)"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT / "lib"), "PATH": "/usr/bin:/bin", "DATABRICKS_RUNTIME_VERSION": "16.4"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "nextplay: error: nextplay needs Databricks Runtime 17.3 LTS ML or later (Spark 4.0, MLflow 3); this cluster "
        "runs 16.4: set the bundle's ml_runtime variable"]
    assert done.stdout.strip() == "[]" and time.perf_counter() - started < 30
