"""`nextplay evaluate`: the test split of `sessions`, ranked against all items, beside the baselines,
then the promotion gate.

Every next-item step of the test sessions is one line (as in the session benchmarks). The model
comes from the training run's logged MLflow model; most-popular and session-kNN are fitted on the
train split of the same snapshot: the sessions version the run pinned, so evaluating an old run
after the lake changed gives the figures it gave then. Lines and training sessions are capped by
`evaluate.max_*` (the most recent sessions are kept): the baselines hold their sessions in the
driver's memory. The model's ids must name the same tracks in that generation's item_index (a
rebuilt or other lake is refused); ids above its vocabulary (tracks that entered the append-only
dictionary after it was trained) are dropped from the sessions it reads. The run's registered version then goes through the gate (evaluate/promote.py),
which measures the current champion on the same lines and decides whether `score` serves it.
"""
from __future__ import annotations

import logging
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from nextplay import tracking
from nextplay.config import Config
from nextplay.data.lines import recent_sessions, session_lines
from nextplay.evaluate.baselines import MostPopular, SessionKNN
from nextplay.evaluate.promote import gate
from nextplay.evaluate.report import evaluate_all, log_evaluation
from nextplay.model.pyfunc import load_logged
from nextplay.spark import get_spark
from nextplay.tables import Lake, Pin, check_model_ids

log = logging.getLogger(__name__)


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


def known_items(sessions: list[list[int]], n_items: int, collapse: bool) -> list[list[int]]:
    """Sessions without the ids a model of `n_items` does not know (tracks the dictionary gained after
    it was trained), repeats collapsed again when training collapsed them, as scoring maps histories."""
    out = []
    for items in sessions:
        kept = [i for i in items if i <= n_items]
        if collapse:
            kept = [i for j, i in enumerate(kept) if j == 0 or i != kept[j - 1]]
        out.append(kept)
    return out


def evaluate(cfg: Config, run_id: str | None = None) -> dict[str, Any]:
    """Measure the run (default: the latest finished training run), log it, and pass its registered
    version through the promotion gate. Returns the model's metrics, the baselines' and the
    gate's decision (`promotion`)."""
    tracking.configure(cfg.tracking)
    run_id = run_id or latest_training_run(cfg)
    logged = load_logged(f"runs:/{run_id}/model")  # built from the installed package, no code from the artifact
    model = logged.rnn
    spark = get_spark(cfg)
    pin = pin_of(cfg, spark, run_id)
    version = pin.sessions_version
    # The ids must mean the same tracks in the item_index of the sessions measured on (the pinned
    # generation): a rebuilt lake or another one is refused in one line.
    check_model_ids(spark, Lake(cfg.lake), logged.track_ids, pin.item_index_version, f"run {run_id}")
    test = known_items(recent_sessions(spark, cfg, "test", cfg.evaluate.max_test_sessions, version=version),
                       model.n_items, logged.collapse)
    prefixes, labels = session_lines(test)
    if not labels:
        raise ValueError("the sessions table has no 'test' sessions with a next item: check sessionize.test_days")
    train = known_items(recent_sessions(spark, cfg, "train", cfg.evaluate.max_train_sessions, version=version),
                        model.n_items, logged.collapse)
    baselines = {"most_popular": MostPopular(),
                 "session_knn": SessionKNN(k=cfg.evaluate.knn_neighbors, sample=cfg.evaluate.knn_sample)}
    for b in baselines.values():
        b.fit(train, model.n_items)
    report = evaluate_all(model, baselines, prefixes, labels, cfg)
    log_evaluation(cfg, run_id, report)
    decision = gate(cfg, run_id, logged, prefixes, labels, report.model, report.baselines)
    return {"run_id": run_id, **report.model, "baselines": report.baselines, "promotion": decision.as_dict()}
