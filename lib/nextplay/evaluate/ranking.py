"""Test lines ranked on the executors, and their metrics aggregated by Spark.

The lines (prefix array<int>, label int) stay a DataFrame: each task ranks its batches of lines
with every scorer it is given (`metrics.rank_lines`, the ranking training's validation runs on the
driver) and returns one rank per line and scorer; one `agg` turns the ranks into Recall@K and MRR@K.
The driver never holds a line. What a task ranks with comes from the driver once per run
(nextplay.shipping): the logged model as an archive, the baselines' training sessions as one file
of compact CSR arrays from which each Python worker fits its baselines once.

A ranker is a small picklable object, `ranker(prefixes, labels) -> {scorer name: ranks}`, so the
promotion gate adds its champion (ids translated on the executors) without touching this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
from pyspark import SparkFiles
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from nextplay.config import AnnConfig, EvaluateConfig
from nextplay.evaluate.baselines import MostPopular, SessionKNN
from nextplay.metrics import rank_lines
from nextplay.shipping import load_cached, ship_file

MODEL = "model"
BASELINES = ("most_popular", "session_knn")

# Per Python worker process: the baselines fitted from the one shipped file it last read.
_FITTED: dict[str, dict[str, Any]] = {}


class Ranker(Protocol):
    names: tuple[str, ...]  # the scorers it ranks with, in the order of its columns

    def __call__(self, prefixes: Sequence[np.ndarray], labels: np.ndarray) -> Mapping[str, np.ndarray]: ...


@dataclass(frozen=True)
class ModelRanker:
    """The shipped model's ranks (`metrics.rank_lines` on its network), in batches of `batch_size`,
    among every item or among the candidates its item-vector index retrieves (`candidates`:
    exact, ann or auto, as evaluate.candidates; model/pyfunc.py `ranking`)."""

    shipped: str
    batch_size: int
    candidates: str = "exact"
    ann: AnnConfig = field(default_factory=AnnConfig)
    names: tuple[str, ...] = (MODEL,)

    def __call__(self, prefixes: Sequence[np.ndarray], labels: np.ndarray) -> Mapping[str, np.ndarray]:
        model = load_cached(self.shipped)
        ranking = model.ranking(self.candidates, self.ann)
        return {self.names[0]: rank_lines(model.rnn, prefixes, labels, self.batch_size, ranking=ranking)}


@dataclass(frozen=True)
class BaselineRanker:
    """Most popular and session-kNN, fitted once per Python worker from the shipped CSR file."""

    shipped: str
    batch_size: int
    names: tuple[str, ...] = BASELINES

    def __call__(self, prefixes: Sequence[np.ndarray], labels: np.ndarray) -> Mapping[str, np.ndarray]:
        fitted = load_baselines(self.shipped)
        return {name: rank_lines(fitted[name], prefixes, labels, self.batch_size) for name in self.names}


def ship_baselines(spark: SparkSession, indptr: np.ndarray, items: np.ndarray, n_items: int,
                   cfg: EvaluateConfig) -> str:
    """The baselines' training sessions (CSR rows, oldest first) and settings as one .npz file for
    the executors; returns its shipped name. The arrays are what the driver holds of the sessions."""

    def write(path: Path) -> None:
        np.savez(path, indptr=np.asarray(indptr, dtype=np.int64), items=np.asarray(items, dtype=np.int32),
                 n_items=n_items, knn_neighbors=cfg.knn_neighbors, knn_sample=cfg.knn_sample)

    return ship_file(spark, write, ".npz", stem="baselines")


def fit_baselines(path: str | Path) -> dict[str, Any]:
    """Most popular and session-kNN fitted from a file `ship_baselines` wrote."""
    with np.load(path) as state:
        indptr, items, n_items = state["indptr"], state["items"], int(state["n_items"])
        knn = SessionKNN(k=int(state["knn_neighbors"]), sample=int(state["knn_sample"]))
    return {"most_popular": MostPopular().fit_csr(indptr, items, n_items),
            "session_knn": knn.fit_csr(indptr, items, n_items)}


def load_baselines(shipped: str) -> dict[str, Any]:
    """`fit_baselines` of the shipped file, at most once per Python worker process (only the latest
    file's baselines are kept, as `load_cached` keeps only the latest model)."""
    fitted = _FITTED.get(shipped)
    if fitted is None:
        _FITTED.clear()
        fitted = fit_baselines(SparkFiles.get(shipped))
        _FITTED[shipped] = fitted
    return fitted


def rank_column(name: str) -> str:
    return f"rank_{name}"


def make_rank_partition(rankers: Sequence[Ranker]) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The mapInPandas function: (prefix, label) batches in, one rank column per scorer out."""
    names = [n for r in rankers for n in r.names]

    def rank_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            if pdf.empty:
                continue
            prefixes = [np.asarray(p, dtype=np.int64) for p in pdf["prefix"]]
            labels = pdf["label"].to_numpy(dtype=np.int64)
            ranks: dict[str, np.ndarray] = {}
            for ranker in rankers:
                ranks.update(ranker(prefixes, labels))
            yield pd.DataFrame({rank_column(n): np.asarray(ranks[n], dtype=np.float64) for n in names})

    return rank_partition


def rank_frame(lines: DataFrame, rankers: Sequence[Ranker]) -> DataFrame:
    """One row per line with a rank column per scorer (+inf: a miss), ranked by the executors."""
    names = [n for r in rankers for n in r.names]
    if len(set(names)) != len(names):
        raise ValueError(f"two rankers score under the same name: {names}")
    schema = ", ".join(f"{rank_column(n)} double" for n in names)
    # Shortest prefixes first within a task, so a batch pads little (a local sort, no shuffle); then
    # by content, so a task's batches are the same on every run whatever order its rows came in.
    lines = lines.select("prefix", "label").sortWithinPartitions(F.size("prefix"), "prefix", "label")
    return lines.mapInPandas(make_rank_partition(rankers), schema)


def aggregate(ranked: DataFrame, names: Sequence[str], ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """recall_at_k, mrr_at_k and lines per scorer from one `agg`, with the semantics of
    `metrics.metrics_from_ranks`: a rank beyond K or +inf is a miss that still counts.

    The agg counts the lines at each rank 1..max(ks) (ranks are whole numbers); the driver sums
    those counts in a fixed order. Integer counts do not depend on the order Spark adds rows in, so
    evaluating a run again gives the same figures to the last bit, as the driver path did."""
    top = max(ks, default=0)
    exprs = [F.count(F.lit(1)).alias("lines")]
    for n in names:
        rank = F.col(rank_column(n))
        exprs += [F.sum((rank == F.lit(float(r))).cast("long")).alias(f"{n}__at_{r}") for r in range(1, top + 1)]
    row = ranked.agg(*exprs).first()
    lines = int(row["lines"])
    out: dict[str, dict[str, float]] = {}
    for n in names:
        at = np.array([0] + [int(row[f"{n}__at_{r}"] or 0) for r in range(1, top + 1)], dtype=np.int64)
        hits = np.cumsum(at)
        reciprocal = np.cumsum(at / np.maximum(np.arange(top + 1), 1))
        m: dict[str, float] = {"lines": lines}
        for k in ks:
            m[f"recall_at_{k}"] = float(hits[k]) / lines if lines else 0.0
            m[f"mrr_at_{k}"] = float(reciprocal[k]) / lines if lines else 0.0
        out[n] = m
    return out


def measure(lines: DataFrame, rankers: Sequence[Ranker], ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """Rank `lines` with every ranker on the executors and aggregate: scorer name -> metrics."""
    return aggregate(rank_frame(lines, rankers), [n for r in rankers for n in r.names], ks)


def task_count(spark: SparkSession) -> int:
    """Partitions to rank in: every core, twice. Ranking is CPU-bound on little data, so adaptive
    execution would pack it into one task; an explicit partition count is never coalesced."""
    return 2 * spark.sparkContext.defaultParallelism
