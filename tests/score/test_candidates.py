"""score.candidates: the item-vector index logged with a model, the rankings chosen from it, and the refusals."""
from __future__ import annotations

import copy
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from nextplay import tracking
from nextplay.config import AnnConfig, Config
from nextplay.model import ann, pyfunc
from nextplay.model.io import load_model, save_model
from nextplay.model.ranking import RetrievedRanking
from nextplay.score import batch
from nextplay.tables import PLAYS_SILVER, PLAYS_SILVER_SCHEMA, PREDICTIONS, Lake
from nextplay.train.index import build_index, wants_index

from .conftest import TOP_K, TinyModel, expected_histories, train_tiny_rnn


def log_with_index(tiny: TinyModel, rnn_dir: Path, name: str, ann_dir: Path | None) -> str:
    """Log `rnn_dir` under model `name` with the item-vector index in `ann_dir` (None: without); its champion."""
    tracking.configure(tiny.cfg.tracking)
    with tracking.start_run(tiny.cfg, run_name=name):
        info = pyfunc.log_model(str(rnn_dir), tiny.item_index, registered_model_name=name, top_k=TOP_K,
                                collapse_repeats=True, ann_dir=ann_dir)
    tracking.set_alias(name, tracking.CHAMPION, str(info.registered_model_version))
    return str(info.registered_model_version)


def indexed_config(tiny: TinyModel) -> Config:
    cfg = copy.deepcopy(tiny.cfg)
    cfg.ann.build = "always"
    cfg.ann.candidates = cfg.ann.ef_search = 30  # the whole tiny catalog: the retrieved ranking is the exact one
    return cfg


