"""SessionModel: the next-item model, composed of parts that each answer one question.

- the item table (`embedding`), shared with the head when embeddings are tied;
- an `Encoder` (model/encoders.py, `model.encoder`): item vectors -> a state per position
  (GRU4Rec's recurrent stack, or SASRec's causal self-attention);
- a readout (model/readout.py): states -> a session vector, and for the repeat mixture a gate and a
  pointer over the prefix;
- a `Head` (model/heads.py, `model.head`): session vector -> log-probability of every item;
- a `Loss` (model/losses.py, `model.loss`), chosen once: what trains the head and the mixture;
- a `HybridScorer` (model/hybrid.py, `model.hybrid.*`): the scoring-time mixtures (repeat pointer,
  session-kNN memory, temperature).

Item ids are 1..n_items; 0 is padding. Every sequence is right-padded. Training uses every step of
every session window (the target of step t is item t + 1), or with lane batches each row's last
target alone (`last_target_loss`); scoring uses each row's last real step.
"""
from __future__ import annotations

import math
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nextplay.config import ModelConfig
from nextplay.model.encoders import make_encoder
from nextplay.model.heads import make_head
from nextplay.model.hybrid import TINY, HybridScorer, ScoringContext, mixed_scores
from nextplay.model.losses import make_loss
from nextplay.model.ranking import ExactRanking, Ranking
from nextplay.model.readout import Readout, SessionReadout

# Rows the encoder reads at once when ranking: its working set is rows x steps x a few hidden sizes
# (a scoring batch of 512 histories of 50 plays at hidden size 256 held 160 MB of it, a sixth of a
# million-track model), while its per-step products stay wide enough to run as fast.
ENCODE_BLOCK = 128


