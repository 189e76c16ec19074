"""Table names and schemas: the contracts between stages (DESIGN.md, "Data flow and table contracts").

Every stage reads and writes tables through `Lake`, which hides whether a table is a folder under
`lake.root` (laptop, cluster: any Hadoop URI) or a Unity Catalog table `catalog.schema.name`
(Databricks). Columns listed here may gain siblings but are never renamed.
"""
from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

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
    # Lineage: the sessions version the model's training run pinned (null: the run recorded none, or
    # a row written before predictions carried it). Last, where ALTER TABLE ADD COLUMNS puts it.
    T.StructField("sessions_version", T.LongType()),
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
        commits = (Commit(int(r["version"]), r["timestamp"], r["operation"], _generation_of(r["userMetadata"])) for r in rows)
        return sorted(commits, key=lambda c: c.version, reverse=True)

    def pin_generation(self, spark: SparkSession, sessions_version: int | None = None) -> Pin:
        """The sessions version to read (default: the newest) and the item_index version of the same
        sessionize run, found by the generation marker both commits carry.

        Tables written without markers (by hand, or before markers existed) pair by order instead:
        the newest item_index commit made before that sessions commit."""
        sessions = self.commits(spark, SESSIONS)
        if sessions_version is None:
            sessions_version = sessions[0].version
        data = next((c for c in sessions if c.version <= sessions_version and c.operation not in _LAYOUT_ONLY), None)
        if data is None:
            raise ValueError(f"the sessions table has no version {sessions_version} (its history starts at "
                             f"{sessions[-1].version}): run `nextplay sessionize`")
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
# sessionize replaces item_index and then sessions, in two Delta commits some seconds apart. Both
# commits carry the same generation marker in their commit metadata (Delta's `userMetadata`), so a
# reader that pins a sessions version can find the item_index version written with it, even when a
# later sessionize has already replaced item_index and not yet sessions.

GENERATION_MARKER = "nextplay.generation="


def new_generation() -> str:
    """A fresh marker for one sessionize run: UTC time first, so generations sort by age when listed."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def generation_options(generation: str) -> dict[str, str]:
    """Writer options that stamp a Delta commit with `generation` (pass them to `Lake.write`)."""
    return {"userMetadata": f"{GENERATION_MARKER}{generation}"}


# Operations that rewrite files without changing rows: a sessions version after one of them still
# belongs to the generation of the write before it.
_LAYOUT_ONLY = {"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "UNSET TBLPROPERTIES"}


def _generation_of(user_metadata: str | None) -> str | None:
    if user_metadata and user_metadata.startswith(GENERATION_MARKER):
        return user_metadata[len(GENERATION_MARKER):]
    return None


@dataclass(frozen=True)
class Commit:
    """One entry of a table's Delta history, as far as pinning needs it."""

    version: int
    timestamp: datetime
    operation: str
    generation: str | None  # the sessionize run that wrote it, when stamped


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
