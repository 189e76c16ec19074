"""Ranking a catalog for a batch of prefixes: the exact top-k and label ranks, or those of retrieved candidates.

Both rest on one property of the hybrid (model/hybrid.py): an item outside its row's prefix and the
memory's support scores exactly the head's log-probability plus a per-row constant (`offset`). So
the few items with more mass than that, the row's own candidates, are scored one by one with the
whole mixture, and the rest of the catalog ranks by the head's own scale:

- `ExactRanking` streams the item matrix once, in chunks: per chunk one matrix product, the
  log-partition accumulated from the same logits, the own candidates masked, a running top-k. That
  is a bare matrix product plus top-k, with the partition's exponentials on top (`score_over_gemm`
  in docs/benchmarks.md). Label ranks need a second pass (the threshold is known only once the
  partition is).
- `RetrievedRanking` asks an approximate nearest-neighbour index over the item vectors
  (model/ann.py) for `candidates` items per row, adds the own candidates and scores only that union.
  The softmax's log-partition is then estimated: the union's exact terms plus a fixed uniform sample
  of the other items, scaled to their number. Items outside the union are not ranked at all (a label
  outside it is a miss). Heads without item vectors (the bit tree) cannot use it.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
import torch

from nextplay.model.ann import query_vectors
from nextplay.model.hybrid import ScoringContext, mixed_scores

# Items of the shared uniform sample that estimates a retrieved row's log-partition.
PARTITION_SAMPLE = 4096
# Bytes of item vectors `_item_scores` gathers at once on a CPU: a block small enough to stay in the
# core's cache from the gather to the product, in one buffer reused block after block. Fresh
# tens-of-megabytes blocks cost more in page faults than the gather itself (an ann listener's
# largest part at a million tracks).
GATHER_BLOCK_BYTES = 2 * 2**20


def _chunks(n_items: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(1, n_items + 1, size):
        yield lo, min(n_items + 1, lo + size)


@torch.no_grad()
def _item_scores(ctx: ScoringContext, items: torch.Tensor) -> torch.Tensor:
    """The head's scores [B, M] of `items` [B, M] (each row its own; 0: an empty slot, scored as
    anything finite), as `head.item_scores` gives them (for ranking: no gradient).

    For a head with item vectors the logits are s . W[i] + bias[i], gathered here in blocks of
    rows of about GATHER_BLOCK_BYTES into one reused buffer, the rows taken widest first so that a
    block is only as wide as its widest row's last item (a packed union's tail of empty slots is
    not gathered). The bit tree scores along its paths (`item_scores`)."""
    if ctx.weight is None:
        return ctx.head.item_scores(ctx.session, ctx.weight, items.clamp_min(1), ctx.temperature)
    weight, bias, session = ctx.weight, ctx.head.bias, ctx.session
    batch, width = items.shape
    out = torch.zeros(items.shape, dtype=session.dtype, device=session.device)
    if batch == 0 or width == 0:
        return out
    # each row's extent: its last item's column + 1 (a packed row's number of items)
    extent = torch.where(items > 0, torch.arange(1, width + 1, device=items.device), 0).amax(dim=1)
    extent, order = extent.sort(descending=True)
    widest = int(extent[0])
    if widest == 0:
        return out
    row_bytes = widest * weight.shape[1] * weight.element_size()
    block = max(1, GATHER_BLOCK_BYTES // row_bytes) if weight.device.type == "cpu" else batch
    buffer = torch.empty((min(block, batch) * widest, weight.shape[1]), dtype=weight.dtype, device=weight.device)
    extents = extent.tolist()
    for lo in range(0, batch, block):
        cols = extents[lo]
        if cols == 0:
            break
        rows = order[lo:lo + block]
        ids = items[rows, :cols]
        vectors = torch.index_select(weight, 0, ids.reshape(-1), out=buffer[:ids.numel()])
        dots = torch.bmm(vectors.view(rows.numel(), cols, -1), session[rows, :, None])[:, :, 0]
        out[rows, :cols] = dots + bias.index_select(0, ids.reshape(-1)).view(ids.shape)
    return out if ctx.temperature == 1.0 else out / ctx.temperature


def _own_scores(ctx: ScoringContext, own: torch.Tensor, log_norm: torch.Tensor, exclude_seen: bool) -> torch.Tensor:
    """The whole mixture's log-probabilities of `own` [B, M] (0: an empty slot, scored -inf), the
    head's scores turned into log-probabilities by the per-row `log_norm` [B]."""
    return _mixed(ctx, own, _item_scores(ctx, own) - log_norm[:, None], exclude_seen)


