"""How figures are named in an MLflow run: `<section>/<figure>`, so the UI groups them by section.

MLflow's run page draws one chart per metric and groups the charts by the part of the name before the
first `/`. Named by section, a training run reads as training curves, validation and what the run
was, and an evaluation as the model beside each baseline, instead of one alphabetical grid.

| section | step | figures |
|---|---|---|
| `train/` | global step | `loss`, `events_per_second` every `train.report_every_steps` steps |
| `epoch/` | epoch | `loss`, `events`, `seconds`, `events_per_second` of each epoch |
| `valid/model/` | epoch | `recall_at_K`, `mrr_at_K` of the network alone on the validation lines |
| `valid/hybrid/` | - | the same for the model as it scores (session memory included), after training |
| `run/` | - | `seconds`, `events_per_second`, `world_size`, `knn_memory_sessions` |
| `index/` | - | the item-vector index: `build_seconds`, `bytes` |
| `test/<scorer>/` | - | `recall_at_K`, `mrr_at_K` on the test lines: `model`, each baseline, `champion` |
| `test/` | - | `lines`: how many test lines were ranked |
"""
from __future__ import annotations

from typing import Mapping

TRAIN_LOSS = "train/loss"
TRAIN_EVENTS_PER_SECOND = "train/events_per_second"
TEST_LINES = "test/lines"
CHAMPION = "champion"  # the scorer name of the registered champion measured on a challenger's lines


def epoch(figure: str) -> str:
    return f"epoch/{figure}"


def valid(figure: str, scorer: str = "model") -> str:
    return f"valid/{scorer}/{figure}"


def run(figure: str) -> str:
    return f"run/{figure}"


def index(figure: str) -> str:
    return f"index/{figure}"


def test(scorer: str, figure: str) -> str:
    return f"test/{scorer}/{figure}"


def tested(scorer: str, figures: Mapping[str, float]) -> dict[str, float]:
    """`figures` of one scorer (recall_at_K, mrr_at_K; `lines` left out) under their test names."""
    return {test(scorer, k): float(v) for k, v in figures.items() if k != "lines"}
