"""The daily cycle: what one more day costs on a lake with a week of history and with four.

A service runs the same cycle every night: ingest the day's plays, sessionize them, train the
model in daily mode (warm from the champion, one pass over the newest day), score every active
listener. Its cost should follow the day, not the history kept. Two lakes with the same audience,
catalog and plays per day, one holding 7 days and one 28, are built the way production builds them
(generate -> ingest -> sessionize -> a first model -> the gate -> a first scoring, not timed), then
one more day runs through the cycle on each, every stage timed.

`daily_28d_over_7d` = cycle seconds at 28 days / at 7. For comparison the same lakes are also timed
training in full mode (every training session, one pass), what a nightly job without a window
costs: `full_retrain_28d_over_7d`. In full mode (1M plays a day, 28M in the larger lake) that retrain
would take hours here, so there it is left out and only its training events are recorded.
"""
from __future__ import annotations

import copy
import time
from typing import Any

from nextplay.config import Config

from bench.context import Bench, log

HISTORIES = (7, 28)


def _lake_config(b: Bench, days: int) -> Config:
    """The bench's configuration, with a lake, a registry and raw folders of its own for `days` of history."""
    cfg = copy.deepcopy(b.cfg)
    root = b.workdir / f"daily-{days}d"
    plays = b.mode.daily_plays
    cfg.lake.root = str(root / "lake")
    cfg.tracking.uri = f"sqlite:///{root / 'mlruns.db'}"
    cfg.tracking.artifact_location = str(root / "mlartifacts")
    cfg.tracking.experiment = f"bench-daily-{days}d"
    cfg.train.checkpoint_dir = str(root / "checkpoints")
    g = cfg.generate
    # The same listeners and tracks in both lakes: only the days kept differ.
    g.events, g.days, g.users, g.tracks = plays * days, days, max(50, plays // 20), b.mode.tracks
    g.artists, g.files, g.format, g.output = min(g.artists, g.tracks), max(1, days // 7), "parquet", str(root / "raw")
    cfg.ingest.input = g.output
    cfg.sessionize.min_item_count = 2
    cfg.train.epochs, cfg.train.daily.epochs, cfg.train.daily.window_days = 1, 1, 1
    cfg.evaluate.max_test_sessions, cfg.evaluate.max_train_sessions = 2_000, 20_000
    cfg.promote.min_gain_over_knn = -1.0  # the bench needs a champion, whatever one pass learned
    return cfg


def _timed(times: dict[str, float], name: str, fn) -> Any:
    started = time.perf_counter()
    out = fn()
    times[name] = round(time.perf_counter() - started, 2)
    log(f"daily: {name} {times[name]:.1f}s")
    return out


def _cycle(b: Bench, days: int, full_retrain: bool) -> dict[str, Any]:
    from nextplay.data.generate import generate
    from nextplay.data.ingest import ingest
    from nextplay.data.sessionize import sessionize
    from nextplay.evaluate.evaluate import evaluate
    from nextplay.pipeline import next_day_config
    from nextplay.score.batch import score
    from nextplay.train.launch import train

    cfg = _lake_config(b, days)
    spark = b.spark
    setup: dict[str, float] = {}
    _timed(setup, "generate", lambda: generate(spark, cfg))
    _timed(setup, "ingest", lambda: ingest(spark, cfg))
    _timed(setup, "sessionize", lambda: sessionize(spark, cfg))
    first = copy.deepcopy(cfg)
    first.train.window_days = 2  # a first champion, cheaply: what it learned does not change the cycle's cost
    trained = _timed(setup, "train", lambda: train(first))
    _timed(setup, "evaluate", lambda: evaluate(cfg, run_id=trained["run_id"]))
    _timed(setup, "score", lambda: score(cfg))

    day = next_day_config(cfg)
    day.train.mode = "daily"
    generate(spark, day)
    cycle: dict[str, float] = {}
    ingested = _timed(cycle, "ingest", lambda: ingest(spark, day))
    recut = _timed(cycle, "sessionize", lambda: sessionize(spark, day))
    daily = _timed(cycle, "train", lambda: train(day))
    scored = _timed(cycle, "score", lambda: score(day))
    out: dict[str, Any] = {
        "days": days, "plays_per_day": b.mode.daily_plays, "setup_seconds": setup, "cycle_seconds": cycle,
        "cycle_total_seconds": round(sum(cycle.values()), 2), "day_plays": ingested.get("rows_silver"),
        "days_recut": recut.get("days_recut"), "daily_train_mode": daily["train_mode"],
        "daily_train_sessions": daily["train_sessions"], "scored_users": scored.get("scored_users"),
    }
    full = copy.deepcopy(day)
    full.train.mode, full.train.window_days = "full", None
    if full_retrain:
        retrained = _timed(out.setdefault("full_retrain_seconds", {}), "train", lambda: train(full))
        out["full_retrain_sessions"] = retrained["train_sessions"]
    else:
        from nextplay.train.launch import snapshot_training_data

        out["full_retrain_sessions"] = snapshot_training_data(spark, full)[0].n_sessions
    return out


def daily_figures(b: Bench) -> dict[str, Any]:
    full_retrain = b.mode.name != "full"
    runs = {days: _cycle(b, days, full_retrain) for days in HISTORIES}
    short, long = (runs[d] for d in HISTORIES)
    b.details["daily"] = {f"{d}d": r for d, r in runs.items()}
    figures = {"daily_28d_over_7d": long["cycle_total_seconds"] / short["cycle_total_seconds"]}
    if full_retrain:
        figures["full_retrain_28d_over_7d"] = (long["full_retrain_seconds"]["train"]
                                               / short["full_retrain_seconds"]["train"])
    log(f"daily: {figures}")
    return figures
