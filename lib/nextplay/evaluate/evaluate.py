"""`nextplay evaluate`: the test split of `sessions`, ranked against all items, beside the baselines,
then the promotion gate.

Every next-item step of the test sessions is one line (as in the session benchmarks). The model
comes from the training run's logged MLflow model; most-popular and session-kNN are fitted on the
train split of the same snapshot: the sessions version the run pinned, so evaluating an old run
after the lake changed gives the figures it gave then. Lines and training sessions are capped by
`evaluate.max_*` (the most recent sessions are kept). The ranking runs on the executors
(evaluate/ranking.py): the lines are built from the sessions table with Spark expressions and never
come to the driver, the model is shipped to the executors as `nextplay score` ships it, and the
baselines' training sessions go to them as one file of CSR arrays, the only thing the driver holds
in proportion to a sample. The model's ids must name the same tracks in that generation's
item_index (a rebuilt or other lake is refused); ids above its vocabulary (tracks that entered the
append-only dictionary after it was trained) are dropped from the sessions it reads. The run's
registered version then goes through the gate (evaluate/promote.py), which measures the current
champion on the same lines, on the executors too, and decides whether `score` serves it.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame

from nextplay import tracking
from nextplay.config import Config
from nextplay.data.lines import known_items, lines_frame, recent_sessions_frame, sessions_csr
from nextplay.evaluate.promote import gate
from nextplay.evaluate.ranking import BaselineRanker, ModelRanker, ship_baselines, task_count
from nextplay.evaluate.report import evaluate_lines, log_evaluation
from nextplay.model.pyfunc import candidates_mode, load_trusted
from nextplay.shipping import ship_model
from nextplay.spark import driver_peak_memory, get_spark
from nextplay.tables import Lake, Pin, check_model_ids

log = logging.getLogger(__name__)

CANDIDATES_TAG = "nextplay.evaluate_candidates"  # what the test labels were ranked among: exact or ann


def latest_training_run(cfg: Config) -> str:
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment],
                              filter_string="tags.`nextplay.stage` = 'train' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    if not runs:
        raise FileNotFoundError(f"no finished training run in MLflow experiment '{cfg.tracking.experiment}' "
                                f"at {cfg.tracking.uri}: run `nextplay train` first")
    return runs[0].info.run_id


def pin_of(cfg: Config, spark, run_id: str) -> Pin:
    """The table versions the training run pinned, so evaluating an old run reads what it was
    trained and validated on (time travel). A run logged before runs pinned their tables reads
    the newest generation."""
    pin = Pin.from_tags(MlflowClient().get_run(run_id).data.tags)
    if pin is None:
        pin = Lake(cfg.lake).pin_generation(spark)
        log.warning("run %s logged no table versions: evaluating on sessions version %d", run_id, pin.sessions_version)
    return pin


def test_lines(spark, cfg: Config, n_items: int, collapse: bool, version: int) -> DataFrame:
    """The test lines as a DataFrame (prefix, label): the most recent `evaluate.max_test_sessions`
    test sessions in the model's vocabulary, spread over every core by session before each is
    exploded into its next-item steps, so the lines are built and ranked where they are."""
    recent = recent_sessions_frame(spark, cfg, "test", cfg.evaluate.max_test_sessions, version=version)
    sessions = known_items(recent.repartition(task_count(spark), "session_id"), n_items, collapse)
    return lines_frame(sessions)


def fitted_baselines(spark, cfg: Config, n_items: int, collapse: bool, version: int) -> BaselineRanker:
    """Most popular and session-kNN for the executors: the most recent `evaluate.max_train_sessions`
    train sessions (as the model knows them, oldest first) shipped as one file of CSR arrays, which
    is all the driver holds of them."""
    recent = recent_sessions_frame(spark, cfg, "train", cfg.evaluate.max_train_sessions, version=version)
    indptr, items = sessions_csr(known_items(recent, n_items, collapse), cfg.evaluate.max_train_sessions)
    log.info("baselines fitted on %d train sessions (%d plays)", len(indptr) - 1, len(items))
    return BaselineRanker(ship_baselines(spark, indptr, items, n_items, cfg.evaluate), cfg.evaluate.batch_size)


def evaluate(cfg: Config, run_id: str | None = None) -> dict[str, Any]:
    """Measure the run (default: the latest finished training run), log it, and pass its registered
    version through the promotion gate. Returns the model's metrics, the baselines', the gate's
    decision (`promotion`) and the driver's peak memory (`driver_memory`, MiB)."""
    started = time.monotonic()
    tracking.configure(cfg.tracking)
    run_id = run_id or latest_training_run(cfg)
    spark = get_spark(cfg)
    shipped, local = ship_model(spark, f"runs:/{run_id}/model")
    logged = load_trusted(local)  # built from the installed package, no code from the artifact
    n_items, collapse = logged.rnn.n_items, logged.collapse
    pin = pin_of(cfg, spark, run_id)
    version = pin.sessions_version
    # The ids must mean the same tracks in the item_index of the sessions measured on (the pinned
    # generation): a rebuilt lake or another one is refused in one line.
    check_model_ids(spark, Lake(cfg.lake), logged.track_ids, pin.item_index_version, f"run {run_id}")
    lines = test_lines(spark, cfg, n_items, collapse, version)
    if lines.isEmpty():
        raise ValueError("the sessions table has no 'test' sessions with a next item: check sessionize.test_days")
    candidates = candidates_mode(cfg.evaluate.candidates, logged.has_ann_index, logged.rnn.cfg.head)
    log.info("ranking the test lines among %s", "every track" if candidates == "exact" else
             f"the {cfg.ann.candidates} candidates the model's index retrieves (evaluate.candidates=ann)")
    rankers = [ModelRanker(shipped, cfg.evaluate.batch_size, candidates, cfg.ann),
               fitted_baselines(spark, cfg, n_items, collapse, version)]
    report = evaluate_lines(lines, rankers, cfg)
    log_evaluation(cfg, run_id, report)
    MlflowClient().set_tag(run_id, CANDIDATES_TAG, candidates)
    decision = gate(cfg, spark, run_id, logged, lines, report.model, report.baselines)
    memory = driver_peak_memory(spark)
    log.info("evaluate took %.1fs; driver peak memory: Python %s MiB, JVM %s MiB", time.monotonic() - started,
             memory["python_peak_rss_mib"], memory["jvm_peak_rss_mib"])
    return {"run_id": run_id, **report.model, "candidates": candidates, "baselines": report.baselines,
            "promotion": decision.as_dict(), "driver_memory": memory}
