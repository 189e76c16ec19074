"""Table names, schemas, layouts, comments and constraints: the contracts between stages.

Every stage reads and writes tables through `Lake`, which hides whether a table is a folder under
`lake.root` (laptop, cluster: any Hadoop URI) or a Unity Catalog table `catalog.schema.name`
(Databricks). Columns listed here may gain siblings but are never renamed.
"""
from __future__ import annotations

import logging
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from nextplay.config import LakeConfig

log = logging.getLogger(__name__)

PLAYS_BRONZE = "plays_bronze"
PLAYS_SILVER = "plays_silver"
PLAYS_QUARANTINE = "plays_quarantine"
ITEM_INDEX = "item_index"
SESSIONS = "sessions"
PREDICTIONS = "predictions"
INGEST_LOG = "ingest_log"  # one row per ingested batch with its four counts
LISTENER_HISTORY = "listener_history"  # per listener, the recent plays scoring builds its input from

ALL_TABLES = (PLAYS_BRONZE, PLAYS_SILVER, PLAYS_QUARANTINE, ITEM_INDEX, SESSIONS, PREDICTIONS, INGEST_LOG,
              LISTENER_HISTORY)

# The normalised shape every reader produces, before validation.
RAW_PLAYS = T.StructType([
    T.StructField("user_id", T.StringType()),
    T.StructField("track_id", T.StringType()),
    T.StructField("ts_raw", T.StringType()),  # as received: ISO-8601, epoch s or ms
    T.StructField("ms_played_raw", T.StringType()),
    T.StructField("event_id", T.StringType()),
    T.StructField("_raw", T.StringType()),  # the whole record as received, for quarantine
    T.StructField("_source_file", T.StringType()),
    # Set by a reader when the record could not be split into fields at all (broken JSON, a wrong
    # number of columns, an unreadable file); validation turns it into the quarantine reason.
    T.StructField("_parse_error", T.StringType()),
    # Comma-separated names of the id fields (user_id, track_id, event_id) whose value was a structure or
    # a boolean (a JSON object, array, true; a Parquet struct, list, map): not an id, quarantined.
    T.StructField("_non_scalar_ids", T.StringType()),
])

PLAYS_BRONZE_SCHEMA = T.StructType(RAW_PLAYS.fields + [
    # A hash of the play's identity (PLAY_IDENTITY; `validate.play_id` computes it for any row, silver's
    # too); null for quarantined rows. Bronze rows sharing a play_id are one play: the first to land
    # is in silver, the others were counted as duplicates.
    T.StructField("play_id", T.StringType()),
    T.StructField("_batch_id", T.StringType(), False),
    T.StructField("_ingested_at", T.TimestampType(), False),
])

PLAYS_SILVER_SCHEMA = T.StructType([
    T.StructField("event_id", T.StringType(), False),
    T.StructField("user_id", T.StringType(), False),
    T.StructField("track_id", T.StringType(), False),
    T.StructField("ts", T.TimestampType(), False),
    T.StructField("ms_played", T.LongType()),
    T.StructField("event_date", T.DateType(), False),
])
# What makes a silver row one play: all four, not the event id alone (sources share the event id
# namespace, and producers reset their counters). Bronze's play_id is a hash of the same four.
PLAY_IDENTITY = ("event_id", "user_id", "track_id", "ts")

PLAYS_QUARANTINE_SCHEMA = T.StructType([
    T.StructField("raw", T.StringType()),
    T.StructField("reason", T.StringType(), False),
    T.StructField("_batch_id", T.StringType(), False),
    T.StructField("_source_file", T.StringType()),
    T.StructField("_ingested_at", T.TimestampType(), False),
])

# One input file as ingest identifies it: its fully qualified path, its size and its modification time.
# (Nullable only because Delta cannot enforce NOT NULL inside an array; ingest always sets all three.)
INGEST_FILE = T.StructType([
    T.StructField("path", T.StringType()),
    T.StructField("size", T.LongType()),
    T.StructField("modified", T.LongType()),  # epoch milliseconds
])

