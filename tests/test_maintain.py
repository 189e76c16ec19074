"""`nextplay maintain` on real Delta tables: compaction and clustering keep the rows, VACUUM deletes
what the retention allows and no more, and a retention below Delta's safety minimum is refused."""
from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pytest

from nextplay import tables
from nextplay.cli import main
from nextplay.config import ConfigError, load_config
from nextplay.maintain import RETENTION_PROPERTIES, maintain, retention_interval
from nextplay.tables import Lake


def _prediction(user: str, rank: int, day: date) -> tuple:
    row = {"user_id": user, "rank": rank, "track_id": f"t{rank}", "item_idx": rank, "score": -float(rank),
           "model_name": "m", "model_version": "1", "scored_at": datetime(2026, 1, 2, 6), "score_date": day}
    return tuple(row.get(f.name) for f in tables.PREDICTIONS_SCHEMA.fields)


def _score_day(spark, lake: Lake, day: date, users: int, version: str = "1") -> None:
    """What `score` commits: one day replaced in one commit, in several files."""
    rows = [_prediction(f"u{u}", r, day) for u in range(users) for r in (1, 2)]
    df = spark.createDataFrame(rows, tables.PREDICTIONS_SCHEMA).repartition(3)
    lake.write(df, tables.PREDICTIONS, mode="overwrite", replaceWhere=f"score_date = DATE'{day}'")


def _data_files(lake: Lake, table: str) -> set[str]:
    return {p.name for p in Path(lake.path(table)).rglob("*.parquet")}


def _live_files(spark, lake: Lake, table: str, version: int | None = None) -> set[str]:
    from pyspark.sql import functions as F

    df = lake.read(spark, table) if version is None else lake.read_at(spark, table, version)
    return {Path(r.f).name for r in df.select(F.input_file_name().alias("f")).distinct().collect()}


def _rows(df) -> list:
    return sorted(tuple(r) for r in df.collect())


def _lake_with_history(spark, cfg) -> tuple[Lake, list, int]:
    """Predictions for two days, the second replaced: files of version 1 are no longer used."""
    lake = Lake(cfg.lake)
    lake.create_if_missing(spark, tables.PREDICTIONS, tables.PREDICTIONS_SCHEMA)
    _score_day(spark, lake, date(2026, 1, 1), users=4)
    _score_day(spark, lake, date(2026, 1, 2), users=4)
    old_version = lake.commits(spark, tables.PREDICTIONS)[0].version
    old_rows = _rows(lake.read(spark, tables.PREDICTIONS))
    _score_day(spark, lake, date(2026, 1, 2), users=5)
    return lake, old_rows, old_version


