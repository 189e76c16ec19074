"""V-SKNN, session-based nearest neighbours: the baseline beside every figure and the model's memory.

The algorithm (Ludewig & Jannach's V-SKNN, with the choices measured on yoochoose1_64's validation
split, about +2 Recall@20 / +1.3 MRR@20 over linear decay and idf in the query):
- query vector: each prefix item weighted by recency, 1 / (steps from the end + 1);
- candidates: the `sample` most recent stored sessions sharing at least one item (sessions are
  stored in time order, so a larger row is more recent);
- neighbours: the `k` candidates of highest similarity (dot product with the binary session vector),
  the more recent first among equal similarities;
- score of an item: the summed similarity of the neighbours that contain it, times
  1 + idf_weight * idf(item), idf = log(1 + #sessions / #sessions containing the item).

`SessionMemory` keeps the sessions as two tensor buffers, so they travel inside the model's
state_dict (model.pt, checkpoints, the MLflow model) and load with `weights_only=True`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn


def _check_ids(items: np.ndarray, n_items: int) -> None:
    if len(items) and (items.min() < 1 or items.max() > n_items):
        raise ValueError(f"item ids must be in 1..{n_items}; found {items.min()}..{items.max()}")


class SessionNeighbors:
    """V-SKNN scores as a sparse [B, n_items + 1] matrix (only items the neighbours hold)."""

    def __init__(self, k: int = 500, sample: int = 1000, idf_weight: float = 0.5,
                 position_decay: float = 0.0) -> None:
        self.k = k
        self.sample = sample
        self.idf_weight = idf_weight
        self.position_decay = position_decay

    def fit(self, sessions: Sequence[Sequence[int]], n_items: int) -> "SessionNeighbors":
        lengths = np.fromiter((len(s) for s in sessions), dtype=np.int64, count=len(sessions))
        items = np.fromiter((x for s in sessions for x in s), dtype=np.int64, count=int(lengths.sum()))
        _check_ids(items, n_items)  # before the cast to int32 could wrap a huge id into range
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        return self.fit_csr(indptr, items.astype(np.int32), n_items)

    def fit_csr(self, indptr: np.ndarray, items: np.ndarray, n_items: int) -> "SessionNeighbors":
        """Sessions given as CSR rows: session r holds items[indptr[r]:indptr[r + 1]]."""
        _check_ids(items, n_items)
        self.n_items = n_items
        # int32 items: the memory's buffer shares this array instead of holding a second copy
        self.seq_indptr, self.seq_items = np.asarray(indptr, dtype=np.int64), np.asarray(items, dtype=np.int32)
        # a copy: scipy sorts and merges the indices in place, and the play order must survive
        m = sp.csr_matrix((np.ones(len(items), dtype=np.float32), self.seq_items.copy(), self.seq_indptr),
                          shape=(len(indptr) - 1, n_items + 1))
        m.sum_duplicates()
        m.data[:] = 1.0  # a session either contains an item or not
        self.sessions = m
        sessions_t = m.T.tocsr()
        df = np.diff(sessions_t.indptr)
        self.idf = np.log1p(m.shape[0] / np.maximum(df, 1))
        self.recent_t = _last_per_row(sessions_t, self.sample)
        return self

    def queries(self, prefixes: Sequence[Sequence[int]]) -> sp.csr_matrix:
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

    @staticmethod
    def _keep_per_row(sim: sp.csr_matrix, key: np.ndarray, limit: int) -> np.ndarray:
        """Mask of the `limit` entries with the largest `key` in each row of `sim`; among equal keys
        at the cut, the later entries (more recent sessions: rows hold sessions in ascending order) stay.

        Only rows longer than `limit` are touched, each with one partition: a sort of every entry
        of the batch cost 80% of the scoring time on long music sessions.
        """
        keep = np.ones(len(key), dtype=bool)
        for r in np.flatnonzero(np.diff(sim.indptr) > limit):
            lo, hi = sim.indptr[r], sim.indptr[r + 1]
            seg = key[lo:hi]
            cut = np.partition(seg, len(seg) - limit)[len(seg) - limit]  # the limit-th largest
            row_keep = seg > cut
            need = limit - int(row_keep.sum())
            ties = np.flatnonzero(seg == cut)[-need:] if need > 0 else np.zeros(0, dtype=np.int64)
            row_keep[ties] = True
            keep[lo:hi] = row_keep
        return keep

    def scores(self, prefixes: Sequence[Sequence[int]]) -> sp.csr_matrix:
        return self.score_queries(self.queries(prefixes))

    def score_queries(self, queries: sp.csr_matrix) -> sp.csr_matrix:
        """Scores for query vectors from `queries` (the memory keeps them to find each prefix's items)."""
        sim = self._recent_similarities(queries)
        nearest = self._keep_per_row(sim, sim.data.astype(np.float64), self.k)
        sim.data[~nearest] = 0.0
        sim.eliminate_zeros()
        if self.position_decay > 0:
            scores = self._positional_scores(queries, sim)
        else:
            scores = (sim @ self.sessions).tocsr()
        scores = scores.multiply(1.0 + self.idf_weight * self.idf[None, :]).tocsr()
        scores.eliminate_zeros()
        return scores

    def _recent_similarities(self, queries: sp.csr_matrix) -> sp.csr_matrix:
        """[B, sessions] similarity of each query with its `sample` most recent sessions sharing an item.

        Those sessions are each among the `sample` most recent holders of one of the query's items
        (a session in the most recent `sample` of the larger set is in the most recent `sample` of
        every subset holding it), so the candidates come from posting lists cut to their last
        `sample` sessions (`recent_t`) instead of every holder of a popular track: at a million
        tracks and half a million stored sessions the uncut product was most of the scoring time. A
        cut list can miss a candidate's other shared items, so the similarity of each kept
        candidate is then computed from its own items."""
        touched = (queries @ self.recent_t).tocsr()
        keep = self._keep_per_row(touched, touched.indices.astype(np.float64), self.sample)
        rows = np.repeat(np.arange(touched.shape[0]), np.diff(touched.indptr))[keep]
        cands = touched.indices[keep].astype(np.int64)
        starts = self.sessions.indptr[cands]
        counts = self.sessions.indptr[cands + 1] - starts
        pair = np.repeat(np.arange(len(cands)), counts)
        offset = np.arange(len(pair)) - np.repeat(np.cumsum(counts) - counts, counts)
        item = self.sessions.indices[starts[pair] + offset]
        weight = _QueryWeights(queries, self.n_items).of(rows[pair], item)
        sim = np.bincount(pair, weights=weight, minlength=len(cands))
        out = sp.csr_matrix((sim, (rows, cands)), shape=touched.shape)
        out.sort_indices()  # sessions ascending: the nearest-k cut keeps the most recent among equal similarities
        out.eliminate_zeros()
        return out

    def _positional_scores(self, queries: sp.csr_matrix, sim: sp.csr_matrix) -> sp.csr_matrix:
        """Neighbour items weighted by exp(-distance / position_decay) from the neighbour's anchor:
        its occurrence of the prefix item played most recently (STAN's third factor, Garg et al.
        2019). Items next to where the two sessions meet say more about what follows than items
        at the far end of a long neighbour session."""
        sim = sim.tocoo()
        pair_row, pair_session, pair_sim = sim.row, sim.col, sim.data
        starts = self.seq_indptr[pair_session]
        counts = self.seq_indptr[pair_session + 1] - starts
        pair = np.repeat(np.arange(len(counts)), counts)
        pair_first = np.cumsum(counts) - counts
        pos = np.arange(len(pair)) - pair_first[pair]
        item = self.seq_items[starts[pair] + pos]
        row = pair_row[pair].astype(np.int64)  # row * width below passes 2**31 for big batches and catalogs
        queries.sort_indices()
        width = self.n_items + 1
        query_keys = np.repeat(np.arange(queries.shape[0]), np.diff(queries.indptr)) * width + queries.indices
        keys = row * width + item
        at = np.minimum(np.searchsorted(query_keys, keys), max(len(query_keys) - 1, 0))
        match = query_keys[at] == keys if len(query_keys) else np.zeros(len(keys), dtype=bool)
        recency = np.where(match, queries.data[at] if len(query_keys) else 0.0, 0.0)
        # anchor: the most recent prefix item's position in the neighbour (its last occurrence)
        nonempty = counts > 0
        best = np.zeros(len(counts))
        best[nonempty] = np.maximum.reduceat(recency, pair_first[nonempty])
        anchor_key = np.where(match & (recency == best[pair]), pos, -1)
        anchor = np.zeros(len(counts), dtype=np.int64)
        anchor[nonempty] = np.maximum.reduceat(anchor_key, pair_first[nonempty])
        weight = pair_sim[pair] * np.exp(-np.abs(pos - anchor[pair]) / self.position_decay)
        scores = sp.csr_matrix((weight, (row, item)), shape=(queries.shape[0], width))
        scores.sum_duplicates()
        return scores


class _QueryWeights:
    """Each query's weight of an item, looked up in O(1): the batch's query items are numbered
    locally (a catalog-sized map, filled for them alone) and their weights laid out dense,
    [queries, distinct query items]. A binary search over (query, item) keys was a fifth of the
    neighbour search at a million tracks."""

    def __init__(self, queries: sp.csr_matrix, n_items: int) -> None:
        distinct = np.unique(queries.indices)
        self.local = np.full(n_items + 1, -1, dtype=np.int64)
        self.local[distinct] = np.arange(len(distinct))
        self.width = len(distinct) + 1  # the last column: absent
        self.dense = np.zeros(queries.shape[0] * self.width, dtype=np.float64)
        rows = np.repeat(np.arange(queries.shape[0]), np.diff(queries.indptr))
        self.dense[rows * self.width + self.local[queries.indices]] = queries.data

    def of(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Weights [n] of (rows[j], items[j]); 0 where the query lacks the item (local -1: the last column)."""
        column = np.take(self.local, items)
        column[column < 0] = self.width - 1
        return np.take(self.dense, rows * self.width + column)


def _last_per_row(m: sp.csr_matrix, limit: int) -> sp.csr_matrix:
    """`m` with each row cut to its last `limit` entries (columns ascending), values set to 1."""
    m.sort_indices()
    counts = np.diff(m.indptr)
    kept = np.minimum(counts, limit)
    ends = m.indptr[1:]
    offset = np.arange(int(kept.sum())) - np.repeat(np.cumsum(kept) - kept, kept)
    take = np.repeat(ends - kept, kept) + offset
    indptr = np.concatenate([[0], np.cumsum(kept)])
    return sp.csr_matrix((np.ones(len(take), dtype=np.float32), m.indices[take], indptr), shape=m.shape)


@dataclass
class MemoryDistributions:
    """The memory's two views of a batch of prefixes, [B, n_items + 1] CSC each (column slices are
    the scorer's item chunks). A row with no mass (no neighbour, or neighbours holding only the
    prefix's own items) is all zero; the model then leaves that row to the network."""

    everything: sp.csc_matrix  # neighbour scores scaled to sum 1
    novel: sp.csc_matrix  # the same without the prefix's own items, scaled to sum 1


# Prefixes a memory searches at once (SessionMemory.distributions).
QUERY_BLOCK = 64


class SessionMemory(nn.Module):
    """The most recent training sessions, in play order, and session-kNN over them.

    Empty until `remember` is called (the driver does it after training: the memory is data, not
    weights). Loading a state_dict resizes the buffers to what was saved.
    """

    def __init__(self, n_items: int, k: int = 500, sample: int = 1000, position_decay: float = 0.0) -> None:
        super().__init__()
        self.n_items = n_items
        self.k, self.sample, self.position_decay = k, sample, position_decay
        self.register_buffer("indptr", torch.zeros(1, dtype=torch.int64))
        self.register_buffer("items", torch.zeros(0, dtype=torch.int32))
        self._neighbors: SessionNeighbors | None = None

    @property
    def n_sessions(self) -> int:
        return int(self.indptr.numel() - 1)

    def remember(self, sessions: Sequence[Sequence[int]]) -> None:
        """Store `sessions` (item ids 1..n_items, oldest first); ids outside the catalog are refused."""
        fitted = self._search().fit(sessions, self.n_items)
        self.indptr = torch.from_numpy(fitted.seq_indptr)
        self.items = torch.from_numpy(fitted.seq_items)
        self._neighbors = fitted

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Take the saved buffers at their saved sizes (a filled memory is larger than an empty one)."""
        for name in ("indptr", "items"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved).to(getattr(self, name).device))
        self._neighbors = None
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _search(self) -> SessionNeighbors:
        return SessionNeighbors(k=self.k, sample=self.sample, position_decay=self.position_decay)

    def distributions(self, prefixes: Sequence[Sequence[int]]) -> MemoryDistributions:
        """Both views from one neighbour search (the search is most of the hybrid's scoring cost), run
        `QUERY_BLOCK` prefixes at a time: every row's answer is its own, and the search's working
        arrays grow with rows x items x `sample` (about 450 MB for a scoring batch of 512 long
        histories at a million tracks, a sixth of that in blocks of 64, which also run faster)."""
        if self._neighbors is None:
            self._neighbors = self._search().fit_csr(self.indptr.cpu().numpy(), self.items.cpu().numpy(),
                                                     self.n_items)
        if len(prefixes) <= QUERY_BLOCK:
            return self._block_distributions(prefixes)
        blocks = [self._block_distributions(prefixes[lo:lo + QUERY_BLOCK]) for lo in range(0, len(prefixes), QUERY_BLOCK)]
        return MemoryDistributions(sp.vstack([b.everything for b in blocks], format="csc"),
                                   sp.vstack([b.novel for b in blocks], format="csc"))

    def _block_distributions(self, prefixes: Sequence[Sequence[int]]) -> MemoryDistributions:
        queries = self._neighbors.queries(prefixes)
        scores = self._neighbors.score_queries(queries)
        seen = queries.copy()
        seen.data[:] = 1.0
        novel = scores - scores.multiply(seen)
        novel.eliminate_zeros()
        return MemoryDistributions(_rows_summing_to_one(scores), _rows_summing_to_one(novel))


def _rows_summing_to_one(m: sp.csr_matrix) -> sp.csc_matrix:
    total = np.asarray(m.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.where(total > 0, total, 1.0)).dot(m).tocsc()
