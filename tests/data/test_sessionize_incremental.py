"""Daily operation: days ingested one at a time and sessionized incrementally give the tables a full
recompute gives, the item dictionary only ever appends (an id never changes meaning), and a track
entering the dictionary re-cuts no old day (it counts from the days cut after it entered)."""
from __future__ import annotations

import copy
import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from nextplay.config import ConfigError, load_config
from nextplay.data.sessionize import sessionize, split_bounds
from nextplay.tables import ITEM_INDEX, SESSIONS, Lake
from tests.data.conftest import write_text

D0, D1, D2, D3 = "2025-02-28", "2025-03-01", "2025-03-02", "2025-03-03"


def _play(user: str, track: str, day: str, hhmm: str) -> str:
    return json.dumps({"user_id": user, "track_id": track, "ts": f"{day}T{hhmm}:00Z", "ms_played": 1000})


# Three nightly files. Rolling split, 6 hours each for valid and test; min_item_count 2.
BATCHES = {
    "day1.json": [
        # D0: history that no later batch touches (no session of it reaches midnight)
        _play("u0", "A", D0, "12:00"), _play("u0", "B", D0, "12:05"), _play("u0", "A", D0, "12:10"),
        _play("u1", "A", D1, "08:00"), _play("u1", "B", D1, "08:05"), _play("u1", "A", D1, "08:10"),
        _play("u1", "C", D1, "08:15"),
        _play("u2", "A", D1, "09:00"), _play("u2", "B", D1, "09:10"), _play("u2", "X", D1, "09:20"),  # X: once
        _play("u3", "B", D1, "12:00"), _play("u3", "A", D1, "12:10"),
        _play("u5", "A", D1, "22:00"), _play("u5", "B", D1, "22:05"),
        _play("u4", "A", D1, "23:50"),  # continues after midnight, in the next batch
    ],
    "day2.json": [
        _play("u4", "B", D2, "00:10"), _play("u4", "C", D2, "00:20"),
        _play("u2", "X", D2, "07:00"), _play("u2", "A", D2, "07:05"),  # X's second play: X enters
        _play("u6", "C", D2, "10:00"), _play("u6", "D", D2, "10:05"), _play("u6", "C", D2, "10:10"),
        _play("u7", "A", D2, "20:00"), _play("u7", "D", D2, "20:10"),
        _play("u8", "B", D2, "23:55"),  # continues after midnight, in the next batch
    ],
    "day3.json": [
        _play("u8", "A", D3, "00:05"),
        _play("u3", "C", D1, "12:20"),  # a late play of day 1, inside u3's session there
        _play("u9", "D", D3, "09:00"), _play("u9", "E", D3, "09:10"), _play("u9", "D", D3, "09:20"),
        _play("u10", "A", D3, "21:00"), _play("u10", "B", D3, "21:30"),
    ],
}


def _configure(cfg, root: Path):
    cfg = copy.deepcopy(cfg)
    cfg.lake.root = str(root)
    cfg.sessionize.min_item_count = 2
    cfg.sessionize.valid_days = cfg.sessionize.test_days = 0.25
    return cfg


def _tables(spark, cfg) -> tuple[set, set]:
    lake = Lake(cfg.lake)
    return ({tuple(r) for r in lake.read(spark, ITEM_INDEX).collect()},
            {(r.user_id, r.session_id, r.start_ts, r.end_ts, r.event_date, tuple(r.items), r.length, r.split)
             for r in lake.read(spark, SESSIONS).collect()})


def _ingest(spark, cfg, path: Path) -> dict:
    from nextplay.data.ingest import ingest

    cfg.ingest.input, cfg.ingest.format = str(path), "json"
    return ingest(spark, cfg)


