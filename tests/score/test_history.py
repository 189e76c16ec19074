"""listener_history kept day by day: after every ingested batch the histories built from the table equal
a rebuild from the whole lookback window of plays_silver (what scoring did before the table), for both
repeat settings, through late plays, a repeat across midnight, a replayed play, a track the model learns
later and listeners who go quiet; a run with nothing new commits nothing; and `score` ranks from the
table exactly as from the window."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from nextplay.config import Config
from nextplay.score import batch, history
from nextplay.tables import LISTENER_HISTORY, PLAYS_SILVER, PREDICTIONS, Lake
from tests.data.conftest import write_text

from .conftest import TinyModel

LENGTH, LOOKBACK = 3, 2  # score.history_length, score.lookback_days of the scenario
TRACKS = ["A", "B", "C", "D", "E", "F"]  # what the first model knows; X it learns later


def _play(user: str, track: str, when: str, event: str) -> str:
    return json.dumps({"user_id": user, "track_id": track, "ts": f"2025-03-{when}:00Z", "event_id": event,
                       "ms_played": 1000})


def _day(user: str, day: str, *plays: tuple[str, str]) -> list[str]:
    """`user`'s plays of one day: (track, hh:mm) pairs; event ids from the user and the time."""
    return [_play(user, track, f"{day}T{hhmm}", f"{user}-{day}-{hhmm}") for track, hhmm in plays]


# Four nightly files (named for the day they land). The cut keeps 3 runs a listener, and the lookback is
# 2 days before the newest play: after day03.json that is from 03-01 14:00, after day05.json 03-03 12:00.
BATCHES = {
    "day01.json": [
        # Runs newest first E, D, C, B (the X between the Bs is unknown), A: the table keeps D D E and C.
        *_day("u_long", "01", ("A", "18:00"), ("A", "18:02"), ("B", "18:04"), ("X", "18:06"), ("B", "18:08"),
              ("C", "18:10"), ("D", "18:12"), ("D", "18:14"), ("E", "18:16")),
        *_day("u_rep", "01", ("A", "22:00"), ("B", "23:50")),
        *_day("u_quiet", "01", ("F", "17:00"), ("A", "17:05")),
        # One run while X is unknown: every play is kept, so a model that knows X finds X A X A.
        *_day("u_x", "01", ("X", "15:00"), ("A", "15:01"), ("X", "15:02"), ("A", "15:03")),
        # Equal times: the event id orders them.
        _play("u_tie", "C", "01T16:00", "u_tie-2"), _play("u_tie", "D", "01T16:00", "u_tie-1"),
        _play("u_tie", "E", "01T16:00", "u_tie-3"),
    ],
    "day02.json": [
        *_day("u_rep", "02", ("B", "00:05"), ("C", "00:10")),  # B B across midnight: one run
        *_day("u_long", "02", ("F", "09:00")),  # the cut moves to the newer D
        *_day("u_two", "02", ("A", "10:00"), ("B", "10:05")),
    ],
    "day03.json": [
        # Late plays of day 1: inside u_long's kept plays (A between D and E), older than them (B between
        # the As), and one between u_rep's two Bs, which splits that run.
        *_day("u_long", "01", ("A", "18:15"), ("B", "18:01")),
        *_day("u_rep", "01", ("C", "23:55")),
        _day("u_two", "02", ("A", "10:00"))[0],  # a play of day 2 sent again: silver holds it already
        *_day("u_three", "03", ("D", "10:00"), ("E", "10:10")),
        *_day("u_four", "03", ("A", "13:00"), ("B", "13:30")),
        *_day("u_five", "03", ("C", "14:00")),
    ],
    "day05.json": [
        # Two days on, only u_four and u_five have plays left in the lookback, and u_x a new one.
        *_day("u_x", "05", ("X", "12:00")),
        *_day("u_four", "05", ("B", "10:00")),
    ],
}


@dataclass
class Step:
    name: str
    refreshed: history.Refreshed
    version: int  # listener_history's version after the step
    got: dict[bool, dict[str, list[int]]] = field(default_factory=dict)  # collapse -> user -> items
    want: dict[bool, dict[str, list[int]]] = field(default_factory=dict)
    active: tuple[int, int] = (0, 0)  # (from the table, from the window)


def _items(hist: DataFrame) -> dict[str, list[int]]:
    return {r["user_id"]: list(r["items"]) for r in hist.collect()}


