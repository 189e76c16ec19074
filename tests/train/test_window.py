"""The training window and the daily mode: a run sees only the sessions of its days."""
from __future__ import annotations

from datetime import timedelta

import pyarrow.parquet as pq
from pyspark.sql import functions as F

from nextplay import tables
from nextplay.config import load_config
from nextplay.storage import local_path
from nextplay.tables import Lake
from nextplay.train.launch import snapshot_training_data
from nextplay.train.loader import iterate_batches
from nextplay.train.window import run_config

from .planted import write_planted_lake


def test_full_mode_trains_as_configured():
    cfg = load_config(None, ["train.epochs=4"])
    assert run_config(cfg, lambda: True) is cfg


def test_daily_mode_starts_from_the_champion_on_the_newest_days():
    cfg = load_config(None, ["train.mode=daily", "train.daily.window_days=2", "train.daily.epochs=1", "train.epochs=5"])
    daily = run_config(cfg, lambda: True)
    assert (daily.train.mode, daily.train.warm_start, daily.train.window_days, daily.train.epochs) == ("daily", "champion", 2, 1)
    assert cfg.train.warm_start is None and cfg.train.epochs == 5  # the given config is left as it was
    # A given model to start from is kept; a resumed run starts from its own checkpoint.
    assert run_config(load_config(None, ["train.mode=daily", "train.warm_start=models:/m/3"]), lambda: True).train.warm_start == "models:/m/3"
    assert run_config(cfg, lambda: True, resumed=True).train.warm_start is None


def test_daily_mode_without_a_champion_trains_in_full_and_says_so(caplog):
    cfg = load_config(None, ["train.mode=daily", "train.epochs=3"])
    first = run_config(cfg, lambda: False)
    assert (first.train.mode, first.train.warm_start, first.train.window_days, first.train.epochs) == ("full", None, None, 3)
    assert "no champion yet" in caplog.text


def test_a_window_reads_only_the_files_and_sessions_of_its_days(spark, cfg):
    write_planted_lake(spark, cfg, n_sessions=600, n_items=600)  # one session an hour: 25 days
    sessions = Lake(cfg.lake).read(spark, tables.SESSIONS)
    newest = sessions.where("split = 'train'").agg(F.max("event_date")).first()[0]
    since = newest - timedelta(days=2)
    expected = sorted(r["items"][0] for r in sessions.where(f"split = 'train' AND event_date >= DATE'{since}'").collect())
    everything, *_ = snapshot_training_data(spark, cfg)

    cfg.train.window_days = 3
    window, *_ = snapshot_training_data(spark, cfg)
    assert 0 < window.n_sessions == len(expected) < everything.n_sessions
    assert len(window.files) < len(everything.files)
    for path in window.files:  # no file of an older day is even listed
        days = pq.read_table(local_path(path), columns=["start_ts"]).column("start_ts").to_pylist()
        assert min(days).date() >= since
    got, it = [], iterate_batches(window, batch_size=16, rank=0, size=1, epoch=0, seed=1)
    for _, batch in zip(range(window.steps_per_epoch(16, 1)), it):
        got += [int(row[0]) for row in batch["items"].numpy()]
    assert sorted(got[: len(expected)]) == expected