INGEST_LOG_SCHEMA = T.StructType([
    T.StructField("batch_id", T.StringType(), False),
    T.StructField("input", T.StringType(), False),
    T.StructField("format", T.StringType(), False),
    # rows_in = rows_silver + rows_quarantined + duplicates_removed, for every batch
    T.StructField("rows_in", T.LongType(), False),
    T.StructField("rows_silver", T.LongType(), False),
    T.StructField("rows_quarantined", T.LongType(), False),
    T.StructField("duplicates_removed", T.LongType(), False),
    T.StructField("duplicates_in_batch", T.LongType(), False),  # the two parts of duplicates_removed
    T.StructField("duplicates_in_silver", T.LongType(), False),
    T.StructField("ingested_at", T.TimestampType(), False),
    T.StructField("seconds", T.DoubleType(), False),
    # The files this batch read, committed with its counts: a file (same path, size and modification
    # time) recorded here is never read again, whatever path spelling or folder listing brings it back.
    T.StructField("files", T.ArrayType(INGEST_FILE), False),
    # The UTC event dates of the batch's valid plays: the days sessionize re-cuts for it. Null for a batch
    # logged before batches recorded them (sessionize then rebuilds every day once). Last, where
    # ALTER TABLE ADD COLUMNS puts it.
    T.StructField("event_dates", T.ArrayType(T.DateType())),
])

ITEM_INDEX_SCHEMA = T.StructType([
    T.StructField("track_id", T.StringType(), False),
    T.StructField("item_idx", T.IntegerType(), False),  # 1..V, 0 is padding; never changes meaning
    T.StructField("play_count", T.LongType(), False),
])

SESSIONS_SCHEMA = T.StructType([
    T.StructField("user_id", T.StringType(), False),
    T.StructField("session_id", T.StringType(), False),
    T.StructField("start_ts", T.TimestampType(), False),
    T.StructField("end_ts", T.TimestampType(), False),
    T.StructField("event_date", T.DateType(), False),
    T.StructField("items", T.ArrayType(T.IntegerType(), False), False),
    T.StructField("length", T.IntegerType(), False),
    T.StructField("split", T.StringType(), False),
])

PREDICTIONS_SCHEMA = T.StructType([
    T.StructField("user_id", T.StringType(), False),
    T.StructField("rank", T.IntegerType(), False),
    T.StructField("track_id", T.StringType(), False),
    T.StructField("item_idx", T.IntegerType(), False),
    T.StructField("score", T.FloatType(), False),
    T.StructField("model_name", T.StringType(), False),
    T.StructField("model_version", T.StringType(), False),
    T.StructField("scored_at", T.TimestampType(), False),
    T.StructField("score_date", T.DateType(), False),
    # Lineage: the sessions version the model's training run pinned (null: the run recorded none, or
    # a row written before predictions carried it). Last, where ALTER TABLE ADD COLUMNS puts it.
    T.StructField("sessions_version", T.LongType()),
])

# One play as listener_history keeps it: the raw ids, so the plays are mapped to item ids when read, through
# the dictionary of whichever model scores. (Nullable only because Delta cannot enforce NOT NULL inside an
# array; score always sets all three.)
KEPT_PLAY = T.StructType([
    T.StructField("ts", T.TimestampType()),
    T.StructField("event_id", T.StringType()),
    T.StructField("track_id", T.StringType()),
])

LISTENER_HISTORY_SCHEMA = T.StructType([
    T.StructField("user_id", T.StringType(), False),
    T.StructField("last_ts", T.TimestampType(), False),
    T.StructField("plays", T.ArrayType(KEPT_PLAY), False),
])

SCHEMAS = {
    PLAYS_BRONZE: PLAYS_BRONZE_SCHEMA, PLAYS_SILVER: PLAYS_SILVER_SCHEMA, PLAYS_QUARANTINE: PLAYS_QUARANTINE_SCHEMA,
    INGEST_LOG: INGEST_LOG_SCHEMA, ITEM_INDEX: ITEM_INDEX_SCHEMA, SESSIONS: SESSIONS_SCHEMA,
    PREDICTIONS: PREDICTIONS_SCHEMA, LISTENER_HISTORY: LISTENER_HISTORY_SCHEMA,
}

