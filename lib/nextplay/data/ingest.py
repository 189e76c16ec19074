"""Ingest one batch of raw plays into plays_bronze, plays_quarantine and plays_silver.

Accounting: for every batch, rows_in = rows_silver + rows_quarantined + duplicates_removed, where
duplicates are plays whose event_id repeats inside the batch or is already in silver. The four
counts (and the two kinds of duplicates) are logged and appended to `ingest_log`.

Re-running a batch: a batch id already in `ingest_log` is skipped and its logged counts returned.
`ingest_log` is written last, so a batch that died half-way runs again; its appends to bronze and
quarantine carry Delta's idempotent-write tag (txnAppId = the batch id), so any that had already
been committed are skipped by Delta instead of doubled, and silver is a MERGE on event_id, a no-op
for rows it already has (the redone batch then logs those rows as duplicates_in_silver). The default batch id is a hash of the input's file names, sizes and
modification times: the same files are the same batch.

Concurrency: different batches may be ingested at the same time (Delta's optimistic concurrency);
a commit that loses a race is retried `ingest.commit_attempts` times. Two runs of the *same* batch
id at the same moment are not guarded against.

Scale: the input is parsed once and persisted; bronze, quarantine, counts and the de-duplicated
silver rows all come from that copy. The MERGE reads silver's event_id column in full (its cost
grows with silver), which is the price of exact de-duplication across batches.
"""
from __future__ import annotations

import logging
import random
import time
from datetime import datetime, timezone
from typing import Callable, TypeVar

