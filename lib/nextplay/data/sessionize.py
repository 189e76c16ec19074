"""plays_silver -> item_index + sessions (columns and constraints: tables.py, docs/tables.md).

A session ends after more than `session_gap_minutes` of silence (exactly the gap still continues
it, which is also what Spark's `session_window` does). The split is by time, from the newest play:
the last `test_days` are test, the `valid_days` before valid, the rest train; a session belongs to
the split its start falls in. The vocabulary counts plays before the validation window only, so
nothing about valid/test leaks into the item ids.

Built to run unchanged on billions of plays:

- No collect to the driver (one row of min/max/count aside), no Python UDF: window functions,
  aggregates and SQL higher-order functions (filter/transform/slice) only.
- Skew: a listener with millions of plays must not end up in one task. Sessions are first cut
  inside (user, UTC day) buckets, so the shuffle key is (user, day) and the largest task holds one
  listener-day. Only fragments that start or end within the gap of midnight can continue across
  it; those few are stitched per user in a second, much smaller, shuffle. The vocabulary join is a
  broadcast while item_index is small; beyond the broadcast limit Spark's adaptive skew-join
  handling splits the partitions of very popular tracks.
- Bounded rows: a session longer than `max_session_length` is cut into chunks of at most that
  many items, so no row (and no training sequence) grows without bound. The vocabulary is numbered
  by one window over item_index, i.e. in one task: fine for vocabularies of tens of millions.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from nextplay.config import Config, SessionizeConfig
from nextplay.tables import (ITEM_INDEX, ITEM_INDEX_SCHEMA, PLAYS_SILVER, SESSIONS, SESSIONS_SCHEMA, Lake,
                             generation_options, new_generation)

log = logging.getLogger(__name__)

_DAY_US = 86_400_000_000


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, tz=timezone.utc).isoformat()


def build_item_index(plays: DataFrame, train_end: Column, min_count: int) -> DataFrame:
    """track_id -> item_idx 1..V by descending play count before `train_end` (ties: track_id).

    The dense numbering is one global sort, so it runs in a single partition (Spark warns about it):
    it sorts distinct tracks, not plays, and tens of millions of rows sort in seconds there."""
    counts = (plays.where(F.col("ts") < train_end).groupBy("track_id")
              .agg(F.count("*").alias("play_count")).where(F.col("play_count") >= min_count))
    rank = F.row_number().over(Window.orderBy(F.desc("play_count"), "track_id"))
    return counts.select("track_id", rank.cast("int").alias("item_idx"), "play_count")


def _in_vocab(ts: Column, idx: Column) -> Column:
    """A play as collected into a session: out-of-vocabulary plays mark time but carry no item."""
    return F.collect_list(F.when(idx.isNotNull(), F.struct(ts.alias("ts"), idx.alias("idx"))))


def _fragments_window(plays: DataFrame, gap_us: int) -> DataFrame:
    """Cut each (user, day) at silences longer than the gap with lag + a running sum."""
    w = Window.partitionBy("user_id", "day").orderBy("ts", "item_idx")
    gap = F.unix_micros("ts") - F.unix_micros(F.lag("ts").over(w))
    starts = plays.withColumn("new", F.coalesce((gap > gap_us).cast("int"), F.lit(1)))
    numbered = starts.withColumn("frag", F.sum("new").over(w.rowsBetween(Window.unboundedPreceding, 0)))
    return numbered.groupBy("user_id", "day", "frag").agg(
        F.min("ts").alias("start_ts"), F.max("ts").alias("end_ts"), _in_vocab(F.col("ts"), F.col("item_idx")).alias("plays"))


def _fragments_session_window(plays: DataFrame, gap_us: int) -> DataFrame:
    """The same cut with Spark's built-in session_window, grouped by (user, day)."""
    window = F.session_window("ts", f"{gap_us} microseconds")
    return plays.groupBy("user_id", "day", window).agg(
        F.min("ts").alias("start_ts"), F.max("ts").alias("end_ts"), _in_vocab(F.col("ts"), F.col("item_idx")).alias("plays"))


