"""The promotion gate end to end on a real lake, real training runs and a real sqlite registry.

One story, built once: a good model is trained on generation A of the lake and evaluated (the
first champion); the lake is then rewritten (generation B numbers the same tracks in reverse) and a
crippled model, trained through the same path, is evaluated against that champion, which has to be
measured on B's lines through track ids; `score` then serves the champion, not the newest version;
the good run is evaluated again on the changed lake; finally the champion alias is removed and the
crippled model, alone, is still refused.
"""
from __future__ import annotations

import copy
from datetime import datetime, timedelta

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from nextplay import tables
from nextplay.config import Config, load_config
from nextplay.tables import PLAYS_SILVER_SCHEMA, Lake
from tests.conftest import temp_config

from train.planted import N_ITEMS, write_planted_lake

pytestmark = pytest.mark.slow

GOOD = ["train.epochs=4", "train.batch_size=32", "model.hidden_size=32", "train.lr=0.01"]
# One unit of state, a learning rate that moves nothing in one epoch, and no session-kNN memory to
# lean on: a model trained through the normal path that has learnt nothing.
CRIPPLED = ["train.epochs=1", "train.batch_size=32", "model.hidden_size=1", "train.lr=1e-9",
            "model.hybrid.knn_weight=0", "model.hybrid.knn_explore_weight=0"]
SCORE_DATE = "2024-05-02"


def _cfg(base: Config, overrides: list[str]) -> Config:
    cfg = copy.deepcopy(base)
    more = load_config(None, overrides)
    cfg.train, cfg.model = more.train, more.model
    cfg.train.checkpoint_dir, cfg.train.progress = base.train.checkpoint_dir, False
    return cfg


def write_reversed_generation(spark: SparkSession, cfg: Config) -> None:
    """A new sessionize generation of the current lake: the same sessions and tracks, each track
    numbered V + 1 - its old item_idx."""
    lake = Lake(cfg.lake)
    generation = tables.new_generation()
    index = lake.read(spark, tables.ITEM_INDEX).withColumn("item_idx", (F.lit(N_ITEMS + 1) - F.col("item_idx")).cast("int"))
    sessions = lake.read(spark, tables.SESSIONS).withColumn(
        "items", F.transform("items", lambda x: (F.lit(N_ITEMS + 1) - x).cast("int")))
    index, sessions = index.localCheckpoint(), sessions.localCheckpoint()  # read fully before overwriting
    lake.write(index, tables.ITEM_INDEX, mode="overwrite", **tables.generation_options(generation))
    lake.write(sessions, tables.SESSIONS, mode="overwrite", **tables.generation_options(generation))


def write_plays(spark: SparkSession, cfg: Config) -> None:
    """Recent plays of the planted tracks for a few listeners, for `score`."""
    newest = datetime(2024, 5, 1, 12, 0)
    rows = []
    for u in range(6):
        for step in range(4):
            track = f"t{(3 * u + step) % N_ITEMS + 1:03d}"
            ts = newest - timedelta(hours=u, minutes=10 * (4 - step))
            rows.append((f"e{u}-{step}", f"u{u}", track, ts, 30_000, ts.date()))
    df = pd.DataFrame(rows, columns=["event_id", "user_id", "track_id", "ts", "ms_played", "event_date"])
    Lake(cfg.lake).write(spark.createDataFrame(df, PLAYS_SILVER_SCHEMA), tables.PLAYS_SILVER, mode="overwrite")


def aliases(cfg: Config) -> dict[str, str]:
    model = MlflowClient(cfg.tracking.uri).get_registered_model(cfg.tracking.model_name)
    return {alias: str(version) for alias, version in model.aliases.items()}


def run_of(cfg: Config, run_id: str):
    return MlflowClient(cfg.tracking.uri).get_run(run_id)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Config:
    root = tmp_path_factory.mktemp("promote")
    return temp_config(root, "evaluate.knn_sample=100", "evaluate.knn_neighbors=50", "promote.metric=mrr_at_20",
                       f"score.score_date={SCORE_DATE}")


