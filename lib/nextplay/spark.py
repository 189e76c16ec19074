"""The one SparkSession builder every stage uses.

Delta is enabled through its JARs: from `spark.jars_dir` when `make jars` fetched them (start-up
then needs no network), otherwise through `spark.jars.packages` resolved from Maven Central.
On a cluster or Databricks (`spark.master: null`) the session that spark-submit or the runtime
created is reused, and only settings that are safe to change at run time are applied.
`spark.shuffle_partitions` is a default for local masters only (a few cores want a few shuffle
partitions): a cluster keeps its own setting (or adaptive execution's) unless `spark.conf` sets
`spark.sql.shuffle.partitions`.
"""
from __future__ import annotations

import glob
import os
import resource
import sys
from pathlib import Path

from py4j.protocol import Py4JError
from pyspark.sql import SparkSession

from nextplay.config import Config
from nextplay.progress import console_progress

_DELTA_SQL_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


_SHUFFLE_KEY = "spark.sql.shuffle.partitions"


def is_local_master(master: str | None) -> bool:
    """True for Spark's in-process masters (local, local[N], local[*]), whose cores are this machine's."""
    return (master or "").startswith("local")


def _local_env() -> None:
    """Keep a local run on loopback and make Python workers use this interpreter (not the system one)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def delta_jars(cfg: Config) -> list[str]:
    if not cfg.spark.jars_dir:
        return []
    root = Path(cfg.spark.jars_dir)
    if not root.is_absolute():
        # Resolve against the project root too, so jobs started from another folder find them.
        candidates = [Path.cwd() / root, Path(__file__).resolve().parents[2] / root]
        root = next((c for c in candidates if c.is_dir()), candidates[0])
    return sorted(glob.glob(str(root / "*.jar")))


def get_spark(cfg: Config) -> SparkSession:
    """Return the active session, or build a local one with Delta enabled."""
    active = SparkSession.getActiveSession()
    if active is not None:
        if _SHUFFLE_KEY in cfg.spark.conf:
            active.conf.set(_SHUFFLE_KEY, str(cfg.spark.conf[_SHUFFLE_KEY]))
        elif is_local_master(active.sparkContext.master):
            active.conf.set(_SHUFFLE_KEY, str(cfg.spark.shuffle_partitions))
        return active
    builder = SparkSession.builder.appName(cfg.spark.app_name)
    if cfg.spark.master:
        _local_env()
        builder = builder.master(cfg.spark.master)
        builder = builder.config("spark.driver.memory", cfg.spark.driver_memory)
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
        builder = builder.config("spark.ui.showConsoleProgress", console_progress())  # a bar on a terminal only
        # Delta rebuilds table state with 50 tasks by default: far too many for a few local cores.
        builder = builder.config("spark.databricks.delta.snapshotPartitions", "2")
    jars = delta_jars(cfg)
    if jars:
        builder = builder.config("spark.jars", ",".join(jars))
    else:
        builder = builder.config("spark.jars.packages", cfg.spark.delta_package)
    for key, value in _DELTA_SQL_CONF.items():
        builder = builder.config(key, value)
    if is_local_master(cfg.spark.master):
        builder = builder.config(_SHUFFLE_KEY, str(cfg.spark.shuffle_partitions))
    builder = builder.config("spark.sql.session.timeZone", "UTC")
    builder = builder.config("spark.databricks.delta.schema.autoMerge.enabled", "false")
    for key, value in cfg.spark.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def driver_peak_memory(spark: SparkSession) -> dict[str, float | None]:
    """The driver's peak resident memory so far, in MiB: this Python process (`ru_maxrss`) and the
    JVM py4j talks to (VmHWM in its /proc status; None where that is not readable, e.g. a JVM in
    another container). Peaks over the process's life, so a stage that holds data in proportion to
    its input shows it here."""
    scale = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss: bytes on macOS, KiB on Linux
    python = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    jvm: float | None = None
    try:
        pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    jvm = int(line.split()[1]) / 2**10  # kB
    except (AttributeError, OSError, ValueError, Py4JError):  # no py4j JVM (Spark Connect), no /proc
        jvm = None
    return {"python_peak_rss_mib": round(python, 1), "jvm_peak_rss_mib": None if jvm is None else round(jvm, 1)}
