"""Scoring-time mixing: from the trained network's parts to the distribution a model answers with.

The network gives a session vector (read by the head), and with `model.repeat` a gate g and a
pointer distribution p_repeat over the prefix. The answer is p(i) = (1 - g) * p_head(i) + g *
p_repeat(i) (RepeatNet-style): a quarter of the benchmark's test labels were already in the prefix,
and the mixture puts mass on them without distorting the ranking of new items. Without the pointer,
p = p_head. The head's logits are divided by `score_temperature` first.

With a filled `memory`, session-kNN over stored training sessions (model/neighbors.py) joins in
twice. Its distribution over items outside the prefix, p_new, is mixed into what the gate sends to
new items: p_head becomes (1 - v) * p_head + v * p_new (`knn_explore_weight` v; the network's
calibrated gate keeps deciding repeat against explore). Its whole distribution p_knn is then mixed
into the answer: (1 - w) * p + w * p_knn (`knn_weight` w), which lets the neighbours vote on repeats
too. Without the repeat mixture only the second step applies. The neighbourhood finds items the
network ranks low (long-tail sets such as diginetica). Training never sees the memory; the driver
fills it after training (`remember`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nextplay.config import HybridConfig
from nextplay.model.neighbors import MemoryDistributions, SessionMemory

TINY = 1e-30  # keeps log() of a zero repeat probability finite; the branch is masked out anyway


@dataclass
class ScoringContext:
    """Everything scoring needs about a batch of prefixes, computed once per batch.

    The memory's view is kept per row as its support: the items its neighbours hold, sorted, with
    their probability under p_knn (`knn_all`) and p_new (`knn_new`). Every other item gets exactly
    `offset` added to the head's log-probability, so the items worth scoring one by one are the
    support and the prefix (`own_candidates`); the rest of the catalog ranks by the head alone.
    """

    items: torch.Tensor  # [B, L] the prefixes, right-padded with 0
    session: torch.Tensor  # [B, D]
    head: nn.Module
    weight: torch.Tensor | None  # output item matrix as the head sees it
    temperature: float
    log_gate: torch.Tensor | None  # [B] log P(repeat)
    log_explore: torch.Tensor | None  # [B] log P(explore)
    pointer: torch.Tensor | None  # [B, L] repeat distribution over prefix positions
    support: torch.Tensor  # [B, S] items the memory gives mass, ascending; SUPPORT_PAD past a row's end
    knn_all: torch.Tensor  # [B, S] p_knn of those items (neighbour scores scaled to sum 1)
    knn_new: torch.Tensor  # [B, S] p_new: the same without the prefix's items, scaled to sum 1
    log_knn_weight: torch.Tensor | None  # [B, 2]: log w, log (1 - w); w = 0 where a row has no mass
    log_explore_weight: torch.Tensor | None  # [B, 2]: the same for v

    @property
    def offset(self) -> torch.Tensor:
        """[B]: what the mixtures add to the head's log-probability of an item outside the prefix and
        the memory's support (log(1 - v) + log P(explore) + log(1 - w), each where it applies)."""
        out = torch.zeros(self.session.shape[0], dtype=self.session.dtype, device=self.session.device)
        if self.log_explore_weight is not None:
            out = out + self.log_explore_weight[:, 1]
        if self.log_explore is not None:
            out = out + self.log_explore
        if self.log_knn_weight is not None:
            out = out + self.log_knn_weight[:, 1]
        return out

    def own_candidates(self, *extra: torch.Tensor) -> torch.Tensor:
        """[B, S + L (+ extra's widths)] each row's support and prefix items, and the items of `extra`
        [B, *] (0: none), each once (0 fills the rest): the support and prefix are the only items whose
        score is more than the head's plus `offset`."""
        support = torch.where(self.support == SUPPORT_PAD, 0, self.support)
        return unique_rows(torch.cat([support, self.items, *extra], dim=1))


SUPPORT_PAD = torch.iinfo(torch.int64).max  # sorts after every item id