# How each table lays out its files, fixed when the table is created (Delta cannot change partitioning
# later). Writers never name the layout: Delta keeps the table's own, so a predictions table created
# partitioned by score_date by an older release keeps working beside a new clustered one.
PARTITIONS = {PLAYS_SILVER: ["event_date"], SESSIONS: ["event_date"]}
# Liquid clustering (new tables only; it cannot be combined with partitioning): predictions are read by
# day and by listener. `score` replaces one day with replaceWhere `score_date = ...`, which needs no
# partition; clustering on the day keeps that day's rows in few files and the rewrite small.
CLUSTERING = {PREDICTIONS: ["score_date", "user_id"]}
# A predictions table partitioned by score_date (older release) cannot be clustered: maintenance
# Z-orders its recent days by these columns instead.
ZORDER = {PREDICTIONS: ["user_id"]}
# Tables that `nextplay maintain` compacts (OPTIMIZE): those that grow by appends, merges and day
# replacements. sessionize merges item_index (a row per track) and replaces whole event_date days of
# sessions, each day's files in start-time order as training reads them (`train.batching=lanes`), an
# order compaction would not keep.
COMPACTED = (PLAYS_BRONZE, PLAYS_SILVER, PLAYS_QUARANTINE, INGEST_LOG, PREDICTIONS, LISTENER_HISTORY)

# -- what each table says about itself ---------------------------------------------------------------
#
# Set when a table is created and added to tables an older release created (`Lake.create_if_missing`):
# `DESCRIBE TABLE` shows the column comments, `DESCRIBE DETAIL` the table's and its constraints.

TABLE_COMMENTS = {
    PLAYS_BRONZE: "One row per raw record read by ingest, exactly as received, valid or not; append-only.",
    PLAYS_SILVER: "One row per play (a listener played a track at a time), validated and deduplicated by "
                  "(event_id, user_id, track_id, ts); partitioned by event_date (UTC).",
    PLAYS_QUARANTINE: "One row per raw record that failed validation, with the record as received and why.",
    INGEST_LOG: "One row per ingested batch: its counts (rows_in = rows_silver + rows_quarantined + "
                "duplicates_removed) and the files it read.",
    ITEM_INDEX: "Append-only dictionary of the tracks the models know: a track gets the next item_idx when it "
                "first has sessionize.min_item_count plays before the validation window, and keeps it for good; "
                "sessionize merges it (new tracks, play counts).",
    SESSIONS: "One row per listening session (plays separated by at most sessionize.session_gap_minutes) as "
              "item ids, labelled train/valid/test by start time; sessionize replaces the event_date days "
              "new plays touched.",
    PREDICTIONS: "One row per (listener, rank) of a day's top-K next-track predictions; score replaces one "
                 "score_date at a time.",
    LISTENER_HISTORY: "One row per listener active in the last score.lookback_days: the recent plays scoring builds "
                      "its input from (every play since the newest play of the listener's score.history_length-th "
                      "latest run of plays of tracks the scoring model knows); score merges in each day's new plays.",
}

_INGEST_STAMPS = {
    "_batch_id": "Id of the ingest batch that read the record (see ingest_log.batch_id).",
    "_ingested_at": "When that batch ran (UTC).",
}
_RAW = {
    "user_id": "Listener id as received (text).",
    "track_id": "Track id as received (text).",
    "ts_raw": "Play time as received: ISO-8601, or epoch seconds or milliseconds.",
    "ms_played_raw": "Milliseconds played as received (text).",
    "event_id": "Event id as received; may be empty for sources without one.",
    "_raw": "The whole record as received.",
    "_source_file": "The file the record came from.",
    "_parse_error": "Why the record could not be split into fields; null when it could.",
    "_non_scalar_ids": "Comma-separated id fields that held a structure or a boolean instead of an id.",
}