FRAGMENTERS = {"window": _fragments_window, "session_window": _fragments_session_window}


def _stitch(fragments: DataFrame, gap_us: int) -> DataFrame:
    """Join fragments that continue a session across midnight; the rest are whole sessions already."""
    day_start = F.unix_micros(F.col("day").cast("timestamp"))
    near_midnight = ((F.unix_micros("start_ts") - day_start <= gap_us)
                     | (day_start + _DAY_US - F.unix_micros("end_ts") <= gap_us))
    whole = fragments.where(~near_midnight).select("user_id", "start_ts", "end_ts", "plays")
    w = Window.partitionBy("user_id").orderBy("start_ts")
    gap = F.unix_micros("start_ts") - F.unix_micros(F.lag("end_ts").over(w))
    edge = fragments.where(near_midnight).withColumn("new", F.coalesce((gap > gap_us).cast("int"), F.lit(1)))
    edge = edge.withColumn("session", F.sum("new").over(w.rowsBetween(Window.unboundedPreceding, 0)))
    joined = edge.groupBy("user_id", "session").agg(
        F.min("start_ts").alias("start_ts"), F.max("end_ts").alias("end_ts"), F.flatten(F.collect_list("plays")).alias("plays"))
    return whole.unionByName(joined.drop("session"))


def _to_rows(sessions: DataFrame, cfg: SessionizeConfig, valid_start: Column, test_start: Column) -> DataFrame:
    """Order, collapse repeats, drop short sessions, cut long ones into chunks, and label the split."""
    split = (F.when(F.col("start_ts") >= test_start, "test")
             .when(F.col("start_ts") >= valid_start, "valid").otherwise("train"))
    # collect_list keeps no order; (ts, idx) structs sort by time.
    s = sessions.select("user_id", "start_ts", "end_ts", split.alias("split"), F.array_sort("plays").alias("plays"))
    if cfg.collapse_repeats:
        kept = F.filter("plays", lambda x, i: (i == 0) | (x["idx"] != F.get(F.col("plays"), i - 1)["idx"]))
        s = s.withColumn("plays", kept)
    s = s.where(F.size("plays") >= cfg.min_session_length)
    size = cfg.max_session_length
    n_chunks = F.ceil(F.size("plays") / size).cast("int")
    chunks = F.transform(F.sequence(F.lit(0), n_chunks - 1), lambda k: F.slice("plays", k * size + 1, size))
    s = s.select("*", n_chunks.alias("n_chunks"), F.posexplode(chunks).alias("chunk", "part"))
    s = s.where(F.size("part") >= cfg.min_session_length)
    first, last = F.col("chunk") == 0, F.col("chunk") == F.col("n_chunks") - 1
    start = F.when(first, F.col("start_ts")).otherwise(F.element_at("part", 1)["ts"])
    end = F.when(last, F.col("end_ts")).otherwise(F.element_at("part", -1)["ts"])
    # Same user, start and chunk -> same id on every run: training and scoring can refer to it.
    session_id = F.substring(F.sha2(F.concat_ws("|", "user_id", F.unix_micros("start_ts").cast("string"),
                                                 F.col("chunk").cast("string")), 256), 1, 32)
    items = F.transform("part", lambda x: x["idx"])
    return s.select(
        "user_id", session_id.alias("session_id"), start.alias("start_ts"), end.alias("end_ts"),
        F.to_date(start).alias("event_date"), items.cast("array<int>").alias("items"),
        F.size("part").cast("int").alias("length"), "split",
    )


def cut_fragments(plays: DataFrame, index: DataFrame, cfg: SessionizeConfig) -> DataFrame:
    """Stage 1: plays (user_id, track_id, ts) cut into gap-separated runs within each (user, UTC day)."""
    indexed = (plays.join(index.select("track_id", "item_idx"), "track_id", "left")
               .select("user_id", "ts", "item_idx", F.to_date("ts").alias("day")))
    return FRAGMENTERS[cfg.method](indexed, cfg.session_gap_minutes * 60_000_000)


