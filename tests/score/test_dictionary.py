"""A model and the lake's append-only item dictionary: scoring after sessionize added tracks ranks only
the tracks the model knows, under the ids the lake gives them; a lake that numbers them otherwise is
refused."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from nextplay.data.sessionize import sessionize
from nextplay.score import batch
from nextplay.tables import ITEM_INDEX, ITEM_INDEX_SCHEMA, PLAYS_SILVER, PLAYS_SILVER_SCHEMA, PREDICTIONS, Lake

from .conftest import N_TRACKS, TinyModel


def _lake_of(spark: SparkSession, tiny: TinyModel, root: Path, index_rows: list[tuple[str, int, int]]):
    cfg = copy.deepcopy(tiny.cfg)
    cfg.lake.root = str(root)
    lake = Lake(cfg.lake)
    lake.write(spark.createDataFrame(tiny.plays, PLAYS_SILVER_SCHEMA), PLAYS_SILVER, mode="overwrite")
    lake.create_if_missing(spark, ITEM_INDEX, ITEM_INDEX_SCHEMA)
    lake.write(spark.createDataFrame(index_rows, ITEM_INDEX_SCHEMA), ITEM_INDEX, mode="append")
    return cfg, lake


def _model_dictionary(tiny: TinyModel) -> list[tuple[str, int, int]]:
    return [(r.track_id, int(r.item_idx), int(r.play_count)) for r in tiny.item_index.itertuples()]


@pytest.mark.slow
def test_score_after_sessionize_added_tracks_ranks_only_known_tracks(spark: SparkSession, tiny: TinyModel,
                                                                     tmp_path: Path) -> None:
    cfg, lake = _lake_of(spark, tiny, tmp_path / "lake", _model_dictionary(tiny))
    cfg.sessionize.min_item_count = 1  # the x tracks the model never saw enter the dictionary
    added = sessionize(spark, cfg)
    dictionary = {r.track_id: r.item_idx for r in lake.read(spark, ITEM_INDEX).collect()}
    assert added["new_items"] > 0 and max(dictionary.values()) > N_TRACKS
    assert all(dictionary[t] == i for t, i, _ in _model_dictionary(tiny))  # the model's ids kept their tracks
    assert any(t.startswith("x") for t in dictionary)

    result = batch.score(cfg)
    rows = lake.read(spark, PREDICTIONS).where(F.col("score_date") == cfg.score.score_date).collect()
    assert result["scored_users"] > 0 and len(rows) == result["rows"]
    assert all(r.item_idx <= N_TRACKS and not r.track_id.startswith("x") for r in rows)
    assert all(dictionary[r.track_id] == r.item_idx for r in rows)  # predictions join the lake's dictionary


def test_a_lake_that_numbers_the_tracks_otherwise_is_refused(spark: SparkSession, tiny: TinyModel,
                                                             tmp_path: Path) -> None:
    swapped = {"t01": 2, "t02": 1}  # a rebuilt lake: the same tracks, another numbering
    rows = [(t, swapped.get(t, i), n) for t, i, n in _model_dictionary(tiny)]
    cfg, lake = _lake_of(spark, tiny, tmp_path / "lake", rows)
    with pytest.raises(ValueError, match=r"2 of the model's 30 item ids name another track .* rebuilt or is another lake"):
        batch.score(cfg)
    assert not lake.exists(spark, PREDICTIONS)


def test_evaluate_refuses_a_lake_that_numbers_the_model_s_tracks_otherwise(spark: SparkSession, tiny: TinyModel,
                                                                         tmp_path: Path) -> None:
    """The tiny model's run pinned sessions version 3: a lake whose generation at that version names
    two of the model's ids otherwise is refused before anything is measured."""
    from datetime import datetime

    import mlflow

    from nextplay.evaluate.evaluate import evaluate
    from nextplay.tables import SESSIONS, SESSIONS_SCHEMA, generation_options, new_generation

    swapped = {"t05": 6, "t06": 5}
    cfg, lake = _lake_of(spark, tiny, tmp_path / "lake", [])
    stamp = generation_options(new_generation())
    rows = [(t, swapped.get(t, i), n) for t, i, n in _model_dictionary(tiny)]
    lake.write(spark.createDataFrame(rows, ITEM_INDEX_SCHEMA), ITEM_INDEX, mode="overwrite", **stamp)
    start = datetime(2024, 3, 30, 12, 0)
    session = [("u1", "s1", start, start, start.date(), [1, 2, 3], 3, "test")]
    lake.create_if_missing(spark, SESSIONS, SESSIONS_SCHEMA)
    for _ in range(3):  # versions 1..3
        lake.write(spark.createDataFrame(session, SESSIONS_SCHEMA), SESSIONS, mode="overwrite", **stamp)
    run_id = mlflow.MlflowClient(cfg.tracking.uri).get_model_version(cfg.tracking.model_name, tiny.version).run_id
    with pytest.raises(ValueError, match=r"2 of the model's 30 item ids name another track"):
        evaluate(cfg, run_id=run_id)
