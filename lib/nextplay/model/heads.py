"""Output heads: from a session vector to a log-probability for every item.

Every head answers the same questions, so the model, its top-k search and the evaluation never care
which one is configured:

- `target_log_prob(s, targets, weight)`: the training signal, log p(target | session), one per row;
  this is where the heads differ in cost (full: O(V), sampled: O(batch + negatives),
  bit_tree: O(log V)).
- `chunk_scores(s, weight, start, stop, temperature)`: scores of items [start, stop) (start >= 1) on
  the head's ranking scale, so ranking can stream over a large catalog. A head that is
  `normalized` answers log-probabilities; the softmax heads answer logits / temperature, and the
  ranker accumulates their log-partition in the same pass (one pass over the item matrix, not two).
- `item_scores(s, weight, items, temperature)`: the same scale for a few items per row [B, M]
  (candidates), gathered instead of streamed.

`weight` is the output item matrix [V + 1, D] owned by the model (tied to the input embedding or
not); the bit tree has its own node vectors and ignores it.

With `sparse`, the sampled and bit-tree heads gather the rows they train, item vectors and biases
alike, with `gather_rows`: their gradient then holds only the rows a batch touched, so a step costs
the batch and its negatives instead of the whole catalog, in the optimizer and in the distributed
reduction (a dense [V, D] gradient and optimizer pass per step is what made 1M-item training slow;
`sampled_over_full` and `step_1m_over_10k` in docs/benchmarks.md measure it). The sampled head draws
its negatives from an alias table (`AliasTable`), O(1) per draw whatever the catalog size.
"""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# Elements of gathered vectors [rows, M, D] that item_scores holds at once (64 MB of float32).
ROW_BLOCK_ELEMENTS = 16 * 2**20