@pytest.fixture(scope="module")
def story(spark: SparkSession, base: Config) -> dict:
    from nextplay.evaluate.evaluate import evaluate
    from nextplay.score.batch import score
    from nextplay.train.launch import train

    out: dict = {}
    write_planted_lake(spark, base)
    write_plays(spark, base)
    out["good_train"] = train(_cfg(base, GOOD))
    out["good_eval"] = evaluate(base, run_id=out["good_train"]["run_id"])
    out["aliases_after_good"] = aliases(base)

    write_reversed_generation(spark, base)
    out["crippled_train"] = train(_cfg(base, CRIPPLED))
    out["crippled_eval"] = evaluate(base, run_id=out["crippled_train"]["run_id"])
    out["aliases_after_crippled"] = aliases(base)
    out["crippled_run"] = run_of(base, out["crippled_train"]["run_id"])  # evaluated again below

    # Back to generation A's numbering: score refuses a lake whose dictionary names the champion's ids
    # otherwise (sessionize itself never renumbers; this story rewrites the tables by hand).
    write_reversed_generation(spark, base)
    out["score"] = score(base)
    lake = Lake(base.lake)
    out["predictions"] = lake.read(spark, tables.PREDICTIONS).where(F.col("score_date") == SCORE_DATE).toPandas()

    out["good_again"] = evaluate(base, run_id=out["good_train"]["run_id"])

    MlflowClient(base.tracking.uri).delete_registered_model_alias(base.tracking.model_name, "champion")
    out["crippled_alone"] = evaluate(base, run_id=out["crippled_train"]["run_id"])
    out["aliases_at_end"] = aliases(base)
    return out


def test_a_good_first_model_is_promoted(story: dict, base: Config) -> None:
    good = story["good_eval"]
    version = story["good_train"]["model_version"]
    assert good["promotion"]["decision"] == "promoted", good["promotion"]["reason"]
    assert good["mrr_at_20"] > good["baselines"]["session_knn"]["mrr_at_20"]
    assert "no champion yet" in good["promotion"]["reason"]
    assert story["aliases_after_good"] == {"challenger": version, "champion": version}
    tags = run_of(base, good["run_id"]).data.tags
    assert tags["nextplay.promotion"].startswith("promoted: mrr_at_20 ")
    # The registry's page of the version says what it scored and why the gate promoted it.
    page = MlflowClient(base.tracking.uri).get_model_version(base.tracking.model_name, version)
    assert page.description.startswith("Gate on mrr_at_20: promoted: mrr_at_20 ")
    assert "| session_knn |" in page.description and "| most_popular |" in page.description
    assert page.tags["nextplay.gate"] == "promoted" and page.tags["nextplay.evaluation_run"] == good["run_id"]
    assert float(page.tags["test/model/mrr_at_20"]) == pytest.approx(good["mrr_at_20"], abs=1e-4)
    assert float(page.tags["test/session_knn/recall_at_20"]) == pytest.approx(
        good["baselines"]["session_knn"]["recall_at_20"], abs=1e-4)


