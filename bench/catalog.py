"""Scoring at a catalog of ten million tracks: the product's model, index and scorer end to end.

A sampled-head SessionModel of `n_items` tracks (hidden size 64, its session-kNN memory filled with
synthetic artist sessions), the product's item index built from its vectors as `nextplay train`
builds it (model/ann.py, the `ann.*` defaults, 2 threads), and the same listeners ranked through the
index (`score.candidates=ann`) and, for a few of them, by the exact scan. The model is not trained
(training one at 10M tracks does not fit these machines' time): its vectors are the initial random
ones, so `recall_at_20` here says little about a trained model's (the `candidates` stage measures
that at 1M); the rates and the memory are what this stage is for.

- `catalog_ann_users_per_second[V]`: listeners/s through the index, one torch thread (V: 10M in full
  mode, 1M quick, 20k tiny);
- `context.details.catalog`: build seconds, index bytes, the exact scan's listeners/s, the process's
  peak memory (what one scoring worker holding the model and the index needs) and the model's size.
"""
from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nextplay.config import AnnConfig, ModelConfig
from nextplay.model.ann import ItemVectorIndex, item_vectors
from nextplay.model.pyfunc import pad
from nextplay.model.ranking import ExactRanking, RetrievedRanking
from nextplay.model.session import SessionModel

from bench.ann import ArtistSessions
from bench.context import Bench, log
from bench.report import vocab_label

K = 20
SIZES = {"full": 10_000_000, "quick": 1_000_000, "tiny": 20_000}
USERS = {"full": 2000, "quick": 500, "tiny": 50}
EXACT_USERS = {"full": 50, "quick": 50, "tiny": 20}
MEMORY_SESSIONS = {"full": 100_000, "quick": 100_000, "tiny": 1_000}
HIDDEN = 64
HISTORY = 10
# The index's build breadth per mode: the `ann.ef_construction` default (100) builds a 10M-track
# index in well over an hour on two cores, so full mode builds with faiss's own default breadth;
# the search settings stay the product's defaults.
EF_CONSTRUCTION = {"full": 40}


def catalog_figures(b: Bench) -> dict[str, Any]:
    n_items, mode = SIZES[b.mode.name], b.mode.name
    data = ArtistSessions(n_items, seed=7)
    torch.manual_seed(0)
    started = time.perf_counter()
    model = SessionModel(data.n_items, ModelConfig(hidden_size=HIDDEN, head="sampled"), item_counts=data.item_counts()).eval()
    model.hybrid.remember([row[row > 0].tolist() for row in data.batch(MEMORY_SESSIONS[mode], 8).numpy()])
    model_seconds = time.perf_counter() - started
    model_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    settings = AnnConfig()
    settings.ef_construction = EF_CONSTRUCTION.get(mode, settings.ef_construction)
    started = time.perf_counter()
    index = ItemVectorIndex.build(item_vectors(model), m=settings.m, ef_construction=settings.ef_construction, threads=2)
    build_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp))
        index_bytes = sum(f.stat().st_size for f in Path(tmp).iterdir())
    histories = data.batch(USERS[mode], HISTORY).numpy()
    items, lengths = (torch.from_numpy(a) for a in pad([h[h > 0] for h in histories]))
    ann = RetrievedRanking(lambda q, c: index.search(q, c, settings.ef_search), settings.candidates)
    exact = ExactRanking(b.cfg.score.chunk_size)
    batch = b.cfg.score.batch_size
    torch.set_num_threads(1)
    few = EXACT_USERS[mode]
    with torch.inference_mode():
        model.topk(items[:8], lengths[:8], K, ranking=ann)  # warm: the partition sample, first pages of the index
        t0 = time.perf_counter()
        got = torch.cat([model.topk(items[lo:lo + batch], lengths[lo:lo + batch], K, ranking=ann)[1]
                         for lo in range(0, items.shape[0], batch)])
        ann_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        truth = model.topk(items[:few], lengths[:few], K, ranking=exact)[1]
        exact_seconds = time.perf_counter() - t0
    recall = float(np.mean([len(set(t.tolist()) & set(g.tolist())) / K for t, g in zip(truth, got[:few])]))
    rates = {"ann": items.shape[0] / ann_seconds, "exact": few / exact_seconds}
    b.details["catalog"] = {
        "n_items": data.n_items, "hidden_size": HIDDEN, "vectors": "initial (untrained) weights",
        "memory_sessions": model.hybrid.memory_sessions, "users": items.shape[0], "exact_users": few, "history": HISTORY,
        "threads": 1, "batch_size": batch, "model_seconds": round(model_seconds, 1), "model_bytes": model_bytes,
        "ann": {"candidates": settings.candidates, "ef_search": settings.ef_search, "m": settings.m,
                "ef_construction": settings.ef_construction, "build_seconds": round(build_seconds, 1), "build_threads": 2,
                "index_bytes": index_bytes},
        "users_per_second": rates, "ann_over_exact": rates["ann"] / rates["exact"], "recall_at_20": recall,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    log(f"catalog V={vocab_label(data.n_items)}: ann {rates['ann']:,.0f} users/s, exact {rates['exact']:,.1f} users/s; "
        f"index built in {build_seconds:.0f}s ({index_bytes / 2**30:.1f} GiB), model {model_bytes / 2**30:.1f} GiB, "
        f"peak RSS {b.details['catalog']['peak_rss_bytes'] / 2**30:.1f} GiB")
    return {"catalog_ann_users_per_second": {vocab_label(data.n_items): rates["ann"]}}
