"""Ingest the new files under `ingest.input` into plays_bronze, plays_quarantine and plays_silver.

What a batch is: the files it read, each identified by its fully qualified path (as Hadoop lists it),
size and modification time. Every batch records its files in its `ingest_log` row, in the same
commit as its counts, and a file recorded there is never read again: the same folder under another
spelling (`x`, `x/`, `./x`, `file:/abs/x`, `x/*`) or a nightly listing of a growing folder reads only
the files no batch has read yet. No new files is a no-op (`skipped`, a message, exit code 0). A file
whose path is known but whose size or modification time changed is new content and is read again in
full; its plays that silver already has count as duplicates, so plays stay single. A file with no
bytes is neither read nor recorded (it may still be being written). The listing that defines a batch
is the list of files read: a file landing during the run waits for the next batch.

Batch ids: by default a hash of the batch's files, so the same files are the same batch. An explicit
`--batch-id` that `ingest_log` already holds is a re-run: a no-op when the input holds no new files
and still holds every file the id recorded, otherwise a ValueError (the new files would otherwise
land under an id that claims other content, or be silently dropped).

Accounting: for every batch, rows_in = rows_silver + rows_quarantined + duplicates_removed, where a
duplicate is a play (same play_id: event id, user, track and time) that repeats inside the batch or
is already in silver. Two plays that merely share an event id are two plays. Bronze rows carry the
play_id, so a duplicate is traceable: the bronze rows of one play_id are one play, the silver row it
names (`validate.play_id` over silver's columns) landed first. The counts go to `ingest_log`.

Crashes: `ingest_log` is written last, so a batch that died half-way is read again on the next run;
its appends to bronze and quarantine carry Delta's idempotent-write tag (txnAppId = the batch id and
its files), so any that had already been committed are skipped by Delta instead of doubled, and
silver is a MERGE on the play's identity, a no-op for rows it already has (the redone batch then logs those rows
as duplicates_in_silver).

Concurrency: different batches may be ingested at the same time (Delta's optimistic concurrency);
a commit that loses a race is retried `ingest.commit_attempts` times. Two ingests of overlapping
inputs at the same moment both read the shared files: silver stays exact, bronze holds them twice.

Scale: the input is parsed once and persisted on the executors' local disks (DISK_ONLY); bronze,
quarantine, counts and the de-duplicated silver rows all come from that copy. Disk rather than
memory: building the in-memory cached columns of a 10M-play batch exhausted the heap of 2 GB
executors (the cluster test at scale), while local disk holds a batch of any size. The MERGE
names the batch's event dates as literals, so it reads only the silver partitions (event_date) the
batch touches.
"""
from __future__ import annotations

import logging
import random
import time
from datetime import date, datetime, timezone
from typing import Callable, Sequence, TypeVar