@pytest.fixture(scope="module")
def indexed(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny champion's weights logged again with their index, as `nextplay-tiny-indexed`."""
    cfg = indexed_config(tiny)
    with tracking.start_run(cfg, run_name="index-build"):
        folder = build_index(cfg, load_model(tiny.rnn_dir), tmp_path_factory.mktemp("ann") / "ann")
    assert folder is not None
    return log_with_index(tiny, tiny.rnn_dir, "nextplay-tiny-indexed", folder)


@pytest.fixture(scope="module")
def lake(spark: SparkSession, tiny: TinyModel) -> Lake:
    lake = Lake(tiny.cfg.lake)
    lake.write(spark.createDataFrame(tiny.plays, PLAYS_SILVER_SCHEMA), PLAYS_SILVER, mode="overwrite")
    return lake


def scored(spark: SparkSession, lake: Lake, cfg: Config) -> tuple[dict, pd.DataFrame]:
    result = batch.score(cfg)
    rows = lake.read(spark, PREDICTIONS).where(F.col("score_date") == cfg.score.score_date).toPandas()
    return result, rows.sort_values(["user_id", "rank"]).reset_index(drop=True)


def test_spark_scores_through_the_index_as_the_exact_path(spark: SparkSession, lake: Lake, tiny: TinyModel,
                                                          indexed: str) -> None:
    """With every track retrieved, ann ranks exactly as exact; auto picks ann for a model with an index."""
    cfg = indexed_config(tiny)
    cfg.tracking.model_name = "nextplay-tiny-indexed"
    results = {}
    for mode, day in (("exact", "2024-05-01"), ("auto", "2024-05-02")):
        cfg.score.candidates, cfg.score.score_date = mode, day
        results[mode] = scored(spark, lake, cfg)
    assert results["exact"][0]["candidates"] == "exact" and results["auto"][0]["candidates"] == "ann"
    exact, ann = results["exact"][1], results["auto"][1]
    pd.testing.assert_frame_equal(ann[["user_id", "rank", "track_id"]], exact[["user_id", "rank", "track_id"]])
    np.testing.assert_allclose(ann["score"], exact["score"], rtol=1e-4, atol=1e-4)


def test_auto_without_an_index_scores_exactly_and_ann_is_refused(spark: SparkSession, lake: Lake,
                                                                 tiny: TinyModel) -> None:
    cfg = copy.deepcopy(tiny.cfg)
    cfg.score.candidates, cfg.score.score_date = "auto", "2024-05-03"
    assert scored(spark, lake, cfg)[0]["candidates"] == "exact"
    cfg.score.candidates = "ann"
    with pytest.raises(ValueError, match="without an item-vector index"):
        batch.score(cfg)


def test_an_index_built_for_other_weights_is_refused(tiny: TinyModel, indexed: str, tmp_path: Path) -> None:
    """Another model version (other weights) logged with this index: loading its ranking refuses it."""
    hist = expected_histories(tiny.plays, tiny.item_index, history_length=50, collapse=True)
    other = train_tiny_rnn(list(hist.values()), len(tiny.item_index), steps=3)
    save_model(other, tmp_path / "other")
    first = Path(mlflow.artifacts.download_artifacts(f"models:/nextplay-tiny-indexed/{indexed}", dst_path=str(tmp_path / "a")))
    version = log_with_index(tiny, tmp_path / "other", "nextplay-tiny-mismatch", pyfunc.ann_folder(first))
    local = mlflow.artifacts.download_artifacts(f"models:/nextplay-tiny-mismatch/{version}", dst_path=str(tmp_path / "b"))
    model = pyfunc.load_trusted(local)
    with pytest.raises(ValueError, match="other"):
        model.ranking("ann", AnnConfig())
    assert model.ranking("exact", AnnConfig()) is not None  # the model itself still scores exactly


def test_the_bit_tree_refuses_ann_in_one_line(tiny: TinyModel) -> None:
    with pytest.raises(ValueError, match="bit_tree") as refused:
        pyfunc.candidates_mode("ann", has_index=False, head="bit_tree")
    assert "\n" not in str(refused.value)
    cfg = indexed_config(tiny)
    cfg.model.head = "bit_tree"
    assert not wants_index(cfg, 10**7)  # never built for it, whatever ann.build says
    assert pyfunc.candidates_mode("auto", has_index=False, head="bit_tree") == "exact"


def test_ann_recovers_the_exact_top_20_of_a_trained_model(tiny: TinyModel, tmp_path: Path) -> None:
    """A model trained on structured sessions, a catalog far above the candidates: the index's union
    recovers at least 98% of the exact top 20 at the default search settings."""
    rng = np.random.default_rng(5)
    n_items, artists = 2000, 40
    per_artist = n_items // artists
    sessions = []
    for _ in range(3000):  # a session stays with one artist's tracks, a few popular ones more often
        a = rng.integers(artists)
        sessions.append(1 + a * per_artist + np.minimum(rng.zipf(1.5, size=rng.integers(3, 9)) - 1, per_artist - 1))
    torch.manual_seed(0)
    model = train_tiny_rnn(sessions, n_items, steps=60)
    settings = AnnConfig(candidates=100, ef_search=200)
    cfg = indexed_config(tiny)
    cfg.ann = copy.deepcopy(settings)
    cfg.ann.build = "always"
    with tracking.start_run(cfg, run_name="ann-recall"):
        folder = build_index(cfg, model, tmp_path / "ann")
    index = ann.ItemVectorIndex.load(folder, ann.fingerprint(ann.item_vectors(model)))
    ranking = RetrievedRanking(lambda q, c: index.search(q, c, settings.ef_search), settings.candidates)
    prefixes = [s[: rng.integers(1, len(s))] for s in sessions[:300]]
    padded, lengths = pyfunc.pad(prefixes)
    items, lengths = torch.from_numpy(padded), torch.from_numpy(lengths)
    _, exact = model.topk(items, lengths, 20)
    _, got = model.topk(items, lengths, 20, ranking=ranking)
    recall = np.mean([len(set(e.tolist()) & set(g.tolist())) / 20 for e, g in zip(exact, got)])
    assert recall >= 0.98