def _mixed(ctx: ScoringContext, own: torch.Tensor, head_log_prob: torch.Tensor, exclude_seen: bool) -> torch.Tensor:
    scores, in_prefix = mixed_scores(ctx, own, head_log_prob)
    invalid = own == 0
    if exclude_seen:
        invalid |= in_prefix
    return scores.masked_fill(invalid, -math.inf)


class _Partition:
    """A softmax's log-partition summed chunk by chunk: per row a running (max, sum of exp(z - max))."""

    def __init__(self, batch: int, device: torch.device) -> None:
        self.max = torch.full((batch,), -math.inf, device=device)
        self.sum = torch.zeros(batch, device=device)

    def add(self, z: torch.Tensor, z_max: torch.Tensor) -> None:
        """Add the terms of `z` [B, n], whose row maxima are `z_max` [B] (-inf: a row of -inf only).
        `z` is overwritten (its exponentials): the callers are done with it, and a copy of a
        [batch, chunk] block per chunk was a measurable share of the exact scorer's time."""
        new_max = torch.maximum(self.max, z_max)
        shift = torch.where(torch.isfinite(new_max), new_max, 0.0)
        terms = z.sub_(shift[:, None]).exp_().sum(dim=1)
        self.sum = self.sum * torch.exp(torch.where(torch.isfinite(self.max), self.max - shift, -math.inf)) + terms
        self.max = new_max

    def finish(self, extra: torch.Tensor) -> torch.Tensor:
        """log Z [B] with the terms of `extra` [B, M] (-inf: none) added."""
        self.add(extra, extra.amax(dim=1))
        return torch.log(self.sum) + torch.where(torch.isfinite(self.max), self.max, 0.0)