def test_a_crippled_model_is_refused_and_the_champion_stays(story: dict, base: Config) -> None:
    crippled, good = story["crippled_eval"], story["good_eval"]
    good_version, crippled_version = story["good_train"]["model_version"], story["crippled_train"]["model_version"]
    assert int(crippled_version) > int(good_version)
    promotion = crippled["promotion"]
    assert promotion["decision"] == "refused" and promotion["compared_champion"] == good_version
    assert promotion["reason"].startswith("not good enough against session_knn and champion v")
    assert story["aliases_after_crippled"] == {"challenger": crippled_version, "champion": good_version}
    refused = MlflowClient(base.tracking.uri).get_model_version(base.tracking.model_name, crippled_version)
    assert refused.tags["nextplay.gate"] == "refused" and "refused: not good enough" in refused.description
    # The champion was trained on generation A and measured on generation B's lines: only the
    # translation through track ids lets it rank as it did on its own lines (raw ids would point
    # every prefix at the mirrored track, and the successor would be ranked as a random item).
    assert promotion["champion"] == pytest.approx(good["mrr_at_20"], abs=0.05)
    assert promotion["champion"] > crippled["mrr_at_20"] + 0.3
    run = story["crippled_run"]
    assert run.data.metrics["test/champion/mrr_at_20"] == pytest.approx(promotion["champion"])
    assert {"test/champion/recall_at_10", "test/champion/recall_at_20", "test/champion/mrr_at_10"} <= set(run.data.metrics)
    assert run.data.tags["nextplay.promotion"] == f"refused: {promotion['reason']}"
    assert run.data.tags["nextplay.champion_version"] == good_version
    assert f"{crippled['mrr_at_20']:.4f}" in promotion["reason"] and f"{promotion['champion']:.4f}" in promotion["reason"]


def test_score_serves_the_champion_not_the_newest_version(story: dict, base: Config) -> None:
    good_version = story["good_train"]["model_version"]
    predictions = story["predictions"]
    assert story["score"]["model_version"] == good_version and len(predictions) > 0
    assert set(predictions["model_version"]) == {good_version}


def test_predictions_carry_the_sessions_version_the_model_trained_on(story: dict, base: Config) -> None:
    pinned = int(run_of(base, story["good_train"]["run_id"]).data.tags["nextplay.sessions_version"])
    assert set(story["predictions"]["sessions_version"]) == {pinned}
    assert story["score"]["sessions_version"] == pinned
    crippled_pin = int(run_of(base, story["crippled_train"]["run_id"]).data.tags["nextplay.sessions_version"])
    assert crippled_pin > pinned, "the crippled run trained on the newer generation"


def test_an_old_run_evaluated_after_the_lake_changed_gives_its_logged_figures(story: dict, base: Config) -> None:
    first, again = story["good_eval"], story["good_again"]
    figures = [k for k in first if k.startswith(("recall_at_", "mrr_at_"))] + ["lines"]
    assert {k: again[k] for k in figures} == {k: first[k] for k in figures}
    assert again["baselines"] == first["baselines"]
    logged = run_of(base, first["run_id"]).data.metrics
    assert {k: logged[f"test/model/{k}"] for k in figures if k != "lines"} == {k: first[k] for k in figures if k != "lines"}
    assert logged["test/lines"] == first["lines"]
    # The champion evaluated again stays the champion (the challenger alias follows the evaluation).
    assert again["promotion"]["decision"] == "promoted" and "champion already" in again["promotion"]["reason"]


def test_a_model_worse_than_session_knn_is_never_promoted_even_without_a_champion(story: dict) -> None:
    alone = story["crippled_alone"]["promotion"]
    assert alone["decision"] == "refused" and alone["compared_champion"] is None
    assert "no champion yet" in alone["reason"] and alone["reason"].startswith("not good enough against session_knn:")
    assert story["aliases_at_end"] == {"challenger": story["crippled_train"]["model_version"]}


def test_score_without_a_champion_fails_in_one_line(story: dict, base: Config, capsys: pytest.CaptureFixture) -> None:
    from nextplay.cli import main

    args = []
    for kv in [f"lake.root={base.lake.root}", f"tracking.uri={base.tracking.uri}",
               f"tracking.artifact_location={base.tracking.artifact_location}", "spark.master=local[2]"]:
        args += ["--set", kv]
    capsys.readouterr()
    assert main(["score", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1] == (f"nextplay score: no version of registered model '{base.tracking.model_name}' holds the alias "
                       "'champion': run `nextplay evaluate` to measure a trained model and promote it, or set "
                       "score.model_uri")
