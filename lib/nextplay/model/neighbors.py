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
        self.item_weight = 1.0 + self.idf_weight * np.log1p(m.shape[0] / np.maximum(df, 1))  # 1 + w idf
        self.recent_t = _last_per_row(sessions_t, self.sample)  # values 1: sessions_t is binary
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
        at the cut, those of the larger columns (more recent sessions) stay, whatever the order of
        the row's entries (a sparse product leaves them unsorted, and sorting them cost more than
        the product).

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
            if need > 0:
                ties = np.flatnonzero(seg == cut)
                row_keep[ties[np.argsort(sim.indices[lo:hi][ties], kind="stable")[-need:]]] = True
            keep[lo:hi] = row_keep
        return keep

    def scores(self, prefixes: Sequence[Sequence[int]]) -> sp.csr_matrix:
        return self.score_queries(self.queries(prefixes))

    def score_queries(self, queries: sp.csr_matrix) -> sp.csr_matrix:
        """Scores for query vectors from `queries` (the memory keeps them to find each prefix's items)."""
        sim = self._recent_similarities(queries)
        sim = _kept(sim, self._keep_per_row(sim, sim.data, self.k))
        if self.position_decay > 0:
            scores = self._positional_scores(queries, sim)
        else:
            scores = (sim @ self.sessions).tocsr()
        scores = scores.tocsr()
        scores.data *= np.take(self.item_weight, scores.indices)
        scores.eliminate_zeros()
        return scores

    def _recent_similarities(self, queries: sp.csr_matrix) -> sp.csr_matrix:
        """[B, sessions] similarity of each query with its `sample` most recent sessions sharing an item.

        One sparse product with the posting lists cut to their last `sample` sessions (`recent_t`)
        instead of every holder of a popular track (at a million tracks and half a million stored
        sessions the uncut product was most of the scoring time), and its values are already the
        exact similarities of the sessions kept: a kept session s is among the `sample` most recent
        sessions holding any of the query's items, so for each query item i it holds, fewer than
        `sample` holders of i are more recent than s, and s is in i's cut list. The same argument
        makes the kept sessions those of the uncut search."""
        touched = (queries @ self.recent_t).tocsr()
        return _kept(touched, self._keep_per_row(touched, touched.indices, self.sample))

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


def _kept(m: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """The entries of `m` where `keep` [nnz] is set, each row's in their order."""
    kept_before = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])  # kept entries before each position
    indptr = kept_before[m.indptr]
    return sp.csr_matrix((m.data[keep], m.indices[keep], indptr), shape=m.shape)


def _last_per_row(m: sp.csr_matrix, limit: int) -> sp.csr_matrix:
    """`m` with each row cut to its last `limit` entries (columns ascending), values kept."""
    m.sort_indices()
    counts = np.diff(m.indptr)
    kept = np.minimum(counts, limit)
    offset = np.arange(int(kept.sum())) - np.repeat(np.cumsum(kept) - kept, kept)
    take = np.repeat(m.indptr[1:] - kept, kept) + offset
    indptr = np.concatenate([[0], np.cumsum(kept)])
    return sp.csr_matrix((m.data[take], m.indices[take], indptr), shape=m.shape)


@dataclass
class MemoryDistributions:
    """The memory's two views of a batch of prefixes, [B, n_items + 1] CSR each. A row with no mass (no neighbour, or neighbours holding only the
    prefix's own items) is all zero; the model then leaves that row to the network."""

    everything: sp.csr_matrix  # neighbour scores scaled to sum 1
    novel: sp.csr_matrix  # the same without the prefix's own items, scaled to sum 1


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


def _rows_summing_to_one(m: sp.csr_matrix) -> sp.csr_matrix:
    total = np.asarray(m.sum(axis=1)).ravel()
    out = m.copy()
    out.data /= np.repeat(np.where(total > 0, total, 1.0), np.diff(m.indptr))
    return out