from delta.exceptions import (
    ConcurrentAppendException, ConcurrentDeleteDeleteException, ConcurrentDeleteReadException,
    ConcurrentTransactionException, ConcurrentWriteException, DeltaConcurrentModificationException,
    MetadataChangedException, ProtocolChangedException,
)
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from nextplay.config import Config
from nextplay.data.readers import batch_id_for, detect_format, list_input, read_raw
from nextplay.data.validate import validate
from nextplay.tables import (
    INGEST_LOG, INGEST_LOG_SCHEMA, PLAYS_BRONZE, PLAYS_QUARANTINE, PLAYS_SILVER, PLAYS_SILVER_SCHEMA, SCHEMAS, Lake,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

CONFLICTS = (
    ConcurrentAppendException, ConcurrentDeleteDeleteException, ConcurrentDeleteReadException,
    ConcurrentTransactionException, ConcurrentWriteException, DeltaConcurrentModificationException,
    MetadataChangedException, ProtocolChangedException,
)


def with_retries(what: str, attempts: int, action: Callable[[], T]) -> T:
    """Run a Delta commit, again after a jittered back-off when a concurrent writer got there first."""
    attempt = 1
    while True:
        try:
            return action()
        except CONFLICTS as e:
            if attempt >= attempts:
                raise
            wait = min(20.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.5)
            attempt += 1
            log.warning("%s: lost a commit race (%s); attempt %d of %d in %.1f s", what, type(e).__name__,
                        attempt, attempts, wait)
            time.sleep(wait)


def _logged(spark: SparkSession, lake: Lake, batch_id: str) -> dict | None:
    if not lake.exists(spark, INGEST_LOG):
        return None
    rows = lake.read(spark, INGEST_LOG).where(F.col("batch_id") == batch_id).limit(1).collect()
    return rows[0].asDict() if rows else None


def _append(lake: Lake, df: DataFrame, table: str, batch_id: str, attempts: int) -> None:
    """Append a batch's rows at most once: Delta's idempotent-write options make a repeated append
    with the same (txnAppId, txnVersion) a no-op, so a run that died after this commit can be redone."""
    columns = [f.name for f in SCHEMAS[table].fields]
    with_retries(f"append to {table}", attempts, lambda: lake.write(
        df.select(*columns), table, mode="append", txnAppId=f"nextplay-ingest:{batch_id}", txnVersion="0"))


def _merge_silver(spark: SparkSession, lake: Lake, unique: DataFrame, attempts: int) -> int:
    """Insert plays whose event_id silver does not have yet; returns how many were inserted."""
    def merge() -> int:
        target = lake.delta_table(spark, PLAYS_SILVER).alias("t")
        metrics = (target.merge(unique.alias("s"), "t.event_id = s.event_id")
                   .whenNotMatchedInsertAll().execute().collect())
        return int(metrics[0]["num_inserted_rows"])

    return with_retries("merge into plays_silver", attempts, merge)


def _unique_plays(checked: DataFrame) -> DataFrame:
    """One row per event_id. Which duplicate survives is fixed (earliest ts, then smallest values), so
    a batch gives the same silver rows however Spark partitions it."""
    good = checked.where(F.col("reason").isNull()).select("play.*")
    keep = F.min(F.struct("ts", "user_id", "track_id", "ms_played", "event_date")).alias("k")
    return good.groupBy("event_id").agg(keep).select("event_id", "k.*").select(
        *[f.name for f in PLAYS_SILVER_SCHEMA.fields])


def ingest(spark: SparkSession, cfg: Config) -> dict:
    """Parse `ingest.input` and land it in the lake; returns the batch's counts (see module docstring)."""
    started = time.time()
    icfg, lake = cfg.ingest, Lake(cfg.lake)
    if not icfg.input:
        raise ValueError("ingest.input: no input given; pass --input PATH (a file, folder or glob)")
    files = list_input(spark, icfg.input)
    fmt = detect_format(spark, files) if icfg.format == "auto" else icfg.format
    batch_id = icfg.batch_id or batch_id_for(icfg.input, files)
    done = _logged(spark, lake, batch_id)
    if done is not None:
        log.info("ingest: batch %s was ingested at %s; nothing to do", batch_id, done["ingested_at"])
        return {**done, "skipped": True}

    for table in (PLAYS_BRONZE, PLAYS_QUARANTINE, PLAYS_SILVER, INGEST_LOG):
        with_retries(f"create {table}", icfg.commit_attempts,
                     lambda t=table: lake.create_if_missing(spark, t, SCHEMAS[t]))

    now = datetime.now(timezone.utc)
    stamp = [F.lit(batch_id).alias("_batch_id"), F.lit(now).alias("_ingested_at")]
    checked = (validate(read_raw(spark, icfg.input, fmt), icfg, now).select("*", *stamp)
               .persist(StorageLevel.MEMORY_AND_DISK))
    try:
        totals = checked.agg(
            F.count("*").alias("rows_in"), F.count("reason").alias("rows_quarantined"),
            F.count_distinct(F.when(F.col("reason").isNull(), F.col("play.event_id"))).alias("unique"),
        ).first()
        if totals["rows_in"] == 0:
            raise ValueError(f"ingest.input: {icfg.input} has no rows (only blank or header lines)")
        _append(lake, checked, PLAYS_BRONZE, batch_id, icfg.commit_attempts)
        _append(lake, checked.where(F.col("reason").isNotNull()).withColumnRenamed("_raw", "raw"),
                PLAYS_QUARANTINE, batch_id, icfg.commit_attempts)
        inserted = _merge_silver(spark, lake, _unique_plays(checked), icfg.commit_attempts)
    finally:
        checked.unpersist()

    rows_in, quarantined, unique = totals["rows_in"], totals["rows_quarantined"], totals["unique"]
    good = rows_in - quarantined
    counts = {
        "batch_id": batch_id, "input": icfg.input, "format": fmt,
        "rows_in": rows_in, "rows_silver": inserted, "rows_quarantined": quarantined,
        "duplicates_removed": good - inserted, "duplicates_in_batch": good - unique,
        "duplicates_in_silver": unique - inserted, "ingested_at": now,
        "seconds": round(time.time() - started, 2),
    }
    _append(lake, spark.createDataFrame([counts], INGEST_LOG_SCHEMA), INGEST_LOG, batch_id, icfg.commit_attempts)
    log.info("ingest %s (%s): rows in %d = silver %d + quarantined %d + duplicates %d (%d in batch, %d already in silver)",
             batch_id, fmt, rows_in, inserted, quarantined, good - inserted, good - unique, unique - inserted)
    return {**counts, "skipped": False}
