"""`train --warm-start`: a new run starts from a registered model's weights, grown by rows for the tracks
the append-only dictionary gained since, on a real lake, real training runs and a sqlite registry."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from nextplay import tables
from nextplay.cli import main
from nextplay.config import Config, ConfigError, load_config
from tests.conftest import temp_config
from nextplay.data.generate import generate
from nextplay.data.ingest import ingest
from nextplay.data.sessionize import sessionize
from nextplay.evaluate.evaluate import evaluate
from nextplay.model.pyfunc import load_logged
from nextplay.model.session import SessionModel
from nextplay.pipeline import next_day_config
from nextplay.tables import Lake

# The network alone: no repeat mixture and no session memory, so old items' scores depend on the
# head's logits only, and growing the catalog only moves the softmax's normaliser.
NETWORK_ONLY = ["model.hidden_size=16", "model.repeat=false", "model.hybrid.knn_weight=0",
                "model.hybrid.knn_explore_weight=0"]


def _model(n_items: int, *overrides: str) -> SessionModel:
    torch.manual_seed(0)
    return SessionModel(n_items, load_config(None, [*NETWORK_ONLY, *overrides]).model, np.ones(n_items + 1)).eval()


@pytest.mark.parametrize("encoder,head,tied", [("gru", "full", True), ("sasrec", "full", True),
                                               ("gru", "sampled", False), ("sasrec", "sampled", False)])
def test_growing_keeps_every_old_row_and_weight_and_the_old_items_ranking(encoder, head, tied):
    old = _model(20, f"model.encoder={encoder}", f"model.head={head}", f"model.tie_embeddings={str(tied).lower()}")
    with torch.no_grad():  # learnt-looking biases, so that a copy that dropped them would show
        for p in old.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    grown = old.grown(27, np.ones(28)).eval()
    assert grown.n_items == 27 and grown.head.n_items == 27
    before, after = old.state_dict(), grown.state_dict()
    assert set(before) == set(after)
    rows = set(old.item_tables())
    assert rows == {"embedding.weight", "head.bias"} | (set() if tied else {"output_items"})
    for name, value in before.items():
        if name in rows:
            assert after[name].shape[0] == 28
            assert torch.equal(after[name][:21], value), name
        else:
            assert torch.equal(after[name], value), name
    # New rows are drawn as a fresh model draws them: not copies of old ones, not zero where fresh is random.
    assert after["embedding.weight"][21:].std() > 0.01
    assert not torch.equal(after["embedding.weight"][21:], after["embedding.weight"][:7])

    items = torch.tensor([[3, 7, 12, 5], [19, 1, 0, 0], [8, 0, 0, 0]])
    lengths = torch.tensor([4, 2, 1])
    s_old, s_new = old.score_all(items, lengths)[:, 1:], grown.score_all(items, lengths)[:, 1:21]
    # The same logits over the old items: the log-probabilities move by one constant per history.
    shift = s_new - s_old
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5)
    assert torch.allclose(torch.log_softmax(s_new, 1), torch.log_softmax(s_old, 1), atol=1e-5)


def test_growing_refuses_to_shrink_and_the_bit_tree():
    with pytest.raises(ValueError, match="cannot shrink"):
        _model(20).grown(19)
    with pytest.raises(ValueError, match="bit_tree cannot gain items"):
        _model(20, "model.head=bit_tree").grown(21)


def test_warm_start_with_resume_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="train.warm_start and train.resume"):
        load_config(None, ["train.warm_start=champion", "train.resume=true"])
    assert load_config(None, ["train.warm_start=models:/nextplay/3"]).train.warm_start == "models:/nextplay/3"


# -- end to end: a champion, a later day with new tracks, a warm and a cold run on the same data ------------

SMALL = ["model.hidden_size=32", "train.batch_size=32", "train.lr=0.01", "train.seed=3",
         "evaluate.knn_sample=100", "evaluate.knn_neighbors=50"]


def _train_args(cfg: Config, *overrides: str) -> list[str]:
    args = []
    for kv in [f"lake.root={cfg.lake.root}", f"tracking.uri={cfg.tracking.uri}",
               f"tracking.artifact_location={cfg.tracking.artifact_location}",
               f"train.checkpoint_dir={cfg.train.checkpoint_dir}", "train.progress=false",
               "spark.master=local[2]", "spark.shuffle_partitions=4", *SMALL, *overrides]:
        args += ["--set", kv]
    return args


def _run(cfg: Config, run_id: str):
    return MlflowClient(cfg.tracking.uri).get_run(run_id)


def _latest_run_id(cfg: Config) -> str:
    mlflow.set_tracking_uri(cfg.tracking.uri)
    return mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list",
                              order_by=["attributes.start_time DESC"])[0].info.run_id


def _said(capsys) -> str:
    """The command's one error line (MLflow's download progress bars also write to stderr)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nextplay train:")]
    assert len(lines) == 1
    return lines[0]


