"""The recurrent core of GRU4Rec's session model (the `rnn`, `gru` and `lstm` encoders): h_{i+1} = f(W h_i + b_{y_i}), as tanh RNN, GRU or LSTM."""
from __future__ import annotations

import torch
from torch import nn

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class RecurrentStack(nn.Module):
    """A stack of one cell type over right-padded batches.

    No packing: inputs are right-padded, so the states at real positions never see padding, and
    batches arrive grouped by length, so the padded tail is short. Packing would cost more than it
    saves on CPU.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
        self.rnn = CELLS[cell](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                               dropout=dropout if num_layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, truncate: bool = False) -> torch.Tensor:
        """States [B, L, H] of inputs [B, L, D]. `truncate` cuts the gradient between steps (the
        values are the same): GRU4Rec's official code trains so, every step fed the previous state
        as a constant. On diginetica's validation split that made the RNN alone better (+0.5
        Recall@20, +1.5 with Adagrad); on yoochoose1_64 it cost 0.2. Steps are not cheaper for it
        (bench: 0.96x); lane steps take `last_step` instead, which is."""
        if not truncate or x.shape[1] <= 1 or not torch.is_grad_enabled():
            out, _ = self.rnn(x)
            return out
        outs, state = [], None
        for t in range(x.shape[1]):
            out, state = self.rnn(x[:, t:t + 1], _detached(state))
            outs.append(out)
        return torch.cat(outs, dim=1)

    def last_step(self, x: torch.Tensor, lengths: torch.Tensor, last_input: torch.Tensor) -> torch.Tensor:
        """States [B, L, H] of right-padded inputs [B, L, D] (`lengths` >= 1) where only each row's
        last real step carries gradient, fed the state before it as a constant: one-step truncated
        backpropagation for a batch that trains each row's last target alone (lane steps). The
        earlier steps run as one packed pass without gradient instead of L - 1 steps with it; the
        last step reads `last_input` [B, D] (the last input after dropout) instead of x's."""
        before = (lengths - 1).clamp_min(1).cpu()
        with torch.no_grad():
            packed = nn.utils.rnn.pack_padded_sequence(x, before, batch_first=True, enforce_sorted=False)
            out, state = self.rnn(packed)
            prefix, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        fresh = (lengths == 1).to(x.device)  # no earlier step: the state starts at zero
        state = tuple(_zero_rows(s, fresh) for s in state) if isinstance(state, tuple) else _zero_rows(state, fresh)
        last, _ = self.rnn(last_input[:, None], state)
        return prefix.index_put((torch.arange(x.shape[0], device=x.device), lengths - 1), last[:, 0])


def _zero_rows(state: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`state` [layers, B, H] with the given rows zeroed."""
    return state.masked_fill(rows[None, :, None], 0.0)


def _detached(state: torch.Tensor | tuple[torch.Tensor, ...] | None) -> torch.Tensor | tuple[torch.Tensor, ...] | None:
    """The carried state as a constant; the LSTM's is an (h, c) pair."""
    if state is None:
        return None
    return state.detach() if isinstance(state, torch.Tensor) else tuple(s.detach() for s in state)
