"""From the RNN's hidden states to what the output needs at each step: a session vector, and for the
repeat-aware mixture a gate and a distribution over the prefix positions.

`last` reads the final hidden state alone (as GRU4Rec does). `attention` adds attention over the
session's earlier states with the last state as query (NARM-style), so a long session's main purpose
survives the RNN's recency bias. Both attention and the repeat pointer are computed at every prefix
step at once (a causal [T, L] pattern), because training uses every step of a session.

Both use bilinear scores (W_q h_t) . (W_k h_j) / sqrt(H) plus a learned bias per distance t - j:
the [T, L] score matrix is one batched matmul, where additive (NARM) attention would materialise a
[T, L, H] tensor per row, by far the costliest part of training on CPU. The distance bias lets the
pointer learn that the item just played is the likeliest to be played again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

MAX_DISTANCE = 64  # distances further back share one position vector


@dataclass
class Readout:
    session: torch.Tensor  # [R, T, D] session vector per query step
    gate_logit: torch.Tensor | None  # [R, T]  logit of P(repeat) per query step
    pointer_logits: torch.Tensor | None  # [R, T, L] scores over prefix positions, -inf where not allowed


class SessionReadout(nn.Module):
    def __init__(self, hidden_size: int, out_size: int, attention: bool, repeat: bool) -> None:
        super().__init__()
        self.attention = attention
        self.repeat = repeat
        if attention or repeat:
            self.key = nn.Linear(hidden_size, hidden_size, bias=False)
            self.distance_bias = nn.Embedding(MAX_DISTANCE, 2)  # channel 0: attention, 1: pointer
            nn.init.zeros_(self.distance_bias.weight)
        if attention:
            self.attn_query = nn.Linear(hidden_size, hidden_size, bias=False)
        if repeat:
            self.pointer_query = nn.Linear(hidden_size, hidden_size, bias=False)
        state_size = 2 * hidden_size if attention else hidden_size
        self.project = nn.Identity() if state_size == out_size else nn.Linear(state_size, out_size, bias=False)
        if repeat:
            self.gate = nn.Linear(state_size, 1)

    def forward(self, h: torch.Tensor, lengths: torch.Tensor, last_only: bool, detach_repeat: bool = False) -> Readout:
        """`h` [R, L, H] over right-padded rows of `lengths` real steps. Queries are every step
        (training) or only each row's last real step (scoring). `detach_repeat` keeps the gate's
        and pointer's gradients out of `h`."""
        r, l, _ = h.shape
        device = h.device
        if last_only:
            q_pos = (lengths - 1).clamp_min(0)[:, None]  # [R, 1]
            query_h = h[torch.arange(r, device=device)[:, None], q_pos]  # [R, 1, H]
        else:
            q_pos = torch.arange(l, device=device)[None, :]  # [1, L]: the same for every row
            query_h = h
        state = query_h
        gate_logit = pointer_logits = None
        if self.attention or self.repeat:
            j = torch.arange(l, device=device)
            dist = q_pos[:, :, None] - j[None, None, :]  # [R, T, L]
            allowed = (dist >= 0) & (j[None, None, :] < lengths.clamp_min(1)[:, None, None])
            keys = self._keys(h)
            bias = self.distance_bias(dist.clamp(0, MAX_DISTANCE - 1))  # [1 or R, T, L, 2]
            if self.attention:
                alpha = (torch.bmm(self.attn_query(query_h), keys) + bias[..., 0]).masked_fill(~allowed, float("-inf"))
                context = torch.bmm(torch.softmax(alpha, dim=-1), h)
                state = torch.cat([query_h, context], dim=-1)
            if self.repeat:
                r_query, r_keys, r_state = query_h, keys, state
                if detach_repeat:
                    r_query, r_state = query_h.detach(), state.detach()
                    r_keys = self._keys(h.detach())
                pointer_logits = (torch.bmm(self.pointer_query(r_query), r_keys) + bias[..., 1]).masked_fill(~allowed, float("-inf"))
                gate_logit = self.gate(r_state).squeeze(-1)
        return Readout(self.project(state), gate_logit, pointer_logits)

    def _keys(self, h: torch.Tensor) -> torch.Tensor:
        """[R, H, L] keys of every position, scaled for the bilinear scores."""
        return self.key(h).transpose(1, 2) / math.sqrt(h.shape[-1])