@pytest.fixture(scope="module")
def story(spark, tmp_path_factory):
    """Day one: generated plays, ingested and sessionized, a model trained for 3 epochs and promoted
    (the first champion). Day two adds plays and tracks; then one epoch warm from the champion and one
    epoch cold, on the same pinned data."""
    root = tmp_path_factory.mktemp("warm")
    cfg = temp_config(
        root, "generate.events=8000", "generate.users=100", "generate.tracks=300", "generate.artists=40", "generate.days=6", "generate.files=2",
        "sessionize.min_item_count=2", "promote.min_gain_over_knn=-1", *SMALL)
    cfg.ingest.input = cfg.generate.output
    generate(spark, cfg)
    ingest(spark, cfg)
    first = sessionize(spark, cfg)
    assert main(["train", *_train_args(cfg, "train.epochs=3")]) == 0
    champion_run = _latest_run_id(cfg)
    assert evaluate(cfg, run_id=champion_run)["promotion"]["decision"] == "promoted"

    day = next_day_config(cfg)
    generate(spark, day)
    ingest(spark, day)
    second = sessionize(spark, day)
    assert second["new_items"] > 0 and second["items"] > first["items"]

    assert main(["train", "--warm-start", *_train_args(cfg, "train.epochs=1")]) == 0
    warm = _latest_run_id(cfg)
    assert main(["train", *_train_args(cfg, "train.epochs=1")]) == 0
    cold = _latest_run_id(cfg)
    assert main(["train", "--daily", *_train_args(cfg, "train.epochs=4")]) == 0
    daily = _latest_run_id(cfg)
    return {"cfg": cfg, "first": first, "second": second, "champion_run": champion_run, "warm": warm, "cold": cold,
            "daily": daily}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first test of the module pays for the story: four training runs
def test_warm_start_begins_from_the_champion_and_grows_rows_for_new_tracks(story):
    cfg = story["cfg"]
    warm, cold = _run(cfg, story["warm"]), _run(cfg, story["cold"])
    client = MlflowClient(cfg.tracking.uri)
    champion = client.get_model_version_by_alias(cfg.tracking.model_name, "champion")
    assert champion.run_id == story["champion_run"]
    assert warm.data.tags["nextplay.warm_start_from"] == f"models:/{cfg.tracking.model_name}/{champion.version}"
    assert warm.data.tags["nextplay.warm_start_run"] == story["champion_run"]
    assert warm.data.tags["nextplay.warm_start_items"] == str(story["first"]["items"])
    assert "nextplay.warm_start_from" not in cold.data.tags
    assert warm.data.params["n_items"] == str(story["second"]["items"])

    # The logged warm model has a row for every track of the grown dictionary and names them as the lake does.
    logged = load_logged(f"runs:/{story['warm']}/model")
    assert logged.rnn.n_items == story["second"]["items"] > story["first"]["items"]
    assert logged.rnn.embedding.weight.shape[0] == story["second"]["items"] + 1
    # One epoch from the champion is at least as good as one epoch from scratch, on the same validation lines.
    key = "valid/model/recall_at_20"
    assert warm.data.metrics[key] >= cold.data.metrics[key] > 0
    assert warm.data.params["valid_lines"] == cold.data.params["valid_lines"]
    # Its checkpoint folder (warm-start weights included) is gone once the model is logged.
    assert not (Path(cfg.train.checkpoint_dir) / story["warm"]).exists()


@pytest.mark.slow
def test_a_daily_run_trains_from_the_champion_on_the_newest_day_only(spark, story):
    cfg = story["cfg"]
    daily = _run(cfg, story["daily"])
    champion = MlflowClient(cfg.tracking.uri).get_model_version_by_alias(cfg.tracking.model_name, "champion")
    assert daily.data.tags["nextplay.warm_start_from"] == f"models:/{cfg.tracking.model_name}/{champion.version}"
    params = daily.data.params
    assert (params["train.mode"], params["train.window_days"], params["train.epochs"]) == ("daily", "1", "1")
    sessions = Lake(cfg.lake).read(spark, tables.SESSIONS).where("split = 'train'")
    newest = sessions.agg(F.max("event_date")).first()[0]
    in_day = sessions.where(F.col("event_date") == F.lit(newest)).count()
    assert int(params["train_sessions"]) == in_day < sessions.count()
    assert daily.data.metrics["valid/model/recall_at_20"] > 0


@pytest.mark.slow
def test_warm_start_refuses_other_model_settings_and_a_lake_that_numbers_tracks_otherwise(spark, story, capsys):
    cfg = story["cfg"]
    runs = len(mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list"))
    assert main(["train", "--warm-start", *_train_args(cfg, "train.epochs=1", "model.hidden_size=24")]) == 1
    said = _said(capsys)
    assert "model.hidden_size=32 (configured: 24)" in said and "train without --warm-start" in said

    # A rebuilt dictionary: the same tracks, numbered in reverse (sessions renumbered with it, one generation).
    lake = Lake(cfg.lake)
    n = story["second"]["items"]
    generation = tables.new_generation()
    index = lake.read(spark, tables.ITEM_INDEX).withColumn("item_idx", (F.lit(n + 1) - F.col("item_idx")).cast("int"))
    sessions = lake.read(spark, tables.SESSIONS).withColumn(
        "items", F.transform("items", lambda x: (F.lit(n + 1) - x).cast("int")))
    index, sessions = index.localCheckpoint(), sessions.localCheckpoint()
    lake.write(index, tables.ITEM_INDEX, mode="overwrite", **tables.generation_options(generation))
    lake.write(sessions, tables.SESSIONS, mode="overwrite", **tables.generation_options(generation))
    assert main(["train", "--warm-start", *_train_args(cfg, "train.epochs=1")]) == 1
    said = _said(capsys)
    assert "name another track" in said and "train.warm_start models:/" in said
    # Neither refusal started a run.
    assert len(mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")) == runs
