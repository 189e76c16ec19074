"""Batch scoring on a real local Spark + Delta lake, against the tiny registered model."""
from __future__ import annotations

import copy
import os
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from nextplay.config import Config
from nextplay.model.io import load_model
from nextplay.score import batch, history
from nextplay.tables import PLAYS_SILVER, PLAYS_SILVER_SCHEMA, PREDICTIONS, Lake

from .conftest import HISTORY_LENGTH, SESSIONS_VERSION, TOP_K, TinyModel, expected_histories

RUN_COLUMNS = ["scored_at"]  # the only columns allowed to differ between two runs


@pytest.fixture(scope="module")
def lake(spark: SparkSession, tiny: TinyModel) -> Lake:
    lake = Lake(tiny.cfg.lake)
    lake.write(spark.createDataFrame(tiny.plays, PLAYS_SILVER_SCHEMA), PLAYS_SILVER, mode="overwrite")
    return lake


def with_score(tiny: TinyModel, **score: object) -> Config:
    cfg = copy.deepcopy(tiny.cfg)
    for key, value in score.items():
        setattr(cfg.score, key, value)
    return cfg


def partition(spark: SparkSession, lake: Lake, score_date: str) -> pd.DataFrame:
    rows = lake.read(spark, PREDICTIONS).where(F.col("score_date") == score_date).toPandas()
    return rows.sort_values(["user_id", "rank"]).reset_index(drop=True)


def in_process(tiny: TinyModel, *, exclude_seen: bool) -> pd.DataFrame:
    """Every user's top-K from the saved network directly, one user at a time (no padding, no Spark)."""
    rnn = load_model(tiny.rnn_dir)
    by_idx = tiny.item_index.set_index("item_idx")["track_id"]
    rows = []
    hist = expected_histories(tiny.plays, tiny.item_index, history_length=HISTORY_LENGTH, collapse=True)
    for user, items in hist.items():
        s, i = rnn.topk(torch.from_numpy(items[None, :]), torch.tensor([len(items)]), TOP_K, exclude_seen=exclude_seen)
        for rank, (score, idx) in enumerate(zip(s[0].tolist(), i[0].tolist()), start=1):
            rows.append((user, rank, by_idx[idx], idx, score))
    return pd.DataFrame(rows, columns=["user_id", "rank", "track_id", "item_idx", "score"])


@pytest.fixture(scope="module")
def first_run(spark: SparkSession, lake: Lake, tiny: TinyModel) -> dict:
    return batch.score(tiny.cfg)


@pytest.mark.parametrize("collapse", [True, False])
def test_histories_follow_the_contract(spark: SparkSession, lake: Lake, tiny: TinyModel, collapse: bool) -> None:
    plays = lake.read(spark, PLAYS_SILVER)
    recent = history.recent_plays(plays, history.newest_event(plays), tiny.cfg.score.lookback_days)
    index = spark.createDataFrame(tiny.item_index)
    got = {r["user_id"]: list(r["items"]) for r in
           history.histories(recent, index, history_length=HISTORY_LENGTH, collapse=collapse).collect()}
    want = expected_histories(tiny.plays, tiny.item_index, history_length=HISTORY_LENGTH, collapse=collapse)
    assert got == {u: list(h) for u, h in want.items()}
    assert "u_old" not in got and "u_unknown" not in got
    assert got["u_repeat"] == ([5] if collapse else [5, 5])


@pytest.mark.slow
def test_spark_scores_equal_the_model_in_process(spark: SparkSession, lake: Lake, tiny: TinyModel, first_run: dict) -> None:
    got = partition(spark, lake, "2024-04-01")
    want = in_process(tiny, exclude_seen=False)
    assert first_run["scored_users"] == want["user_id"].nunique() and first_run["rows"] == len(want)
    assert first_run["active_users"] == first_run["scored_users"] + 1  # u_unknown: no known track
    pd.testing.assert_frame_equal(got[["user_id", "rank", "track_id", "item_idx"]],
                                  want[["user_id", "rank", "track_id", "item_idx"]], check_dtype=False)
    # Batched float32 vs one row at a time: same ranking, scores equal up to summation order.
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-4, atol=1e-4)
    assert set(got["model_name"]) == {tiny.cfg.tracking.model_name}
    assert set(got["model_version"]) == {tiny.version} and got["scored_at"].nunique() == 1
    assert set(got["sessions_version"]) == {SESSIONS_VERSION} and first_run["sessions_version"] == SESSIONS_VERSION


