"""Which days the ingested batches touched, from `ingest_log`: what incremental stages re-read.

sessionize re-cuts those days and score folds them into `listener_history`; both ask the same
question of the log between the version they last consumed and the current one.
"""
from __future__ import annotations

import logging
from datetime import date

from pyspark.sql import SparkSession

from nextplay.tables import INGEST_LOG, Lake

log = logging.getLogger(__name__)


def batch_days(spark: SparkSession, lake: Lake, since: int, now: int) -> set[date] | None:
    """Event dates of the batches ingest_log gained after version `since` up to `now` (`since` -1:
    every batch), or None when they are not known: a batch logged without them (an older release), or
    version `since` no longer readable (vacuumed), so the caller must rebuild instead."""
    if now == since:
        return set()
    after = lake.read_at(spark, INGEST_LOG, now)
    if "event_dates" not in after.columns:
        return None
    if since >= 0:
        try:
            before = lake.read_at(spark, INGEST_LOG, since).select("batch_id")
        except Exception as e:  # noqa: BLE001 - Delta answers an expired version with several error types
            log.warning("ingest_log version %d is no longer readable (%s)", since,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            return None
        after = after.join(before, "batch_id", "left_anti")
    rows = after.select("event_dates").collect()  # one row per new batch
    if any(r["event_dates"] is None for r in rows):
        return None
    return {d for r in rows for d in r["event_dates"]}
