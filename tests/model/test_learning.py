"""Every encoder x head must learn a planted sequence: deterministic cycles over 30 items."""
from __future__ import annotations

import pytest
import torch

from nextplay.config import ModelConfig, TrainConfig
from nextplay.model.session import SessionModel
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
    model = SessionModel(N_ITEMS, cfg)
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


HEADS = ["full", "sampled", "bit_tree"]


# Every recurrent cell with every head and readout; the attention encoder with every head (its
# readout is the same module, covered by the recurrent rows).
@pytest.mark.parametrize("encoder,head,readout", [
    *[(e, h, r) for e in ("rnn", "gru", "lstm") for h in HEADS for r in ("last", "attention")],
    *[("sasrec", h, "last") for h in HEADS],
])
def test_learns_planted_cycles(encoder: str, head: str, readout: str) -> None:
    cfg = ModelConfig(encoder=encoder, head=head, readout=readout, hidden_size=32, dropout=0.0, n_negatives=8,
                      init_std=0.1)
    accuracy = _top1_accuracy_after_training(cfg)
    assert accuracy > 0.95, f"{encoder}/{head}/{readout}: top-1 accuracy {accuracy:.2f}"


def test_sasrec_learns_a_pattern_that_needs_more_than_the_last_item() -> None:
    """Sessions a, x, b where b is a function of a (x is noise): only an encoder that reads beyond the
    last item can predict b. Self-attention must find it."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = SessionModel(N_ITEMS, ModelConfig(encoder="sasrec", head="full", hidden_size=32, dropout=0.0,
                                              embedding_dropout=0.0, init_std=0.1, repeat=False))
    opt = build_optimizer(model, TrainConfig(lr=0.01))

    def rows(n: int) -> torch.Tensor:
        a = torch.randint(1, 11, (n,), generator=gen)  # 1..10
        x = torch.randint(21, 31, (n,), generator=gen)  # noise 21..30
        return torch.stack([a, x, a + 10], dim=1)  # b = a + 10

    for _ in range(300):
        loss, n = model.loss(rows(64), torch.full((64,), 3), first_target=torch.ones(64, dtype=torch.long))
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    test = rows(200)
    _, top = model.eval().topk(test[:, :2], torch.full((200,), 2), k=1)
    accuracy = (top[:, 0] == test[:, 2]).float().mean().item()
    assert accuracy > 0.95, f"sasrec: top-1 accuracy {accuracy:.2f} on a -> x -> a + 10"


@pytest.mark.parametrize("repeat", [False, True])
def test_bpr_max_learns_planted_cycles(repeat: bool) -> None:
    """The sampled head trained by BPR-max (GRU4Rec's ranking loss) instead of cross-entropy."""
    cfg = ModelConfig(encoder="gru", head="sampled", loss="bpr_max", bpr_reg=0.5, repeat=repeat, hidden_size=32,
                      dropout=0.0, n_negatives=8, init_std=0.1)
    accuracy = _top1_accuracy_after_training(cfg)
    assert accuracy > 0.95, f"bpr_max (repeat={repeat}): top-1 accuracy {accuracy:.2f}"
