"""Table names and schemas: the contracts between stages (DESIGN.md, "Data flow and table contracts").

Every stage reads and writes tables through `Lake`, which hides whether a table is a folder under
`lake.root` (laptop, cluster: any Hadoop URI) or a Unity Catalog table `catalog.schema.name`
(Databricks). Columns listed here may gain siblings but are never renamed.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from nextplay.config import LakeConfig

PLAYS_BRONZE = "plays_bronze"
PLAYS_SILVER = "plays_silver"
PLAYS_QUARANTINE = "plays_quarantine"
ITEM_INDEX = "item_index"
SESSIONS = "sessions"
PREDICTIONS = "predictions"
INGEST_LOG = "ingest_log"  # one row per ingested batch with its four counts

ALL_TABLES = (PLAYS_BRONZE, PLAYS_SILVER, PLAYS_QUARANTINE, ITEM_INDEX, SESSIONS, PREDICTIONS, INGEST_LOG)

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
])

ITEM_INDEX_SCHEMA = T.StructType([
    T.StructField("track_id", T.StringType(), False),
    T.StructField("item_idx", T.IntegerType(), False),  # 1..V, 0 is padding
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
])

SCHEMAS = {
    PLAYS_BRONZE: PLAYS_BRONZE_SCHEMA, PLAYS_SILVER: PLAYS_SILVER_SCHEMA, PLAYS_QUARANTINE: PLAYS_QUARANTINE_SCHEMA,
    INGEST_LOG: INGEST_LOG_SCHEMA, ITEM_INDEX: ITEM_INDEX_SCHEMA, SESSIONS: SESSIONS_SCHEMA,
    PREDICTIONS: PREDICTIONS_SCHEMA,
}

PARTITIONS = {PLAYS_SILVER: ["event_date"], SESSIONS: ["event_date"], PREDICTIONS: ["score_date"]}


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
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(spark, self.path(table))

    def read(self, spark: SparkSession, table: str) -> DataFrame:
        if not self.exists(spark, table):
            raise FileNotFoundError(f"table '{table}' not found in lake {self.describe()}: run the stage that writes it first")
        if self.is_catalog:
            return spark.read.table(self.name(table))
        return spark.read.format("delta").load(self.path(table))

    def delta_table(self, spark: SparkSession, table: str):
        from delta.tables import DeltaTable

        if self.is_catalog:
            return DeltaTable.forName(spark, self.name(table))
        return DeltaTable.forPath(spark, self.path(table))

    def create_if_missing(self, spark: SparkSession, table: str, schema: T.StructType) -> None:
        """Create an empty table with exactly `schema` (NOT NULL columns included) and its partitioning.

        A table created by a first `write` would take the DataFrame's nullability instead, and
        Delta would then no longer reject rows that break the contract.
        """
        from delta.tables import DeltaTable

        builder = DeltaTable.createIfNotExists(spark).addColumns(schema)
        builder = builder.tableName(self.name(table)) if self.is_catalog else builder.location(self.path(table))
        if PARTITIONS.get(table):
            builder = builder.partitionedBy(*PARTITIONS[table])
        builder.execute()

    def writer(self, df: DataFrame, table: str, mode: str):
        """A configured DataFrameWriter; call `.save_to(lake, table)` via `write`."""
        w = df.write.format("delta").mode(mode)
        parts = PARTITIONS.get(table)
        if parts:
            w = w.partitionBy(*parts)
        return w

    def write(self, df: DataFrame, table: str, mode: str = "append", **options: str) -> None:
        w = self.writer(df, table, mode)
        for k, v in options.items():
            w = w.option(k, v)
        if self.is_catalog:
            w.saveAsTable(self.name(table))
        else:
            w.save(self.path(table))

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