def test_every_encoder_scores_in_spark_as_in_process(spark: SparkSession, lake: Lake, tiny: TinyModel,
                                                     tiny_each: TinyModel) -> None:
    """The scoring UDF loads and runs whichever encoder the registered model holds."""
    cfg = with_score(tiny, score_date="2024-04-11" if tiny_each is tiny else "2024-04-12")  # a partition each
    cfg.tracking = copy.deepcopy(tiny_each.cfg.tracking)
    batch.score(cfg)
    got = partition(spark, lake, cfg.score.score_date)
    want = in_process(tiny_each, exclude_seen=False)
    pd.testing.assert_frame_equal(got[["user_id", "rank", "track_id", "item_idx"]],
                                  want[["user_id", "rank", "track_id", "item_idx"]], check_dtype=False)
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-4, atol=1e-4)
    assert set(got["model_name"]) == {tiny_each.cfg.tracking.model_name}


@pytest.mark.slow
def test_exclude_played(spark: SparkSession, lake: Lake, tiny: TinyModel) -> None:
    batch.score(with_score(tiny, exclude_played=True, score_date="2024-04-02"))
    got = partition(spark, lake, "2024-04-02")
    want = in_process(tiny, exclude_seen=True)
    pd.testing.assert_frame_equal(got[["user_id", "rank", "track_id"]], want[["user_id", "rank", "track_id"]],
                                  check_dtype=False)
    hist = expected_histories(tiny.plays, tiny.item_index, history_length=HISTORY_LENGTH, collapse=True)
    assert not any(row.item_idx in hist[row.user_id] for row in got.itertuples())


@pytest.mark.slow
def test_rerun_replaces_the_partition_with_the_same_rows(spark: SparkSession, lake: Lake, tiny: TinyModel,
                                                         first_run: dict) -> None:
    before = partition(spark, lake, "2024-04-01")
    others = lake.read(spark, PREDICTIONS).where(F.col("score_date") != "2024-04-01").count()
    again = batch.score(tiny.cfg)
    after = partition(spark, lake, "2024-04-01")
    assert again["rows"] == len(before)
    pd.testing.assert_frame_equal(after.drop(columns=RUN_COLUMNS), before.drop(columns=RUN_COLUMNS))
    assert (after["scored_at"] > before["scored_at"]).all()
    assert lake.read(spark, PREDICTIONS).where(F.col("score_date") != "2024-04-01").count() == others
    last = lake.delta_table(spark, PREDICTIONS).history(1).first()
    assert last["operation"] == "WRITE" and "score_date" in last["operationParameters"]["predicate"]


