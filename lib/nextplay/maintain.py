"""`nextplay maintain`: keeps every table's storage in shape by policy, run as a scheduled task.

For each table that exists, in one pass:

1. comments and CHECK constraints a table created by an older release lacks (`Lake.upgrade`);
2. the retention properties `delta.deletedFileRetentionDuration` and `delta.logRetentionDuration`,
   both `maintenance.retention_hours`, so files and log entries expire together: a version is
   readable exactly as long as both are kept;
3. OPTIMIZE for the tables that grow by appends, merges and day replacements (`tables.COMPACTED`):
   a clustered table is clustered, a predictions table partitioned by an older release is Z-ordered
   by user over its recent days (`maintenance.zorder_days`), the others are compacted;
4. VACUUM with `maintenance.retention_hours`: files no version within the retention uses are deleted.

Every step is a no-op on a table already in shape, so a retried or repeated run is harmless. None
changes rows: the commits they make are layout-only for `Lake.pin_generation`.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

from pyspark.sql import SparkSession

from nextplay.config import DELTA_SAFE_RETENTION_HOURS, Config, MaintenanceConfig
from nextplay.spark import get_spark
from nextplay.tables import ALL_TABLES, COMPACTED, ZORDER, Lake

log = logging.getLogger(__name__)

RETENTION_PROPERTIES = ("delta.deletedFileRetentionDuration", "delta.logRetentionDuration")


def retention_interval(hours: int) -> str:
    """A Delta table-property interval for `hours`."""
    return f"interval {hours} hours"


def set_retention(spark: SparkSession, lake: Lake, table: str, hours: int) -> bool:
    """Set both retention properties to `hours` when they differ; True when a commit was made."""
    props = spark.sql(f"DESCRIBE DETAIL {lake.name(table)}").first()["properties"] or {}
    wanted = retention_interval(hours)
    if all(props.get(p) == wanted for p in RETENTION_PROPERTIES):
        return False
    pairs = ", ".join(f"'{p}' = '{wanted}'" for p in RETENTION_PROPERTIES)
    spark.sql(f"ALTER TABLE {lake.name(table)} SET TBLPROPERTIES ({pairs})")
    return True


def optimize(spark: SparkSession, lake: Lake, table: str, mcfg: MaintenanceConfig) -> dict:
    """OPTIMIZE `table` as its layout calls for; returns the files it added and removed."""
    detail = spark.sql(f"DESCRIBE DETAIL {lake.name(table)}").first()
    statement = f"OPTIMIZE {lake.name(table)}"
    how = "compact"
    if detail["clusteringColumns"]:
        how = "cluster"
    elif table in ZORDER:
        parts = detail["partitionColumns"] or []
        if parts:
            # Partitioned by day (an older release's predictions): only the recent days.
            statement += f" WHERE `{parts[0]}` >= date_sub(current_date(), {mcfg.zorder_days})"
        statement += f" ZORDER BY ({', '.join(f'`{c}`' for c in ZORDER[table])})"
        how = "zorder"
    metrics = spark.sql(statement).first()["metrics"]
    return {"how": how, "files_added": metrics["numFilesAdded"], "files_removed": metrics["numFilesRemoved"]}


def vacuum(spark: SparkSession, lake: Lake, table: str, hours: int) -> int | None:
    """VACUUM `table` keeping `hours` of history; the number of files deleted, when Delta logged it."""
    spark.sql(f"VACUUM {lake.name(table)} RETAIN {hours} HOURS").collect()
    last = lake.delta_table(spark, table).history(1).select("operation", "operationMetrics").first()
    if last is not None and last["operation"] == "VACUUM END":
        return int((last["operationMetrics"] or {}).get("numDeletedFiles", 0))
    return None


def maintain_table(spark: SparkSession, lake: Lake, table: str, mcfg: MaintenanceConfig) -> dict:
    """Every step of the module docstring for one table."""
    started = time.time()
    upgraded = lake.upgrade(spark, table)
    retention_set = set_retention(spark, lake, table, mcfg.retention_hours)
    optimized = optimize(spark, lake, table, mcfg) if table in COMPACTED else None
    deleted = vacuum(spark, lake, table, mcfg.retention_hours)
    return {"upgraded": upgraded, "retention_set": retention_set, "optimized": optimized,
            "files_vacuumed": deleted, "seconds": round(time.time() - started, 2)}


@contextmanager
def _listing_parallelism(spark: SparkSession, cfg: Config) -> Iterator[None]:
    """VACUUM lists a table's folders with `spark.sql.sources.parallelPartitionDiscovery.parallelism`
    tasks (10,000 by default, sized for a cluster). A local session nextplay built (`spark.master` set)
    lists with as many tasks as it shuffles instead; the setting is restored afterwards."""
    key = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
    if not cfg.spark.master:
        yield
        return
    before = spark.conf.get(key, None)
    spark.conf.set(key, str(cfg.spark.shuffle_partitions))
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)


def maintain(cfg: Config, spark: SparkSession | None = None) -> dict:
    """Maintain every table of the lake that exists; returns what was done per table."""
    spark = spark or get_spark(cfg)
    with _listing_parallelism(spark, cfg):
        return _maintain(spark, cfg)


def _maintain(spark: SparkSession, cfg: Config) -> dict:
    lake, mcfg = Lake(cfg.lake), cfg.maintenance
    if mcfg.retention_hours < DELTA_SAFE_RETENTION_HOURS:
        log.warning("maintenance.retention_hours=%d is below Delta's safety minimum (forced): VACUUM may delete "
                    "files that a running write or query still reads", mcfg.retention_hours)
    done = {}
    for table in ALL_TABLES:
        if not lake.exists(spark, table):
            continue
        done[table] = maintain_table(spark, lake, table, mcfg)
        log.info("maintain %s: %s", table, done[table])
    if not done:
        raise ValueError(f"no table in lake {lake.describe()}: nothing to maintain (run `nextplay ingest` first)")
    return {"lake": lake.describe(), "retention_hours": mcfg.retention_hours, "tables": done}
