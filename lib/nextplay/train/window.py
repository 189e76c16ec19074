"""Which sessions a run trains on, and how the nightly run differs from a full one.

A model that serves every day does not need to relearn thirty days each night: the champion already
holds what they taught it. `train.mode: daily` warm-starts from the champion and trains
`train.daily.epochs` passes over the newest `train.daily.window_days` of the training split, so a
night costs the day rather than the history. `train.window_days` bounds a full run the same way
(sessions of the last N days before validation), for a periodic retrain on a rolling window.

Days are UTC dates of a session's start: the `sessions` table is partitioned by them, so the
window selects whole files and the snapshot never opens the days outside it.
"""
from __future__ import annotations

import copy
import logging
from datetime import date, timedelta
from typing import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from nextplay.config import Config

log = logging.getLogger(__name__)

DAY_COLUMN = "event_date"  # the sessions table's partition column: UTC date of start_ts


def run_config(cfg: Config, champion_exists: Callable[[], bool], resumed: bool = False) -> Config:
    """The configuration a run trains with: `cfg` itself in `full` mode; in `daily` mode a copy whose
    warm start, window and epochs are the daily ones. Without a champion to start from, a daily run
    trains as `full` (the first night of a new lake), says so, and is logged as `train.mode=full`. A
    resumed run keeps its own start (its checkpoint already holds the warm weights), so only the
    window and epochs apply."""
    if cfg.train.mode == "full":
        return cfg
    out = copy.deepcopy(cfg)
    if not resumed and cfg.train.warm_start is None and not champion_exists():
        log.warning("train.mode=daily: %s has no champion yet to start from; training in full mode "
                    "(train.window_days=%s, train.epochs=%d)", cfg.tracking.model_name, cfg.train.window_days,
                    cfg.train.epochs)
        out.train.mode = "full"
        return out
    out.train.window_days = cfg.train.daily.window_days
    out.train.epochs = cfg.train.daily.epochs
    if not resumed and out.train.warm_start is None:
        out.train.warm_start = "champion"
    return out


def window_start(sessions: DataFrame, split: str, days: int | None) -> date | None:
    """The first day of the `days` newest days of `split` in `sessions` (None: no window, or no
    session of that split). The newest day is the split's own last day, not the clock's: a lake
    replayed from old plays has a window too."""
    if days is None:
        return None
    newest = sessions.where(F.col("split") == split).agg(F.max(DAY_COLUMN)).first()[0]
    if newest is None:
        return None
    return newest - timedelta(days=days - 1)


def in_window(sessions: DataFrame, since: date | None) -> DataFrame:
    """`sessions` from day `since` on (every session when None); a partition filter."""
    return sessions if since is None else sessions.where(F.col(DAY_COLUMN) >= F.lit(since))
