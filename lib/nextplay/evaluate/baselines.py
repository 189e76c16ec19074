"""Baselines read beside every model figure: most popular, first-order Markov chain, and V-SKNN.

All three share the model's contract for the metrics: `fit(sessions, n_items)` on item ids 1..n_items
and `score(prefixes) -> ndarray [B, n_items + 1]` (column 0, padding, is -inf), batched and
vectorised with scipy.sparse so that a whole test file scores in seconds. Most popular and V-SKNN
also fit from CSR arrays (`fit_csr`), the compact form evaluate ships to its executors.

The Markov chain and V-SKNN score only items that co-occurred with the prefix; every other item
would tie at zero and, ties counting against the label, rank last. A popularity term far smaller
than any co-occurrence score breaks those ties the way a practitioner would back off.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp

from nextplay.model.neighbors import SessionNeighbors

_BACKOFF = 1e-6  # popularity tie-break, below any co-occurrence score


def _check_ids(sessions: Sequence[Sequence[int]], n_items: int) -> None:
    for s in sessions:
        if len(s) and (min(s) < 1 or max(s) > n_items):
            raise ValueError(f"item ids must be in 1..{n_items}; found a session with {min(s)}..{max(s)}")


def _popularity(sessions: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    return _item_counts(np.fromiter((x for s in sessions for x in s), dtype=np.int64), n_items)


def _item_counts(items: np.ndarray, n_items: int) -> np.ndarray:
    return np.bincount(np.asarray(items, dtype=np.int64), minlength=n_items + 1).astype(np.float64)[: n_items + 1]


def _check_csr(indptr: np.ndarray, items: np.ndarray, n_items: int) -> None:
    if len(indptr) == 0 or indptr[0] != 0 or indptr[-1] != len(items) or np.any(np.diff(indptr) < 0):
        raise ValueError(f"not CSR rows: indptr must rise from 0 to {len(items)} (the item count)")
    if len(items) and (items.min() < 1 or items.max() > n_items):
        raise ValueError(f"item ids must be in 1..{n_items}; found {items.min()}..{items.max()}")


def _finish(scores: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    scores = scores.astype(np.float32, copy=False)
    scores += (_BACKOFF * popularity / max(popularity.max(), 1.0)).astype(np.float32)
    scores[:, 0] = -np.inf
    return scores


def _last_items(prefixes: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    """Last item of each prefix, 0 when it is unknown (0 or out of range)."""
    last = np.array([p[-1] if len(p) else 0 for p in prefixes], dtype=np.int64)
    return np.where((last >= 1) & (last <= n_items), last, 0)


class MostPopular:
    """Every prefix gets the same ranking: training frequency."""

    def fit(self, sessions: Sequence[Sequence[int]], n_items: int) -> "MostPopular":
        _check_ids(sessions, n_items)
        self.n_items = n_items
        self.popularity = _popularity(sessions, n_items)
        return self

    def fit_csr(self, indptr: np.ndarray, items: np.ndarray, n_items: int) -> "MostPopular":
        """`fit` on sessions given as CSR rows (session r: items[indptr[r]:indptr[r + 1]])."""
        _check_csr(indptr, items, n_items)
        self.n_items = n_items
        self.popularity = _item_counts(items, n_items)
        return self

    def score(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        scores = np.repeat(self.popularity[None, :].astype(np.float32), len(prefixes), axis=0)
        scores[:, 0] = -np.inf
        return scores


class MarkovChain:
    """First order: score(next = j | last = i) = count of i -> j in training (repeats i -> i included)."""

    def fit(self, sessions: Sequence[Sequence[int]], n_items: int) -> "MarkovChain":
        _check_ids(sessions, n_items)
        self.n_items = n_items
        src = np.fromiter((a for s in sessions for a in s[:-1]), dtype=np.int64)
        dst = np.fromiter((b for s in sessions for b in s[1:]), dtype=np.int64)
        self.transitions = sp.csr_matrix((np.ones(len(src)), (src, dst)), shape=(n_items + 1, n_items + 1))
        self.popularity = _popularity(sessions, n_items)
        return self

    def score(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        rows = self.transitions[_last_items(prefixes, self.n_items)].toarray()
        return _finish(rows, self.popularity)


class SessionKNN:
    """V-SKNN (nextplay.model.neighbors, where the algorithm and its measured choices are described),
    with the popularity back-off of the other baselines."""

    def __init__(self, k: int = 500, sample: int = 1000, idf_weight: float = 0.5) -> None:
        self.neighbors = SessionNeighbors(k=k, sample=sample, idf_weight=idf_weight)

    def fit(self, sessions: Sequence[Sequence[int]], n_items: int) -> "SessionKNN":
        _check_ids(sessions, n_items)
        self.n_items = n_items
        self.neighbors.fit(sessions, n_items)
        self.popularity = _popularity(sessions, n_items)
        return self

    def fit_csr(self, indptr: np.ndarray, items: np.ndarray, n_items: int) -> "SessionKNN":
        """`fit` on sessions given as CSR rows, oldest first (session r: items[indptr[r]:indptr[r + 1]])."""
        _check_csr(indptr, items, n_items)
        self.n_items = n_items
        self.neighbors.fit_csr(indptr, items, n_items)
        self.popularity = _item_counts(items, n_items)
        return self

    def score(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        return _finish(self.neighbors.scores(prefixes).toarray(), self.popularity)
