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
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nextplay.config import HybridConfig
from nextplay.model.neighbors import MemoryDistributions, SessionMemory

TINY = 1e-30  # keeps log() of a zero repeat probability finite; the branch is masked out anyway


@dataclass
class ScoringContext:
    """Everything chunk scoring needs, computed once per batch of prefixes."""

    items: torch.Tensor  # [B, L] the prefixes
    session: torch.Tensor  # [B, D]
    head: nn.Module
    weight: torch.Tensor | None  # output item matrix as the head sees it
    norm: torch.Tensor | None  # head's per-row normaliser
    log_gate: torch.Tensor | None  # [B] log P(repeat)
    log_explore: torch.Tensor | None  # [B] log P(explore)
    pointer: torch.Tensor | None  # [B, L] repeat distribution over prefix positions
    knn: MemoryDistributions | None  # the memory's view of the prefixes, when it takes part
    log_knn_weight: torch.Tensor | None  # [B, 2]: log w, log (1 - w); w = 0 where a row has no mass
    log_explore_weight: torch.Tensor | None  # [B, 2]: the same for v


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
                weight: torch.Tensor | None, gate_logit: torch.Tensor | None, pointer_logits: torch.Tensor | None,
                chunk_size: int) -> ScoringContext:
        """The per-batch part of scoring: the head's normaliser, the gate, the pointer and the memory's views."""
        norm = head.normalizer(session, weight, chunk_size, self.cfg.score_temperature)
        log_gate = log_explore = pointer = None
        if gate_logit is not None:
            log_gate, log_explore = F.logsigmoid(gate_logit), F.logsigmoid(-gate_logit)
            pointer = torch.softmax(pointer_logits, dim=-1)
        knn = log_knn_weight = log_explore_weight = None
        if self.memory is not None and self.memory.n_sessions > 0:
            rows = items.cpu().numpy()
            knn = self.memory.distributions([r[:n] for r, n in zip(rows, lengths.cpu().tolist())])
            if self.cfg.knn_weight > 0:
                log_knn_weight = _log_weights(knn.everything, self.cfg.knn_weight, session)
            if pointer is not None and self.cfg.knn_explore_weight > 0:
                log_explore_weight = _log_weights(knn.novel, self.cfg.knn_explore_weight, session)
        return ScoringContext(items, session, head, weight, norm, log_gate, log_explore, pointer, knn,
                              log_knn_weight, log_explore_weight)

    def chunk_scores(self, ctx: ScoringContext, start: int, stop: int) -> torch.Tensor:
        """Log-probabilities [B, stop - start] of items start..stop-1 (start >= 1): the head, the
        memory's new items, the repeat mixture, the memory's whole vote, in that order (module
        docstring). Only the prefix's items have repeat mass, so the repeat mixture is computed for
        those entries alone and written over the dense explore scores."""
        scores = ctx.head.chunk_log_prob(ctx.session, ctx.weight, start, stop, ctx.norm, self.cfg.score_temperature)
        if ctx.log_explore_weight is not None:
            scores = _mix(scores, ctx.knn.novel[:, start:stop], ctx.log_explore_weight)
        if ctx.pointer is not None:
            scores.add_(ctx.log_explore[:, None])
            inside = (ctx.items >= start) & (ctx.items < stop)
            rows, pos = inside.nonzero(as_tuple=True)
            if rows.numel() > 0:
                # repeat mass of each position's item: the pointer summed over every position holding it
                same = ctx.items[:, :, None] == ctx.items[:, None, :]
                mass = torch.bmm(same.to(ctx.pointer.dtype), ctx.pointer[:, :, None])[:, :, 0]
                cols = ctx.items[rows, pos] - start
                mixed = torch.logaddexp(ctx.log_gate[rows] + torch.log(mass[rows, pos].clamp_min(TINY)),
                                        scores[rows, cols])
                scores[rows, cols] = torch.where(mass[rows, pos] > 0, mixed, scores[rows, cols])
        if ctx.log_knn_weight is not None:
            scores = _mix(scores, ctx.knn.everything[:, start:stop], ctx.log_knn_weight)
        return scores


def _log_weights(dist: Any, weight: float, like: torch.Tensor) -> torch.Tensor:
    """[B, 2] log mixture weights (memory, network) per row; a row the memory has no mass for keeps
    the network alone, so every row stays a distribution."""
    has_mass = torch.from_numpy(np.asarray(dist.sum(axis=1)).ravel() > 0).to(like.device)
    w = torch.where(has_mass, weight, 0.0).to(like.dtype)
    return torch.stack([torch.log(w), torch.log1p(-w)], dim=1)


def _mix(log_p: torch.Tensor, dist_chunk: Any, log_w: torch.Tensor) -> torch.Tensor:
    """log((1 - w) p + w q) for a chunk of items, q being a CSC column slice of the memory's view.

    q is sparse (the neighbours' items), so the dense work is one add; the log-sum runs on q's
    entries alone. A dense q cost a third of the scoring rate at a million items.
    """
    out = log_p + log_w[:, 1:]
    q = dist_chunk.tocoo()
    if q.nnz:
        rows = torch.from_numpy(q.row.astype(np.int64)).to(log_p.device)
        cols = torch.from_numpy(q.col.astype(np.int64)).to(log_p.device)
        vals = torch.from_numpy(q.data).to(log_p)
        out[rows, cols] = torch.logaddexp(out[rows, cols], torch.log(vals) + log_w[rows, 0])
    return out
