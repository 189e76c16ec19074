"""plays_silver -> item_index (the item dictionary) + sessions, incrementally.

A session ends after more than `session_gap_minutes` of silence (exactly the gap still continues
it, which is also what Spark's `session_window` does). The split is by the session's start: before
`valid_start` train, before `test_start` valid, then test; the two boundaries are fixed dates
(`sessionize.valid_start` / `test_start`) or, by default, roll with the newest play (`test_days`,
`valid_days`).

The dictionary (`item_index`) is append-only: a track enters when it first has `min_item_count`
plays before `valid_start` and gets the next item_idx (max + 1; tracks entering in one run are
numbered by the time of that min_item_count-th play, then track_id), and an id never changes
meaning or leaves. So a model trained on any generation knows exactly ids 1..its V, and every later
generation numbers those tracks alike. `play_count` (plays before `valid_start`, possibly 0) is
updated every run by a Delta MERGE, which also inserts the new tracks. Numbering by entry time makes
the dictionary independent of how the plays were batched as long as they arrive in time order: a
track that enters in a later run reached its count after every earlier run's window closed.

Incremental runs: each sessions commit records the `ingest_log` version it consumed. The next run
re-cuts only the event_date days that changed: the days of the batches logged since (ingest_log
records each batch's event dates) and the days the rolling split boundaries moved across, then the
neighbour days that sessions holding changed plays run into (data/recut.py: not every day some
session crosses into, which at scale is all of history). Those days of `sessions` are replaced in
one Delta commit (`replaceWhere` on the partition column), cut from their plays and the day beside
each block, and equal a full recompute of the same plays. A run with nothing new commits nothing.

A track that enters the dictionary counts in sessions from the day it enters: the days cut before
keep its earlier plays as plays of an unknown track (they mark time and carry no item) until a full
rebuild (`--full`) cuts every day with the whole dictionary. Re-cutting every old day an entering
track was played on would re-cut most of history each night, since long-tail tracks cross
`min_item_count` after plays spread over it; a model trains mostly on recent days anyway
(`train.window_days`, daily mode), and the tracks' ids are stable either way.
Everything is rebuilt (`--full`, or by itself) on the first run, for a lake without ingest_log,
when the session settings changed, when a batch logged no event dates, or when the consumed
ingest_log version is no longer readable. Plays reach silver through ingest only; a play written
there by other means is picked up by the next full run.

Built to run unchanged on billions of plays:

- No collect to the driver beyond a few rows of dates and bounds, no Python UDF: window functions,
  aggregates and SQL higher-order functions (filter/transform/slice) only.
- Skew: a listener with millions of plays must not end up in one task. Sessions are first cut
  inside (user, UTC day) buckets, so the shuffle key is (user, day) and the largest task holds one
  listener-day. Only fragments that start or end within the gap of midnight can continue across
  it; those few are stitched per user in a second, much smaller, shuffle. The vocabulary join is a
  broadcast while item_index is small; beyond the broadcast limit Spark's adaptive skew-join
  handling splits the partitions of very popular tracks.
- Bounded rows: a session longer than `max_session_length` is cut into chunks of at most that
  many items, so no row (and no training sequence) grows without bound. New dictionary entries are
  numbered in range partitions (data/ordinal.py), not in one task: a first load numbers the whole
  vocabulary.
- What a run reads: the dictionary's counts aggregate the training window's track ids (no sort by
  listener); the k-th play time of a new track is a row_number limited to k per track, which Spark
  applies before the shuffle. Sessions read only the re-cut days (partition pruning on event_date).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, timezone

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from nextplay.config import Config, SessionizeConfig
from nextplay.data.batches import batch_days
from nextplay.data.ordinal import number_in_order
from nextplay.data.recut import DAY_US, Recut, day_of, midnight_us, moved_days, recut
from nextplay.tables import (INGEST_LOG, ITEM_INDEX, ITEM_INDEX_SCHEMA, LAYOUT_ONLY, PLAYS_SILVER, SESSIONS,
                             SESSIONS_SCHEMA, Lake, generation_options, new_generation)

log = logging.getLogger(__name__)

# Where Delta takes a MERGE's commit metadata from (a MERGE has no writer options).
_COMMIT_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, tz=timezone.utc).isoformat()


# -- the split ------------------------------------------------------------------------------------


def split_bounds(cfg: SessionizeConfig, last_us: int) -> tuple[int, int]:
    """(valid_start, test_start) in epoch microseconds: the configured dates, or rolling from the newest play."""
    if cfg.valid_start is not None and cfg.test_start is not None:
        return (midnight_us(date.fromisoformat(str(cfg.valid_start))),
                midnight_us(date.fromisoformat(str(cfg.test_start))))
    test_us = last_us - round(cfg.test_days * DAY_US)
    return test_us - round(cfg.valid_days * DAY_US), test_us


# -- the dictionary -------------------------------------------------------------------------------


def training_counts(plays: DataFrame, valid_us: int) -> DataFrame:
    """track_id, play_count: plays before the validation window, per track (event_date prunes the rest)."""
    train = plays.where((F.col("event_date") <= F.lit(day_of(valid_us)))
                        & (F.col("ts") < F.timestamp_micros(F.lit(valid_us))))
    return train.groupBy("track_id").agg(F.count("*").alias("play_count"))


def number_entrants(plays: DataFrame, entrants: DataFrame, valid_us: int, min_count: int, after: int) -> DataFrame:
    """track_id, item_idx for tracks entering the dictionary: after+1, after+2, ... by the time each
    reached `min_count` training plays (its min_count-th play), then track_id.

    The min_count-th smallest time does not depend on how ties are ordered. `row_number() <= k` is
    planned as a per-partition limit before the shuffle, so a hit with millions of plays sends k rows.
    The result is persisted (data/ordinal.py): the caller unpersists it."""
    train = plays.where((F.col("event_date") <= F.lit(day_of(valid_us)))
                        & (F.col("ts") < F.timestamp_micros(F.lit(valid_us))))
    mine = train.join(entrants.select("track_id"), "track_id", "left_semi")
    first_k = mine.withColumn("n", F.row_number().over(Window.partitionBy("track_id").orderBy("ts")))
    entered = first_k.where(F.col("n") <= min_count).groupBy("track_id").agg(F.max("ts").alias("entered_at"))
    return number_in_order(entered, ["entered_at", "track_id"], "item_idx", after=after, keep=["track_id"])


def _generation_in(metadata: str) -> str:
    return metadata.split(" ", 1)[0].split("=", 1)[1]


def merge_dictionary(spark: SparkSession, lake: Lake, counts: DataFrame, numbered: DataFrame, metadata: str) -> None:
    """One MERGE into item_index: every known track's play_count set to its count now (0 when it has
    none in the window), the numbered entrants inserted; ids of known tracks are never touched."""
    source = counts.join(numbered, "track_id", "left")
    target = lake.delta_table(spark, ITEM_INDEX).alias("t")
    spark.conf.set(_COMMIT_METADATA, metadata)
    try:
        (target.merge(source.alias("s"), "t.track_id = s.track_id")
         .whenMatchedUpdate(condition="t.play_count <> s.play_count", set={"play_count": "s.play_count"})
         .whenNotMatchedInsert(condition="s.item_idx IS NOT NULL",
                               values={"track_id": "s.track_id", "item_idx": "s.item_idx", "play_count": "s.play_count"})
         .whenNotMatchedBySourceUpdate(condition="t.play_count <> 0", set={"play_count": "0"})
         .execute())
        # A MERGE that changes no row commits nothing; this property commit (no row changes) gives
        # the generation its item_index version either way, for `Lake.pin_generation`.
        spark.sql(f"ALTER TABLE {lake.name(ITEM_INDEX)} SET TBLPROPERTIES ('nextplay.generation' = "
                  f"'{_generation_in(metadata)}')")
    finally:
        spark.conf.unset(_COMMIT_METADATA)


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
                     | (day_start + DAY_US - F.unix_micros("end_ts") <= gap_us))
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


def _settings(cfg: SessionizeConfig) -> str:
    """The settings that shape sessions (not the split, not the dictionary): a change means a full rebuild."""
    return (f"gap{cfg.session_gap_minutes}-min{cfg.min_session_length}-max{cfg.max_session_length}-"
            f"collapse{int(cfg.collapse_repeats)}")


@dataclass(frozen=True)
class Previous:
    """What the last completed run left: its state words and the dictionary version of its generation."""

    state: dict[str, str]
    item_index_version: int | None


def _previous(spark: SparkSession, lake: Lake) -> Previous | None:
    """The last sessionize run that wrote sessions, or None when there is none to continue from."""
    if not lake.exists(spark, SESSIONS) or not lake.exists(spark, ITEM_INDEX):
        return None
    # The newest commit that wrote rows: a hand-made overwrite (unstamped) is not a state to continue from.
    stamped = next((c for c in lake.commits(spark, SESSIONS) if c.operation not in LAYOUT_ONLY), None)
    if stamped is None or stamped.generation is None:
        return None
    try:
        pin = lake.pin_generation(spark, stamped.version)
    except ValueError:
        return Previous(stamped.state, None)
    return Previous(stamped.state, pin.item_index_version)


def _full_reason(spark: SparkSession, lake: Lake, cfg: SessionizeConfig, previous: Previous | None,
                 full: bool) -> str | None:
    """Why this run rebuilds every day, or None when it can continue from the previous one."""
    if full:
        return "asked for (--full)"
    if previous is None or previous.item_index_version is None:
        return "no earlier sessionize run to continue from"
    if not lake.exists(spark, INGEST_LOG):
        return "no ingest_log: which days changed is unknown"
    if "ingest_log_version" not in previous.state:
        return "the last run recorded no ingest_log version"
    if previous.state.get("settings") != _settings(cfg):
        return f"session settings changed ({previous.state.get('settings')} -> {_settings(cfg)})"
    return None


def sessionize(spark: SparkSession, cfg: Config, full: bool = False) -> dict:
    """Bring item_index and sessions up to date with plays_silver (see module docstring): the
    dictionary in one MERGE, the changed days of sessions in one replaceWhere commit (every day when
    `full` or nothing to continue from).

    Both commits carry one generation marker: a reader pins a sessions version and reads the
    item_index version of the same run (`Lake.pin_generation`), never a dictionary that a later run
    merged before its sessions."""
    started = time.time()
    scfg, lake = cfg.sessionize, Lake(cfg.lake)
    # One snapshot of each input for the whole run: ingest_log first, so every batch it lists has its
    # plays in the silver version read after it.
    log_version = lake.version(spark, INGEST_LOG) if lake.exists(spark, INGEST_LOG) else None
    plays = lake.read_at(spark, PLAYS_SILVER, lake.version(spark, PLAYS_SILVER)).select(
        "user_id", "track_id", "ts", "event_date")
    # Epoch microseconds, not Python datetimes: those would pick up the driver's local time zone.
    bounds = plays.agg(F.min("ts").alias("first"), F.max("ts").alias("last"), F.count("*").alias("n")).select(
        F.unix_micros("first").alias("first"), F.unix_micros("last").alias("last"), "n").first()
    if bounds["n"] == 0:
        raise ValueError("plays_silver is empty: run `nextplay ingest` first")
    valid_us, test_us = split_bounds(scfg, bounds["last"])

    for table, schema in ((ITEM_INDEX, ITEM_INDEX_SCHEMA), (SESSIONS, SESSIONS_SCHEMA)):
        lake.create_if_missing(spark, table, schema)
    previous = _previous(spark, lake)
    reason = _full_reason(spark, lake, scfg, previous, full)

    known = lake.read_at(spark, ITEM_INDEX, lake.version(spark, ITEM_INDEX))
    top = known.agg(F.max("item_idx")).first()[0] or 0
    counts = training_counts(plays, valid_us).persist(StorageLevel.MEMORY_AND_DISK)
    entrants = counts.where(F.col("play_count") >= scfg.min_item_count).join(known, "track_id", "left_anti")
    numbered = number_entrants(plays, entrants, valid_us, scfg.min_item_count, top)
    try:
        new_items = numbered.count()
        if top + new_items == 0:
            raise ValueError(f"no track has {scfg.min_item_count} plays before {_iso(valid_us)} "
                             "(the training window): lower sessionize.min_item_count or ingest more history")
        days: Recut | None = None
        if reason is None:
            assert previous is not None and log_version is not None  # _full_reason checked both
            days = _changed_days(spark, lake, plays, previous, log_version, (valid_us, test_us), scfg)
            if days is None:
                reason = "a batch logged no event dates, or the last run's ingest_log version is gone"
        if reason is None and not days.days:
            log.info("sessionize: nothing changed since the last run (no new batch, track or split boundary)")
            return _result(spark, lake, scfg, "unchanged", None, bounds, valid_us, test_us, 0, days, started)
        generation = new_generation()
        merge_dictionary(spark, lake, counts, numbered, generation_options(generation)["userMetadata"])
    finally:
        counts.unpersist()
        numbered.unpersist()
    if reason is not None:
        log.info("sessionize: rebuilding every day: %s", reason)
        days = None
    state = {"ingest_log_version": str(log_version if log_version is not None else -1),
             "valid_start_us": str(valid_us), "test_start_us": str(test_us), "settings": _settings(scfg)}
    _write_sessions(spark, lake, plays, scfg, days, valid_us, test_us, generation_options(generation, state))
    return _result(spark, lake, scfg, "incremental" if days is not None else "full", generation, bounds, valid_us,
                   test_us, new_items, days, started, reason)


def _changed_days(spark: SparkSession, lake: Lake, plays: DataFrame, previous: Previous, log_version: int,
                  split: tuple[int, int], scfg: SessionizeConfig) -> Recut | None:
    """The days to re-cut and to read (data/recut.py), or None when they cannot be known. Tracks
    that entered the dictionary since add no day: they count from the days cut from now on."""
    batches = batch_days(spark, lake, int(previous.state["ingest_log_version"]), log_version)
    if batches is None:
        return None
    old_split = (int(previous.state.get("valid_start_us", split[0])), int(previous.state.get("test_start_us", split[1])))
    relabelled = moved_days(old_split, split) - batches
    if not batches and not relabelled:
        return Recut(set(), set())
    return recut(plays, batches, relabelled, scfg.session_gap_minutes * 60_000_000)


def _write_sessions(spark: SparkSession, lake: Lake, plays: DataFrame, scfg: SessionizeConfig, days: Recut | None,
                    valid_us: int, test_us: int, stamp: dict[str, str]) -> None:
    """Cut the plays `days` reads (every day when None) and replace its days of sessions in one commit."""
    index = lake.read(spark, ITEM_INDEX)
    options = dict(stamp)
    keep = None
    if days is not None:
        listed = sorted(days.days)
        plays = plays.where(F.col("event_date").isin(sorted(days.read)))
        keep = F.col("event_date").isin(listed)  # sessions starting on a context day are not written
        options["replaceWhere"] = "event_date IN ({})".format(", ".join(f"DATE'{d.isoformat()}'" for d in listed))
    test_start, valid_start = F.timestamp_micros(F.lit(test_us)), F.timestamp_micros(F.lit(valid_us))
    # Two branches read the fragments (whole sessions, and those stitched across midnight): keep
    # them rather than cut them twice. MEMORY_AND_DISK spills like a shuffle would at any scale.
    fragments = cut_fragments(plays, index, scfg).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        sessions = sessions_from_fragments(fragments, scfg, valid_start, test_start)
        if keep is not None:
            sessions = sessions.where(keep)
        # Files of consecutive start times, sorted inside: `train.batching=lanes` reads the
        # sessions oldest first in that order, and each task writes one or two date partitions
        # instead of a small file in every one.
        ordered = sessions.repartitionByRange("start_ts").sortWithinPartitions("start_ts")
        lake.write(ordered.select(*[f.name for f in SESSIONS_SCHEMA.fields]), SESSIONS, mode="overwrite", **options)
    finally:
        fragments.unpersist()


def _result(spark: SparkSession, lake: Lake, scfg: SessionizeConfig, mode: str, generation: str | None, bounds,
            valid_us: int, test_us: int, new_items: int, recut_days: Recut | None, started: float,
            reason: str | None = None) -> dict:
    """What the run did, for the log and the CLI."""
    days = None if recut_days is None else recut_days.days
    written = lake.read(spark, SESSIONS).groupBy("split").agg(F.count("*").alias("n"), F.sum("length").alias("items"))
    per_split = {r["split"]: (r["n"], r["items"]) for r in written.collect()}
    result = {
        "method": scfg.method, "mode": mode, "full_reason": reason, "generation": generation, "plays": bounds["n"],
        "items": lake.read(spark, ITEM_INDEX).count(), "new_items": new_items,
        # Incremental runs: the event_date days replaced (None: every day, a full run).
        "days_recut": None if days is None else len(days), "first_recut_day": str(min(days)) if days else None,
        "last_recut_day": str(max(days)) if days else None,
        "first_play": _iso(bounds["first"]), "last_play": _iso(bounds["last"]),
        "valid_start": _iso(valid_us), "test_start": _iso(test_us),
        **{f"sessions_{s}": per_split.get(s, (0, 0))[0] for s in ("train", "valid", "test")},
        **{f"items_{s}": per_split.get(s, (0, 0))[1] for s in ("train", "valid", "test")},
        "seconds": round(time.time() - started, 2),
    }
    log.info("sessionize: %s", result)
    return result