def unique_rows(items: torch.Tensor) -> torch.Tensor:
    """Each row's distinct nonzero ids, ascending from the first nonzero column; 0 in every other slot."""
    ordered, _ = items.sort(dim=1)
    repeat = torch.zeros_like(ordered, dtype=torch.bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    return ordered.masked_fill(repeat, 0)


class HybridScorer(nn.Module):
    """The mixtures of the module docstring; holds the session memory (a buffer pair in the state_dict)."""

    def __init__(self, n_items: int, cfg: HybridConfig, repeat: bool) -> None:
        super().__init__()
        self.cfg = cfg
        uses_memory = cfg.knn_weight > 0 or (repeat and cfg.knn_explore_weight > 0)
        self.memory = SessionMemory(n_items, k=cfg.knn_neighbors, sample=cfg.knn_sample,
                                    position_decay=cfg.knn_position_decay) if uses_memory else None

    def remember(self, sessions: Sequence[Sequence[int]]) -> None:
        """Fill the memory with training sessions (oldest first); a model without one keeps none."""
        if self.memory is not None:
            self.memory.remember(sessions)

    @property
    def memory_sessions(self) -> int:
        return 0 if self.memory is None else self.memory.n_sessions

    def context(self, items: torch.Tensor, lengths: torch.Tensor, session: torch.Tensor, head: nn.Module,
                weight: torch.Tensor | None, gate_logit: torch.Tensor | None,
                pointer_logits: torch.Tensor | None) -> ScoringContext:
        """The per-batch part of scoring: the gate, the pointer and the memory's views."""
        log_gate = log_explore = pointer = None
        if gate_logit is not None:
            log_gate, log_explore = F.logsigmoid(gate_logit), F.logsigmoid(-gate_logit)
            pointer = torch.softmax(pointer_logits, dim=-1)
        batch = items.shape[0]
        support = torch.full((batch, 0), SUPPORT_PAD, dtype=torch.long, device=items.device)
        knn_all = knn_new = torch.zeros((batch, 0), dtype=session.dtype, device=items.device)
        log_knn_weight = log_explore_weight = None
        if self.memory is not None and self.memory.n_sessions > 0:
            rows = items.cpu().numpy()
            knn = self.memory.distributions([r[:n] for r, n in zip(rows, lengths.cpu().tolist())])
            support, knn_all, knn_new = (t.to(items.device) for t in _padded_support(knn, session.dtype))
            if self.cfg.knn_weight > 0:
                log_knn_weight = _log_weights(knn_all, self.cfg.knn_weight)
            if pointer is not None and self.cfg.knn_explore_weight > 0:
                log_explore_weight = _log_weights(knn_new, self.cfg.knn_explore_weight)
        return ScoringContext(items, session, head, weight, self.cfg.score_temperature, log_gate, log_explore,
                              pointer, support, knn_all, knn_new, log_knn_weight, log_explore_weight)


# Elements of the [rows, M, L] prefix comparisons `mixed_scores` holds at once.
_MATCH_BLOCK = 8 * 2**20


def mixed_scores(ctx: ScoringContext, items: torch.Tensor, head_log_prob: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities [B, M] of `items` [B, M] under the whole answer, given the head's
    log-probabilities of them, and which of them are in their row's prefix. The order of the module
    docstring: the memory's new items, the repeat mixture, the memory's whole vote."""
    scores = head_log_prob
    knn_all, knn_new = _support_values(ctx, items)
    if ctx.log_explore_weight is not None:
        scores = _mix(scores, knn_new, ctx.log_explore_weight)
    mass, in_prefix = _repeat_mass(ctx, items)
    if ctx.pointer is not None:
        scores = scores + ctx.log_explore[:, None]
        repeat = ctx.log_gate[:, None] + torch.log(mass.clamp_min(TINY))
        scores = torch.where(mass > 0, torch.logaddexp(repeat, scores), scores)
    if ctx.log_knn_weight is not None:
        scores = _mix(scores, knn_all, ctx.log_knn_weight)
    return scores, in_prefix


def _mix(log_p: torch.Tensor, q: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """log((1 - w) p + w q) where q > 0, log((1 - w) p) elsewhere; log_w [B, 2] = (log w, log(1 - w))."""
    out = log_p + log_w[:, 1:]
    return torch.where(q > 0, torch.logaddexp(out, torch.log(q.clamp_min(TINY)) + log_w[:, :1]), out)


def _support_values(ctx: ScoringContext, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p_knn and p_new of `items` [B, M] (0 outside the row's support), by binary search in the
    sorted support."""
    zeros = torch.zeros(items.shape, dtype=ctx.knn_all.dtype, device=items.device)
    if ctx.support.shape[1] == 0:
        return zeros, zeros
    at = torch.searchsorted(ctx.support, items.contiguous()).clamp_max(ctx.support.shape[1] - 1)
    found = (ctx.support.gather(1, at) == items) & (items > 0)
    return (torch.where(found, ctx.knn_all.gather(1, at), zeros), torch.where(found, ctx.knn_new.gather(1, at), zeros))


def _repeat_mass(ctx: ScoringContext, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pointer's mass on each of `items` [B, M] (summed over every prefix position holding it; 0
    without a pointer) and whether it is in the row's prefix at all."""
    mass = torch.zeros(items.shape, dtype=ctx.session.dtype, device=items.device)
    in_prefix = torch.zeros(items.shape, dtype=torch.bool, device=items.device)
    width = max(1, items.shape[1] * ctx.items.shape[1])
    step = max(1, _MATCH_BLOCK // width)
    for lo in range(0, items.shape[0], step):
        hi = min(items.shape[0], lo + step)
        same = (items[lo:hi, :, None] == ctx.items[lo:hi, None, :]) & (items[lo:hi, :, None] > 0)
        in_prefix[lo:hi] = same.any(dim=2)
        if ctx.pointer is not None:
            mass[lo:hi] = torch.bmm(same.to(mass.dtype), ctx.pointer[lo:hi, :, None].to(mass.dtype))[:, :, 0]
    return mass, in_prefix


def _padded_support(knn: MemoryDistributions, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The memory's two views as per-row padded tensors: support [B, S] ascending (SUPPORT_PAD after a
    row's end), p_knn and p_new [B, S]. p_new's items are a subset of p_knn's."""
    everything, novel = knn.everything.tocsr(), knn.novel.tocsr()
    everything.sort_indices()
    novel.sort_indices()
    batch = everything.shape[0]
    counts = np.diff(everything.indptr)
    width = int(counts.max(initial=0))
    row = np.repeat(np.arange(batch), counts)
    col = np.arange(everything.nnz) - np.repeat(everything.indptr[:-1], counts)
    support = np.full((batch, width), SUPPORT_PAD, dtype=np.int64)
    knn_all = np.zeros((batch, width))
    knn_new = np.zeros((batch, width))
    support[row, col] = everything.indices
    knn_all[row, col] = everything.data
    # p_new's entries: their position in p_knn's row, found by key (row * width_of_catalog + item)
    keys = row.astype(np.int64) * everything.shape[1] + everything.indices
    novel_row = np.repeat(np.arange(batch), np.diff(novel.indptr))
    at = np.searchsorted(keys, novel_row.astype(np.int64) * everything.shape[1] + novel.indices)
    knn_new[row[at], col[at]] = novel.data
    return (torch.from_numpy(support), torch.from_numpy(knn_all).to(dtype), torch.from_numpy(knn_new).to(dtype))


def _log_weights(dist: torch.Tensor, weight: float) -> torch.Tensor:
    """[B, 2] log mixture weights (memory, network) per row; a row the memory has no mass for keeps
    the network alone, so every row stays a distribution."""
    has_mass = dist.sum(dim=1) > 0
    w = torch.where(has_mass, weight, 0.0).to(dist.dtype)
    return torch.stack([torch.log(w), torch.log1p(-w)], dim=1)
