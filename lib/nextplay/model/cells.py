"""The recurrent core of the seed article: h_{i+1} = f(W h_i + b_{y_i}), as tanh RNN, GRU or LSTM."""
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

    def forward(self, x: torch.Tensor, bptt_steps: int = 0) -> torch.Tensor:
        """States [B, L, H] of inputs [B, L, D]. `bptt_steps` k > 0 cuts the gradient between chunks
        of k steps (the values are the same): GRU4Rec's official code trains with k = 1, every step
        fed the previous state as a constant. On diginetica's validation split that made the RNN
        alone better (+0.5 Recall@20) and the step cheaper; on yoochoose1_64 it cost 0.2."""
        if bptt_steps <= 0 or bptt_steps >= x.shape[1] or not torch.is_grad_enabled():
            out, _ = self.rnn(x)
            return out
        outs, state = [], None
        for start in range(0, x.shape[1], bptt_steps):
            out, state = self.rnn(x[:, start:start + bptt_steps], _detached(state))
            outs.append(out)
        return torch.cat(outs, dim=1)


def _detached(state: torch.Tensor | tuple[torch.Tensor, ...] | None) -> torch.Tensor | tuple[torch.Tensor, ...] | None:
    if state is None or isinstance(state, torch.Tensor):
        return None if state is None else state.detach()
    return tuple(s.detach() for s in state)  # the LSTM's (h, c)
