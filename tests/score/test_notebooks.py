"""The Databricks-source notebooks run as plain Python against a small lake and MLflow store."""
from __future__ import annotations

import copy
from datetime import datetime, timedelta
from pathlib import Path

import mlflow
import pytest
from pyspark.sql import SparkSession

from nextplay import tracking
from nextplay.score import batch
from nextplay.tables import ITEM_INDEX, ITEM_INDEX_SCHEMA, PLAYS_SILVER, PLAYS_SILVER_SCHEMA, SESSIONS, SESSIONS_SCHEMA, Lake

from .conftest import TinyModel

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.fixture(scope="module")
def notebook_env(spark: SparkSession, tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A lake with sessions, item_index and predictions, and an evaluated run; returned as NEXTPLAY_SET."""
    cfg = copy.deepcopy(tiny.cfg)
    cfg.lake.root = str(tmp_path_factory.mktemp("nb") / "lake")
    cfg.score.score_date = "2024-04-03"
    lake = Lake(cfg.lake)
    lake.write(spark.createDataFrame(tiny.plays, PLAYS_SILVER_SCHEMA), PLAYS_SILVER, mode="overwrite")
    lake.write(spark.createDataFrame(tiny.item_index, ITEM_INDEX_SCHEMA), ITEM_INDEX, mode="overwrite")
    start = datetime(2024, 3, 1)
    sessions = [(f"u{i % 3}", f"s{i}", start + timedelta(days=i), start + timedelta(days=i, minutes=9),
                 (start + timedelta(days=i)).date(), [1 + i % 5, 2, 3][: 2 + i % 2], 2 + i % 2,
                 ["train", "valid", "test"][min(2, i // 4)]) for i in range(10)]
    lake.write(spark.createDataFrame(sessions, SESSIONS_SCHEMA), SESSIONS, mode="overwrite")
    batch.score(cfg)
    with tracking.start_run(cfg, run_name="evaluated"):
        mlflow.log_metrics({"test/model/recall_at_20": 0.31, "test/model/mrr_at_20": 0.12,
                            "test/most_popular/recall_at_20": 0.05, "test/session_knn/recall_at_20": 0.27})
    return {"NEXTPLAY_SET": f"lake.root={cfg.lake.root} tracking.uri={cfg.tracking.uri} "
                            f"tracking.artifact_location={cfg.tracking.artifact_location} spark.master=local[2]"}


@pytest.mark.slow
@pytest.mark.parametrize("name, expect", [
    ("01_explore_sessions.py", "top_1pct_share"),
    ("02_compare_runs.py", "vs session_knn 0.2700"),
    ("03_query_predictions.py", "top100_share"),
])
def test_notebook_runs_locally(name: str, expect: str, notebook_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    import runpy

    source = (NOTEBOOKS / name).read_text()
    assert source.startswith("# Databricks notebook source\n") and "# COMMAND ----------" in source
    for key, value in notebook_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(NOTEBOOKS))
    runpy.run_path(str(NOTEBOOKS / name), run_name="__main__")
    assert expect in capsys.readouterr().out
