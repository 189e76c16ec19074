"""Measure a model beside the baselines on the same lines (ranked on the executors), and log the
result to its MLflow run.

Metric names in MLflow: `test/model/recall_at_{k}` / `test/model/mrr_at_{k}` for the model,
`test/{baseline}/recall_at_{k}` for each baseline (nextplay/run_metrics.py), so a run page shows
the model and what it has to beat side by side, a section each.
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import mlflow
from pyspark.sql import DataFrame

from nextplay import run_metrics, tracking
from nextplay.config import Config
from nextplay.evaluate.ranking import MODEL, Ranker, measure

log = logging.getLogger(__name__)

CURVE_KS = tuple(range(1, 51))


@dataclass
class EvaluationReport:
    model: dict[str, float]  # recall_at_k / mrr_at_k for evaluate.ks, and lines
    baselines: dict[str, dict[str, float]]
    recall_curves: dict[str, list[float]]  # scorer name -> Recall@K for K = 1..50


def evaluate_lines(lines: DataFrame, rankers: Sequence[Ranker], cfg: Config) -> EvaluationReport:
    """Rank every line's label against all items for the model and every baseline, on the executors
    (evaluate/ranking.py): `lines` is a DataFrame (prefix, label) that never comes to the driver."""
    ks = sorted(set(cfg.evaluate.ks) | set(CURVE_KS))
    measured = measure(lines, rankers, ks)

    def kept(m: Mapping[str, float]) -> dict[str, float]:
        return {k: v for k, v in m.items() if k == "lines" or int(k.rsplit("_", 1)[1]) in cfg.evaluate.ks}

    if MODEL not in measured:
        raise ValueError(f"no ranker scores the model (scorers: {', '.join(measured)})")
    curves = {name: [m[f"recall_at_{k}"] for k in CURVE_KS] for name, m in measured.items()}
    report = EvaluationReport(kept(measured[MODEL]), {n: kept(m) for n, m in measured.items() if n != MODEL},
                              curves)
    log.info("evaluation: %s", summary_line(report))
    return report


def summary_line(report: EvaluationReport, k: int = 20) -> str:
    def fmt(m: Mapping[str, float]) -> str:
        return f"R@{k} {100 * m.get(f'recall_at_{k}', float('nan')):.2f} / MRR@{k} {100 * m.get(f'mrr_at_{k}', float('nan')):.2f}"

    parts = [f"model {fmt(report.model)}"] + [f"{n} {fmt(m)}" for n, m in report.baselines.items()]
    return "; ".join(parts) + f" ({int(report.model.get('lines', 0))} lines)"


def log_evaluation(cfg: Config, run_id: str, report: EvaluationReport) -> None:
    """Metrics, the Recall@K plot and the report as JSON, into an existing run."""
    tracking.configure(cfg.tracking)
    metrics = run_metrics.tested(MODEL, report.model)
    metrics[run_metrics.TEST_LINES] = report.model.get("lines", 0)
    for name, m in report.baselines.items():
        metrics.update(run_metrics.tested(name, m))
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            plot = Path(tmp) / "recall_at_k.png"
            _plot_curves(report.recall_curves, plot)
            mlflow.log_artifact(str(plot))
            data = Path(tmp) / "evaluation.json"
            data.write_text(json.dumps(asdict(report), indent=2))
            mlflow.log_artifact(str(data))


def _plot_curves(curves: Mapping[str, Sequence[float]], path: Path) -> None:
    import matplotlib  # deferred: plotting only; pyplot must be imported after matplotlib.use

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after matplotlib.use("Agg"), so no display is needed

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ax.plot(CURVE_KS, [100 * v for v in values], label=name)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_title("Next-item Recall@K on the test split, all items ranked")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