@pytest.mark.slow
def test_days_one_by_one_equal_a_full_recompute_and_ids_never_change(spark, cfg, tmp_path):
    daily = _configure(cfg, tmp_path / "daily")
    raw = tmp_path / "raw"
    pairs, results = [], []
    for name, lines in BATCHES.items():
        _ingest(spark, daily, write_text(raw / name, lines))
        results.append(sessionize(spark, daily))
        index, _ = _tables(spark, daily)
        pairs.append({(t, i) for t, i, _ in index})

    # Stable ids: every (track, id) pair of a run is kept by the next; new tracks above the old max; dense.
    for before, after in zip(pairs, pairs[1:]):
        assert before <= after
        assert min(i for _, i in after - before) > max(i for _, i in before)
    assert sorted(i for _, i in pairs[-1]) == list(range(1, len(pairs[-1]) + 1))
    assert pairs[0] == {("A", 1), ("B", 2)}
    assert pairs[-1] == {("A", 1), ("B", 2), ("C", 3), ("X", 4), ("D", 5)}  # C and X entered with day 2, D day 3

    # Only the changed days were re-cut: never D0 after the first run.
    assert [r["mode"] for r in results] == ["full", "incremental", "incremental"]
    assert (results[1]["days_recut"], results[1]["first_recut_day"]) == (2, D1)
    assert (results[2]["days_recut"], results[2]["first_recut_day"], results[2]["last_recut_day"]) == (3, D1, D3)

    # A full recompute of the same plays, in a fresh lake, in one run.
    full = _configure(cfg, tmp_path / "full")
    _ingest(spark, full, raw)
    sessionize(spark, full)
    daily_tables, full_tables = _tables(spark, daily), _tables(spark, full)
    assert daily_tables[0] == full_tables[0]
    assert daily_tables[1] == full_tables[1]
    sessions = {(s[0], s[4].isoformat()): s[5] for s in daily_tables[1]}
    assert sessions[("u4", D1)] == (1, 2, 3)  # across midnight: A on day 1, B and C on day 2
    assert sessions[("u8", D2)] == (2, 1)
    assert sessions[("u3", D1)] == (2, 1, 3)  # with the late play
    assert sessions[("u2", D1)] == (1, 2, 4)  # X's day-1 play carries its id once X entered

    # Nothing new: nothing is committed. --full on the same plays changes no row and no id.
    lake = Lake(daily.lake)
    version = lake.version(spark, SESSIONS), lake.version(spark, ITEM_INDEX)
    assert sessionize(spark, daily)["mode"] == "unchanged"
    assert (lake.version(spark, SESSIONS), lake.version(spark, ITEM_INDEX)) == version
    rebuilt = sessionize(spark, daily, full=True)
    assert rebuilt["mode"] == "full" and rebuilt["new_items"] == 0
    assert _tables(spark, daily) == daily_tables
    pin = lake.pin_generation(spark)
    assert pin.generation == rebuilt["generation"] and pin.item_index_version == lake.version(spark, ITEM_INDEX)


@pytest.mark.slow
def test_a_run_that_died_after_its_dictionary_merge_is_made_whole(spark, cfg, tmp_path):
    """Fixed split dates (the boundaries never move). The second run merges C, X and D into the
    dictionary and dies before its sessions; the next run continues from the first and re-cuts the
    days of every batch since (and day 1, which a session crosses midnight from): the tables equal a
    full recompute."""
    daily = _configure(cfg, tmp_path / "daily")
    daily.sessionize.valid_start, daily.sessionize.test_start = "2025-03-05", "2025-03-06"
    raw, lake = tmp_path / "raw", Lake(daily.lake)
    _ingest(spark, daily, write_text(raw / "day1.json", BATCHES["day1.json"]))
    sessionize(spark, daily)
    _ingest(spark, daily, write_text(raw / "day2.json", BATCHES["day2.json"]))
    # Holds for the first run's rows, not for the second's (day 2): the sessions commit fails.
    spark.sql(f"ALTER TABLE {lake.name(SESSIONS)} ADD CONSTRAINT refuse_day2 CHECK (event_date < DATE'{D2}')")
    with pytest.raises(Exception, match="refuse_day2"):
        sessionize(spark, daily)
    assert lake.read(spark, ITEM_INDEX).count() == 5  # merged, while sessions kept the first run's rows
    spark.sql(f"ALTER TABLE {lake.name(SESSIONS)} DROP CONSTRAINT refuse_day2")
    again = sessionize(spark, daily)
    assert (again["mode"], again["new_items"], again["first_recut_day"]) == ("incremental", 0, D1)

    full = _configure(cfg, tmp_path / "full")
    full.sessionize.valid_start, full.sessionize.test_start = daily.sessionize.valid_start, daily.sessionize.test_start
    _ingest(spark, full, raw)
    sessionize(spark, full)
    assert _tables(spark, daily) == _tables(spark, full)


@pytest.mark.slow
def test_a_track_entering_the_dictionary_re_cuts_no_old_day(spark, cfg, tmp_path):
    """Y is played once on day 0 and again on day 3, where it enters: only day 3 is re-cut, day 0
    keeps Y's play as an unknown track's, and `--full` gives it Y's id there too."""
    daily = _configure(cfg, tmp_path / "daily")
    daily.sessionize.valid_start, daily.sessionize.test_start = "2025-03-05", "2025-03-06"  # every play trains
    raw = tmp_path / "raw"
    _ingest(spark, daily, write_text(raw / "day0.json", [
        _play("u0", "A", D0, "12:00"), _play("u0", "B", D0, "12:05"), _play("u0", "A", D0, "12:10"),
        _play("u11", "A", D0, "15:00"), _play("u11", "Y", D0, "15:05"), _play("u11", "B", D0, "15:10")]))
    first = sessionize(spark, daily)
    _ingest(spark, daily, write_text(raw / "day3.json", [_play("u12", "Y", D3, "10:00"), _play("u12", "B", D3, "10:05")]))
    second = sessionize(spark, daily)

    assert (first["mode"], second["mode"], second["new_items"]) == ("full", "incremental", 1)
    assert (second["days_recut"], second["first_recut_day"], second["last_recut_day"]) == (1, D3, D3)
    index, sessions = _tables(spark, daily)
    y = next(i for t, i, _ in index if t == "Y")
    by_user = {(s[0], s[4].isoformat()): s[5] for s in sessions}
    assert by_user[("u12", D3)] == (y, 2)
    assert by_user[("u11", D0)] == (1, 2), "day 0 was not re-cut: Y's play there stays unknown"
    rebuilt = sessionize(spark, daily, full=True)
    assert rebuilt["new_items"] == 0
    assert {(s[0], s[4].isoformat()): s[5] for s in _tables(spark, daily)[1]}[("u11", D0)] == (1, y, 2)