class SessionModel(nn.Module):
    def __init__(self, n_items: int, cfg: ModelConfig, item_counts: np.ndarray | None = None) -> None:
        super().__init__()
        if n_items < 1:
            raise ValueError(f"n_items must be at least 1, got {n_items}")
        self.n_items = n_items
        self.cfg = cfg
        self.item_counts = None if item_counts is None else np.asarray(item_counts, dtype=np.int64)
        dim = cfg.embedding_size or cfg.hidden_size
        # Row-sparse gradients for everything with a row per item (vectors, output biases, tree
        # nodes) wherever a step touches only some rows: not with the full softmax (every row, every step).
        self.sparse_items = cfg.head in ("sampled", "bit_tree")
        self.embedding = nn.Embedding(n_items + 1, dim, padding_idx=0, sparse=self.sparse_items)
        nn.init.normal_(self.embedding.weight, std=cfg.init_std)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.input_dropout = nn.Dropout(cfg.embedding_dropout)
        self.encoder = make_encoder(cfg, dim)
        self.hidden_dropout = nn.Dropout(cfg.dropout)
        self.readout = SessionReadout(cfg.hidden_size, dim, attention=cfg.readout == "attention", repeat=cfg.repeat)
        self.output_items = None
        if cfg.head in ("full", "sampled") and not cfg.tie_embeddings:
            self.output_items = nn.Parameter(torch.randn(n_items + 1, dim) * cfg.init_std)
        self.head = make_head(cfg.head, n_items, dim, self.item_counts, n_negatives=cfg.n_negatives,
                              alpha=cfg.sample_alpha, logq=cfg.logq, init_std=cfg.init_std, sparse=self.sparse_items)
        self.objective = make_loss(cfg)
        self.hybrid = HybridScorer(n_items, cfg.hybrid, repeat=cfg.repeat)

    # -- a catalog that grew --------------------------------------------------------------------
    def item_tables(self) -> list[str]:
        """The state entries whose rows are item ids 0..n_items (row i belongs to item i): the item
        table, the untied output vectors and the head's per-item biases. Every other weight is
        independent of the catalog, except the bit tree's nodes, which `grown` refuses to renumber."""
        names = ["embedding.weight"]
        if self.output_items is not None:
            names.append("output_items")
        if self.cfg.head in ("full", "sampled"):
            names.append("head.bias")
        return names

    def grown(self, n_items: int, item_counts: np.ndarray | None = None) -> "SessionModel":
        """A model of `n_items` >= this one's items (the dictionary only appends): every weight
        copied, the rows of items 1..self.n_items unchanged, the new items' rows initialised as a fresh
        model initialises them (draws from torch's global generator: seed it first). The session
        memory is left empty; it is data, refilled after training (train/launch.py `remember_sessions`)."""
        if n_items < self.n_items:
            raise ValueError(f"a model of {self.n_items} items cannot shrink to {n_items}: item ids are never reused")
        if self.cfg.head == "bit_tree" and n_items != self.n_items:
            raise ValueError("model.head=bit_tree cannot gain items: new items reopen its closed subtrees and move "
                             "every old item's probability; train this catalog from scratch")
        fresh = SessionModel(n_items, self.cfg, item_counts)
        rows = set(self.item_tables())
        state = fresh.state_dict()
        for name, old in self.state_dict().items():
            if name.startswith("hybrid.memory."):
                continue
            if name in rows:
                state[name][:self.n_items + 1] = old
            elif state[name].shape == old.shape:
                state[name] = old.clone()
            else:
                raise ValueError(f"{name}: shape {tuple(old.shape)} cannot grow to {tuple(state[name].shape)}")
        fresh.load_state_dict(state)
        return fresh

    # -- shared pieces ---------------------------------------------------------------------------
    def forward(self, items: torch.Tensor, lengths: torch.Tensor, truncate: bool = False) -> torch.Tensor:
        """States [B, L, H] of right-padded `items` [B, L] (dropout applied in training); `truncate`
        cuts backpropagation between a recurrent encoder's steps (train.bptt_steps=1)."""
        x = self.input_dropout(self.embedding(items))
        return self.hidden_dropout(self.encoder(x, lengths, truncate))

    def _output_weight(self) -> torch.Tensor | None:
        if self.cfg.head == "bit_tree":
            return None
        return self.embedding.weight if self.output_items is None else self.output_items

    # -- training --------------------------------------------------------------------------------
    def loss(self, items: torch.Tensor, lengths: torch.Tensor, first_target: torch.Tensor | None = None,
             truncate: bool = False) -> tuple[torch.Tensor, int]:
        """Summed training loss of every next item of every row, and how many targets it covers.

        `first_target` [B] (optional) skips each row's first targets: they are context that an
        earlier window of the same session already trained on. `truncate` as in `forward`.
        """
        inputs, targets = items[:, :-1], items[:, 1:]
        in_len = (lengths - 1).clamp_min(0)
        h = self.forward(inputs, in_len, truncate)
        ro = self.readout(h, in_len, last_only=False, detach_repeat=self.cfg.repeat_detached)
        steps = torch.arange(inputs.shape[1], device=items.device)[None, :]
        valid = steps < in_len[:, None]
        if first_target is not None:
            valid &= steps >= first_target[:, None]
        rows, cols = valid.nonzero(as_tuple=True)
        return self._objective(inputs, ro, rows, cols, targets[rows, cols])

    def last_target_loss(self, items: torch.Tensor, lengths: torch.Tensor, truncate: bool = False
                         ) -> tuple[torch.Tensor, int]:
        """The loss of each row's last target alone (lane steps, train/lanes.py; every length >= 2).

        With `truncate` and an encoder that has the shortcut (`last_step`), only that step carries
        gradient: dropout touches that step alone, the context runs clean, as it will when scoring
        (dropout over the whole [B, L, H] prefix was a third of such a step's time)."""
        in_len = (lengths - 1).clamp_min(1)
        last_step = getattr(self.encoder, "last_step", None)
        if not truncate or last_step is None:
            return self.loss(items, lengths, first_target=in_len - 1, truncate=truncate)
        inputs, targets = items[:, :-1], items[:, 1:]
        rows = torch.arange(items.shape[0], device=items.device)
        x = self.embedding(inputs)
        h = last_step(x, in_len, self.input_dropout(x[rows, in_len - 1]))
        h = h.index_put((rows, in_len - 1), self.hidden_dropout(h[rows, in_len - 1]))
        ro = self.readout(h, in_len, last_only=True, detach_repeat=self.cfg.repeat_detached)
        return self._objective(inputs, ro, rows, torch.zeros_like(rows), targets[rows, in_len - 1])

    def _objective(self, inputs: torch.Tensor, ro: Readout, rows: torch.Tensor, cols: torch.Tensor,
                   y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The configured loss of the readout's steps (rows, cols) against targets `y`, with the
        repeat mixture over each row's inputs when the model has one."""
        mix = None
        if ro.gate_logit is not None:
            pointer = torch.softmax(ro.pointer_logits[rows, cols], dim=-1)
            p_repeat = (pointer * (inputs[rows] == y[:, None])).sum(dim=-1)
            g = ro.gate_logit[rows, cols]

            def mix(logp: torch.Tensor) -> torch.Tensor:
                explore = F.logsigmoid(-g) + logp
                repeat = F.logsigmoid(g) + torch.log(p_repeat.clamp_min(TINY))
                return torch.where(p_repeat > 0, torch.logaddexp(repeat, explore), explore)

        total = self.objective(self.head, ro.session[rows, cols], y, self._output_weight(), mix)
        return total, int(y.shape[0])

    # -- scoring ---------------------------------------------------------------------------------
    def _context(self, items: torch.Tensor, lengths: torch.Tensor) -> ScoringContext:
        """What ranking needs of each row's prefix. The encoder runs `ENCODE_BLOCK` rows at a time and
        keeps only each row's last readout: its states over every step of every row are the largest
        working set of scoring after the item matrix itself."""
        items, lengths = self._recent(items, lengths)
        parts = [self._last_readout(items[lo:lo + ENCODE_BLOCK], lengths[lo:lo + ENCODE_BLOCK])
                 for lo in range(0, max(1, items.shape[0]), ENCODE_BLOCK)]  # an empty batch as before
        session, gate, pointer = (None if p[0] is None else torch.cat(p) for p in zip(*parts))
        return self.hybrid.context(items, lengths, session, self.head, self._output_weight(), gate, pointer)

    def _last_readout(self, items: torch.Tensor, lengths: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The session vector [B, H], repeat-gate logit [B] and pointer logits [B, L] after each row's last item."""
        ro = self.readout(self.forward(items, lengths), lengths, last_only=True)
        gate = None if ro.gate_logit is None else ro.gate_logit[:, 0]
        pointer = None if ro.pointer_logits is None else ro.pointer_logits[:, 0]
        return ro.session[:, 0], gate, pointer

    def _recent(self, items: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's most recent items, as many as the encoder reads (all of them for a recurrent one)."""
        limit = getattr(self.encoder, "max_positions", None)
        if limit is None or items.shape[1] <= limit:
            return items, lengths
        start = (lengths - limit).clamp_min(0)[:, None]
        cols = (start + torch.arange(limit, device=items.device)[None, :]).clamp_max(items.shape[1] - 1)
        recent = items.gather(1, cols)
        kept = lengths.clamp_max(limit)
        return recent.masked_fill(torch.arange(limit, device=items.device)[None, :] >= kept[:, None], 0), kept

    @torch.no_grad()
    def score_all(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Log-probability [B, n_items + 1] of every item after each row's last real item; column 0 is -inf.

        Dense, [B, V] at once: the reference the streaming rankers (model/ranking.py) are tested
        against, and a small catalog's whole distribution."""
        ctx = self._context(items, lengths)
        head_scores = self.head.chunk_scores(ctx.session, ctx.weight, 1, self.n_items + 1, ctx.temperature)
        if not self.head.normalized:
            head_scores = head_scores - torch.logsumexp(head_scores, dim=1, keepdim=True)
        every = torch.arange(1, self.n_items + 1, device=items.device).expand_as(head_scores)
        scores, _ = mixed_scores(ctx, every, head_scores)
        return torch.cat([torch.full_like(scores[:, :1], -math.inf), scores], dim=1)

    @torch.no_grad()
    def topk(self, items: torch.Tensor, lengths: torch.Tensor, k: int, exclude_seen: bool = False,
             chunk_size: int = 65536, ranking: Ranking | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k items (never 0) by log-probability: exact by default (streamed over item chunks, so
        no [B, n_items] matrix exists for large catalogs), or among the candidates a `ranking`
        retrieves (model/ranking.py). `exclude_seen` drops the prefix's items; -inf scores mark
        rows with fewer than k candidates left."""
        ranking = ranking or ExactRanking(chunk_size)
        return ranking.topk(self._context(items, lengths), self.n_items, k, exclude_seen)

    @torch.no_grad()
    def label_ranks(self, items: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                    chunk_size: int = 65536, ranking: Ranking | None = None) -> torch.Tensor:
        """Rank of each label among all items (or the retrieved candidates), ties counted against the
        label: 1 + #items scoring higher + #other items scoring the same. Labels outside 1..n_items,
        or outside the retrieved candidates, rank +inf (a miss)."""
        ranking = ranking or ExactRanking(chunk_size)
        return ranking.label_ranks(self._context(items, lengths), self.n_items, labels)
