"""Recent listening histories, built in Spark with window functions.

The RNN needs, per user, the last few plays as item indices in time order. Doing the mapping,
the repeat collapse and the truncation here (not in Python) means only short int arrays cross
into the scoring processes, and a user with a million plays costs Spark a sort, not Python a loop.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def newest_event(plays: DataFrame) -> datetime:
    """The latest play time: the lookback is relative to the data, so replayed or synthetic history works."""
    newest = plays.agg(F.max("ts")).first()[0]
    if newest is None:
        raise ValueError("plays_silver is empty: ingest some plays before scoring")
    return newest


def recent_plays(plays: DataFrame, newest: datetime, lookback_days: int) -> DataFrame:
    """Plays in the `lookback_days` before `newest`; the event_date filter prunes partitions."""
    since = newest - timedelta(days=lookback_days)
    return plays.where((F.col("event_date") >= F.lit(since.date())) & (F.col("ts") > F.lit(since)))


def histories(recent: DataFrame, index: DataFrame, *, history_length: int, collapse: bool) -> DataFrame:
    """`user_id`, `items` array<int> (oldest first): the last `history_length` in-vocabulary plays.

    Unknown tracks are dropped before repeats are collapsed, the same order as sessionize, so a
    repeat broken only by an unknown track collapses too. Ties in `ts` are broken by `event_id`
    so every run builds the same history.
    """
    mapped = recent.select("user_id", "track_id", "ts", "event_id").join(index.select("track_id", "item_idx"), "track_id")
    if collapse:
        by_time = Window.partitionBy("user_id").orderBy("ts", "event_id")
        mapped = mapped.withColumn("_prev", F.lag("item_idx").over(by_time))
        mapped = mapped.where(F.col("_prev").isNull() | (F.col("_prev") != F.col("item_idx")))
    newest_first = Window.partitionBy("user_id").orderBy(F.desc("ts"), F.desc("event_id"))
    last = mapped.withColumn("_age", F.row_number().over(newest_first)).where(F.col("_age") <= history_length)
    # Sorting (age, item) pairs descending puts the oldest play first.
    ordered = F.sort_array(F.collect_list(F.struct("_age", "item_idx")), asc=False)
    return last.groupBy("user_id").agg(ordered.getField("item_idx").alias("items"))