COLUMN_COMMENTS: dict[str, dict[str, str]] = {
    PLAYS_BRONZE: {
        **_RAW,
        "play_id": "Hash of the play's identity (event_id, user_id, track_id, ts); null for quarantined "
                   "records. Bronze rows sharing it are one play.",
        **_INGEST_STAMPS,
    },
    PLAYS_SILVER: {
        "event_id": "Event id from the source, or a hash of (user_id, track_id, ts) when it had none.",
        "user_id": "Listener id (trimmed, non-empty).",
        "track_id": "Track id (trimmed, non-empty).",
        "ts": "When the play started (UTC timestamp).",
        "ms_played": "Milliseconds of the track played; null when the source does not say.",
        "event_date": "UTC date of ts; the partition column.",
    },
    PLAYS_QUARANTINE: {
        "raw": "The whole record as received.",
        "reason": "Why it failed validation, for a person to act on (e.g. ts: unparseable), rules joined by semicolons.",
        **_INGEST_STAMPS,
        "_source_file": "The file the record came from.",
    },
    INGEST_LOG: {
        "batch_id": "Batch id: given with --batch-id, or a hash of the batch's files.",
        "input": "The input path or glob the batch was listed from.",
        "format": "The input format the batch was read as.",
        "rows_in": "Records read (= rows_silver + rows_quarantined + duplicates_removed).",
        "rows_silver": "Plays inserted into plays_silver.",
        "rows_quarantined": "Records sent to plays_quarantine.",
        "duplicates_removed": "Valid records not inserted because the play was already known "
                              "(= duplicates_in_batch + duplicates_in_silver).",
        "duplicates_in_batch": "Valid records repeating a play earlier in the same batch.",
        "duplicates_in_silver": "Plays of the batch that plays_silver already held.",
        "ingested_at": "When the batch ran (UTC).",
        "seconds": "Wall-clock seconds the batch took.",
        "files": "The files the batch read (path, size in bytes, modification time in epoch ms); never read again.",
        "event_dates": "UTC dates of the batch's valid plays (the days sessionize re-cuts); null for batches "
                       "logged before this column.",
    },
    ITEM_INDEX: {
        "track_id": "Track id, as in plays_silver.",
        "item_idx": "The models' id for the track: 1..V in order of entry (0 is padding, never stored); never "
                    "reused or changed.",
        "play_count": "Plays of the track before the validation window of the latest sessionize (may be 0).",
    },
    SESSIONS: {
        "user_id": "Listener id.",
        "session_id": "Stable id: a hash of (user_id, start_ts, chunk number).",
        "start_ts": "Time of the session's first play (UTC).",
        "end_ts": "Time of its last play (UTC).",
        "event_date": "UTC date of start_ts; the partition column.",
        "items": "item_idx of the plays in time order (out-of-vocabulary plays dropped, repeats collapsed "
                 "when sessionize.collapse_repeats).",
        "length": "Number of items (= size(items)), at least sessionize.min_session_length >= 2.",
        "split": "train, valid or test, by the time the session starts.",
    },
    PREDICTIONS: {
        "user_id": "Listener id.",
        "rank": "Position in the listener's top-K, 1 = most likely next track.",
        "track_id": "Predicted next track.",
        "item_idx": "The model's id for the track (item_index.item_idx of the model's training data).",
        "score": "The model's log-probability (natural log) that this track is played next; higher ranks first.",
        "model_name": "Registered MLflow model that scored the row.",
        "model_version": "Its registry version.",
        "scored_at": "When the scoring run started (UTC).",
        "score_date": "The day the predictions are for; score replaces one day at a time.",
        "sessions_version": "Version of the sessions table the model was trained on (null for rows scored by "
                            "a release that did not record it).",
    },
    LISTENER_HISTORY: {
        "user_id": "Listener id.",
        "last_ts": "Time of the listener's newest play (UTC), of any track; the lookback is measured on it.",
        "plays": "The kept plays (ts, event_id, track_id as in plays_silver), oldest first; tracks unknown to "
                 "the model included, so a later model that knows them finds them.",
    },
}

# CHECK constraints, by table: name -> SQL expression every row satisfies. Delta rejects a write with
# a violating row (the whole commit fails, nothing lands). Each holds for what the writers produce;
# NOT NULL columns are declared in the schemas above.
CONSTRAINTS: dict[str, dict[str, str]] = {
    PLAYS_SILVER: {
        "ms_played_not_negative": "ms_played IS NULL OR ms_played >= 0",
        "ids_not_empty": "event_id <> '' AND user_id <> '' AND track_id <> ''",
    },
    PLAYS_QUARANTINE: {"reason_given": "reason <> ''"},
    INGEST_LOG: {
        "every_row_accounted_for": "rows_in = rows_silver + rows_quarantined + duplicates_removed",
        "duplicates_add_up": "duplicates_removed = duplicates_in_batch + duplicates_in_silver",
        "counts_not_negative": "rows_silver >= 0 AND rows_quarantined >= 0 AND duplicates_in_batch >= 0 "
                               "AND duplicates_in_silver >= 0",
    },
    ITEM_INDEX: {"item_idx_positive": "item_idx >= 1", "play_count_not_negative": "play_count >= 0"},
    SESSIONS: {
        "split_known": "split IN ('train', 'valid', 'test')",
        "length_at_least_two": "length >= 2",
        "length_is_item_count": "length = size(items)",
        "ends_after_start": "end_ts >= start_ts",
    },
    PREDICTIONS: {"rank_positive": "rank >= 1", "item_idx_positive": "item_idx >= 1"},
    LISTENER_HISTORY: {"plays_not_empty": "size(plays) >= 1"},
}


