"""`nextplay evaluate` ranks on the executors: the figures it gives equal those of ranking the same
lines in one process (`metrics.evaluate_model`, the driver path training still validates with), for
the model, both baselines, the Recall@K curve and the champion the gate compares with.

One real setup: the tiny scoring model (tests/score) is the champion of a sqlite registry; a
challenger that numbers the tracks in reverse and knows two more is registered beside it; the lake
(Delta) numbers the tracks as the challenger does, plus one track that entered the dictionary after
it was trained. The sessions hold what the lines must handle: repeats (also repeats broken only by
the unknown track), sessions that collapse to one item, a session of unknown tracks only, many equal start times
at the cut of the most recent sessions, and tracks the champion never saw.
"""
from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from nextplay import tracking
from nextplay.data import lines
from nextplay.config import Config
from nextplay.data.lines import lines_frame, recent_sessions, recent_sessions_frame, session_lines, sessions_csr
from nextplay.evaluate.baselines import MostPopular, SessionKNN
from nextplay.evaluate.evaluate import evaluate
from nextplay.evaluate.promote import lines_for
from nextplay.evaluate.report import CURVE_KS
from nextplay.metrics import evaluate_model
from nextplay.model.io import save_model
from nextplay.model.pyfunc import load_logged, log_model
from nextplay.tables import ITEM_INDEX, ITEM_INDEX_SCHEMA, SESSIONS, SESSIONS_SCHEMA, Lake, Pin

from score.conftest import N_TRACKS, TOP_K, build_tiny, train_tiny_rnn

pytestmark = pytest.mark.slow

CHALLENGER_TRACKS = N_TRACKS + 2  # t31, t32: tracks the champion never saw
LAKE_TRACKS = CHALLENGER_TRACKS + 1  # t33: in the lake, unknown to both models
MODEL_NAME = "nextplay-evalexec"
START = datetime(2024, 3, 1, 12, 0)


def challenger_idx(track: int) -> int:
    """The challenger's (and the lake's) item_idx of track t{track}: the tracks numbered in reverse."""
    return CHALLENGER_TRACKS + 1 - track if track <= CHALLENGER_TRACKS else track