def _every_minutes(user: str, first: datetime, last: datetime, minutes: int) -> list[str]:
    plays, t, k = [], first, 0
    while t <= last:
        plays.append(json.dumps({"user_id": user, "track_id": "AB"[k % 2], "ts": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 "ms_played": 1000}))
        t, k = t + timedelta(minutes=minutes), k + 1
    return plays


@pytest.mark.slow
def test_a_new_day_re_cuts_only_the_days_its_sessions_reach(spark, cfg, tmp_path):
    """Every midnight of the history is crossed by some listener's session (as at any real scale), so
    growing the set by "any session across its edge" would re-cut every day. A new day re-cuts
    itself, the day its overnight sessions started on, and further back only through a session that
    runs across a whole day (a listener on the radio all of day 2, chunked at max_session_length)."""
    daily = _configure(cfg, tmp_path / "daily")
    daily.sessionize.valid_start, daily.sessionize.test_start = "2025-04-01", "2025-04-02"  # the split never moves
    daily.sessionize.max_session_length = 20
    raw = tmp_path / "raw"
    history = [date(2025, 2, 24) + timedelta(days=i) for i in range(7)]  # day 0 .. day 6
    owls = [p for i, d in enumerate(history[1:]) for p in _every_minutes(
        f"owl{i}", datetime.combine(d, datetime.min.time()) - timedelta(minutes=15), datetime.combine(d, datetime.min.time())
        + timedelta(minutes=15), 10)]  # a session across every midnight of the history
    day = {d: datetime.combine(d, datetime.min.time()) for d in history}
    radio = _every_minutes("radio", day[history[4]] + timedelta(hours=23), day[history[6]] - timedelta(minutes=5), 20)
    _ingest(spark, daily, write_text(raw / "history.json", owls + radio))
    first = sessionize(spark, daily)
    new_day = history[6]
    _ingest(spark, daily, write_text(raw / "day6.json", _every_minutes("radio", day[new_day] + timedelta(minutes=10),
                                                                       day[new_day] + timedelta(minutes=40), 10)
                                     + _every_minutes("late", day[new_day] + timedelta(hours=12), day[new_day] + timedelta(hours=13), 10)))
    second = sessionize(spark, daily)
    # The radio's session started on day 4 and runs across day 5 into day 6: days 4, 5 and 6, not 0 .. 3.
    assert (first["mode"], second["mode"]) == ("full", "incremental")
    assert (second["days_recut"], second["first_recut_day"], second["last_recut_day"]) == (
        3, history[4].isoformat(), new_day.isoformat())

    full = _configure(cfg, tmp_path / "full")
    full.sessionize.valid_start, full.sessionize.test_start = daily.sessionize.valid_start, daily.sessionize.test_start
    full.sessionize.max_session_length = 20
    _ingest(spark, full, raw)
    sessionize(spark, full)
    daily_tables, full_tables = _tables(spark, daily), _tables(spark, full)
    assert daily_tables == full_tables
    radio_rows = sorted((s[2], s[6]) for s in daily_tables[1] if s[0] == "radio")
    assert len(radio_rows) > 3 and {r[0].date() for r in radio_rows} >= {history[4], history[5]}, "chunks on both days"


def test_split_dates_fix_the_boundaries(cfg):
    cfg = load_config(None, ["sessionize.valid_start=2025-03-02", "sessionize.test_start=2025-03-03"])
    day_us = 86_400_000_000
    start = (date(2025, 3, 2) - date(1970, 1, 1)).days * day_us
    assert split_bounds(cfg.sessionize, 10**18) == (start, start + day_us)  # the newest play plays no part
    rolling = load_config(None, ["sessionize.valid_days=1", "sessionize.test_days=0.5"]).sessionize
    assert split_bounds(rolling, 10 * day_us) == (8.5 * day_us, 9.5 * day_us)


@pytest.mark.parametrize("overrides, message", [
    (["sessionize.valid_start=2025-03-02"], "set both"),
    (["sessionize.valid_start=2025-03-04", "sessionize.test_start=2025-03-03"], "must not be after"),
    (["sessionize.valid_start=yesterday", "sessionize.test_start=2025-03-03"], "expected a date"),
])
def test_split_dates_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
