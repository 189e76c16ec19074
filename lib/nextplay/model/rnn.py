"""SessionRNN: GRU4Rec's recurrent next-item model, with optional readout and repeat mixture.

Item ids are 1..n_items; 0 is padding. Every sequence is right-padded. Training uses every step of
every session (the target of step t is item t + 1); scoring uses each row's last real step.

The output distribution is p(i) = (1 - g) * p_head(i) + g * p_repeat(i) when `repeat` is on
(RepeatNet-style): p_head is the configured head's distribution over the catalog, p_repeat a pointer
distribution over the items already in the prefix and g a learned gate. A quarter of the benchmark's
test labels were already in the prefix; the mixture lets the model put mass on them without
distorting the ranking of new items. With `repeat` off, p = p_head.

At scoring time, with a filled `memory`, session-kNN over stored training sessions
(model/neighbors.py) joins in twice. Its distribution over items outside the prefix, p_new, is mixed
into what the gate sends to new items: p_head becomes (1 - v) * p_head + v * p_new (`knn_explore_weight`
v; the network's calibrated gate keeps deciding repeat against explore). Its whole distribution p_knn
is then mixed into the answer: (1 - w) * p + w * p_knn (`knn_weight` w), which lets the neighbours
vote on repeats too. Without the repeat mixture only the second step applies. The neighbourhood finds
items the network ranks low (long-tail sets such as diginetica). Training never sees the memory; the
driver fills it after training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nextplay.config import ModelConfig
from nextplay.model.cells import RecurrentStack
from nextplay.model.heads import make_head
from nextplay.model.neighbors import MemoryDistributions, SessionMemory
from nextplay.model.readout import SessionReadout

_TINY = 1e-30  # keeps log() of a zero repeat probability finite; the branch is masked out anyway


@dataclass
class _ScoringContext:
    """Everything chunk scoring needs, computed once per batch of prefixes."""

    items: torch.Tensor  # [B, L] the prefixes
    session: torch.Tensor  # [B, D]
    weight: torch.Tensor | None  # output item matrix as the head sees it
    norm: torch.Tensor | None  # head's per-row normaliser
    log_gate: torch.Tensor | None  # [B] log P(repeat)
    log_explore: torch.Tensor | None  # [B] log P(explore)
    pointer: torch.Tensor | None  # [B, L] repeat distribution over prefix positions
    knn: MemoryDistributions | None  # the memory's view of the prefixes, when it takes part
    log_knn_weight: torch.Tensor | None  # [B, 2]: log w, log (1 - w); w = 0 where a row has no mass
    log_explore_weight: torch.Tensor | None  # [B, 2]: the same for v


class SessionRNN(nn.Module):
    def __init__(self, n_items: int, cfg: ModelConfig, item_counts: np.ndarray | None = None) -> None:
        super().__init__()
        if n_items < 1:
            raise ValueError(f"n_items must be at least 1, got {n_items}")
        self.n_items = n_items
        self.cfg = cfg
        self.item_counts = None if item_counts is None else np.asarray(item_counts, dtype=np.int64)
        dim = cfg.embedding_size or cfg.hidden_size
        uses_item_matrix = cfg.head in ("full", "sampled")
        self._cosine = uses_item_matrix and cfg.cosine_scale > 0
        # Row-sparse item gradients wherever a step touches only some rows: not with the full
        # softmax (every row, every step).
        self.sparse_items = cfg.head in ("sampled", "bit_tree")
        self.embedding = nn.Embedding(n_items + 1, dim, padding_idx=0, sparse=self.sparse_items)
        nn.init.normal_(self.embedding.weight, std=cfg.init_std)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.input_dropout = nn.Dropout(cfg.embedding_dropout)
        self.rnn = RecurrentStack(cfg.cell, dim, cfg.hidden_size, cfg.num_layers, cfg.dropout)
        self.hidden_dropout = nn.Dropout(cfg.dropout)
        self.readout = SessionReadout(cfg.hidden_size, dim, attention=cfg.readout == "attention", repeat=cfg.repeat)
        self.output_items = None
        if uses_item_matrix and not cfg.tie_embeddings:
            self.output_items = nn.Parameter(torch.randn(n_items + 1, dim) * cfg.init_std)
        self.head = make_head(cfg.head, n_items, dim, self.item_counts, n_negatives=cfg.n_negatives,
                              alpha=cfg.sample_alpha, logq=cfg.logq, init_std=cfg.init_std,
                              sparse=self.sparse_items, normalize=self._cosine)
        uses_memory = cfg.knn_weight > 0 or (cfg.repeat and cfg.knn_explore_weight > 0)
        self.memory = SessionMemory(n_items, k=cfg.knn_neighbors, sample=cfg.knn_sample,
                                    position_decay=cfg.knn_position_decay) if uses_memory else None

    # -- parameters the optimiser treats per row -------------------------------------------------
    def item_parameter_names(self) -> set[str]:
        """Parameters with one row per item (or tree node): the ones an indexed Adagrad updates row-wise."""
        names = {"embedding.weight"}
        if self.output_items is not None:
            names.add("output_items")
        names.update(f"head.{n}" for n, _ in self.head.named_parameters())
        return names

    # -- shared pieces ---------------------------------------------------------------------------
    def forward(self, items: torch.Tensor, lengths: torch.Tensor, bptt_steps: int = 0) -> torch.Tensor:
        """Hidden states [B, L, H] of right-padded `items` [B, L] (dropout applied in training);
        `bptt_steps` as in RecurrentStack.forward."""
        x = self.input_dropout(self.embedding(items))
        return self.hidden_dropout(self.rnn(x, bptt_steps))

    def _output_weight(self) -> torch.Tensor | None:
        if self.cfg.head == "bit_tree":
            return None
        return self.embedding.weight if self.output_items is None else self.output_items

    def _session_vectors(self, s: torch.Tensor) -> torch.Tensor:
        return F.normalize(s, dim=-1) * self.cfg.cosine_scale if self._cosine else s

    # -- training --------------------------------------------------------------------------------
    def loss(self, items: torch.Tensor, lengths: torch.Tensor,
             first_target: torch.Tensor | None = None, bptt_steps: int = 0) -> tuple[torch.Tensor, int]:
        """Summed training loss of every next item, and how many targets it covers: the negative
        log-likelihood, or with `loss=bpr_max` the head's BPR-max plus the repeat mixture's likelihood.

        `first_target` [B] (optional) skips each row's first targets: they are context that an
        earlier window of the same session already trained on. `bptt_steps` (train.bptt_steps)
        truncates backpropagation through time; 0 keeps the whole session.
        """
        inputs, targets = items[:, :-1], items[:, 1:]
        in_len = (lengths - 1).clamp_min(0)
        last_only = (bptt_steps == 1 and first_target is not None and bool((in_len >= 1).all())
                     and bool((first_target == in_len - 1).all()))
        if last_only:
            # Lane steps: one target per row, whose step is the only one with gradient. Dropout
            # touches that step alone; the context runs clean, as it will when scoring, and
            # dropout over the whole [B, L, H] prefix was a third of such a step's time.
            rows = torch.arange(items.shape[0], device=items.device)
            x = self.embedding(inputs)
            h = self.rnn.last_step(x, in_len, self.input_dropout(x[rows, in_len - 1]))
            h = h.index_put((rows, in_len - 1), self.hidden_dropout(h[rows, in_len - 1]))
            ro = self.readout(h, in_len, last_only=True, detach_repeat=self.cfg.repeat_detached)
            cols = torch.zeros_like(rows)
            y = targets[rows, in_len - 1]
        else:
            h = self.forward(inputs, in_len, bptt_steps)
            ro = self.readout(h, in_len, last_only=False, detach_repeat=self.cfg.repeat_detached)
            steps = torch.arange(inputs.shape[1], device=items.device)[None, :]
            valid = steps < in_len[:, None]
            if first_target is not None:
                valid &= steps >= first_target[:, None]
            rows, cols = valid.nonzero(as_tuple=True)
            y = targets[rows, cols]
        s = self._session_vectors(ro.session[rows, cols])
        head_loss = None
        # The sampled head can keep each session's own items out of its negatives.
        excluding = self.cfg.exclude_session_items and self.cfg.head == "sampled"
        exclude = {"sessions": items, "rows": rows} if excluding else {}
        if self.cfg.loss == "bpr_max":
            head_loss, logp = self.head.bpr_max(s, y, self._output_weight(), self.cfg.bpr_reg, **exclude)
        else:
            logp = self.head.target_log_prob(s, y, self._output_weight(), **exclude)
        if ro.gate_logit is not None:
            pointer = torch.softmax(ro.pointer_logits[rows, cols], dim=-1)
            p_repeat = (pointer * (inputs[rows] == y[:, None])).sum(dim=-1)
            g = ro.gate_logit[rows, cols]
            mixed = torch.logaddexp(F.logsigmoid(g) + torch.log(p_repeat.clamp_min(_TINY)), F.logsigmoid(-g) + logp)
            logp = torch.where(p_repeat > 0, mixed, F.logsigmoid(-g) + logp)
        if head_loss is None:
            return -logp.sum(), int(y.shape[0])
        # BPR-max trains the head; the mixture's likelihood (head detached) trains the gate and pointer.
        return head_loss.sum() - (logp.sum() if ro.gate_logit is not None else 0.0), int(y.shape[0])

    # -- scoring ---------------------------------------------------------------------------------
    def _context(self, items: torch.Tensor, lengths: torch.Tensor, chunk_size: int) -> _ScoringContext:
        h = self.forward(items, lengths)
        ro = self.readout(h, lengths, last_only=True)
        s = self._session_vectors(ro.session[:, 0])
        weight = self._output_weight()
        norm = self.head.normalizer(s, weight, chunk_size, self.cfg.score_temperature)
        log_gate = log_explore = pointer = None
        if ro.gate_logit is not None:
            g = ro.gate_logit[:, 0]
            log_gate, log_explore = F.logsigmoid(g), F.logsigmoid(-g)
            pointer = torch.softmax(ro.pointer_logits[:, 0], dim=-1)
        knn = log_knn_weight = log_explore_weight = None
        if self.memory is not None and self.memory.n_sessions > 0:
            rows = items.cpu().numpy()
            knn = self.memory.distributions([r[:n] for r, n in zip(rows, lengths.cpu().tolist())])
            if self.cfg.knn_weight > 0:
                log_knn_weight = _log_weights(knn.everything, self.cfg.knn_weight, s)
            if pointer is not None and self.cfg.knn_explore_weight > 0:
                log_explore_weight = _log_weights(knn.novel, self.cfg.knn_explore_weight, s)
        return _ScoringContext(items, s, weight, norm, log_gate, log_explore, pointer, knn,
                               log_knn_weight, log_explore_weight)

    def _chunk_scores(self, ctx: _ScoringContext, start: int, stop: int) -> torch.Tensor:
        """Log-probabilities [B, stop - start] of items start..stop-1 (start >= 1): the head, the
        memory's new items, the repeat mixture, the memory's whole vote, in that order (module
        docstring). Only the prefix's items have repeat mass, so the repeat mixture is computed for
        those entries alone and written over the dense explore scores."""
        scores = self.head.chunk_log_prob(ctx.session, ctx.weight, start, stop, ctx.norm, self.cfg.score_temperature)
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
                mixed = torch.logaddexp(ctx.log_gate[rows] + torch.log(mass[rows, pos].clamp_min(_TINY)),
                                        scores[rows, cols])
                scores[rows, cols] = torch.where(mass[rows, pos] > 0, mixed, scores[rows, cols])
        if ctx.log_knn_weight is not None:
            scores = _mix(scores, ctx.knn.everything[:, start:stop], ctx.log_knn_weight)
        return scores

    def _item_chunks(self, chunk_size: int) -> Iterator[tuple[int, int]]:
        for lo in range(1, self.n_items + 1, chunk_size):
            yield lo, min(self.n_items + 1, lo + chunk_size)

    @torch.no_grad()
    def score_all(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Log-probability [B, n_items + 1] of every item after each row's last real item; column 0 is -inf."""
        ctx = self._context(items, lengths, self.n_items + 1)
        scores = self._chunk_scores(ctx, 1, self.n_items + 1)
        return torch.cat([torch.full_like(scores[:, :1], -math.inf), scores], dim=1)

    @torch.no_grad()
    def topk(self, items: torch.Tensor, lengths: torch.Tensor, k: int, exclude_seen: bool = False,
             chunk_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k items (never 0) by log-probability, streamed over item chunks so that no
        [B, n_items] matrix exists for large catalogs; the bit tree is scored chunk by chunk too,
        by expanding only the subtrees over each chunk. `exclude_seen` drops the prefix's items."""
        k = min(k, self.n_items)
        ctx = self._context(items, lengths, chunk_size)
        best_s = torch.full((items.shape[0], 0), -math.inf, device=items.device)
        best_i = torch.zeros((items.shape[0], 0), dtype=torch.long, device=items.device)
        for lo, hi in self._item_chunks(chunk_size):
            scores = self._chunk_scores(ctx, lo, hi)
            if exclude_seen:
                inside = (items >= lo) & (items < hi)
                seen = torch.zeros_like(scores, dtype=torch.int32).scatter_add_(
                    1, torch.where(inside, items - lo, 0), inside.int())
                scores = scores.masked_fill(seen > 0, -math.inf)
            ids = torch.arange(lo, hi, device=items.device).expand_as(scores)
            best_s, pos = torch.cat([best_s, scores], 1).topk(min(k, best_s.shape[1] + hi - lo), dim=1)
            best_i = torch.cat([best_i, ids], 1).gather(1, pos)
        return best_s, best_i

    @torch.no_grad()
    def label_ranks(self, items: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                    chunk_size: int = 65536) -> torch.Tensor:
        """Rank of each label among all items, ties counted against the label: 1 + #items scoring
        higher + #other items scoring the same. Labels outside 1..n_items rank +inf (a miss)."""
        ctx = self._context(items, lengths, chunk_size)
        known = (labels >= 1) & (labels <= self.n_items)
        label_score = torch.full((items.shape[0],), -math.inf, device=items.device)
        chunks = list(self._item_chunks(chunk_size))
        cached = None
        for lo, hi in chunks:
            scores = self._chunk_scores(ctx, lo, hi)
            inside = known & (labels >= lo) & (labels < hi)
            label_score = torch.where(inside, scores.gather(1, (labels - lo).clamp(0, hi - lo - 1)[:, None])[:, 0], label_score)
            cached = scores if len(chunks) == 1 else None
        higher = torch.zeros_like(label_score)
        ties = torch.zeros_like(label_score)
        for lo, hi in chunks:
            scores = cached if cached is not None else self._chunk_scores(ctx, lo, hi)
            higher += (scores > label_score[:, None]).sum(1)
            ties += (scores == label_score[:, None]).sum(1)
        rank = 1 + higher + (ties - 1).clamp_min(0)
        return torch.where(known, rank, torch.full_like(rank, math.inf))


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
