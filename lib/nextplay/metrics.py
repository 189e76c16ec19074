"""Next-item rank metrics against the whole catalog (never a sampled set of negatives).

A label's rank is 1 + #items scoring higher + #other items scoring the same: ties count against the
label, so a scorer that gives many items the same score (a baseline with zeros, a saturated model)
cannot look better than it is. A label of 0, or one outside the scorer's catalog, is an item the
scorer cannot know: the line still counts, as a miss. Recall@K is the share of lines whose label
ranks within K (HR@K; P@K in the session papers); MRR@K averages 1/rank, 0 beyond K. These are
offline proxies for what listeners do next, not measurements of it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


# Bytes of dense float32 scores a scorer may return per batch: [batch, V + 1] grows with the catalog,
# so with a million items the batch shrinks to a few dozen prefixes instead of holding gigabytes.
DENSE_SCORES_BUDGET = 64 * 2**20


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """`ranks`: 1-based ranks, +inf for misses. Returns recall_at_k, mrr_at_k (fractions) and lines."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {"lines": int(ranks.shape[0])}
    for k in ks:
        hit = ranks <= k
        out[f"recall_at_{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"mrr_at_{k}"] = float(np.where(hit, 1.0 / np.maximum(ranks, 1.0), 0.0).mean()) if len(ranks) else 0.0
    return out


def ranks_from_scores(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Ranks of `labels` [B] in dense `scores` [B, n_items + 1] (column 0 is padding and never counts)."""
    labels = np.asarray(labels, dtype=np.int64)
    n_items = scores.shape[1] - 1
    known = (labels >= 1) & (labels <= n_items)
    safe = np.where(known, labels, 1)
    label_score = scores[np.arange(len(labels)), safe][:, None]
    items = scores[:, 1:]
    higher = (items > label_score).sum(axis=1)
    ties = (items == label_score).sum(axis=1) - 1
    return np.where(known, 1.0 + higher + np.maximum(ties, 0), np.inf)


def _padded(prefixes: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = np.fromiter((len(p) for p in prefixes), dtype=np.int64, count=len(prefixes))
    items = np.zeros((len(prefixes), max(1, int(lengths.max()))), dtype=np.int64)
    for i, p in enumerate(prefixes):
        items[i, : len(p)] = p
    return torch.from_numpy(items), torch.from_numpy(lengths)


def rank_lines(model: Any, prefixes: Sequence[Sequence[int]], labels: Sequence[int], batch_size: int = 1024,
               device: str | torch.device | None = None, ranking: Any = None) -> np.ndarray:
    """1-based rank of each line's label among all items (+inf: a miss), for one batch of lines.

    `model` is a SessionModel (ranked in torch, streaming over item chunks) or any scorer with
    `score(prefixes) -> ndarray [B, n_items + 1]` (the baselines), so both are measured the same way.
    Prefixes are grouped by length before batching, which only saves padding: ranks do not depend on it.
    A dense scorer's batch is capped by `DENSE_SCORES_BUDGET` for its catalog size (`n_items`).
    The one ranking both the driver (training's validation) and the executors (`nextplay evaluate`) run.
    `ranking`: a SessionModel's ranking (model/ranking.py; default exact over every item).
    """
    if len(prefixes) != len(labels):
        raise ValueError(f"{len(prefixes)} prefixes but {len(labels)} labels")
    if any(len(p) == 0 for p in prefixes):
        raise ValueError("every prefix needs at least one item")
    labels_arr = np.asarray(labels, dtype=np.int64)
    order = np.argsort([len(p) for p in prefixes], kind="stable")
    ranks = np.empty(len(prefixes), dtype=np.float64)
    is_torch = isinstance(model, torch.nn.Module)
    width = getattr(model, "n_items", None)
    if not is_torch and width:
        batch_size = max(1, min(batch_size, DENSE_SCORES_BUDGET // (4 * (int(width) + 1))))
    if is_torch:
        was_training = model.training
        model.eval()
        dev = torch.device(device) if device is not None else next(model.parameters()).device
    for lo in range(0, len(order), batch_size):
        idx = order[lo: lo + batch_size]
        batch = [prefixes[i] for i in idx]
        if is_torch:
            items, lengths = _padded(batch)
            r = model.label_ranks(items.to(dev), lengths.to(dev), torch.from_numpy(labels_arr[idx]).to(dev),
                                  ranking=ranking)
            ranks[idx] = r.cpu().numpy()
        else:
            ranks[idx] = ranks_from_scores(np.asarray(model.score(batch)), labels_arr[idx])
    if is_torch and was_training:
        model.train()
    return ranks


def evaluate_model(model: Any, prefixes: Sequence[Sequence[int]], labels: Sequence[int],
                   ks: Sequence[int] = (10, 20), batch_size: int = 1024,
                   device: str | torch.device | None = None) -> dict[str, float]:
    """Recall@K and MRR@K of `model` on (prefix, label) lines held in this process (see `rank_lines`)."""
    return metrics_from_ranks(rank_lines(model, prefixes, labels, batch_size, device), ks)
