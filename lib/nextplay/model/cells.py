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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return out
