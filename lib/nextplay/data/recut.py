"""Which days of `sessions` an incremental sessionize re-cuts, and which plays it reads to cut them.

A session belongs to the UTC day it starts on (`event_date`), and a day's sessions are replaced
whole (`replaceWhere`). The set starts from the days whose plays changed (those of the batches
ingested since the last run) and the days the rolling split boundaries moved across (their
sessions' labels may change, their plays do not). A session that runs across a midnight joins days,
so the set grows:

- across a midnight next to a changed day whenever some listener's session runs across it: that
  session may hold the day's new plays, and its row lives on the day where it starts;
- across a midnight next to any other day of the set only when a session runs across that whole
  day: only such a session can reach changed plays. A session that merely crosses that midnight
  lies in the two days around it, holds none of the new plays and keeps its row.

Without the last rule a nightly run re-cut all of history at a music service's scale: every midnight
is crossed by some listener's session, so "any session crossing the edge" grew the set day by day
to the first play. With it, a night's run re-cuts the new day, the day before it (whose late
sessions continue into the new day) and the days the split moved across.

The cut then reads, besides the days it replaces, the day before and the day after each block of
them (`context`, further while a session spans a whole day): a session crossing the block's edge is
cut whole, and only the rows starting inside the block are written.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

DAY_US = 86_400_000_000
EPOCH = date(1970, 1, 1)


def midnight_us(day: date) -> int:
    return (day - EPOCH).days * DAY_US


def day_of(micros: int) -> date:
    return EPOCH + timedelta(days=micros // DAY_US)


def days_between(first_us: int, last_us: int) -> set[date]:
    """Every UTC day from the one holding `first_us` to the one holding `last_us`."""
    first, last = day_of(first_us), day_of(last_us)
    return {first + timedelta(days=i) for i in range((last - first).days + 1)}


def moved_days(old: tuple[int, int], new: tuple[int, int]) -> set[date]:
    """The days holding a session start whose split label may differ between two pairs of boundaries."""
    days: set[date] = set()
    for a, b in zip(old, new):
        if a != b:
            days |= days_between(min(a, b), max(a, b))
    return days


@dataclass(frozen=True)
class Recut:
    days: set[date]  # the days of `sessions` replaced
    context: set[date]  # days read beside them (the day before each block), never written

    @property
    def read(self) -> set[date]:
        return self.days | self.context


def recut(plays: DataFrame, changed: set[date], relabelled: set[date], gap_us: int) -> Recut:
    """The days to re-cut (module docstring) and the days read beside them, for the days whose plays
    `changed` and those whose sessions' split labels may change (`relabelled`: the days a split
    boundary moved across; their plays are as they were, so they grow the set like an added day)."""
    days, checked = changed | relabelled, set()
    spans: dict[date, bool] = {}  # per day: whether a session runs across all of it

    def spanned(day: date) -> bool:
        if day not in spans:
            spans[day] = _spanned(plays, day, gap_us)
        return spans[day]

    while True:
        # (midnight, the day of the set next to it) for every midnight on the set's edge not yet checked
        edges = {(m, inside) for inside in days for m in (midnight_us(inside), midnight_us(inside + timedelta(days=1)))
                 if (day_of(m - 1) in days) != (day_of(m) in days)} - checked
        if not edges:
            break
        checked |= edges
        beside_seed = {m for m, inside in edges if inside in changed}
        crossed = _crossed_midnights(plays, beside_seed, gap_us) if beside_seed else set()
        crossed |= {m for m, inside in edges if inside not in changed and spanned(inside)}
        for m in crossed:
            days |= days_between(m - 1, m)
    context: set[date] = set()
    for step in (-1, 1):  # the day before each block, and the day after it
        for edge in (d for d in days if d + timedelta(days=step) not in days):
            beyond = edge + timedelta(days=step)
            context.add(beyond)
            while spanned(beyond):  # a session across the whole day: its start lies further
                beyond += timedelta(days=step)
                context.add(beyond)
    return Recut(days, context - days)


def _crossed_midnights(plays: DataFrame, midnights: set[int], gap_us: int) -> set[int]:
    """The midnights (epoch us) some listener's session runs across: consecutive plays a < m <= b with
    b - a <= gap. Both lie within the gap of m, so only those plays are read (by event_date)."""
    spark = plays.sparkSession
    days = set().union(*(days_between(m - gap_us, m + gap_us - 1) for m in midnights))
    edge = plays.where(F.col("event_date").isin(sorted(days))).select("user_id", F.unix_micros("ts").alias("t"))
    marks = F.broadcast(spark.createDataFrame([(m,) for m in sorted(midnights)], "m long"))
    near = edge.join(marks, (F.col("t") >= F.col("m") - gap_us) & (F.col("t") < F.col("m") + gap_us))
    sides = near.groupBy("m", "user_id").agg(F.max(F.when(F.col("t") < F.col("m"), F.col("t"))).alias("before"),
                                             F.min(F.when(F.col("t") >= F.col("m"), F.col("t"))).alias("after"))
    crossed = sides.where(F.col("after") - F.col("before") <= gap_us).select("m").distinct()
    return {int(r["m"]) for r in crossed.collect()}


def _spanned(plays: DataFrame, day: date, gap_us: int) -> bool:
    """Whether some listener's session runs across all of `day`: across both its midnights, with no
    silence longer than the gap in between. Reads the day and the gap on either side of it."""
    start = midnight_us(day)
    end = start + DAY_US
    near = days_between(start - gap_us, end + gap_us - 1)
    t = F.unix_micros("ts")
    window = plays.where(F.col("event_date").isin(sorted(near))).select("user_id", t.alias("t")).where(
        (F.col("t") >= start - gap_us) & (F.col("t") < end + gap_us))
    # The day's plays with the gap's margin on both sides: a session spans the day exactly when some
    # listener has a play before the day, one after it, and no silence over the gap between them.
    ordered = Window.partitionBy("user_id").orderBy("t")
    gaps = window.withColumn("silence", F.col("t") - F.lag("t").over(ordered))
    per_user = gaps.groupBy("user_id").agg(F.min("t").alias("first"), F.max("t").alias("last"),
                                           F.max("silence").alias("longest"))
    spanning = per_user.where((F.col("first") < start) & (F.col("last") >= end)
                              & (F.coalesce(F.col("longest"), F.lit(0)) <= gap_us))
    return spanning.limit(1).count() > 0
