"""Encoders: from a session's item vectors to one state per position, the part of the model that reads
the session's order.

Every encoder answers `forward(x, lengths, truncate)`: `x` [B, L, D] are the item vectors of
right-padded rows (the model owns the item table, which the output head shares when embeddings are
tied), `lengths` [B] their real steps, and the result [B, L, hidden_size] the state after each
position, reading only that position and earlier ones (padding comes after every real step, so it is
never read). `max_positions` is the longest row an encoder reads (None: any); the model gives it each
history's most recent items at scoring time.

- `RecurrentEncoder` (`rnn`, `gru`, `lstm`): GRU4Rec's recurrent stack (model/cells.py). `truncate`
  cuts backpropagation between steps, and `last_step` is the shortcut of steps that train each row's
  last target alone (lane batches, train/lanes.py).
- `SASRecEncoder` (`sasrec`): causal self-attention (SASRec): learned position vectors, blocks of
  multi-head attention over earlier positions and a feed-forward layer, each with dropout, layer
  norm and a residual connection. It has no state to carry between steps, so it trains on whole
  windows only (train.batching=buckets; the config check refuses lanes for it).
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from nextplay.config import ModelConfig
from nextplay.model.cells import RecurrentStack


class Encoder(Protocol):
    max_positions: int | None

    def __call__(self, x: torch.Tensor, lengths: torch.Tensor, truncate: bool = False) -> torch.Tensor: ...


class RecurrentEncoder(nn.Module):
    """A tanh RNN, GRU or LSTM stack over the item vectors."""

    max_positions = None

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.stack = RecurrentStack(cell, input_size, hidden_size, num_layers, dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, truncate: bool = False) -> torch.Tensor:
        return self.stack(x, truncate)

    def last_step(self, x: torch.Tensor, lengths: torch.Tensor, last_input: torch.Tensor) -> torch.Tensor:
        """States where only each row's last real step carries gradient (RecurrentStack.last_step)."""
        return self.stack.last_step(x, lengths, last_input)


class _AttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, size: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(size)
        self.attention = nn.MultiheadAttention(size, heads, dropout=dropout, batch_first=True)
        self.forward_norm = nn.LayerNorm(size)
        self.feed_forward = nn.Sequential(nn.Linear(size, size), nn.GELU(), nn.Dropout(dropout), nn.Linear(size, size))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        y = self.attention_norm(x)
        a, _ = self.attention(y, y, y, attn_mask=causal, need_weights=False)
        x = x + self.dropout(a)
        return x + self.dropout(self.feed_forward(self.forward_norm(x)))


class SASRecEncoder(nn.Module):
    """Causal self-attention over at most `max_positions` item vectors (module docstring)."""

    def __init__(self, input_size: int, hidden_size: int, blocks: int, heads: int, max_positions: int,
                 dropout: float, init_std: float) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.project = nn.Identity() if input_size == hidden_size else nn.Linear(input_size, hidden_size, bias=False)
        self.positions = nn.Embedding(max_positions, hidden_size)
        nn.init.normal_(self.positions.weight, std=init_std)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_AttentionBlock(hidden_size, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, truncate: bool = False) -> torch.Tensor:
        """`truncate` has no meaning without a recurrence and is ignored."""
        length = x.shape[1]
        if length > self.max_positions:
            raise ValueError(f"rows of {length} steps are longer than the encoder's {self.max_positions} positions "
                             "(model.sasrec.max_positions)")
        h = self.dropout(self.project(x) + self.positions.weight[:length])
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)  # True: not attended
        for block in self.blocks:
            h = block(h, causal)
        return self.norm(h)


def make_encoder(cfg: ModelConfig, input_size: int) -> nn.Module:
    """The encoder `model.encoder` names, with its own section's settings."""
    if cfg.encoder == "sasrec":
        s = cfg.sasrec
        return SASRecEncoder(input_size, cfg.hidden_size, s.blocks, s.heads, s.max_positions, cfg.dropout, cfg.init_std)
    return RecurrentEncoder(cfg.encoder, input_size, cfg.hidden_size, cfg.recurrent.num_layers, cfg.dropout)
