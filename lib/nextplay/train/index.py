"""The item-vector index logged with a trained model (model/ann.py): whether to build it, and the build.

It is built on the driver from the final weights, right before the model is logged, so the index
and the weights it retrieves for are one registry version: an executor can never pair an index
with other weights (the fingerprint check in model/pyfunc.py refuses it anyway).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

import mlflow

from nextplay import run_metrics
from nextplay.config import Config
from nextplay.model import ann
from nextplay.model.session import SessionModel

log = logging.getLogger(__name__)


def wants_index(cfg: Config, n_items: int) -> bool:
    """`ann.build`: always, never, or (auto) for catalogs of `ann.min_items` or more and whenever
    score.candidates or evaluate.candidates asks for ann. A bit-tree head has no item vectors."""
    if cfg.model.head == "bit_tree" or cfg.ann.build == "never":
        return False
    if cfg.ann.build == "always":
        return True
    return n_items >= cfg.ann.min_items or "ann" in (cfg.score.candidates, cfg.evaluate.candidates)


def build_index(cfg: Config, model: SessionModel, folder: Path) -> Path | None:
    """Build and save the index into `folder` when `wants_index`; its build time and size are
    logged to the active run. Returns the folder, or None when no index is wanted."""
    if not wants_index(cfg, model.n_items):
        return None
    if importlib.util.find_spec("faiss") is None:
        if cfg.ann.build == "always" or "ann" in (cfg.score.candidates, cfg.evaluate.candidates):
            raise ModuleNotFoundError("ann: building the item-vector index needs faiss-cpu (pip install faiss-cpu; "
                                      "docs/stack.md), which this environment lacks")
        log.warning("faiss-cpu is not installed: the model is logged without an item-vector index and scores "
                    "exactly (score.candidates=auto); install faiss-cpu to index catalogs of ann.min_items or more")
        return None
    started = time.monotonic()
    vectors = ann.item_vectors(model)
    index = ann.ItemVectorIndex.build(vectors, m=cfg.ann.m, ef_construction=cfg.ann.ef_construction,
                                      threads=os.cpu_count() or 1)
    index.save(folder)
    seconds = time.monotonic() - started
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    mlflow.log_metrics({run_metrics.index("build_seconds"): seconds, run_metrics.index("bytes"): float(size)})
    log.info("item-vector index over %d tracks built in %.1fs (%.1f MB)", model.n_items, seconds, size / 2**20)
    return folder
