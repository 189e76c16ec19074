"""Scoring through the item-vector index against the exact scorer, end to end, on a trained model.

The model is the `ann` stage's (a sampled-head model trained on artist sessions at 1M items;
trained here when that stage did not run), with its session-kNN memory filled from the same
sessions, so both sides pay for the whole hybrid. The index is the product's (model/ann.py, built
with the `ann.*` defaults as `nextplay train` builds it). Both sides rank the same listeners'
histories with the same batch size on one torch thread, timed interleaved:

- `ann_over_exact`: listeners/s of `score.candidates=ann` over `exact`;
- `ann_recall_at_20`: the share of each listener's exact top 20 that ann returns.
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
    found: dict[str, list[torch.Tensor]] = {"exact": [], "ann": []}

    def ranked(name: str, ranking: Any):
        def run() -> None:
            found[name] = [model.topk(items[lo:lo + batch], lengths[lo:lo + batch], K, ranking=ranking)[1]
                           for lo in range(0, users, batch)]
        return run

    torch.set_num_threads(1)
    runs = {"exact": ranked("exact", exact), "ann": ranked("ann", ann)}
    times = interleaved(runs, b.mode.repeats)
    truth, got = torch.cat(found["exact"]).numpy(), torch.cat(found["ann"]).numpy()
    recall = float(np.mean([len(set(t) & set(g)) / K for t, g in zip(truth, got)]))
    rates = {name: users / median(t) for name, t in times.items()}
    ratio = rates["ann"] / rates["exact"]
    b.details["candidates"] = {
        "n_items": model.n_items, "hidden_size": model.cfg.hidden_size, "users": users, "history": HISTORY,
        "memory_sessions": model.hybrid.memory_sessions, "k": K, "threads": 1, "batch_size": batch,
        "ann": {"candidates": settings.candidates, "ef_search": settings.ef_search, "m": settings.m,
                "ef_construction": settings.ef_construction, "build_seconds": round(build_seconds, 1),
                "build_threads": 2},
        "seconds": times, "users_per_second": rates,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    log(f"candidates V={model.n_items:,}: exact {rates['exact']:,.0f} users/s, ann {rates['ann']:,.0f} users/s "
        f"({ratio:.1f}x), recall of the exact top {K} {recall:.3f}; index built in {build_seconds:.0f}s")
    return {"ann_over_exact": ratio, "ann_recall_at_20": recall}