from delta.exceptions import (
    ConcurrentAppendException, ConcurrentDeleteDeleteException, ConcurrentDeleteReadException,
    ConcurrentTransactionException, ConcurrentWriteException, DeltaConcurrentModificationException,
    MetadataChangedException, ProtocolChangedException,
)
from pyspark import StorageLevel
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from nextplay.config import Config, IngestConfig
from nextplay.data.readers import InputFile, batch_id_for, files_digest, list_input, read_input
from nextplay.data.validate import validate
from nextplay.tables import (
    INGEST_FILE, INGEST_LOG, INGEST_LOG_SCHEMA, PLAY_IDENTITY, PLAYS_BRONZE, PLAYS_QUARANTINE, PLAYS_SILVER,
    PLAYS_SILVER_SCHEMA, SCHEMAS, Lake,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

CONFLICTS = (
    ConcurrentAppendException, ConcurrentDeleteDeleteException, ConcurrentDeleteReadException,
    ConcurrentTransactionException, ConcurrentWriteException, DeltaConcurrentModificationException,
    MetadataChangedException, ProtocolChangedException,
)
_COUNTS = ("rows_in", "rows_silver", "rows_quarantined", "duplicates_removed", "duplicates_in_batch",
           "duplicates_in_silver")


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


def _create(spark: SparkSession, lake: Lake, table: str) -> None:
    """Create `table` if missing. Two first ingests into a new lake race to create it, and Delta may
    answer the loser with an AnalysisException (the folder is not empty yet holds no table) rather
    than a commit conflict: when the table exists after such a failure, the winner made it."""
    try:
        lake.create_if_missing(spark, table, SCHEMAS[table])
    except AnalysisException:
        time.sleep(random.uniform(0.5, 1.5))
        if not lake.exists(spark, table):
            raise
        lake.create_if_missing(spark, table, SCHEMAS[table])


def _files_frame(spark: SparkSession, files: Sequence[InputFile]) -> DataFrame:
    return spark.createDataFrame([(f.path, f.size, f.modified) for f in files], INGEST_FILE)


def _recorded(spark: SparkSession, lake: Lake, listed: Sequence[InputFile]) -> set[InputFile]:
    """The listed files some batch in `ingest_log` has already read (same path, size and time)."""
    logged = lake.read(spark, INGEST_LOG).select(F.explode("files").alias("f")).select("f.*")
    rows = logged.join(_files_frame(spark, listed), ["path", "size", "modified"], "left_semi").distinct().collect()
    return {InputFile(r.path, r.size, r.modified) for r in rows}


def _files_of(spark: SparkSession, lake: Lake, batch_id: str) -> set[InputFile] | None:
    """The files batch `batch_id` recorded, or None when no such batch was logged."""
    rows = lake.read(spark, INGEST_LOG).where(F.col("batch_id") == batch_id).select("files").collect()
    if not rows:
        return None
    return {InputFile(f.path, f.size, f.modified) for row in rows for f in row.files}


def _append(lake: Lake, df: DataFrame, table: str, txn: str, attempts: int) -> None:
    """Append a batch's rows at most once: Delta's idempotent-write options make a repeated append
    with the same (txnAppId, txnVersion) a no-op, so a run that died after this commit can be redone."""
    columns = [f.name for f in SCHEMAS[table].fields]
    with_retries(f"append to {table}", attempts, lambda: lake.write(
        df.select(*columns), table, mode="append", txnAppId=txn, txnVersion="0"))


def _merge_silver(spark: SparkSession, lake: Lake, unique: DataFrame, dates: Sequence[date], attempts: int) -> int:
    """Insert the plays silver does not have yet (same PLAY_IDENTITY); returns how many were inserted.

    The batch's event dates are literals in the condition, so Delta prunes silver to the partitions
    the batch touches instead of reading every play ever landed."""
    if not dates:
        return 0
    days = ", ".join(f"DATE'{d.isoformat()}'" for d in sorted(dates))
    same_play = " AND ".join(f"t.{c} = s.{c}" for c in PLAY_IDENTITY)
    condition = f"t.event_date IN ({days}) AND t.event_date = s.event_date AND {same_play}"

    def merge() -> int:
        target = lake.delta_table(spark, PLAYS_SILVER).alias("t")
        metrics = target.merge(unique.alias("s"), condition).whenNotMatchedInsertAll().execute().collect()
        return int(metrics[0]["num_inserted_rows"])

    return with_retries("merge into plays_silver", attempts, merge)


def _unique_plays(checked: DataFrame) -> DataFrame:
    """One row per play_id. Copies of a play differ at most in ms_played; which survives is fixed
    (smallest values first), so a batch gives the same silver rows however Spark partitions it."""
    good = checked.where(F.col("reason").isNull()).select("play.*")
    keep = F.min(F.struct(*[f.name for f in PLAYS_SILVER_SCHEMA.fields])).alias("k")
    return good.groupBy("play_id").agg(keep).select("k.*")


def _nothing_new(icfg: IngestConfig, started: float, known: int, message: str) -> dict:
    """The result of a run with nothing to read: a no-op, not an error (a nightly job re-lists old files)."""
    log.info("ingest: %s", message)
    return {"batch_id": icfg.batch_id, "input": icfg.input, "format": icfg.format, **dict.fromkeys(_COUNTS, 0),
            "ingested_at": None, "seconds": round(time.time() - started, 2), "files_new": 0,
            "files_known": known, "skipped": True, "message": message}


def _new_files(spark: SparkSession, lake: Lake, icfg: IngestConfig, listed: list[InputFile],
               known: set[InputFile]) -> tuple[list[InputFile], str | None]:
    """The listed files no batch has read, or why there is nothing to do."""
    new = [f for f in listed if f not in known and f.size > 0]
    if icfg.batch_id:
        mine = _files_of(spark, lake, icfg.batch_id)
        if mine is not None:
            missing = mine - set(listed)
            if new or missing:
                raise ValueError(
                    f"ingest.batch_id: batch id '{icfg.batch_id}' was ingested with other files ({len(mine)} recorded; "
                    f"under {icfg.input} {len(new)} are new to it and {len(missing)} of its own are absent); "
                    "pass another --batch-id, or none to derive one from the files")
            return [], f"batch {icfg.batch_id} already ingested these {len(mine)} files; nothing to do"
    if not new:
        return [], f"no new files: the {len(known)} files with data under {icfg.input} are already ingested"
    return new, None


def ingest(spark: SparkSession, cfg: Config) -> dict:
    """Land the new files of `ingest.input` in the lake; returns the batch's counts (see module docstring)."""
    started = time.time()
    icfg, lake = cfg.ingest, Lake(cfg.lake)
    if not icfg.input:
        raise ValueError("ingest.input: no input given; pass --input PATH (a file, folder or glob)")
    listed = list_input(spark, icfg.input)
    for table in (PLAYS_BRONZE, PLAYS_QUARANTINE, PLAYS_SILVER, INGEST_LOG):
        with_retries(f"create {table}", icfg.commit_attempts, lambda t=table: _create(spark, lake, t))
        with_retries(f"evolve {table}", icfg.commit_attempts, lambda t=table: lake.add_missing_columns(spark, t))
    known = _recorded(spark, lake, listed)
    new, nothing = _new_files(spark, lake, icfg, listed, known)
    if nothing:
        return _nothing_new(icfg, started, len(known), nothing)
    batch_id = icfg.batch_id or batch_id_for(new)
    txn = f"nextplay-ingest:{batch_id}:{files_digest(new)}"
    raw, fmt = read_input(spark, new, icfg.format)

    now = datetime.now(timezone.utc)
    stamp = [F.lit(batch_id).alias("_batch_id"), F.lit(now).alias("_ingested_at")]
    play_id = F.when(F.col("reason").isNull(), F.col("play.play_id")).alias("play_id")
    checked = (validate(raw, icfg, now).select("*", play_id, *stamp).persist(StorageLevel.DISK_ONLY))
    try:
        totals = checked.agg(
            F.count("*").alias("rows_in"), F.count("reason").alias("rows_quarantined"),
            F.count_distinct("play_id").alias("unique"),
            F.collect_set(F.when(F.col("reason").isNull(), F.col("play.event_date"))).alias("dates"),
        ).first()
        if totals["rows_in"] == 0:
            raise ValueError(f"ingest.input: {icfg.input} has no rows in its {len(new)} new files "
                             "(only blank or header lines)")
        _append(lake, checked, PLAYS_BRONZE, txn, icfg.commit_attempts)
        _append(lake, checked.where(F.col("reason").isNotNull()).withColumnRenamed("_raw", "raw"),
                PLAYS_QUARANTINE, txn, icfg.commit_attempts)
        inserted = _merge_silver(spark, lake, _unique_plays(checked), totals["dates"], icfg.commit_attempts)
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
        "files": [(f.path, f.size, f.modified) for f in new],
        "event_dates": sorted(totals["dates"]),
    }
    row = spark.createDataFrame([tuple(counts[f.name] for f in INGEST_LOG_SCHEMA.fields)], INGEST_LOG_SCHEMA)
    _append(lake, row, INGEST_LOG, txn, icfg.commit_attempts)
    log.info("ingest %s (%s, %d new files, %d known): rows in %d = silver %d + quarantined %d + duplicates %d "
             "(%d in batch, %d already in silver)", batch_id, fmt, len(new), len(known), rows_in,
             inserted, quarantined, good - inserted, good - unique, unique - inserted)
    del counts["files"], counts["event_dates"]
    return {**counts, "files_new": len(new), "files_known": len(known), "skipped": False,
            "message": f"ingested {len(new)} new files ({len(known)} already ingested)"}