@pytest.mark.parametrize("hours", [0, 24, 167])
def test_a_retention_below_deltas_safety_minimum_is_refused_unless_forced(hours: int, capsys) -> None:
    with pytest.raises(ConfigError, match="below Delta's safety minimum of 168 hours.*allow_short_retention"):
        load_config(None, [f"maintenance.retention_hours={hours}"])
    assert main(["maintain", "--set", f"maintenance.retention_hours={hours}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "maintenance.retention_hours" in err
    forced = load_config(None, [f"maintenance.retention_hours={hours}", "maintenance.allow_short_retention=true"])
    assert forced.maintenance.retention_hours == hours
    with pytest.raises(ConfigError, match="must be >= 0"):
        load_config(None, ["maintenance.retention_hours=-1", "maintenance.allow_short_retention=true"])
    assert load_config(None, []).maintenance.retention_hours >= 168


def test_forced_zero_retention_deletes_every_unused_file_and_keeps_the_current_rows(spark, cfg) -> None:
    cfg.maintenance.retention_hours, cfg.maintenance.allow_short_retention = 0, True
    lake, _, old_version = _lake_with_history(spark, cfg)
    current = _rows(lake.read(spark, tables.PREDICTIONS))
    assert _data_files(lake, tables.PREDICTIONS) > _live_files(spark, lake, tables.PREDICTIONS), "old files on disk"

    result = maintain(cfg, spark)["tables"][tables.PREDICTIONS]

    assert result["optimized"]["how"] == "cluster" and result["optimized"]["files_removed"] > 1
    assert result["files_vacuumed"] > 0
    assert _rows(lake.read(spark, tables.PREDICTIONS)) == current
    # What is left on disk is exactly what the current version reads: compacted, the rest deleted.
    assert _data_files(lake, tables.PREDICTIONS) == _live_files(spark, lake, tables.PREDICTIONS)
    with pytest.raises(Exception):
        lake.read_at(spark, tables.PREDICTIONS, old_version).collect()
    props = spark.sql(f"DESCRIBE DETAIL {lake.name(tables.PREDICTIONS)}").first().properties
    assert all(props[p] == retention_interval(0) for p in RETENTION_PROPERTIES)


def test_default_retention_keeps_pinned_versions_readable(spark, cfg) -> None:
    """A training run pins sessions and item_index versions; after maintenance with the default
    retention those versions still read the same rows, and the pin still finds its generation."""
    lake, old_rows, old_version = _lake_with_history(spark, cfg)
    generation = tables.new_generation()
    stamp = tables.generation_options(generation)
    index = spark.createDataFrame([(f"t{i}", i, 10) for i in (1, 2, 3)], tables.ITEM_INDEX_SCHEMA)
    sessions = spark.createDataFrame(
        [("u1", "s1", datetime(2026, 1, 1, 10), datetime(2026, 1, 1, 11), date(2026, 1, 1), [1, 2], 2, "train")],
        tables.SESSIONS_SCHEMA)
    lake.write(index, tables.ITEM_INDEX, mode="overwrite", **stamp)
    lake.write(sessions, tables.SESSIONS, mode="overwrite", **stamp)
    pinned = lake.pin_generation(spark)
    current = _rows(lake.read(spark, tables.PREDICTIONS))

    first = maintain(cfg, spark)
    second = maintain(cfg, spark)

    done = first["tables"]
    assert set(done) == {tables.PREDICTIONS, tables.ITEM_INDEX, tables.SESSIONS}
    assert done[tables.PREDICTIONS]["optimized"]["files_removed"] > 1
    assert done[tables.SESSIONS]["optimized"] is None, "sessionize's layout is left as written"
    assert all(t["files_vacuumed"] == 0 for t in done.values()), "nothing is old enough to delete"
    assert _rows(lake.read(spark, tables.PREDICTIONS)) == current
    assert _rows(lake.read_at(spark, tables.PREDICTIONS, old_version)) == old_rows
    # Maintenance commits change no rows: the newest sessions version still pins the same generation.
    after = lake.pin_generation(spark)
    assert (after.generation, after.item_index_version) == (generation, pinned.item_index_version)
    assert _rows(lake.read_at(spark, tables.SESSIONS, pinned.sessions_version)) == _rows(sessions)
    assert _rows(lake.read_at(spark, tables.SESSIONS, after.sessions_version)) == _rows(sessions)
    for table in done:
        props = spark.sql(f"DESCRIBE DETAIL {lake.name(table)}").first().properties
        assert all(props[p] == retention_interval(720) for p in RETENTION_PROPERTIES), table
    # A second run finds everything in shape: no retention change, nothing to cluster or compact.
    again = second["tables"]
    assert not any(t["retention_set"] or t["upgraded"] for t in again.values())
    assert again[tables.PREDICTIONS]["optimized"]["files_added"] == 0


def test_maintain_on_an_empty_lake_says_so(spark, cfg, capsys) -> None:
    code = main(["maintain", "--lake", cfg.lake.root, "--set", "spark.master=local[2]"])
    assert code == 1
    assert "nothing to maintain" in capsys.readouterr().err
