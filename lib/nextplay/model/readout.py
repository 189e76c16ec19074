"""From the RNN's hidden states to what the output needs at each step: a session vector, and for the
repeat-aware mixture a gate and a distribution over the prefix positions.

`last` reads the final hidden state alone (the seed article). `attention` adds NARM-style additive
attention over the session's earlier states with the last state as query, so a long session's main
purpose survives the RNN's recency bias. Both attention and the repeat pointer are computed at every
prefix step at once (a causal [T, L] pattern), because training uses every step of a session.

The pairwise features `sigmoid(A h_t + B h_j + P[t - j])` are shared by the attention and the repeat
pointer; P is a learned embedding of the distance back in time, which lets the pointer learn that the
item just played is the likeliest to be played again.
"""
from __future__ import annotations

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
            self.query = nn.Linear(hidden_size, hidden_size, bias=False)
            self.key = nn.Linear(hidden_size, hidden_size)
            self.distance = nn.Embedding(MAX_DISTANCE, hidden_size)
            nn.init.normal_(self.distance.weight, std=0.05)
        if attention:
            self.attn_score = nn.Linear(hidden_size, 1, bias=False)
        if repeat:
            self.pointer_score = nn.Linear(hidden_size, 1, bias=False)
        state_size = 2 * hidden_size if attention else hidden_size
        self.project = nn.Identity() if state_size == out_size else nn.Linear(state_size, out_size, bias=False)
        if repeat:
            self.gate = nn.Linear(state_size, 1)

    def forward(self, h: torch.Tensor, lengths: torch.Tensor, last_only: bool) -> Readout:
        """`h` [R, L, H] over right-padded rows of `lengths` real steps. Queries are every step
        (training) or only each row's last real step (scoring)."""
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
            allowed = (dist >= 0) & (j[None, None, :] < lengths[:, None, None])
            pair = self.query(query_h)[:, :, None, :] + self.key(h)[:, None, :, :]
            pair += self.distance(dist.clamp(0, MAX_DISTANCE - 1))  # in place: [R, T, L, H] is the big one
            pair = torch.sigmoid(pair)
            if self.attention:
                alpha = self.attn_score(pair).squeeze(-1).masked_fill(~allowed, float("-inf"))
                alpha = torch.softmax(alpha, dim=-1)
                context = torch.einsum("rtl,rlh->rth", alpha, h)
                state = torch.cat([query_h, context], dim=-1)
            if self.repeat:
                pointer_logits = self.pointer_score(pair).squeeze(-1).masked_fill(~allowed, float("-inf"))
                gate_logit = self.gate(state).squeeze(-1)
        return Readout(self.project(state), gate_logit, pointer_logits)
