"""Recent listening histories: the `listener_history` table, kept up to date day by day, and the model
input built from it in Spark with window functions.

The RNN needs, per listener, the last few plays as item indices in time order. Doing the mapping, the
repeat collapse and the truncation in Spark (not in Python) means only short int arrays cross into the
scoring processes, and a listener with a million plays costs Spark a sort, not Python a loop.

What the table keeps. Rebuilding every history from `score.lookback_days` of plays_silver each day
would shuffle the whole retention window daily. `listener_history` instead holds, per listener active
in the lookback, the plays from which its history can be rebuilt exactly: raw (ts, event_id, track_id),
not item ids, because the ids a play maps to depend on the scoring model's dictionary, and a track
unknown to one model (not yet in item_index, or added after it was trained) is known to a later one.
Counted newest first over the plays of tracks the scoring model knows, a *run* is a stretch of
consecutive plays of one track (what `collapse_repeats` folds into one item). The table keeps every
play, of any track, from the newest play of the listener's `score.history_length`-th run onward (all
of the listener's plays in the lookback when it has fewer runs). That suffix is enough, whatever
comes later:

- the model input (with or without collapsing, since L runs hold at least L plays) lies inside it;
- a later model knowing more tracks only splits runs, so the suffix still holds L of its runs;
- a late play can only add or split runs: one older than the suffix never reaches the last L;
- the lookback only moves forward (plays are only added), so plays that left it never return.

Updates. Each commit of the table records in its commit metadata (`tables.generation_options`) what it
has folded in: the ingest_log and plays_silver versions, the newest play (where the lookback ends, so
a run reads no more of plays_silver than the days it folds in), the dictionary it was cut with (its
size and a fingerprint of its ids) and the two settings. The next run re-reads only the event_date days of the
batches ingest_log gained since, takes the touched listeners' kept plays with them, de-duplicates by
the play's identity (so a replayed or late batch counts once), cuts the suffix again and MERGEs the
result by user_id; the same MERGE deletes the listeners whose newest play left the lookback. A run
with no new batch commits nothing. Everything is rebuilt from the lookback window (one shuffle of it,
what every run cost before) on the first run and whenever the state cannot be continued: no ingest_log,
a commit without state (an edit by hand), plays_silver changed by anything but ingest's MERGE (a
listener's plays deleted, say), an ingest_log version no longer readable, a batch logged without event
dates, other settings, or a model whose dictionary does not extend the one the table was cut with.
Plays reach the histories when their batch is logged (ingest writes the log last).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from nextplay.data.batches import batch_days
from nextplay.tables import (INGEST_LOG, LAYOUT_ONLY, LISTENER_HISTORY, LISTENER_HISTORY_SCHEMA, PLAYS_SILVER, Commit,
                             Lake, generation_options, new_generation)

log = logging.getLogger(__name__)

_DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1)
# Where Delta takes a MERGE's commit metadata from (a MERGE has no writer options).
_COMMIT_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
# plays_silver commits that only add plays (ingest's MERGE) or change no rows.
_ADDS_PLAYS = {"MERGE"} | LAYOUT_ONLY
_PLAY_COLUMNS = ("user_id", "track_id", "ts", "event_id")


# -- the lookback window and the model input ---------------------------------------------------------


def newest_event(plays: DataFrame) -> int:
    """The latest play time in epoch microseconds: the lookback is relative to the data, so replayed
    or synthetic history works. Microseconds, not a Python datetime, which would pick up the
    driver's local time zone."""
    newest = plays.agg(F.unix_micros(F.max("ts"))).first()[0]
    if newest is None:
        raise ValueError("plays_silver is empty: ingest some plays before scoring")
    return int(newest)


def _since(newest_us: int, lookback_days: int) -> Column:
    return F.timestamp_micros(F.lit(newest_us - lookback_days * _DAY_US))


def recent_plays(plays: DataFrame, newest_us: int, lookback_days: int) -> DataFrame:
    """Plays in the `lookback_days` before `newest_us`; the event_date filter prunes partitions."""
    since = _since(newest_us, lookback_days)
    return plays.where((F.col("event_date") >= F.to_date(since)) & (F.col("ts") > since))