def _index(spark: SparkSession, tracks: list[str]) -> DataFrame:
    return spark.createDataFrame([(t, i) for i, t in enumerate(tracks, start=1)], "track_id string, item_idx int")


class Scenario:
    """A lake of its own, fed one batch at a time with the real ingest."""

    def __init__(self, spark: SparkSession, cfg: Config, root: Path) -> None:
        self.spark, self.cfg, self.root = spark, copy.deepcopy(cfg), root
        self.cfg.lake.root = str(root / "lake")
        self.lake = Lake(self.cfg.lake)
        self.steps: dict[str, Step] = {}

    def ingest(self, name: str, lines: list[str]) -> None:
        from nextplay.data.ingest import ingest

        self.cfg.ingest.input, self.cfg.ingest.format = str(write_text(self.root / "raw" / name, lines)), "json"
        ingest(self.spark, self.cfg)

    def step(self, name: str, index: DataFrame, **settings: int) -> Step:
        """Refresh the table, then build every history from it and, as before the table, from the window."""
        length, lookback = settings.get("history_length", LENGTH), settings.get("lookback_days", LOOKBACK)
        refreshed = history.refresh(self.spark, self.lake, index, history_length=length, lookback_days=lookback)
        plays = self.lake.read(self.spark, PLAYS_SILVER)
        window = history.recent_plays(plays, history.newest_event(plays), lookback)
        step = Step(name, refreshed, self.lake.version(self.spark, LISTENER_HISTORY))
        for collapse in (True, False):
            step.got[collapse] = _items(history.histories(refreshed.recent, index, history_length=length,
                                                          collapse=collapse))
            step.want[collapse] = _items(history.histories(window, index, history_length=length, collapse=collapse))
        step.active = (refreshed.active_users(), window.select("user_id").distinct().count())
        self.steps[name] = step
        return step

    def kept_users(self) -> set[str]:
        return {r["user_id"] for r in self.lake.read(self.spark, LISTENER_HISTORY).select("user_id").collect()}


