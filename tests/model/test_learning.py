"""Every cell x head must learn a planted sequence: deterministic cycles over 30 items."""
from __future__ import annotations

import pytest
import torch

from nextplay.config import ModelConfig, TrainConfig
from nextplay.model.rnn import SessionRNN
from nextplay.train.loop import build_optimizer

N_ITEMS = 30


def _cycles(n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Rows i, i+1, ..., wrapping 30 -> 1, from random starts: the next item is fully determined."""
    start = torch.randint(0, N_ITEMS, (n, 1), generator=gen)
    return (start + torch.arange(length)) % N_ITEMS + 1


def _top1_accuracy_after_training(cfg: ModelConfig) -> float:
    """Train on fresh cycles for 150 steps, then predict the 5th item of unseen ones from the first 4."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = SessionRNN(N_ITEMS, cfg)
    opt = build_optimizer(model, TrainConfig(lr=0.02))  # row-wise Adam where item gradients are sparse
    lengths = torch.full((64,), 6)
    for _ in range(150):
        loss, n = model.loss(_cycles(64, 6, gen), lengths)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    model.eval()
    test = _cycles(200, 5, gen)
    _, top = model.topk(test[:, :4], torch.full((200,), 4), k=1, chunk_size=7)
    return (top[:, 0] == test[:, 4]).float().mean().item()


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("head", ["full", "sampled", "bit_tree"])
@pytest.mark.parametrize("readout", ["last", "attention"])
def test_learns_planted_cycles(cell: str, head: str, readout: str) -> None:
    cfg = ModelConfig(cell=cell, head=head, readout=readout, hidden_size=32, dropout=0.0, n_negatives=8, init_std=0.1)
    accuracy = _top1_accuracy_after_training(cfg)
    assert accuracy > 0.95, f"{cell}/{head}/{readout}: top-1 accuracy {accuracy:.2f}"


@pytest.mark.parametrize("repeat", [False, True])
def test_bpr_max_learns_planted_cycles(repeat: bool) -> None:
    """The sampled head trained by BPR-max (GRU4Rec's ranking loss) instead of cross-entropy."""
    cfg = ModelConfig(cell="gru", head="sampled", loss="bpr_max", bpr_reg=0.5, repeat=repeat, hidden_size=32,
                      dropout=0.0, n_negatives=8, init_std=0.1)
    accuracy = _top1_accuracy_after_training(cfg)
    assert accuracy > 0.95, f"bpr_max (repeat={repeat}): top-1 accuracy {accuracy:.2f}"
