"""Recent listening histories, built in Spark with window functions.

The RNN needs, per user, the last few plays as item indices in time order. Doing the mapping,
the repeat collapse and the truncation here (not in Python) means only short int arrays cross
into the scoring processes, and a user with a million plays costs Spark a sort, not Python a loop.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

_DAY_US = 86_400_000_000


def newest_event(plays: DataFrame) -> int:
    """The latest play time in epoch microseconds: the lookback is relative to the data, so replayed
    or synthetic history works. Microseconds, not a Python datetime, which would pick up the
    driver's local time zone."""
    newest = plays.agg(F.unix_micros(F.max("ts"))).first()[0]
    if newest is None:
        raise ValueError("plays_silver is empty: ingest some plays before scoring")
    return int(newest)


def recent_plays(plays: DataFrame, newest_us: int, lookback_days: int) -> DataFrame:
    """Plays in the `lookback_days` before `newest_us`; the event_date filter prunes partitions."""
    since = F.timestamp_micros(F.lit(newest_us - lookback_days * _DAY_US))
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