def _mask_own(raw: torch.Tensor, own: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """`raw` scores of items [lo, hi) with every row's own candidates set to -inf (they are scored apart)."""
    rows, cols = ((own >= lo) & (own < hi)).nonzero(as_tuple=True)
    if rows.numel():
        raw[rows, own[rows, cols] - lo] = -math.inf
    return raw


def _merge_topk(k: int, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.cat([s for s, _ in parts], dim=1)
    ids = torch.cat([i for _, i in parts], dim=1)
    best, pos = scores.topk(min(k, scores.shape[1]), dim=1)
    return best, ids.gather(1, pos)


def _ranks(higher: torch.Tensor, ties: torch.Tensor) -> torch.Tensor:
    """1 + #items scoring higher + #other items scoring the same (`ties` counts the label itself)."""
    return 1 + higher + (ties - 1).clamp_min(0)


class ExactRanking:
    """Every item of the catalog, streamed `chunk_size` items at a time (see the module docstring)."""

    def __init__(self, chunk_size: int = 65536) -> None:
        self.chunk_size = chunk_size

    def topk(self, ctx: ScoringContext, n_items: int, k: int, exclude_seen: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and ids [B, min(k, n_items)]; -inf marks "no candidate left" (only after exclusion).

        Per chunk: the product, the own candidates masked, the chunk's top-k, and the partition's
        terms exp(z - chunk max) summed, the max being the top-k's first value (no extra pass). The
        own candidates' terms join from their gathered scores, which `_own_scores` needs anyway."""
        k = min(k, n_items)
        head = ctx.head
        own = ctx.own_candidates()
        batch, device = ctx.session.shape[0], ctx.session.device
        partition = _Partition(batch, device) if not head.normalized else None
        best_s = torch.full((batch, 0), -math.inf, device=device)
        best_i = torch.zeros((batch, 0), dtype=torch.long, device=device)
        for lo, hi in _chunks(n_items, self.chunk_size):
            raw = _mask_own(head.chunk_scores(ctx.session, ctx.weight, lo, hi, ctx.temperature), own, lo, hi)
            top_s, top_pos = raw.topk(min(k, hi - lo), dim=1)
            best_s, best_i = _merge_topk(k, [(best_s, best_i), (top_s, top_pos + lo)])
            if partition is not None:
                partition.add(raw, top_s[:, 0])
        own_head = _item_scores(ctx, own)
        if partition is None:
            norm = torch.zeros(batch, device=device)
        else:
            norm = partition.finish(own_head.masked_fill(own == 0, -math.inf))
        dense = best_s - norm[:, None] + ctx.offset[:, None]
        return _merge_topk(k, [(dense, best_i), (_mixed(ctx, own, own_head - norm[:, None], exclude_seen), own)])

    def label_ranks(self, ctx: ScoringContext, n_items: int, labels: torch.Tensor) -> torch.Tensor:
        """Rank of each label among all items, ties counted against it; +inf outside 1..n_items."""
        head = ctx.head
        own = ctx.own_candidates()
        batch, device = ctx.session.shape[0], ctx.session.device
        known = (labels >= 1) & (labels <= n_items)
        safe = labels.clamp(1, n_items)
        log_norm = None if head.normalized else torch.full((batch,), -math.inf, device=device)
        label_raw = torch.full((batch,), -math.inf, device=device)
        chunks = list(_chunks(n_items, self.chunk_size))
        cached = None
        for lo, hi in chunks:
            raw = head.chunk_scores(ctx.session, ctx.weight, lo, hi, ctx.temperature)
            if log_norm is not None:
                log_norm = torch.logaddexp(log_norm, torch.logsumexp(raw, dim=1))
            inside = (safe >= lo) & (safe < hi)
            label_raw = torch.where(inside, raw.gather(1, (safe - lo).clamp(0, hi - lo - 1)[:, None])[:, 0], label_raw)
            cached = raw if len(chunks) == 1 else None
        norm = torch.zeros(batch, device=device) if log_norm is None else log_norm
        own_scores = _own_scores(ctx, own, norm, exclude_seen=False)
        is_label = own == safe[:, None]
        in_own = is_label.any(dim=1)
        label_score = torch.where(in_own, own_scores.masked_fill(~is_label, -math.inf).amax(dim=1),
                                  label_raw - norm + ctx.offset)
        # the head's own scale for the items scored by the head alone
        threshold = torch.where(in_own, label_score - ctx.offset + norm, label_raw)[:, None]
        higher = (own_scores > label_score[:, None]).sum(dim=1).to(label_score.dtype)
        ties = (own_scores == label_score[:, None]).sum(dim=1).to(label_score.dtype)
        for lo, hi in chunks:
            raw = cached if cached is not None else head.chunk_scores(ctx.session, ctx.weight, lo, hi, ctx.temperature)
            raw = _mask_own(raw.clone() if cached is not None else raw, own, lo, hi)
            higher += (raw > threshold).sum(dim=1)
            ties += (raw == threshold).sum(dim=1)
        rank = _ranks(higher, ties)
        return torch.where(known, rank, torch.full_like(rank, math.inf))


# queries [B, D + 1] float32 -> item ids [B, C] (0 where the index found fewer)
Search = Callable[[np.ndarray, int], np.ndarray]


class RetrievedRanking:
    """The `candidates` items an index retrieves per row plus the row's own candidates (module docstring)."""

    def __init__(self, search: Search, candidates: int, partition_sample: int = PARTITION_SAMPLE, seed: int = 0) -> None:
        self.search = search
        self.candidates = candidates
        self.partition_sample = partition_sample
        self.seed = seed
        self._sample: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _uniform_sample(self, n_items: int, device: torch.device) -> torch.Tensor:
        """A fixed uniform sample of item ids, sorted: the same rows score the same on every call."""
        key = (n_items, device)
        if key not in self._sample:
            g = torch.Generator().manual_seed(self.seed)
            n = min(self.partition_sample, n_items)
            self._sample[key] = (torch.randperm(n_items, generator=g)[:n] + 1).sort().values.to(device)
        return self._sample[key]

    def _union(self, ctx: ScoringContext) -> torch.Tensor:
        """[B, M] the retrieved items and the own candidates, each once, packed to the left (0 fills a
        row's tail; M is the widest row), so the gathered item vectors are the union's and no more."""
        if ctx.head.normalized:
            raise ValueError("score.candidates=ann needs a head with item vectors: the bit tree head scores items "
                             "through its tree (use candidates=exact)")
        found = self.search(query_vectors(ctx.session), self.candidates)
        retrieved = torch.from_numpy(np.asarray(found, dtype=np.int64)).to(ctx.session.device)
        union = ctx.own_candidates(retrieved).sort(dim=1, descending=True).values
        return union[:, :max(1, int((union > 0).sum(dim=1).max()))].contiguous()

    def _log_partition(self, ctx: ScoringContext, union: torch.Tensor, z: torch.Tensor, n_items: int) -> torch.Tensor:
        """log Z estimated from the union's head scores `z`: their exact terms plus (items outside it)
        x the mean of exp(logit) over the uniform sample's items outside it."""
        inside = torch.logsumexp(z.masked_fill(union == 0, -math.inf), dim=1)
        sample = self._uniform_sample(n_items, ctx.session.device)
        z_sample = ctx.head.shared_scores(ctx.session, ctx.weight, sample, ctx.temperature)
        at = torch.searchsorted(sample, union).clamp_max(sample.numel() - 1)
        sampled = (sample[at] == union) & (union > 0)
        in_union = torch.zeros(z_sample.shape, dtype=torch.bool, device=z.device)
        in_union[sampled.nonzero()[:, 0], at[sampled]] = True
        outside_sampled = (~in_union).sum(dim=1)
        outside = n_items - (union > 0).sum(dim=1)
        scale = torch.log(outside.clamp_min(1).to(z.dtype)) - torch.log(outside_sampled.clamp_min(1).to(z.dtype))
        rest = torch.logsumexp(z_sample.masked_fill(in_union, -math.inf), dim=1) + scale
        rest = torch.where((outside > 0) & (outside_sampled > 0), rest, torch.full_like(rest, -math.inf))
        return torch.logaddexp(inside, rest)

    def _scores(self, ctx: ScoringContext, n_items: int, exclude_seen: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The union and the whole mixture's log-probabilities of it (the head's scores gathered once)."""
        union = self._union(ctx)
        z = _item_scores(ctx, union)
        log_norm = self._log_partition(ctx, union, z, n_items)
        return union, _mixed(ctx, union, z - log_norm[:, None], exclude_seen)

    def topk(self, ctx: ScoringContext, n_items: int, k: int, exclude_seen: bool) -> tuple[torch.Tensor, torch.Tensor]:
        union, scores = self._scores(ctx, n_items, exclude_seen)
        return _merge_topk(min(k, n_items), [(scores, union)])

    def label_ranks(self, ctx: ScoringContext, n_items: int, labels: torch.Tensor) -> torch.Tensor:
        """Rank of each label among the union; +inf (a miss) when the label is not in it."""
        union, scores = self._scores(ctx, n_items, exclude_seen=False)
        is_label = (union == labels[:, None]) & (labels[:, None] >= 1)
        label_score = scores.masked_fill(~is_label, -math.inf).amax(dim=1)
        higher = (scores > label_score[:, None]).sum(dim=1).to(scores.dtype)
        ties = (scores == label_score[:, None]).sum(dim=1).to(scores.dtype)
        rank = _ranks(higher, ties)
        return torch.where(is_label.any(dim=1), rank, torch.full_like(rank, math.inf))


Ranking = ExactRanking | RetrievedRanking