def histories(recent: DataFrame, index: DataFrame, *, history_length: int, collapse: bool) -> DataFrame:
    """`user_id`, `items` array<int> (oldest first): the last `history_length` in-vocabulary plays.

    Unknown tracks are dropped before repeats are collapsed, the same order as sessionize, so a
    repeat broken only by an unknown track collapses too. Ties in `ts` are broken by `event_id`
    so every run builds the same history.
    """
    mapped = recent.select("user_id", "track_id", "ts", "event_id").join(index.select("track_id", "item_idx"), "track_id")
    # One window order for both steps (newest first), so Spark shuffles and sorts the plays once.
    newest_first = Window.partitionBy("user_id").orderBy(F.desc("ts"), F.desc("event_id"))
    if collapse:
        older = F.lead("item_idx").over(newest_first)  # the play just before this one
        mapped = mapped.withColumn("_older", older).where(F.col("_older").isNull() | (F.col("_older") != F.col("item_idx")))
    last = mapped.withColumn("_age", F.row_number().over(newest_first)).where(F.col("_age") <= history_length)
    # Sorting (age, item) pairs descending puts the oldest play first.
    ordered = F.sort_array(F.collect_list(F.struct("_age", "item_idx")), asc=False)
    return last.groupBy("user_id").agg(ordered.getField("item_idx").alias("items"))


# -- what listener_history keeps -----------------------------------------------------------------


def kept_plays(plays: DataFrame, index: DataFrame, history_length: int) -> DataFrame:
    """Rows of LISTENER_HISTORY_SCHEMA from plays (user_id, track_id, ts, event_id, one row per play): per
    listener, every play from the newest play of its `history_length`-th newest run of in-vocabulary
    plays onward (see module docstring), oldest first. One shuffle by listener, as `histories`."""
    known = plays.select(*_PLAY_COLUMNS).join(index.select("track_id", "item_idx"), "track_id", "left")
    # track_id last: a total order, so the cut is the same on every run.
    newest_first = Window.partitionBy("user_id").orderBy(F.desc("ts"), F.desc("event_id"), F.desc("track_id"))
    # The nearest newer in-vocabulary play's item: a run starts (newest first) where it differs.
    newer = F.last("item_idx", ignorenulls=True).over(newest_first.rowsBetween(Window.unboundedPreceding, -1))
    marked = known.withColumn("_newer", newer)
    starts = F.col("item_idx").isNotNull() & (F.col("_newer").isNull() | (F.col("_newer") != F.col("item_idx")))
    marked = marked.withColumn("_starts", starts).withColumn(
        "_runs", F.sum(F.col("_starts").cast("int")).over(newest_first.rowsBetween(Window.unboundedPreceding, 0)))
    kept = marked.where((F.col("_runs") < history_length) | ((F.col("_runs") == history_length) & F.col("_starts")))
    # (ts, event_id, track_id) structs sort oldest first.
    return kept.groupBy("user_id").agg(
        F.max("ts").alias("last_ts"),
        F.array_sort(F.collect_list(F.struct("ts", "event_id", "track_id"))).alias("plays"))


def window_plays(kept: DataFrame, newest_us: int, lookback_days: int) -> DataFrame:
    """The kept plays inside the lookback (user_id, track_id, ts, event_id): what `histories` reads, as
    it read the lookback window of plays_silver, and with the same result."""
    since = _since(newest_us, lookback_days)
    active = kept.where(F.col("last_ts") > since)
    inside = F.filter("plays", lambda p: p["ts"] > since)
    return active.select("user_id", F.explode(inside).alias("p")).select("user_id", "p.track_id", "p.ts", "p.event_id")


# -- the state a commit records --------------------------------------------------------------------


@dataclass(frozen=True)
class Dictionary:
    """The item ids a model knows: 1..items, and a fingerprint of which track each names."""

    items: int
    fingerprint: str


def dictionary_of(index: DataFrame, prefix: int | None = None) -> tuple[Dictionary, str | None]:
    """The index's Dictionary, and the fingerprint of its ids 1..`prefix` (None when not asked): one
    aggregate on the executors. The fingerprint is an xor of row hashes, so row order does not matter."""
    row_hash = F.xxhash64("track_id", "item_idx")
    aggregates = [F.max("item_idx").alias("items"), F.bit_xor(row_hash).alias("all")]
    if prefix is not None:
        aggregates.append(F.bit_xor(F.when(F.col("item_idx") <= prefix, row_hash)).alias("prefix"))
    row = index.agg(*aggregates).first()
    mine = Dictionary(int(row["items"] or 0), str(row["all"] or 0))
    return mine, (str(row["prefix"] or 0) if prefix is not None else None)


