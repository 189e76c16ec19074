"""Sessions and the item index: gap boundaries, midnight, repeats, chunks, the time split, rare items."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pyspark.sql import functions as F

from nextplay.config import load_config
from nextplay.data.sessionize import build_sessions, sessionize
from nextplay.tables import ITEM_INDEX, PLAYS_SILVER, PLAYS_SILVER_SCHEMA, SESSIONS, Lake

T0 = datetime(2025, 1, 10, 10, 0, tzinfo=timezone.utc)
FAR_US = 4_000_000_000_000_000  # split boundaries after every play: all train


def _plays(spark, rows: list[tuple[str, str, datetime]]):
    return spark.createDataFrame(rows, "user_id string, track_id string, ts timestamp")


def _index(spark, tracks: list[str]):
    return spark.createDataFrame([(t, i + 1) for i, t in enumerate(tracks)], "track_id string, item_idx int")


def _sessions(spark, cfg, rows, tracks=("A", "B", "C", "D", "E", "F", "G")) -> list:
    far = F.timestamp_micros(F.lit(FAR_US))
    out = build_sessions(_plays(spark, rows), _index(spark, list(tracks)), cfg.sessionize, far, far)
    return sorted(out.collect(), key=lambda r: (r.user_id, r.start_ts))


def _at(minutes: float, start: datetime = T0) -> datetime:
    return start + timedelta(minutes=minutes)


@pytest.mark.parametrize("method", ["window", "session_window"])
def test_gap_boundaries_and_midnight(spark, cfg, method):
    cfg.sessionize.method = method
    midnight = datetime(2025, 1, 11, tzinfo=timezone.utc)
    rows = [
        # 29 min apart: same session; 31 min: a new one; exactly 30 min: still the same (silence must exceed the gap)
        ("a", "A", _at(0)), ("a", "B", _at(29)), ("a", "C", _at(60)), ("a", "D", _at(61)), ("a", "E", _at(91)),
        # across midnight, 20 min apart: one session, dated by its start
        ("b", "A", _at(-10, midnight)), ("b", "B", _at(10, midnight)), ("b", "C", _at(15, midnight)),
        # every 25 min for two days: one session crossing two midnights
        *[("c", "ABCDEFG"[i % 7], _at(25 * i, midnight - timedelta(hours=1))) for i in range(60 * 24 * 2 // 25)],
    ]
    got = _sessions(spark, cfg, rows)
    a = [r.items for r in got if r.user_id == "a"]
    assert a == [[1, 2], [3, 4, 5]]
    b = [r for r in got if r.user_id == "b"]
    assert [r.items for r in b] == [[1, 2, 3]] and str(b[0].event_date) == "2025-01-10"
    c = [r for r in got if r.user_id == "c"]
    assert len(c) == 1 and c[0].length == 60 * 24 * 2 // 25
    assert all(r.split == "train" and len(r.session_id) == 32 for r in got)


def test_both_methods_give_the_same_sessions(spark, cfg):
    # 80 plays per user, 7..12 min apart, with a 200-min break after every 9th: about 9 sessions each
    rows = [(f"u{u}", "ABCDEFG"[(u * i) % 7], _at(i * (7 + u) + 200 * (i // 9))) for u in range(6) for i in range(80)]
    runs = []
    for method in ("window", "session_window"):
        cfg.sessionize.method = method
        runs.append(_sessions(spark, cfg, rows))
    assert runs[0] == runs[1] and len(runs[0]) > 40


def test_repeats_collapse_after_out_of_vocabulary_plays_are_dropped(spark, cfg):
    rows = [("d", t, _at(i)) for i, t in enumerate(["A", "A", "B", "unknown", "B", "C"])]
    assert [r.items for r in _sessions(spark, cfg, rows)] == [[1, 2, 3]]
    cfg.sessionize.collapse_repeats = False
    assert [r.items for r in _sessions(spark, cfg, rows)] == [[1, 1, 2, 2, 3]]


def test_short_sessions_are_dropped_and_long_ones_cut(spark, cfg):
    cfg.sessionize.max_session_length = 3
    rows = [("e", "A", _at(0)),  # one play
            ("f", "A", _at(0)), ("f", "A", _at(1)),  # one item once repeats collapse
            *[("g", t, _at(i)) for i, t in enumerate("ABCDEFG")]]  # 7 items: chunks of 3, 3 and 1 (dropped)
    got = _sessions(spark, cfg, rows)
    assert [(r.user_id, r.items) for r in got] == [("g", [1, 2, 3]), ("g", [4, 5, 6])]
    assert got[0].session_id != got[1].session_id
    naive_local = lambda dt: dt.astimezone().replace(tzinfo=None)  # how PySpark hands timestamps back  # noqa: E731
    assert (got[0].start_ts, got[0].end_ts, got[1].start_ts) == tuple(map(naive_local, (_at(0), _at(2), _at(3))))


@pytest.fixture(scope="module")
def split_lake(spark, tmp_path_factory):
    """Silver with a known history, sessionized once: last play 2025-01-20 11:40, so test starts 01-19
    11:40 and valid 01-18 11:40 (1 day each); A, B, D have 6 training plays each, C 3 (rare below 5),
    E is played only in the test window."""
    day = lambda d, h: datetime(2025, 1, d, h, tzinfo=timezone.utc)  # noqa: E731
    rows = []
    for d in (10, 11, 12):
        rows += [("u1", "A", day(d, 8)), ("u1", "B", day(d, 8) + timedelta(minutes=3)),
                 ("u2", "A", day(d, 9)), ("u2", "D", day(d, 9) + timedelta(minutes=3)),
                 ("u2", "B", day(d, 9) + timedelta(minutes=6)), ("u2", "D", day(d, 9) + timedelta(minutes=9))]
        rows += [("u3", "C", day(d, 10))]
    rows += [("u1", "A", day(18, 13)), ("u1", "B", day(18, 13) + timedelta(minutes=2))]  # valid
    rows += [("u1", "B", day(19, 11)), ("u1", "A", day(19, 13))]  # two one-play sessions: dropped
    rows += [("u2", "E", day(20, 11)), ("u2", "A", day(20, 11) + timedelta(minutes=1)),  # test
             ("u2", "E", day(20, 11) + timedelta(minutes=2)), ("u2", "B", day(20, 11) + timedelta(minutes=3))]
    rows += [("u4", "E", day(20, 11) + timedelta(minutes=10 * k)) for k in range(5)]
    silver = spark.createDataFrame(
        [(f"e{i}", u, t, ts, None, ts.date()) for i, (u, t, ts) in enumerate(rows)], PLAYS_SILVER_SCHEMA)
    cfg = load_config(None, [f"lake.root={tmp_path_factory.mktemp('split') / 'lake'}"])
    lake = Lake(cfg.lake)
    lake.create_if_missing(spark, PLAYS_SILVER, PLAYS_SILVER_SCHEMA)
    lake.write(silver, PLAYS_SILVER)
    return cfg, sessionize(spark, cfg)


def test_split_by_time_and_vocabulary_from_training_window(spark, split_lake):
    cfg, result = split_lake
    lake = Lake(cfg.lake)
    index = [(r.track_id, r.item_idx, r.play_count) for r in lake.read(spark, ITEM_INDEX).orderBy("item_idx").collect()]
    assert index == [("A", 1, 6), ("B", 2, 6), ("D", 3, 6)]  # ties by track id; C rare, E unseen in training
    sessions = lake.read(spark, SESSIONS).orderBy("start_ts").collect()
    assert [(r.split, r.items) for r in sessions if r.split != "train"] == [("valid", [1, 2]), ("test", [1, 2])]
    assert sum(r.split == "train" for r in sessions) == 6
    assert (result["sessions_train"], result["sessions_valid"], result["sessions_test"], result["items"]) == (6, 1, 1, 3)
    assert result["test_start"].startswith("2025-01-19T11:40")


@pytest.mark.slow
def test_rerun_replaces_the_tables_with_the_same_content(spark, split_lake):
    cfg, _ = split_lake
    lake = Lake(cfg.lake)
    before = sorted(lake.read(spark, SESSIONS).collect()), sorted(lake.read(spark, ITEM_INDEX).collect())
    sessionize(spark, cfg)
    assert (sorted(lake.read(spark, SESSIONS).collect()), sorted(lake.read(spark, ITEM_INDEX).collect())) == before


@pytest.mark.slow
def test_readers_pair_the_two_tables_of_one_sessionize_run(spark, split_lake, tmp_path):
    """Runs interleave: sessionize twice, then a third run that merges its dictionary and fails before
    its sessions. Training still reads the second run's dictionary with its sessions."""
    from nextplay.train.launch import snapshot_training_data

    base, _ = split_lake
    cfg = load_config(None, [f"lake.root={tmp_path / 'lake'}", "sessionize.min_item_count=5"])
    lake = Lake(cfg.lake)
    lake.write(Lake(base.lake).read(spark, PLAYS_SILVER), PLAYS_SILVER, mode="overwrite")
    sessionize(spark, cfg)
    cfg.sessionize.min_item_count = 3  # the second run also counts C (3 plays): 4 items
    sessionize(spark, cfg)
    second = lake.pin_generation(spark)
    # The third run cuts u2's sessions of 4 into chunks of 3, which a constraint the table's rows meet
    # refuses: its dictionary commits are made, its sessions never are.
    cfg.sessionize.max_session_length = 3
    spark.sql(f"ALTER TABLE {lake.name(SESSIONS)} ADD CONSTRAINT refuse_three CHECK (length <> 3)")
    with pytest.raises(Exception, match="refuse_three"):
        sessionize(spark, cfg)
    assert lake.commits(spark, ITEM_INDEX)[0].generation not in (None, second.generation)
    assert lake.read(spark, ITEM_INDEX).count() == 4

    pin = lake.pin_generation(spark)
    assert (pin.generation, pin.item_index_version) == (second.generation, second.item_index_version)
    assert pin.generation is not None
    assert lake.read_at(spark, ITEM_INDEX, pin.item_index_version).count() == 4
    _, n_items, _, _ = snapshot_training_data(spark, cfg)
    assert n_items == 4


def test_sessions_files_run_oldest_first(spark, split_lake):
    """`train.batching=lanes` reads the files by earliest start, each in its own order: that must be
    the sessions' time order."""
    import pyarrow.parquet as pq

    from nextplay.train.loader import time_ordered

    cfg, _ = split_lake
    files = time_ordered(Lake(cfg.lake).read(spark, SESSIONS).inputFiles())
    assert len(files) > 1
    starts = [ts for f in files for ts in pq.read_table(f.removeprefix("file:"), columns=["start_ts"]).column(0).to_pylist()]
    assert starts == sorted(starts)
