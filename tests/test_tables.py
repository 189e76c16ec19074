"""The lake's tables: addressing (the default config uses a relative root, `lake`, which must work as a
folder under the current directory, exactly as `make demo` runs it), and what every table says about
itself and refuses, on real Delta tables."""
from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pytest
from pyspark.sql import types as T

from nextplay import tables
from nextplay.config import LakeConfig
from nextplay.tables import Lake


def test_relative_root_resolves_under_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Lake(LakeConfig(root="lake")).path("sessions") == str(tmp_path / "lake" / "sessions")
    assert Lake(LakeConfig(root="s3a://bucket/lake/")).path("sessions") == "s3a://bucket/lake/sessions"
    assert Lake(LakeConfig(root="dbfs:/mnt/lake")).path("sessions") == "dbfs:/mnt/lake/sessions"
    assert Lake(LakeConfig(root="/data/lake")).path("sessions") == "/data/lake/sessions"


def test_tables_are_created_under_a_relative_root(spark, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    lake = Lake(LakeConfig(root="lake"))
    lake.create_if_missing(spark, tables.PLAYS_BRONZE, tables.SCHEMAS[tables.PLAYS_BRONZE])
    assert (tmp_path / "lake" / tables.PLAYS_BRONZE / "_delta_log").is_dir()
    assert _plain(lake.read(spark, tables.PLAYS_BRONZE).schema) == _plain(tables.SCHEMAS[tables.PLAYS_BRONZE])


# -- what the tables say about themselves, and what they refuse ------------------------------------


def _plain(schema: T.StructType) -> list[tuple]:
    return [(f.name, f.dataType.simpleString(), f.nullable) for f in schema.fields]


def test_every_table_and_column_is_described_and_every_constraint_names_real_columns() -> None:
    for table, schema in tables.SCHEMAS.items():
        assert tables.TABLE_COMMENTS[table].strip(), table
        assert set(tables.COLUMN_COMMENTS[table]) == {f.name for f in schema.fields}, table
        assert all(text.strip() for text in tables.COLUMN_COMMENTS[table].values()), table
        for name, expression in tables.CONSTRAINTS.get(table, {}).items():
            assert tables._columns_of(expression) <= {f.name for f in schema.fields}, (table, name)
    assert set(tables.TABLE_COMMENTS) == set(tables.SCHEMAS) == set(tables.ALL_TABLES)
    assert not set(tables.PARTITIONS) & set(tables.CLUSTERING), "Delta cannot partition and cluster one table"


@pytest.fixture(scope="module")
def new_lake(spark, tmp_path_factory) -> Lake:
    """Every table created empty by this release."""
    lake = Lake(LakeConfig(root=str(tmp_path_factory.mktemp("new") / "lake")))
    for table, schema in tables.SCHEMAS.items():
        assert lake.create_if_missing(spark, table, schema) == ["created"]
    return lake


def test_new_tables_carry_comments_constraints_and_their_layout(spark, new_lake: Lake) -> None:
    for table, schema in tables.SCHEMAS.items():
        described = {r.col_name: r.comment for r in spark.sql(f"DESCRIBE TABLE {new_lake.name(table)}").collect()
                     if r.col_name and not r.col_name.startswith("#")}
        for column, text in tables.COLUMN_COMMENTS[table].items():
            assert described[column] == text, (table, column)
        detail = spark.sql(f"DESCRIBE DETAIL {new_lake.name(table)}").first()
        assert detail.description == tables.TABLE_COMMENTS[table]
        assert new_lake.constraints(spark, table) == tables.CONSTRAINTS.get(table, {}), table
        assert detail.partitionColumns == tables.PARTITIONS.get(table, []), table
        assert detail.clusteringColumns == tables.CLUSTERING.get(table, []), table
        assert _plain(new_lake.read(spark, table).schema) == _plain(schema), "NOT NULL columns kept"
    # Bringing an up-to-date table up to date changes nothing and commits nothing.
    before = len(new_lake.commits(spark, tables.SESSIONS))
    assert new_lake.create_if_missing(spark, tables.SESSIONS, tables.SESSIONS_SCHEMA) == []
    assert len(new_lake.commits(spark, tables.SESSIONS)) == before


def _session(**over) -> tuple:
    row = {"user_id": "u1", "session_id": "s1", "start_ts": datetime(2026, 1, 1, 10), "end_ts": datetime(2026, 1, 1, 11),
           "event_date": date(2026, 1, 1), "items": [1, 2, 3], "length": 3, "split": "train", **over}
    return tuple(row[f.name] for f in tables.SESSIONS_SCHEMA.fields)


def _prediction(**over) -> tuple:
    row = {"user_id": "u1", "rank": 1, "track_id": "t1", "item_idx": 1, "score": -0.5, "model_name": "m",
           "model_version": "1", "scored_at": datetime(2026, 1, 2, 6), "score_date": date(2026, 1, 2), **over}
    return tuple(row.get(f.name) for f in tables.PREDICTIONS_SCHEMA.fields)


VIOLATIONS = [
    (tables.PREDICTIONS, "rank_positive", _prediction(rank=0)),
    (tables.SESSIONS, "split_known", _session(split="holdout")),
    (tables.SESSIONS, "length_at_least_two", _session(items=[1], length=1)),
    (tables.SESSIONS, "length_is_item_count", _session(length=2)),
    (tables.PLAYS_SILVER, "ms_played_not_negative", ("e1", "u1", "t1", datetime(2026, 1, 1), -5, date(2026, 1, 1))),
    (tables.ITEM_INDEX, "item_idx_positive", ("t1", 0, 10)),
]


@pytest.mark.parametrize("table, constraint, row", VIOLATIONS, ids=[v[1] for v in VIOLATIONS])
def test_delta_rejects_a_row_that_breaks_a_constraint(spark, new_lake: Lake, table: str, constraint: str,
                                                      row: tuple) -> None:
    """The table defends itself: Delta fails the whole commit, whoever writes, and nothing lands."""
    version = new_lake.commits(spark, table)[0].version
    with pytest.raises(Exception, match=f"DELTA_VIOLATE_CONSTRAINT_WITH_VALUES.*{constraint}"):
        new_lake.write(spark.createDataFrame([row], tables.SCHEMAS[table]), table)
    assert new_lake.commits(spark, table)[0].version == version
    assert new_lake.read(spark, table).count() == 0


def test_rows_that_keep_the_contract_are_written(spark, new_lake: Lake) -> None:
    new_lake.write(spark.createDataFrame([_session(), _session(session_id="s2", items=[4, 4], length=2,
                                                               split="test")], tables.SESSIONS_SCHEMA), tables.SESSIONS)
    new_lake.write(spark.createDataFrame([_prediction(), _prediction(rank=2, item_idx=7)], tables.PREDICTIONS_SCHEMA),
                   tables.PREDICTIONS, mode="overwrite", replaceWhere="score_date = DATE'2026-01-02'")
    assert new_lake.read(spark, tables.SESSIONS).count() == 2
    assert new_lake.read(spark, tables.PREDICTIONS).count() == 2


def test_a_table_of_an_older_release_gains_comments_and_constraints_and_keeps_its_partitioning(spark, tmp_path) -> None:
    """An older release created predictions bare and partitioned by score_date: it is upgraded in place,
    stays partitioned (Delta cannot cluster a partitioned table), and a day is still replaced alone."""
    from delta.tables import DeltaTable

    lake = Lake(LakeConfig(root=str(tmp_path / "lake")))
    plain = T.StructType([T.StructField(f.name, f.dataType, f.nullable) for f in tables.PREDICTIONS_SCHEMA.fields])
    DeltaTable.create(spark).addColumns(plain).location(lake.path(tables.PREDICTIONS)).partitionedBy("score_date").execute()
    for day in (date(2026, 1, 1), date(2026, 1, 2)):
        lake.write(spark.createDataFrame([_prediction(score_date=day)], tables.PREDICTIONS_SCHEMA), tables.PREDICTIONS,
                   mode="overwrite", replaceWhere=f"score_date = DATE'{day}'")

    done = lake.create_if_missing(spark, tables.PREDICTIONS, tables.PREDICTIONS_SCHEMA)
    assert done == ["table comment", f"comments on {', '.join(tables.COLUMN_COMMENTS[tables.PREDICTIONS])}",
                    *(f"constraint {c}" for c in tables.CONSTRAINTS[tables.PREDICTIONS])]
    assert lake.create_if_missing(spark, tables.PREDICTIONS, tables.PREDICTIONS_SCHEMA) == []
    detail = spark.sql(f"DESCRIBE DETAIL {lake.name(tables.PREDICTIONS)}").first()
    assert (detail.partitionColumns, detail.clusteringColumns) == (["score_date"], [])
    assert detail.description == tables.TABLE_COMMENTS[tables.PREDICTIONS]
    assert lake.constraints(spark, tables.PREDICTIONS) == tables.CONSTRAINTS[tables.PREDICTIONS]
    rows = [_prediction(score_date=date(2026, 1, 2), rank=r, user_id="u2") for r in (1, 2, 3)]
    lake.write(spark.createDataFrame(rows, tables.PREDICTIONS_SCHEMA), tables.PREDICTIONS, mode="overwrite",
               replaceWhere="score_date = DATE'2026-01-02'")
    by_day = {r.score_date: r.n for r in lake.read(spark, tables.PREDICTIONS).groupBy("score_date").count()
              .withColumnRenamed("count", "n").collect()}
    assert by_day == {date(2026, 1, 1): 1, date(2026, 1, 2): 3}
    with pytest.raises(Exception, match="DELTA_VIOLATE_CONSTRAINT_WITH_VALUES.*rank_positive"):
        lake.write(spark.createDataFrame([_prediction(rank=0)], tables.PREDICTIONS_SCHEMA), tables.PREDICTIONS)