@dataclass(frozen=True)
class Folded:
    """What a listener_history commit holds: the ingest_log and plays_silver versions folded in (-1: no
    ingest_log then), the newest play folded in (epoch us), the dictionary the suffixes were cut with,
    and the settings they were cut for."""

    ingest_log_version: int
    plays_silver_version: int
    newest_us: int
    dictionary: Dictionary
    history_length: int
    lookback_days: int

    def words(self) -> dict[str, str]:
        return {"ingest_log_version": str(self.ingest_log_version),
                "plays_silver_version": str(self.plays_silver_version), "newest_us": str(self.newest_us),
                "items": str(self.dictionary.items), "dictionary": self.dictionary.fingerprint,
                "history_length": str(self.history_length), "lookback_days": str(self.lookback_days)}

    @classmethod
    def from_words(cls, words: dict[str, str]) -> Folded | None:
        """The state a commit recorded, or None when it recorded none (or not all of it)."""
        try:
            return cls(int(words["ingest_log_version"]), int(words["plays_silver_version"]), int(words["newest_us"]),
                       Dictionary(int(words["items"]), words["dictionary"]), int(words["history_length"]),
                       int(words["lookback_days"]))
        except (KeyError, ValueError):
            return None


def _previous(commits: list[Commit]) -> tuple[Folded | None, str]:
    """The state of the table's newest commit that wrote rows, or None and why it cannot be continued."""
    for commit in commits:
        if commit.generation is not None:
            folded = Folded.from_words(commit.state)
            return folded, "" if folded else f"its version {commit.version} records no complete state"
        if commit.operation.startswith("CREATE"):
            break
        if commit.operation not in LAYOUT_ONLY:
            return None, f"its version {commit.version} ({commit.operation}) was written by something other than score"
    return None, "it holds no histories yet"


# -- bringing the table up to date ----------------------------------------------------------------


@dataclass(frozen=True)
class Refreshed:
    """The table brought up to date for one scoring run."""

    kept: DataFrame  # the table as this run left it (one snapshot)
    newest_us: int  # the newest play folded in: the lookback ends there
    lookback_days: int
    mode: str  # full | incremental | unchanged
    reason: str | None  # why a full run rebuilt everything
    days: list[date] | None  # the event_date days an incremental run re-read

    @property
    def recent(self) -> DataFrame:
        """The kept plays inside the lookback (user_id, track_id, ts, event_id), for `histories`."""
        return window_plays(self.kept, self.newest_us, self.lookback_days)

    def active_users(self) -> int:
        """Listeners with a play (of any track) in the lookback: one row each."""
        return self.kept.where(F.col("last_ts") > _since(self.newest_us, self.lookback_days)).count()


@dataclass(frozen=True)
class _Inputs:
    """One snapshot of what a refresh reads: ingest_log's version first, so every batch it lists has its
    plays in the plays_silver version read after it."""

    log_version: int  # -1: no ingest_log
    silver: list[Commit]  # plays_silver's history, newest first
    plays: DataFrame  # plays_silver at silver[0].version


def refresh(spark: SparkSession, lake: Lake, index: DataFrame, *, history_length: int, lookback_days: int,
            full: bool = False) -> Refreshed:
    """Bring listener_history up to date with plays_silver for a model whose item index is `index`, and
    return its plays inside the lookback (see module docstring); `full` rebuilds it from the window."""
    log_version = lake.version(spark, INGEST_LOG) if lake.exists(spark, INGEST_LOG) else -1
    silver = lake.commits(spark, PLAYS_SILVER)
    inputs = _Inputs(log_version, silver, lake.read_at(spark, PLAYS_SILVER, silver[0].version))
    if not lake.exists(spark, LISTENER_HISTORY):  # comments and constraints of an existing one: `maintain`
        lake.create_if_missing(spark, LISTENER_HISTORY, LISTENER_HISTORY_SCHEMA)
    commits = lake.commits(spark, LISTENER_HISTORY)
    previous, why = _previous(commits)
    mine, prefix = dictionary_of(index, previous.dictionary.items if previous else None)
    reason = "asked for" if full else _full_reason(previous, why, inputs, mine, prefix, history_length, lookback_days)
    days = None if reason else batch_days(spark, lake, previous.ingest_log_version, log_version)
    if reason is None and days is None:
        reason = (f"a batch logged after ingest_log version {previous.ingest_log_version} has no event dates, "
                  "or that version is no longer readable")

    def state(newest: int) -> Folded:
        return Folded(log_version, silver[0].version, newest, mine, history_length, lookback_days)

    if reason is not None:
        log.info("%s: rebuilding every listener's history from the last %d days: %s", LISTENER_HISTORY, lookback_days,
                 reason)
        now = state(newest_event(inputs.plays))
        rows = kept_plays(recent_plays(inputs.plays, now.newest_us, lookback_days), index, history_length)
        lake.write(rows.select(*[f.name for f in LISTENER_HISTORY_SCHEMA.fields]), LISTENER_HISTORY, mode="overwrite",
                   **generation_options(new_generation(), now.words()))
        mode, version = "full", lake.version(spark, LISTENER_HISTORY)
    elif days:
        now = state(_newest_after(inputs.plays, sorted(days), previous.newest_us))
        _fold(spark, lake, inputs.plays, sorted(days), index, now)
        mode, version = "incremental", lake.version(spark, LISTENER_HISTORY)
    else:
        now, mode, version = previous, "unchanged", commits[0].version
    log.info("%s: %s%s", LISTENER_HISTORY, mode, f" ({len(days)} days re-read)" if mode == "incremental" else "")
    return Refreshed(lake.read_at(spark, LISTENER_HISTORY, version), now.newest_us, lookback_days, mode, reason,
                     sorted(days) if mode == "incremental" else None)