@pytest.mark.slow
def test_failed_run_leaves_the_previous_partition(spark: SparkSession, lake: Lake, tiny: TinyModel, first_run: dict,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The last scoring task fails after others have written their files: nothing is committed."""
    table = lake.delta_table(spark, PREDICTIONS)
    version = table.history(1).first()["version"]
    before = partition(spark, lake, "2024-04-01")
    files_before = set(Path(lake.path(PREDICTIONS)).rglob("*.parquet"))
    last_task = 2 * spark.sparkContext.defaultParallelism - 1  # score() spreads users over this many tasks
    real = batch.make_scorer

    def failing(*args, **kwargs):
        inner = real(*args, **kwargs)

        def score_partition(batches):
            from pyspark import TaskContext

            if TaskContext.get().partitionId() == last_task:
                raise RuntimeError("injected scoring failure")
            yield from inner(batches)

        return score_partition

    monkeypatch.setattr(batch, "make_scorer", failing)
    with pytest.raises(Exception, match="injected scoring failure"):
        batch.score(tiny.cfg)
    written = set(Path(lake.path(PREDICTIONS)).rglob("*.parquet")) - files_before
    assert written, "the failure should come after some tasks wrote their files"
    assert table.history(1).first()["version"] == version
    pd.testing.assert_frame_equal(partition(spark, lake, "2024-04-01"), before)


@pytest.mark.slow
def test_model_loads_once_per_python_worker(spark: SparkSession, tiny: TinyModel) -> None:
    from nextplay.tracking import configure, resolve_model

    configure(tiny.cfg.tracking)
    model = resolve_model(tiny.cfg.tracking, None)
    shipped, _ = batch.ship_model(spark, model)

    def probe(batches):
        for pdf in batches:
            loaded = batch.load_cached(shipped)
            yield pd.DataFrame({"pid": [os.getpid()] * len(pdf), "model": [id(loaded)] * len(pdf)})

    seen = spark.range(0, 64, numPartitions=16).mapInPandas(probe, "pid long, model long").distinct().collect()
    pids = {r["pid"] for r in seen}
    assert len(seen) == len(pids)  # one model object per worker process, however many tasks it ran


@pytest.mark.slow
def test_workers_never_reuse_a_model_of_another_store(spark: SparkSession, tiny: TinyModel, first_run: dict,
                                                      tmp_path: Path) -> None:
    """Another tracking store's version 1 has the same URI but another catalog: workers that scored
    the tiny model must load this one, or its item indices overrun the old embedding."""
    from nextplay import tracking
    from nextplay.model.io import save_model
    from nextplay.model.session import SessionModel
    from nextplay.model.pyfunc import log_model

    cfg = copy.deepcopy(tiny.cfg)
    cfg.tracking.uri = f"sqlite:///{tmp_path / 'other.db'}"
    cfg.tracking.artifact_location = str(tmp_path / "other-artifacts")
    n_items = len(tiny.item_index) + 7
    index = pd.DataFrame({"track_id": [f"x{i}" for i in range(1, n_items + 1)],
                          "item_idx": np.arange(1, n_items + 1, dtype=np.int32)})
    save_model(SessionModel(n_items, cfg.model), tmp_path / "rnn")
    with tracking.start_run(cfg, run_name="other"):
        info = log_model(str(tmp_path / "rnn"), index, registered_model_name=cfg.tracking.model_name, top_k=TOP_K,
                         collapse_repeats=True)
    tracking.configure(cfg.tracking)
    tracking.set_alias(cfg.tracking.model_name, tracking.CHAMPION, str(info.registered_model_version))
    model = tracking.resolve_model(cfg.tracking, None)
    assert model.uri == f"models:/{tiny.cfg.tracking.model_name}/{tiny.version}"  # the clash under test
    shipped, _ = batch.ship_model(spark, model)

    def probe(batches):
        for pdf in batches:
            yield pd.DataFrame({"n_items": [batch.load_cached(shipped).rnn.n_items] * len(pdf)})

    seen = spark.range(0, 64, numPartitions=16).mapInPandas(probe, "n_items long").distinct().collect()
    assert {r["n_items"] for r in seen} == {n_items}


@pytest.mark.slow
def test_a_model_that_knows_no_recent_track_never_empties_a_partition(spark: SparkSession, lake: Lake, tiny: TinyModel,
                                                                      tmp_path: Path) -> None:
    """A model whose item index matches no track in the lake scores nobody: replacing the day's
    partition with nothing would silently delete it, so scoring refuses unless told otherwise."""
    from nextplay import tracking
    from nextplay.model.io import save_model
    from nextplay.model.session import SessionModel
    from nextplay.model.pyfunc import log_model

    day = "2024-04-02"
    batch.score(with_score(tiny, score_date=day))
    before = partition(spark, lake, day)
    assert len(before) > 0

    cfg = with_score(tiny, score_date=day)
    cfg.tracking.uri = f"sqlite:///{tmp_path / 'foreign.db'}"
    cfg.tracking.artifact_location = str(tmp_path / "foreign-artifacts")
    index = pd.DataFrame({"track_id": [f"elsewhere-{i}" for i in range(1, 11)], "item_idx": np.arange(1, 11, dtype=np.int32)})
    save_model(SessionModel(10, cfg.model), tmp_path / "rnn")
    with tracking.start_run(cfg, run_name="foreign"):
        info = log_model(str(tmp_path / "rnn"), index, registered_model_name=cfg.tracking.model_name, top_k=TOP_K,
                         collapse_repeats=True)
    tracking.set_alias(cfg.tracking.model_name, tracking.CHAMPION, str(info.registered_model_version))

    with pytest.raises(ValueError, match="none of the model's 10 tracks .* score.allow_empty"):
        batch.score(cfg)
    pd.testing.assert_frame_equal(partition(spark, lake, day), before)

    cfg.score.allow_empty = True
    assert batch.score(cfg)["rows"] == 0
    assert partition(spark, lake, day).empty


@pytest.mark.slow
def test_a_predictions_table_of_the_older_schema_gains_sessions_version(spark: SparkSession, tiny: TinyModel,
                                                                       tmp_path: Path) -> None:
    """A lake whose predictions table was written before predictions carried their lineage: scoring
    adds the column (old rows: null) instead of failing on the schema mismatch."""
    from pyspark.sql import types as T

    from nextplay.tables import PREDICTIONS_SCHEMA

    cfg = with_score(tiny, score_date="2024-04-03")
    cfg.lake.root = str(tmp_path / "lake")
    lake = Lake(cfg.lake)
    lake.write(spark.createDataFrame(tiny.plays, PLAYS_SILVER_SCHEMA), PLAYS_SILVER, mode="overwrite")
    older = T.StructType([f for f in PREDICTIONS_SCHEMA.fields if f.name != "sessions_version"])
    lake.create_if_missing(spark, PREDICTIONS, older)
    old_row = [("u_before", 1, "t01", 1, 0.5, "nextplay-rnn", "0", datetime(2024, 3, 1), date(2024, 3, 1))]
    lake.write(spark.createDataFrame(old_row, older), PREDICTIONS)

    result = batch.score(cfg)
    table = lake.read(spark, PREDICTIONS)
    assert [f.name for f in table.schema.fields] == [f.name for f in PREDICTIONS_SCHEMA.fields]
    rows = table.toPandas()
    assert rows.loc[rows["user_id"] == "u_before", "sessions_version"].isna().all()
    new = rows[rows["score_date"].astype(str) == "2024-04-03"]
    assert len(new) == result["rows"] > 0 and set(new["sessions_version"]) == {SESSIONS_VERSION}