CONSTRAINT_PREFIX = "delta.constraints."  # where Delta keeps a table's CHECK constraints, as properties
_IDENTIFIER = re.compile(r"'[^']*'|\b([A-Za-z_][A-Za-z0-9_]*)\b")
_SQL_WORDS = {"AND", "OR", "NOT", "IS", "NULL", "IN", "size"}


def described(table: str, schema: T.StructType) -> T.StructType:
    """`schema` with each column's comment (COLUMN_COMMENTS) in its metadata, where Delta keeps it."""
    comments = COLUMN_COMMENTS.get(table, {})
    return T.StructType([T.StructField(f.name, f.dataType, f.nullable,
                                       {**f.metadata, **({"comment": comments[f.name]} if f.name in comments else {})})
                         for f in schema.fields])


def _columns_of(expression: str) -> set[str]:
    """The column names a constraint expression reads (its identifiers, less SQL words and quoted text)."""
    return {m for m in _IDENTIFIER.findall(expression) if m and m not in _SQL_WORDS}


def _sql_string(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # s3a://, abfss://, dbfs:/, file:/


@dataclass(frozen=True)
class Lake:
    """Where the tables live; see module docstring."""

    cfg: LakeConfig

    @property
    def is_catalog(self) -> bool:
        return self.cfg.catalog is not None

    def name(self, table: str) -> str:
        """A name usable in SQL: `catalog.schema.table`, or delta.`path`."""
        if self.is_catalog:
            return f"{self.cfg.catalog}.{self.cfg.schema}.{table}"
        return f"delta.`{self.path(table)}`"

    def path(self, table: str) -> str:
        if self.is_catalog:
            raise ValueError("Unity Catalog tables have no path; use Lake.name()")
        root = self.cfg.root.rstrip("/")
        if not _URI_SCHEME.match(root):
            # A plain local path becomes absolute: Delta's table builder reads `lake/x` as a table name.
            root = os.path.abspath(root)
        return f"{root}/{table}"

    def exists(self, spark: SparkSession, table: str) -> bool:
        if self.is_catalog:
            return spark.catalog.tableExists(self.name(table).replace("`", ""))
        return DeltaTable.isDeltaTable(spark, self.path(table))

    def read(self, spark: SparkSession, table: str) -> DataFrame:
        if not self.exists(spark, table):
            raise FileNotFoundError(f"table '{table}' not found in lake {self.describe()}: run the stage that writes it first")
        if self.is_catalog:
            return spark.read.table(self.name(table))
        return spark.read.format("delta").load(self.path(table))

    def delta_table(self, spark: SparkSession, table: str):
        if self.is_catalog:
            return DeltaTable.forName(spark, self.name(table))
        return DeltaTable.forPath(spark, self.path(table))

    def create_if_missing(self, spark: SparkSession, table: str, schema: T.StructType) -> list[str]:
        """Create an empty table with exactly `schema` (NOT NULL columns included), its layout, its
        comments and its CHECK constraints, in one commit; a table that exists gets what it lacks of the
        comments and constraints (`upgrade`). Returns what was changed, for the log.

        A table created by a first `write` would take the DataFrame's nullability instead, and
        Delta would then no longer reject rows that break the contract.
        """
        if self.exists(spark, table):
            return self.upgrade(spark, table)
        builder = DeltaTable.createIfNotExists(spark).addColumns(described(table, schema))
        builder = builder.tableName(self.name(table)) if self.is_catalog else builder.location(self.path(table))
        if table in TABLE_COMMENTS:
            builder = builder.comment(TABLE_COMMENTS[table])
        if PARTITIONS.get(table):
            builder = builder.partitionedBy(*PARTITIONS[table])
        if CLUSTERING.get(table):
            builder = builder.clusterBy(*CLUSTERING[table])
        names = {f.name for f in schema.fields}
        for name, expression in CONSTRAINTS.get(table, {}).items():
            if _columns_of(expression) <= names:
                builder = builder.property(f"{CONSTRAINT_PREFIX}{name}", expression)
        builder.execute()
        return ["created"]

    def upgrade(self, spark: SparkSession, table: str) -> list[str]:
        """Give a table an older release created the comments and CHECK constraints it lacks.

        Idempotent: nothing is committed when the table already has them. A constraint whose columns
        the table does not have yet (they are added by the stage that writes them), or that rows
        already in the table break, is left out with a warning rather than blocking the stage."""
        detail = spark.sql(f"DESCRIBE DETAIL {self.name(table)}").first()
        have = {f.name: f.metadata.get("comment") for f in self.read(spark, table).schema.fields}
        done = []
        wanted = TABLE_COMMENTS.get(table)
        if wanted and detail["description"] != wanted:
            spark.sql(f"COMMENT ON TABLE {self.name(table)} IS {_sql_string(wanted)}")
            done.append("table comment")
        columns = {c: text for c, text in COLUMN_COMMENTS.get(table, {}).items() if c in have and have[c] != text}
        if columns:
            clauses = ", ".join(f"`{c}` COMMENT {_sql_string(text)}" for c, text in columns.items())
            spark.sql(f"ALTER TABLE {self.name(table)} ALTER COLUMN {clauses}")
            done.append(f"comments on {', '.join(columns)}")
        present = {k[len(CONSTRAINT_PREFIX):] for k in (detail["properties"] or {}) if k.startswith(CONSTRAINT_PREFIX)}
        for name, expression in CONSTRAINTS.get(table, {}).items():
            if name in present:
                continue
            if not _columns_of(expression) <= set(have):
                log.warning("%s: constraint %s (%s) waits for its columns", table, name, expression)
                continue
            try:
                spark.sql(f"ALTER TABLE {self.name(table)} ADD CONSTRAINT {name} CHECK ({expression})")
                done.append(f"constraint {name}")
            except Exception as e:  # noqa: BLE001 - Delta raises AnalysisException or a Py4J error
                if name in self.constraints(spark, table):
                    continue  # a concurrent stage added it first
                log.warning("%s: could not add constraint %s (%s): %s", table, name, expression,
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
        if done:
            log.info("%s: added %s", table, "; ".join(done))
        return done

    def constraints(self, spark: SparkSession, table: str) -> dict[str, str]:
        """The table's CHECK constraints, name -> expression, as Delta holds them."""
        props = spark.sql(f"DESCRIBE DETAIL {self.name(table)}").first()["properties"] or {}
        return {k[len(CONSTRAINT_PREFIX):]: v for k, v in props.items() if k.startswith(CONSTRAINT_PREFIX)}

    def add_missing_columns(self, spark: SparkSession, table: str) -> list[str]:
        """Give a table created by an older release the columns its schema (SCHEMAS) has since gained,
        nullable since its old rows have no value; returns their names. Without them every write of
        the current schema would fail on a mismatch."""
        have = {f.name for f in self.read(spark, table).schema.fields}
        missing = [f for f in SCHEMAS[table].fields if f.name not in have]
        if missing:
            columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
            spark.sql(f"ALTER TABLE {self.name(table)} ADD COLUMNS ({columns})")
        return [f.name for f in missing]

    def writer(self, df: DataFrame, table: str, mode: str):
        """A DataFrameWriter for `table`. It names no partitioning: Delta writes into the table's own
        layout (partitioned, clustered, or neither), which `create_if_missing` fixed at creation."""
        return df.write.format("delta").mode(mode)

    def write(self, df: DataFrame, table: str, mode: str = "append", **options: str) -> None:
        """Write `df` to `table`, creating it first (schema, layout, comments, constraints) if missing."""
        if not self.exists(df.sparkSession, table):
            self.create_if_missing(df.sparkSession, table, SCHEMAS[table])
        w = self.writer(df, table, mode)
        for k, v in options.items():
            w = w.option(k, v)
        if self.is_catalog:
            w.saveAsTable(self.name(table))
        else:
            w.save(self.path(table))

    def read_at(self, spark: SparkSession, table: str, version: int) -> DataFrame:
        """`table` as of one Delta version (time travel): what a run pinned, whatever was written since."""
        if not self.exists(spark, table):
            raise FileNotFoundError(f"table '{table}' not found in lake {self.describe()}: run the stage that writes it first")
        reader = spark.read.format("delta").option("versionAsOf", int(version))
        return reader.table(self.name(table)) if self.is_catalog else reader.load(self.path(table))

    def commits(self, spark: SparkSession, table: str) -> list[Commit]:
        """The table's Delta history, newest commit first."""
        if not self.exists(spark, table):
            raise FileNotFoundError(f"table '{table}' not found in lake {self.describe()}: run the stage that writes it first")
        rows = self.delta_table(spark, table).history().select("version", "timestamp", "operation", "userMetadata").collect()
        commits = (Commit(int(r["version"]), r["timestamp"], r["operation"], _generation_of(r["userMetadata"]),
                          _state_of(r["userMetadata"])) for r in rows)
        return sorted(commits, key=lambda c: c.version, reverse=True)

    def pin_generation(self, spark: SparkSession, sessions_version: int | None = None) -> Pin:
        """The sessions version to read (default: the newest) and the item_index version of the same
        sessionize run, found by the generation marker both commits carry.

        Tables written without markers (by hand, or before markers existed) pair by order instead:
        the newest item_index commit made before that sessions commit."""
        sessions = self.commits(spark, SESSIONS)
        if sessions_version is None:
            sessions_version = sessions[0].version
        data = next((c for c in sessions if c.version <= sessions_version and c.operation not in LAYOUT_ONLY), None)
        if data is None:
            raise ValueError(f"the sessions table has no version {sessions_version} (its history starts at "
                             f"{sessions[-1].version}): run `nextplay sessionize`")
        # A DELETE or UPDATE edits the rows of the generation before it (a listener's data removed by
        # hand): it keeps that generation's index, whatever sessionize committed to item_index since.
        while data.generation is None and data.operation in ROW_EDITS:
            earlier = next((c for c in sessions if c.version < data.version and c.operation not in LAYOUT_ONLY), None)
            if earlier is None:
                break
            data = earlier
        index = self.commits(spark, ITEM_INDEX)
        if data.generation is None:
            before = [c for c in index if c.timestamp <= data.timestamp]
            if not before:
                raise ValueError(f"sessions version {sessions_version} carries no sessionize generation and no "
                                 "item_index commit precedes it: run `nextplay sessionize`")
            return Pin(sessions_version, before[0].version, None)
        same = [c for c in index if c.generation == data.generation]
        if not same:
            raise ValueError(f"sessions version {sessions_version} was written by sessionize generation "
                             f"{data.generation}, but there is no version of item_index from that generation "
                             "(overwritten outside sessionize, or its history expired): run `nextplay sessionize`")
        return Pin(sessions_version, same[0].version, data.generation)

    def version(self, spark: SparkSession, table: str) -> int:
        """The table's newest Delta version: read it with `read_at` to see one snapshot in every query."""
        if not self.exists(spark, table):
            raise FileNotFoundError(f"table '{table}' not found in lake {self.describe()}: run the stage that writes it first")
        return int(self.delta_table(spark, table).history(1).select("version").first()["version"])

    def describe(self) -> str:
        return f"{self.cfg.catalog}.{self.cfg.schema}" if self.is_catalog else self.cfg.root

    def register_views(self, spark: SparkSession) -> list[str]:
        """Expose every existing table under its bare name, for `nextplay sql` and notebooks."""
        found = []
        for table in ALL_TABLES:
            if self.exists(spark, table):
                self.read(spark, table).createOrReplaceTempView(table)
                found.append(table)
        return found


# -- one generation of the tables sessionize writes ------------------------------------------------
#
# sessionize merges item_index and then replaces days of sessions, in two Delta commits some seconds
# apart. Both commits carry the same generation marker in their commit metadata (Delta's
# `userMetadata`), so a reader that pins a sessions version can find the item_index version written
# with it, even when a later sessionize has already merged item_index and not yet written sessions.
# The sessions commit also carries what the next incremental run starts from (`state`: space-separated
# key=value words after the marker).

GENERATION_MARKER = "nextplay.generation="


def new_generation() -> str:
    """A fresh marker for one sessionize run: UTC time first, so generations sort by age when listed."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def generation_options(generation: str, state: dict[str, str] | None = None) -> dict[str, str]:
    """Writer options that stamp a Delta commit with `generation` and optional `state` words (keys and
    values without spaces or '='); pass them to `Lake.write`."""
    words = [f"{GENERATION_MARKER}{generation}"] + [f"{k}={v}" for k, v in (state or {}).items()]
    return {"userMetadata": " ".join(words)}


# Operations that rewrite files without changing rows: a sessions version after one of them still
# belongs to the generation of the write before it.
# Commits that edit some rows in place and keep the rest: they inherit the generation they edited.
ROW_EDITS = {"DELETE", "UPDATE"}
LAYOUT_ONLY = {"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "UNSET TBLPROPERTIES",
                "CHANGE COLUMN", "CHANGE COLUMNS", "ADD CONSTRAINT", "DROP CONSTRAINT", "ADD COLUMNS", "CLUSTER BY"}


def _generation_of(user_metadata: str | None) -> str | None:
    if user_metadata and user_metadata.startswith(GENERATION_MARKER):
        return user_metadata[len(GENERATION_MARKER):].split(" ", 1)[0]
    return None


def _state_of(user_metadata: str | None) -> dict[str, str]:
    """The key=value words a stamped commit carries after its generation marker."""
    if _generation_of(user_metadata) is None:
        return {}
    return dict(w.split("=", 1) for w in user_metadata.split(" ")[1:] if "=" in w)


@dataclass(frozen=True)
class Commit:
    """One entry of a table's Delta history, as far as pinning needs it."""

    version: int
    timestamp: datetime
    operation: str
    generation: str | None  # the sessionize run that wrote it, when stamped
    state: dict[str, str] = field(default_factory=dict)  # what that run recorded for the next one


@dataclass(frozen=True)
class Pin:
    """The table versions one training run reads, everything it reads, and logs as run tags so an
    evaluation of the run (or a resume) reads the same ones."""

    sessions_version: int
    item_index_version: int
    generation: str | None  # None: tables written without generation markers, paired by commit order

    TAGS = ("nextplay.sessions_version", "nextplay.item_index_version", "nextplay.generation")

    def as_tags(self) -> dict[str, str]:
        return dict(zip(self.TAGS, (str(self.sessions_version), str(self.item_index_version), self.generation or "")))

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Pin | None:
        """The pin a run logged, or None for a run logged before runs pinned their tables."""
        if not all(t in tags for t in cls.TAGS[:2]):
            return None
        sessions, index, generation = (tags.get(t, "") for t in cls.TAGS)
        return cls(int(sessions), int(index), generation or None)


# -- a model and the lake's dictionary -------------------------------------------------------------


def check_model_ids(spark: SparkSession, lake: Lake, track_ids: np.ndarray, item_index_version: int,
                    model: str) -> None:
    """`check_dictionary` for a model known by its track ids (`track_ids[i]` is item_idx i + 1) against
    the lake's item_index as of the version the model's run pinned."""
    rows = pd.DataFrame({"track_id": track_ids.astype(str), "item_idx": range(1, len(track_ids) + 1)})
    mine = spark.createDataFrame(rows, "track_id string, item_idx int")
    check_dictionary(mine, len(track_ids), lake.read_at(spark, ITEM_INDEX, item_index_version), model, lake.describe())


def dictionary_disagreement(model_index: DataFrame, model_items: int, lake_index: DataFrame) -> int:
    """How many of a model's ids (its item index: track_id, item_idx 1..model_items) the lake's
    item_index names another track for, or lacks. A join count on the executors: neither table is
    collected. 0 for every model trained on this lake, since the dictionary only ever appends."""
    same = model_index.select("track_id", "item_idx").join(
        lake_index.select("track_id", "item_idx"), ["track_id", "item_idx"], "left_semi").count()
    return model_items - same


def check_dictionary(model_index: DataFrame, model_items: int, lake_index: DataFrame, model: str, lake: str) -> None:
    """Refuse, in one line, a model whose item ids the lake's dictionary numbers otherwise (the lake
    was rebuilt, or is another lake): its scores or figures would name the wrong tracks."""
    wrong = dictionary_disagreement(model_index, model_items, lake_index)
    if wrong:
        raise ValueError(f"{model}: {wrong} of the model's {model_items} item ids name another track (or none) in the "
                         f"item_index of lake {lake}: the lake was rebuilt or is another lake; train a model on this "
                         "lake (or point lake.root at the one the model was trained on)")