def sessions_from_fragments(fragments: DataFrame, cfg: SessionizeConfig,
                            valid_start: Column, test_start: Column) -> DataFrame:
    """Stage 2: fragments stitched across midnight and shaped into SESSIONS_SCHEMA rows."""
    return _to_rows(_stitch(fragments, cfg.session_gap_minutes * 60_000_000), cfg, valid_start, test_start)


def build_sessions(plays: DataFrame, index: DataFrame, cfg: SessionizeConfig,
                   valid_start: Column, test_start: Column) -> DataFrame:
    """Sessions (SESSIONS_SCHEMA) from plays (user_id, track_id, ts) and an item index."""
    return sessions_from_fragments(cut_fragments(plays, index, cfg), cfg, valid_start, test_start)


def sessionize(spark: SparkSession, cfg: Config) -> dict:
    """Rebuild item_index and sessions from plays_silver; each table is replaced in one Delta commit.

    Both commits carry one generation marker: a reader pins a sessions version and reads the
    item_index version of the same run (`Lake.pin_generation`), never an index that a later run
    committed before its sessions."""
    started = time.time()
    scfg, lake = cfg.sessionize, Lake(cfg.lake)
    plays = lake.read(spark, PLAYS_SILVER).select("user_id", "track_id", "ts")
    # Epoch microseconds, not Python datetimes: those would pick up the driver's local time zone.
    bounds = plays.agg(F.unix_micros(F.min("ts")).alias("first"), F.unix_micros(F.max("ts")).alias("last"),
                       F.count("*").alias("n")).first()
    if bounds["n"] == 0:
        raise ValueError("plays_silver is empty: run `nextplay ingest` first")
    test_us = bounds["last"] - round(scfg.test_days * _DAY_US)
    valid_us = test_us - round(scfg.valid_days * _DAY_US)
    test_start, valid_start = F.timestamp_micros(F.lit(test_us)), F.timestamp_micros(F.lit(valid_us))

    for table, schema in ((ITEM_INDEX, ITEM_INDEX_SCHEMA), (SESSIONS, SESSIONS_SCHEMA)):
        lake.create_if_missing(spark, table, schema)
    generation = new_generation()
    stamp = generation_options(generation)
    lake.write(build_item_index(plays, valid_start, scfg.min_item_count), ITEM_INDEX, mode="overwrite", **stamp)
    index = lake.read(spark, ITEM_INDEX)
    vocabulary = index.count()
    if vocabulary == 0:
        raise ValueError(f"no track has {scfg.min_item_count} plays before {_iso(valid_us)} "
                         "(the training window): lower sessionize.min_item_count or ingest more history")
    # Two branches read the fragments (whole sessions, and those stitched across midnight): keep
    # them rather than cut them twice. MEMORY_AND_DISK spills like a shuffle would at any scale.
    fragments = cut_fragments(plays, index, scfg).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        sessions = sessions_from_fragments(fragments, scfg, valid_start, test_start)
        # Files of consecutive start times, sorted inside: `train.batching=lanes` reads the
        # sessions oldest first in that order, and each task writes one or two date partitions
        # instead of a small file in every one.
        ordered = sessions.repartitionByRange("start_ts").sortWithinPartitions("start_ts")
        lake.write(ordered.select(*[f.name for f in SESSIONS_SCHEMA.fields]), SESSIONS, mode="overwrite", **stamp)
    finally:
        fragments.unpersist()

    written = lake.read(spark, SESSIONS).groupBy("split").agg(F.count("*").alias("n"), F.sum("length").alias("items"))
    per_split = {r["split"]: (r["n"], r["items"]) for r in written.collect()}
    result = {
        "method": scfg.method, "generation": generation, "plays": bounds["n"], "items": vocabulary,
        "first_play": _iso(bounds["first"]), "last_play": _iso(bounds["last"]),
        "valid_start": _iso(valid_us), "test_start": _iso(test_us),
        **{f"sessions_{s}": per_split.get(s, (0, 0))[0] for s in ("train", "valid", "test")},
        **{f"items_{s}": per_split.get(s, (0, 0))[1] for s in ("train", "valid", "test")},
        "seconds": round(time.time() - started, 2),
    }
    log.info("sessionize: %s", result)
    return result