def _newest_after(plays: DataFrame, days: list[date], newest_us: int) -> int:
    """The newest play once `days` are folded in: plays are only added, so only days from the one holding
    `newest_us` on can hold a newer one, and only those are read."""
    newer = [d for d in days if d >= (_EPOCH + timedelta(microseconds=newest_us)).date()]
    if not newer:
        return newest_us
    found = plays.where(F.col("event_date").isin(newer)).agg(F.unix_micros(F.max("ts"))).first()[0]
    return max(newest_us, int(found)) if found is not None else newest_us


def _full_reason(previous: Folded | None, why: str, inputs: _Inputs, dictionary: Dictionary, prefix: str | None,
                 history_length: int, lookback_days: int) -> str | None:
    """Why the table cannot be continued from `previous` (see module docstring), or None when it can."""
    if previous is None:
        return f"{LISTENER_HISTORY} cannot be continued: {why}"
    if inputs.log_version < 0:
        return "no ingest_log: which plays are new is unknown"
    for key, value in (("history_length", history_length), ("lookback_days", lookback_days)):
        if getattr(previous, key) != value:
            return f"score.{key} changed ({getattr(previous, key)} -> {value})"
    if dictionary.items < previous.dictionary.items or prefix != previous.dictionary.fingerprint:
        return (f"the model's {dictionary.items} item ids do not extend the {previous.dictionary.items} the "
                "histories were kept for (an older or another model)")
    folded = previous.plays_silver_version
    if inputs.silver[0].version < folded:
        return f"plays_silver is at version {inputs.silver[0].version}, before the {folded} folded in"
    since = [c for c in inputs.silver if c.version > folded]
    if since and since[-1].version != folded + 1:
        return f"the plays_silver commits after version {folded} are no longer in its history"
    other = [c for c in since if c.operation not in _ADDS_PLAYS]
    if other:
        return (f"plays_silver was changed other than by ingest since version {folded} "
                f"({other[0].operation} at version {other[0].version})")
    return None


def _fold(spark: SparkSession, lake: Lake, plays: DataFrame, days: list[date], index: DataFrame, now: Folded) -> None:
    """Merge the plays of `days` into the table: the touched listeners' suffixes cut again from their kept
    plays and the new ones, listeners whose newest play left the lookback deleted; one commit."""
    lookback, newest = now.lookback_days, now.newest_us
    new = recent_plays(plays.where(F.col("event_date").isin(days)), newest, lookback).select(*_PLAY_COLUMNS)
    table = lake.read(spark, LISTENER_HISTORY)
    stored = window_plays(table.join(new.select("user_id").distinct(), "user_id", "left_semi"), newest, lookback)
    # A play read again (its day re-read, a replayed batch, a kept play) is one play.
    both = new.unionByName(stored).dropDuplicates(list(_PLAY_COLUMNS))
    source = kept_plays(both, index, now.history_length)
    since = f"timestamp_micros({newest - lookback * _DAY_US}L)"
    target = lake.delta_table(spark, LISTENER_HISTORY).alias("t")
    spark.conf.set(_COMMIT_METADATA, generation_options(new_generation(), now.words())["userMetadata"])
    try:
        (target.merge(source.alias("s"), "t.user_id = s.user_id")
         .whenMatchedUpdate(condition="NOT (t.plays <=> s.plays)", set={"last_ts": "s.last_ts", "plays": "s.plays"})
         .whenNotMatchedInsert(values={"user_id": "s.user_id", "last_ts": "s.last_ts", "plays": "s.plays"})
         .whenNotMatchedBySourceDelete(condition=f"t.last_ts <= {since}")
         .execute())
    finally:
        spark.conf.unset(_COMMIT_METADATA)