class _SparseRowGather(torch.autograd.Function):
    """table[ids] for a 1-D table, whose gradient is a sparse [len(table)] tensor holding only `ids`.
    F.embedding does this for 2-D tables only: a 1-D table viewed as [n, 1] cannot take a sparse
    gradient back through the view."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(ids)
        ctx.rows = table.shape[0]
        return table[ids]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (ids,) = ctx.saved_tensors
        return torch.sparse_coo_tensor(ids.reshape(1, -1), grad.reshape(-1), (ctx.rows,),
                                       check_invariants=False), None


def gather_rows(table: torch.Tensor, ids: torch.Tensor, sparse: bool) -> torch.Tensor:
    """Rows `ids` (any shape) of a [n, D] or [n] table; with `sparse`, the table's gradient is row-sparse
    (only `ids`, repeated ids not yet summed), so the optimizer and the all-reduce see the rows a
    step touched instead of all n."""
    if table.dim() == 2:
        return F.embedding(ids, table, sparse=sparse)
    if sparse:
        return _SparseRowGather.apply(table, ids)
    return table[ids]


class AliasTable(nn.Module):
    """Draws item ids from a fixed distribution in O(1) per draw (Walker's alias method, built by
    Vose's pairing as one vectorised sweep).

    Each of the n columns holds `prob[c]` of its own id and the rest of one other id (`alias[c]`): a
    draw is a uniform column and a biased coin. Built once, O(n log n) on tensors: light columns
    (scaled mass n * p < 1) in index order are topped up by the heavy ones in index order; a heavy
    one that has given so much that it turns light is topped up by the next heavy. Every column's
    donor follows from prefix sums of the light columns' deficits and the heavy ones' excesses,
    which is what makes the sweep one `searchsorted` instead of a Python loop over the catalog.
    """

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        prob, alias = self.build(probs)
        self.register_buffer("prob", prob.float(), persistent=False)
        self.register_buffer("alias", alias, persistent=False)

    @staticmethod
    def build(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prob [n] float64, alias [n] int64) for the distribution `probs` (>= 0, any positive sum)."""
        q = probs.double().flatten()
        n = q.numel()
        if n == 0 or not bool(torch.isfinite(q).all()) or bool((q < 0).any()) or float(q.sum()) <= 0:
            raise ValueError("an alias table needs finite, non-negative probabilities with a positive sum")
        q = q * (n / q.sum())
        heavy_mask = q >= 1
        if not bool(heavy_mask.any()):  # rounding: every column a hair under 1
            heavy_mask[q.argmax()] = True
        heavy, light = heavy_mask.nonzero().squeeze(1), (~heavy_mask).nonzero().squeeze(1)
        deficit = torch.cat([q.new_zeros(1), torch.cumsum(1 - q[light], 0)])  # before light i: deficit[i]
        excess = torch.cumsum(q[heavy] - 1, 0)  # through heavy j
        prob, alias = q.clone(), torch.arange(n)
        # Light i is topped up by the first heavy whose excess so far exceeds the deficits before i.
        donor = torch.searchsorted(excess, deficit[:-1], right=True).clamp_max(heavy.numel() - 1)
        alias[light] = heavy[donor]
        # Heavy j keeps what is left once it has topped up every light column it serves (and the
        # previous heavy's column): 1 + its excess so far - the deficits it covered.
        served = torch.searchsorted(deficit[:-1], excess, right=False)
        prob[heavy] = 1 + excess - deficit[served]
        alias[heavy[:-1]] = heavy[1:]
        prob[heavy[-1]] = 1.0
        return prob.clamp_(0.0, 1.0), alias

    def distribution(self) -> torch.Tensor:
        """The probability of each id that the table draws with (what `build` was given, up to rounding)."""
        p = self.prob.double()
        return (p.clone().index_add_(0, self.alias, 1 - p)) / p.numel()

    def sample(self, n: int) -> torch.Tensor:
        """`n` ids drawn independently (from torch's global generator)."""
        column = torch.randint(self.prob.numel(), (n,), device=self.prob.device)
        keep = torch.rand(n, device=self.prob.device) < self.prob[column]
        return torch.where(keep, column, self.alias[column])


class NegativeSampler(nn.Module):
    """What the sampled head draws its negatives from and corrects its logits by: `neg_probs`, the
    play counts raised to `alpha` and normalised, drawn through an alias table (`table`), and
    `pop_probs`, the counts normalised (the in-batch candidates' distribution). No counts: uniform."""

    def __init__(self, n_items: int, item_counts: np.ndarray | None, alpha: float) -> None:
        super().__init__()
        counts = torch.zeros(n_items + 1, dtype=torch.float64)
        if item_counts is not None:
            counts = torch.as_tensor(np.asarray(item_counts, dtype=np.float64)).clamp_min(0)
        counts[0] = 0.0
        if counts.sum() == 0:
            counts[1:] = 1.0
        smoothed = counts.pow(alpha) * (counts > 0)
        self.register_buffer("neg_probs", (smoothed / smoothed.sum()).float(), persistent=False)
        self.register_buffer("pop_probs", (counts / counts.sum()).float(), persistent=False)
        self.table = AliasTable(smoothed)  # draws from neg_probs, the probabilities log-q corrects by


class FullSoftmax(nn.Module):
    """Softmax over the whole catalog: exact, and cheap enough for catalogs of tens of thousands."""

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.bias = nn.Parameter(torch.zeros(n_items + 1))

    def logits(self, s: torch.Tensor, weight: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return torch.addmm(self.bias[start:stop], s, weight[start:stop].t())

    def target_log_prob(self, s: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        z = self.logits(s, weight, 1, self.n_items + 1)
        return -F.cross_entropy(z, targets - 1, reduction="none")

    normalized = False  # chunk_scores are logits: the ranker adds up their log-partition

    def chunk_scores(self, s: torch.Tensor, weight: torch.Tensor, start: int, stop: int,
                     temperature: float = 1.0) -> torch.Tensor:
        """logits / temperature of items [start, stop); log-probabilities once the log-partition is
        subtracted. The temperature scales the session vector and the bias slice, not the [B, n] product."""
        if temperature == 1.0:
            return self.logits(s, weight, start, stop)
        return torch.addmm(self.bias[start:stop] / temperature, s / temperature, weight[start:stop].t())

    def item_scores(self, s: torch.Tensor, weight: torch.Tensor, items: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
        """logits / temperature of `items` [B, M] (each row its own items), in row blocks so the gathered
        item vectors stay a few tens of megabytes whatever B and M."""
        out = torch.empty(items.shape, dtype=s.dtype, device=s.device)
        rows = max(1, ROW_BLOCK_ELEMENTS // max(1, items.shape[1] * s.shape[1]))
        for lo in range(0, items.shape[0], rows):
            hi = min(items.shape[0], lo + rows)
            ids = items[lo:hi].reshape(-1)
            vectors = weight.index_select(0, ids).view(hi - lo, items.shape[1], -1)  # [b, M, D]
            out[lo:hi] = torch.bmm(vectors, s[lo:hi, :, None])[:, :, 0] + self.bias.index_select(0, ids).view(hi - lo, -1)
        return out / temperature

    def shared_scores(self, s: torch.Tensor, weight: torch.Tensor, items: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
        """logits / temperature [B, n] of the same `items` [n] for every row (one matrix product)."""
        return torch.addmm(self.bias[items], s, weight[items].t()) / temperature


class SampledSoftmax(FullSoftmax):
    """Trains on a sampled softmax, scores with the full one.

    Each row's target competes with a shared candidate set: the batch's targets (drawn, in effect,
    from item popularity; a random `n_negatives` of them when the batch has more, so a batch of long
    sessions does not cost O(targets^2)) plus `n_negatives` items drawn from popularity ** alpha
    (`neg_probs`, through an alias table: O(1) a draw whatever the catalog size). Every logit, the
    target's included, is corrected by the log of that item's expected number of draws (log-q, from
    the same `neg_probs`), without which the sampled objective favours popular items; a candidate equal to the row's own target ("accidental hit") is removed. With `sparse`, the
    candidates' vectors and biases get row-sparse gradients (`gather_rows`).
    """

    def __init__(self, n_items: int, item_counts: np.ndarray | None, n_negatives: int,
                 alpha: float, logq: bool, sparse: bool = False) -> None:
        super().__init__(n_items)
        self.sparse = sparse
        if item_counts is not None and np.shape(item_counts) != (n_items + 1,):
            raise ValueError(f"item_counts must have length n_items + 1 = {n_items + 1}, got {tuple(np.shape(item_counts))}")
        self.item_counts = item_counts  # as given: a loaded model's are pages of its file, read only when training
        self.n_negatives = n_negatives
        self.alpha = alpha
        self.logq = logq
        self._sampler: NegativeSampler | None = None

    @property
    def sampler(self) -> "NegativeSampler":
        """The training-only sampling state, built on first use on the head's device: a model loaded
        to score never builds it (at a million tracks its buffers and their construction cost about
        a sixth of the model's size in every scoring worker)."""
        if self._sampler is None:
            with torch.inference_mode(False), torch.no_grad():  # plain buffers, whatever mode asks first
                self._sampler = NegativeSampler(self.n_items, self.item_counts, self.alpha).to(self.bias.device)
        return self._sampler

    def _candidate_logits(self, s: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, corrected: bool
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Logits of each row's target [N] and of the shared candidates [N, C] (with the log-q
        correction folded into the biases when `corrected` and the head uses it, which saves a pass
        over [N, C]), which candidates are a row's own target (accidental hits, not negatives), and,
        when not corrected, the correction [N + C] for a caller that needs both kinds."""
        n = targets.shape[0]
        in_batch = targets if n <= self.n_negatives else targets[torch.randperm(n, device=s.device)[: self.n_negatives]]
        sampler = self.sampler
        cand = torch.cat([in_batch, sampler.table.sample(self.n_negatives)])
        both = torch.cat([targets, cand])
        log_q = None
        if self.logq:
            expected = in_batch.shape[0] * sampler.pop_probs[both] + self.n_negatives * sampler.neg_probs[both]
            log_q = torch.log(expected.clamp_min(1e-12))
        bias = gather_rows(self.bias, both, self.sparse)
        if corrected and log_q is not None:
            bias, log_q = bias - log_q, None
        positive = (s * gather_rows(weight, targets, self.sparse)).sum(dim=1) + bias[:n]
        z = torch.addmm(bias[n:], s, gather_rows(weight, cand, self.sparse).t())
        hit = cand[None, :] == targets[:, None]
        return positive, z, hit, log_q

    @staticmethod
    def _log_prob(positive: torch.Tensor, z: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
        """log p(target) under the softmax over the target and its candidates (hits removed)."""
        z = z.masked_fill(hit, -math.inf)
        return positive - torch.logaddexp(positive, torch.logsumexp(z, dim=1))

    def target_log_prob(self, s: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        positive, z, hit, _ = self._candidate_logits(s, targets, weight, True)
        return self._log_prob(positive, z, hit)

    def bpr_max(self, s: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, reg: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """GRU4Rec's BPR-max loss per row, and the sampled log-probability of the same candidates
        with the head's inputs detached (for a repeat gate to weigh, without training the head).

        BPR-max compares the target's score with every negative's through a sigmoid, weighting each
        negative by its softmax among the negatives, so the loss concentrates on the negatives that
        currently outrank the target; `reg` penalises their (weighted) squared scores, which keeps
        scores from drifting upward together. Scores pass through an ELU first, as in GRU4Rec.
        """
        positive, z, hit, log_q = self._candidate_logits(s, targets, weight, False)
        r_pos, r_neg = F.elu(positive), F.elu(z)
        w = torch.softmax(r_neg.masked_fill(hit, -math.inf), dim=1)
        above = (w * torch.sigmoid(r_pos[:, None] - r_neg)).sum(dim=1)
        loss = -torch.log(above.clamp_min(1e-24)) + reg * (w * r_neg.square()).sum(dim=1)
        positive, z = positive.detach(), z.detach()
        if log_q is not None:
            n = targets.shape[0]
            positive, z = positive - log_q[:n], z - log_q[None, n:]
        return loss, self._log_prob(positive, z, hit)


class BitTreeSoftmax(nn.Module):
    """Hierarchical softmax on a complete binary tree whose leaf path is the item id's bits.

    Item i has code c = i - 1 over depth D = ceil(log2 V) bits; internal nodes are numbered
    heap-style (root 1, children 2n and 2n + 1), each with its own logistic classifier. Codes >= V
    are unused leaves: a node whose right subtree holds no item sends all its mass left, so the
    probabilities of items 1..V sum to one exactly.
    """

    def __init__(self, n_items: int, dim: int, init_std: float, sparse: bool = False) -> None:
        super().__init__()
        self.n_items = n_items
        self.sparse = sparse
        self.depth = max(1, math.ceil(math.log2(n_items)))
        n_nodes = 1 << self.depth  # internal nodes 1 .. 2^D - 1; row 0 unused
        self.node_weight = nn.Parameter(torch.randn(n_nodes, dim) * init_std)
        self.node_bias = nn.Parameter(torch.zeros(n_nodes))
        node = torch.arange(n_nodes)
        level = torch.floor(torch.log2(node.clamp_min(1).double())).long()
        right_first_code = (2 * node + 1 - (1 << (level + 1))) << (self.depth - level - 1)
        self.register_buffer("right_open", (right_first_code < n_items) & (node > 0), persistent=False)
        shifts = torch.arange(self.depth - 1, -1, -1)
        self.register_buffer("shifts", shifts, persistent=False)

    def _branch_log_probs(self, z: torch.Tensor, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log P(left), log P(right) at `nodes` given their logits `z` (closed right subtrees: 0, -inf)."""
        open_ = self.right_open[nodes]
        left = torch.where(open_, F.logsigmoid(-z), torch.zeros_like(z))
        right = torch.where(open_, F.logsigmoid(z), torch.full_like(z, -math.inf))
        return left, right

    def target_log_prob(self, s: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        code = targets - 1
        leaf = code + (1 << self.depth)
        nodes = leaf[:, None] >> (self.shifts + 1)[None, :]  # ancestors, root first: [N, D]
        bits = (code[:, None] >> self.shifts[None, :]) & 1
        z = torch.einsum("nd,nkd->nk", s, gather_rows(self.node_weight, nodes, self.sparse)) \
            + gather_rows(self.node_bias, nodes, self.sparse)
        left, right = self._branch_log_probs(z, nodes)
        return torch.where(bits.bool(), right, left).sum(dim=1)

    normalized = True  # chunk_scores are log-probabilities already

    def item_scores(self, s: torch.Tensor, weight: torch.Tensor | None, items: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
        """Log-probabilities of `items` [B, M] (1..V), each along its own path, in row blocks;
        `temperature` divides every node's logit as in `chunk_scores`."""
        out = torch.empty(items.shape, dtype=s.dtype, device=s.device)
        rows = max(1, ROW_BLOCK_ELEMENTS // max(1, items.shape[1] * self.depth * s.shape[1]))
        for lo in range(0, items.shape[0], rows):
            hi = min(items.shape[0], lo + rows)
            code = items[lo:hi].clamp_min(1) - 1  # [b, M]
            leaf = code + (1 << self.depth)
            nodes = leaf[..., None] >> (self.shifts + 1)  # [b, M, D] ancestors, root first
            bits = (code[..., None] >> self.shifts) & 1
            z = torch.einsum("bd,bmkd->bmk", s[lo:hi], self.node_weight[nodes]) + self.node_bias[nodes]
            left, right = self._branch_log_probs(z / temperature, nodes)
            out[lo:hi] = torch.where(bits.bool(), right, left).sum(dim=-1)
        return out

    def chunk_scores(self, s: torch.Tensor, weight: torch.Tensor | None, start: int, stop: int,
                     temperature: float = 1.0) -> torch.Tensor:
        """Exact log-probabilities of items [start, stop): expand only the subtrees over that range.
        `temperature` divides every node's logit, so the leaves still sum to one."""
        a, b = start - 1, stop - 2  # first and last code
        top = 1 << self.depth
        logp = torch.zeros(s.shape[0], 1, device=s.device, dtype=s.dtype)
        lo = 1
        for d in range(self.depth):
            hi = (top + b) >> (self.depth - d)
            nodes = torch.arange(lo, hi + 1, device=s.device)
            z = torch.addmm(self.node_bias[lo:hi + 1], s, self.node_weight[lo:hi + 1].t()) / temperature
            left, right = self._branch_log_probs(z, nodes)
            children = torch.stack([logp + left, logp + right], dim=2).flatten(1)  # nodes 2lo .. 2hi+1
            next_lo = (top + a) >> (self.depth - d - 1)
            next_hi = (top + b) >> (self.depth - d - 1)
            logp = children[:, next_lo - 2 * lo: next_hi - 2 * lo + 1]
            lo = next_lo
        return logp


class Head(Protocol):
    """What the model asks of an output head (module docstring); `weight` is None for the bit tree."""

    normalized: bool

    def target_log_prob(self, s: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor: ...

    def chunk_scores(self, s: torch.Tensor, weight: torch.Tensor | None, start: int, stop: int,
                     temperature: float = 1.0) -> torch.Tensor: ...

    def item_scores(self, s: torch.Tensor, weight: torch.Tensor | None, items: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor: ...


def make_head(kind: str, n_items: int, dim: int, item_counts: np.ndarray | None, *, n_negatives: int,
              alpha: float, logq: bool, init_std: float, sparse: bool = False) -> nn.Module:
    if kind == "full":
        return FullSoftmax(n_items)
    if kind == "sampled":
        return SampledSoftmax(n_items, item_counts, n_negatives, alpha, logq, sparse)
    if kind == "bit_tree":
        return BitTreeSoftmax(n_items, dim, init_std, sparse)
    raise ValueError(f"unknown head {kind!r}; choose one of full, sampled, bit_tree")