@pytest.fixture(scope="module")
def scenario(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    from nextplay.config import load_config

    cfg = load_config(None, ["spark.master=local[2]", "spark.shuffle_partitions=4"])
    s = Scenario(spark, cfg, tmp_path_factory.mktemp("history"))
    first, later = _index(spark, TRACKS), _index(spark, TRACKS + ["X"])
    for name, lines in BATCHES.items():
        s.ingest(name, lines)
        if name == "day05.json":
            s.users_before_day5 = s.kept_users()
        s.step(name, later if name == "day05.json" else first)
        if name == "day03.json":
            s.step("model learns X", later)  # a new model: no new batch, the table is not touched
    s.step("rerun", later)
    s.users_after = s.kept_users()
    s.spark.sql(f"DELETE FROM {s.lake.name(PLAYS_SILVER)} WHERE user_id = 'u_four'")  # a listener's plays removed
    s.step("after a delete", later)
    return s


@pytest.mark.slow
def test_every_day_the_table_gives_the_histories_of_a_full_rebuild(scenario: Scenario) -> None:
    for name, step in scenario.steps.items():
        for collapse in (True, False):
            assert step.got[collapse] == step.want[collapse], (name, collapse)
        assert step.active[0] == step.active[1], name
    modes = {name: step.refreshed.mode for name, step in scenario.steps.items()}
    assert modes == {"day01.json": "full", "day02.json": "incremental", "day03.json": "incremental",
                     "model learns X": "unchanged", "day05.json": "incremental", "rerun": "unchanged",
                     "after a delete": "full"}
    # Late plays re-read their own day only: day03.json holds plays of days 1, 2 and 3.
    assert [str(d) for d in scenario.steps["day03.json"].refreshed.days] == ["2025-03-01", "2025-03-02", "2025-03-03"]


@pytest.mark.slow
def test_the_cases_the_scenario_is_built_for_happen(scenario: Scenario) -> None:
    """What the equality above is made of, so it cannot pass for want of cases."""
    day2, day3 = scenario.steps["day02.json"].want, scenario.steps["day03.json"].want
    learned, day5 = scenario.steps["model learns X"].want, scenario.steps["day05.json"].want
    assert day2[True]["u_rep"] == [1, 2, 3] and day2[False]["u_rep"] == [2, 2, 3]  # A B|B C: B B is one run
    assert day3[True]["u_rep"] == [3, 2, 3]  # the late C split B B
    assert day3[True]["u_long"] == [1, 5, 6]  # the late A between D and E; the late B is too old to count
    assert day3[True]["u_tie"] == [4, 3, 5]  # equal times ordered by event id
    assert day3[True]["u_x"] == [1] and learned[True]["u_x"] == [1, 7, 1]  # X A X A once X is known
    assert day5[True] == {"u_x": [7], "u_four": [1, 2], "u_five": [3]}
    assert [str(d) for d in scenario.steps["day02.json"].refreshed.days] == ["2025-03-02"]


@pytest.mark.slow
def test_listeners_gone_quiet_leave_the_table(scenario: Scenario) -> None:
    assert {"u_long", "u_rep", "u_quiet", "u_three"} <= scenario.users_before_day5
    assert scenario.users_after == {"u_x", "u_four", "u_five"}  # u_five untouched by day 5, still in the lookback


@pytest.mark.slow
def test_a_run_with_nothing_new_commits_nothing(scenario: Scenario) -> None:
    steps = scenario.steps
    assert steps["rerun"].version == steps["day05.json"].version
    assert steps["model learns X"].version == steps["day03.json"].version


@pytest.mark.slow
def test_a_change_to_silver_other_than_ingest_rebuilds_everything(scenario: Scenario) -> None:
    step = scenario.steps["after a delete"]
    assert "plays_silver was changed other than by ingest" in step.refreshed.reason
    assert "DELETE" in step.refreshed.reason
    assert "u_four" not in step.got[True] and "u_four" not in scenario.kept_users()


@pytest.mark.slow
def test_other_settings_or_a_smaller_dictionary_rebuild_everything(scenario: Scenario) -> None:
    spark = scenario.spark
    longer = history.refresh(spark, scenario.lake, _index(spark, TRACKS + ["X"]), history_length=LENGTH + 1,
                             lookback_days=LOOKBACK)
    assert longer.mode == "full" and "score.history_length changed (3 -> 4)" in longer.reason
    older = history.refresh(spark, scenario.lake, _index(spark, TRACKS), history_length=LENGTH + 1,
                            lookback_days=LOOKBACK)
    assert older.mode == "full" and "the model's 6 item ids do not extend the 7" in older.reason
    renumbered = history.refresh(spark, scenario.lake, _index(spark, list(reversed(TRACKS))), history_length=LENGTH + 1,
                                 lookback_days=LOOKBACK)
    assert renumbered.mode == "full" and "do not extend" in renumbered.reason


# -- scoring reads the table ------------------------------------------------------------------------


@pytest.mark.slow
def test_scoring_from_the_kept_table_ranks_as_from_the_window(spark: SparkSession, tiny: TinyModel,
                                                              tmp_path: Path) -> None:
    """The tiny lake ingested in two batches, scored after each: the second run folds in the last day
    and ranks exactly what the window of all plays gives (the in-process reference of test_batch)."""
    from .test_batch import in_process, partition

    cfg = copy.deepcopy(tiny.cfg)
    cfg.lake.root = str(tmp_path / "lake")
    lake = Lake(cfg.lake)
    plays = tiny.plays.assign(ts=tiny.plays["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    last_day = tiny.plays["ts"].dt.date == tiny.plays["ts"].max().date()
    for name, part in (("older.json", plays[~last_day]), ("last.json", plays[last_day])):
        lines = [json.dumps(r) for r in part[["event_id", "user_id", "track_id", "ts", "ms_played"]].to_dict("records")]
        cfg.ingest.input, cfg.ingest.format = str(write_text(tmp_path / "raw" / name, lines)), "json"
        from nextplay.data.ingest import ingest

        ingest(spark, cfg)
        result = batch.score(cfg)
    assert result["histories"] == "incremental" and result["histories_days_read"] == 1
    got = partition(spark, lake, cfg.score.score_date)
    want = in_process(tiny, exclude_seen=False)
    pd.testing.assert_frame_equal(got[["user_id", "rank", "track_id", "item_idx"]],
                                  want[["user_id", "rank", "track_id", "item_idx"]], check_dtype=False)
    assert result["active_users"] == result["scored_users"] + 1  # u_unknown: no known track
    assert "u_old" not in set(lake.read(spark, LISTENER_HISTORY).select("user_id").toPandas()["user_id"])
    assert lake.read(spark, PREDICTIONS).where(F.col("user_id") == "u_old").isEmpty()
