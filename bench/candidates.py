"""Scoring through the item-vector index against the exact scorer, end to end, on a trained model.

The model is the `ann` stage's (a sampled-head model trained on artist sessions at 1M items;
trained here when that stage did not run), with its session-kNN memory filled from the same
sessions, so both sides pay for the whole hybrid. The index is the product's (model/ann.py, built
with the `ann.*` defaults as `nextplay train` builds it). Both sides rank the same listeners'
histories with the same batch size on one torch thread, timed interleaved:

- `ann_over_exact`: listeners/s of `score.candidates=ann` over `exact`;
- `ann_recall_at_20`: the share of each listener's exact top 20 that ann returns.

The same two figures for the network alone (the memory set aside: what a model with both kNN
weights at 0 scores) are in the stage's details, `without_memory`.
"""
from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np
import torch

from nextplay.config import AnnConfig
from nextplay.model.ann import ItemVectorIndex, fingerprint, item_vectors
from nextplay.model.pyfunc import pad
from nextplay.model.ranking import ExactRanking, RetrievedRanking

from bench.ann import SIZES, train_model
from bench.context import Bench, log
from bench.measure import interleaved, median

K = 20
USERS = {"full": 2000, "quick": 500, "tiny": 50}
HISTORY = 10


def candidates_figures(b: Bench) -> dict[str, Any]:
    sizes = SIZES[b.mode.name]
    if "ann_model" in b.inputs:
        model, _ = b.inputs["ann_model"]
        data = b.inputs["ann_data"]
    else:
        model, data, _ = train_model(b, sizes.n_items, sizes.train_seconds)
    settings = AnnConfig()
    if model.hybrid.memory is not None:
        model.hybrid.remember([row[row > 0].tolist() for row in data.batch(b.mode.memory_sessions, 8).numpy()])
    started = time.perf_counter()
    index = ItemVectorIndex.build(item_vectors(model), m=settings.m, ef_construction=settings.ef_construction,
                                  threads=2)
    build_seconds = time.perf_counter() - started
    assert index.fingerprint == fingerprint(item_vectors(model))
    users = USERS[b.mode.name]
    histories = data.batch(users, HISTORY).numpy()
    items, lengths = (torch.from_numpy(a) for a in pad([h[h > 0] for h in histories]))
    exact = ExactRanking(b.cfg.score.chunk_size)
    ann = RetrievedRanking(lambda q, c: index.search(q, c, settings.ef_search), settings.candidates)
    batch = b.cfg.score.batch_size
    torch.set_num_threads(1)
    times, rates, recall = _compare(model, items, lengths, exact, ann, batch, b.mode.repeats)
    ratio = rates["ann"] / rates["exact"]
    memory, model.hybrid.memory = model.hybrid.memory, None  # the network alone (knn weights 0)
    try:
        alone_times, alone_rates, alone_recall = _compare(model, items, lengths, exact, ann, batch, b.mode.repeats)
    finally:
        model.hybrid.memory = memory
    b.details["candidates"] = {
        "n_items": model.n_items, "hidden_size": model.cfg.hidden_size, "users": users, "history": HISTORY,
        "memory_sessions": model.hybrid.memory_sessions, "k": K, "threads": 1, "batch_size": batch,
        "ann": {"candidates": settings.candidates, "ef_search": settings.ef_search, "m": settings.m,
                "ef_construction": settings.ef_construction, "build_seconds": round(build_seconds, 1),
                "build_threads": 2},
        "seconds": times, "users_per_second": rates,
        "without_memory": {"seconds": alone_times, "users_per_second": alone_rates, "recall_at_20": alone_recall,
                           "ann_over_exact": alone_rates["ann"] / alone_rates["exact"]},
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    log(f"candidates V={model.n_items:,}: exact {rates['exact']:,.0f} users/s, ann {rates['ann']:,.0f} users/s "
        f"({ratio:.1f}x), recall of the exact top {K} {recall:.3f}; index built in {build_seconds:.0f}s; without the "
        f"memory {alone_rates['ann'] / alone_rates['exact']:.1f}x, recall {alone_recall:.3f}")
    return {"ann_over_exact": ratio, "ann_recall_at_20": recall}


def _compare(model: Any, items: torch.Tensor, lengths: torch.Tensor, exact: ExactRanking, ann: RetrievedRanking,
             batch: int, repeats: int) -> tuple[dict[str, list[float]], dict[str, float], float]:
    """Seconds of each side (interleaved), listeners/s, and the share of each exact top K that ann returns."""
    found: dict[str, list[torch.Tensor]] = {"exact": [], "ann": []}

    def ranked(name: str, ranking: Any):
        def run() -> None:
            found[name] = [model.topk(items[lo:lo + batch], lengths[lo:lo + batch], K, ranking=ranking)[1]
                           for lo in range(0, items.shape[0], batch)]
        return run

    times = interleaved({"exact": ranked("exact", exact), "ann": ranked("ann", ann)}, repeats)
    truth, got = torch.cat(found["exact"]).numpy(), torch.cat(found["ann"]).numpy()
    recall = float(np.mean([len(set(t) & set(g)) / K for t, g in zip(truth, got)]))
    return times, {name: items.shape[0] / median(t) for name, t in times.items()}, recall