def make_sessions(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    unknown = LAKE_TRACKS
    for n in range(130):
        split = "train" if n < 80 else "test"
        length = int(rng.integers(2, 12))  # the table holds sessions of two plays or more
        items = [challenger_idx(int(rng.integers(1, LAKE_TRACKS + 1))) for _ in range(length)]
        for i in range(1, len(items)):
            if rng.random() < 0.2:
                items[i] = items[i - 1]  # a consecutive repeat
            elif rng.random() < 0.1 and i + 1 < len(items):
                items[i], items[i + 1] = unknown, items[i - 1]  # a repeat broken only by the unknown track
        start = START + timedelta(minutes=int(rng.integers(0, 12)))  # many equal start times
        rows.append((f"u{n % 9}", f"s{int(rng.integers(0, 10**6)):06d}-{n}", start, start, start.date(), items, split))
    latest = START + timedelta(minutes=12)
    rows.append(("u0", "s-unknown", latest, latest, latest.date(), [unknown, unknown, unknown], "test"))
    df = pd.DataFrame(rows, columns=["user_id", "session_id", "start_ts", "end_ts", "event_date", "items", "split"])
    df["length"] = df["items"].map(len).astype(np.int32)
    return df[[f.name for f in SESSIONS_SCHEMA.fields]]


def most_recent(sessions: pd.DataFrame, split: str, limit: int) -> list[list[int]]:
    """The selection rule written out in pandas: the `limit` latest by (start_ts, session_id), oldest first."""
    chosen = sessions[sessions["split"] == split].sort_values(["start_ts", "session_id"]).tail(limit)
    return [list(s) for s in chosen["items"]]


def known(sessions: list[list[int]], n_items: int) -> list[list[int]]:
    """Ids above the model's vocabulary dropped, then consecutive repeats collapsed."""
    out = []
    for s in sessions:
        kept = [i for i in s if i <= n_items]
        out.append([x for j, x in enumerate(kept) if j == 0 or x != kept[j - 1]])
    return out


@pytest.fixture(scope="module")
def setup(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("evalexec")
    tiny = build_tiny(root, "gru", model_name=MODEL_NAME)  # the champion, registered in root's store
    cfg: Config = copy.deepcopy(tiny.cfg)
    cfg.lake.root = str(root / "evalexec-lake")
    cfg.evaluate.max_test_sessions, cfg.evaluate.max_train_sessions = 33, 61
    cfg.evaluate.knn_neighbors, cfg.evaluate.knn_sample, cfg.evaluate.batch_size = 4, 9, 7
    cfg.promote.min_gain_over_knn = -1.0

    lake = Lake(cfg.lake)
    index = pd.DataFrame({"track_id": [f"t{t:02d}" for t in range(1, LAKE_TRACKS + 1)]})
    index["item_idx"] = [challenger_idx(t) for t in range(1, LAKE_TRACKS + 1)]
    index["play_count"] = 1
    lake.create_if_missing(spark, ITEM_INDEX, ITEM_INDEX_SCHEMA)
    lake.write(spark.createDataFrame(index.astype({"item_idx": np.int32}), ITEM_INDEX_SCHEMA), ITEM_INDEX,
               mode="overwrite")  # version 1
    sessions = make_sessions(np.random.default_rng(5))
    lake.create_if_missing(spark, SESSIONS, SESSIONS_SCHEMA)
    lake.write(spark.createDataFrame(sessions, SESSIONS_SCHEMA), SESSIONS, mode="overwrite")  # version 1

    train = known(most_recent(sessions, "train", 10**6), CHALLENGER_TRACKS)
    rnn = train_tiny_rnn([np.asarray(s, dtype=np.int64) for s in train], CHALLENGER_TRACKS)
    save_model(rnn, root / "challenger")
    own_index = index[index["item_idx"] <= CHALLENGER_TRACKS]
    with tracking.start_run(cfg, run_name="challenger"):
        mlflow.set_tags({"nextplay.stage": "train", **Pin(1, 1, None).as_tags()})
        info = log_model(str(root / "challenger"), own_index, registered_model_name=MODEL_NAME, top_k=TOP_K,
                         collapse_repeats=True)
    result = evaluate(cfg, run_id=info.run_id)
    client = mlflow.MlflowClient(cfg.tracking.uri)
    report = json.loads(Path(client.download_artifacts(info.run_id, "evaluation.json", str(root))).read_text())
    return {"cfg": cfg, "sessions": sessions, "run_id": info.run_id, "champion": tiny.version,
            "result": result, "report": report}


def driver_reference(setup: dict) -> dict:
    """Every figure ranked in this process on lines and training sessions chosen in pandas."""
    cfg, sessions = setup["cfg"], setup["sessions"]
    challenger = load_logged(f"runs:/{setup['run_id']}/model")
    n_items = challenger.rnn.n_items
    prefixes, labels = session_lines(known(most_recent(sessions, "test", cfg.evaluate.max_test_sessions), n_items))
    train = known(most_recent(sessions, "train", cfg.evaluate.max_train_sessions), n_items)
    scorers = {"model": challenger.rnn, "most_popular": MostPopular().fit(train, n_items),
               "session_knn": SessionKNN(k=cfg.evaluate.knn_neighbors, sample=cfg.evaluate.knn_sample).fit(train, n_items)}
    out = {name: evaluate_model(s, prefixes, labels, ks=CURVE_KS, batch_size=5) for name, s in scorers.items()}
    champion = load_logged(f"models:/{MODEL_NAME}/{setup['champion']}")
    mapped = lines_for(champion, challenger, prefixes, labels)
    out["champion"] = evaluate_model(champion.rnn, *mapped, ks=cfg.evaluate.ks, batch_size=5)
    out["lines"] = len(labels)
    out["unknown_to_champion"] = sum(1 for label in mapped[1] if label == 0)
    return out


def _figures(m: dict, ks: list[int]) -> dict[str, float]:
    return {f"{name}_at_{k}": m[f"{name}_at_{k}"] for k in ks for name in ("recall", "mrr")}


def test_model_and_baselines_give_the_driver_path_s_figures(setup: dict) -> None:
    ref, result, ks = driver_reference(setup), setup["result"], setup["cfg"].evaluate.ks
    assert result["lines"] == ref["lines"] > 50
    assert _figures(result, ks) == pytest.approx(_figures(ref["model"], ks), abs=1e-12)
    for name in ("most_popular", "session_knn"):
        assert result["baselines"][name]["lines"] == ref["lines"]
        assert _figures(result["baselines"][name], ks) == pytest.approx(_figures(ref[name], ks), abs=1e-12)
    assert result["recall_at_20"] > 0 and result["baselines"]["session_knn"]["recall_at_20"] > 0


def test_the_recall_curve_is_the_driver_path_s(setup: dict) -> None:
    ref, curves = driver_reference(setup), setup["report"]["recall_curves"]
    assert set(curves) == {"model", "most_popular", "session_knn"}
    for name, curve in curves.items():
        assert curve == pytest.approx([ref[name][f"recall_at_{k}"] for k in CURVE_KS], abs=1e-12)


def test_the_gate_measures_the_champion_as_the_driver_path_does(setup: dict) -> None:
    ref, promotion, ks = driver_reference(setup), setup["result"]["promotion"], setup["cfg"].evaluate.ks
    assert ref["unknown_to_champion"] > 0  # the translation through track ids is exercised
    assert promotion["compared_champion"] == setup["champion"]
    assert promotion["champion_metrics"] == pytest.approx(_figures(ref["champion"], ks), abs=1e-12)
    metric = setup["cfg"].promote.metric
    assert promotion["champion"] == pytest.approx(ref["champion"][metric], abs=1e-12)


def test_evaluate_reports_the_driver_s_peak_memory(setup: dict) -> None:
    memory = setup["result"]["driver_memory"]
    assert memory["python_peak_rss_mib"] > 50
    assert memory["jvm_peak_rss_mib"] is not None and memory["jvm_peak_rss_mib"] > 50  # a local JVM: /proc is readable


def test_recent_sessions_choose_the_latest_by_start_time_then_session_id(spark: SparkSession, setup: dict,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, sessions = setup["cfg"], setup["sessions"]
    monkeypatch.setattr(lines, "SESSIONS_PER_SLICE", 7)  # several slices, which must arrive in order
    for split, limit in (("test", 17), ("train", 61), ("train", 10**6), ("valid", 5)):
        assert recent_sessions(spark, cfg, split, limit) == most_recent(sessions, split, limit)
        indptr, items = sessions_csr(recent_sessions_frame(spark, cfg, split, limit), limit)
        expected = most_recent(sessions, split, limit)
        assert [items[a:b].tolist() for a, b in zip(indptr[:-1], indptr[1:])] == expected
        assert items.dtype == np.int32


def test_lines_are_every_next_item_step(spark: SparkSession) -> None:
    frame = spark.createDataFrame([([4, 5, 6],), ([7],), ([8, 8],)], "items array<int>")
    rows = sorted((r["prefix"], r["label"]) for r in lines_frame(frame).collect())
    prefixes, labels = session_lines([[4, 5, 6], [7], [8, 8]])
    assert rows == sorted(zip(prefixes, labels))
