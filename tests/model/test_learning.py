"""Every encoder x head must learn a planted sequence: deterministic cycles over 30 items."""
from __future__ import annotations

import math

import pytest
import torch

from nextplay.config import HybridConfig, ModelConfig, TrainConfig
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


def _markov_rows(successors: torch.Tensor, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Sessions of a first-order chain: each item is followed by one of its 3 successors (60%, 30%,
    10%), so the next item is uncertain and the loss settles well above 0."""
    rows = torch.empty(n, length, dtype=torch.long)
    rows[:, 0] = torch.randint(1, N_ITEMS + 1, (n,), generator=gen)
    for t in range(1, length):
        pick = torch.multinomial(torch.tensor([0.6, 0.3, 0.1]), n, replacement=True, generator=gen)
        rows[:, t] = successors[rows[:, t - 1], pick]
    return rows


def _markov_losses(monkeypatch: pytest.MonkeyPatch, dense_bias: bool) -> tuple[float, float, torch.Tensor]:
    """(mean training loss of the last 50 of 300 steps, exact held-out NLL, the learned output biases
    of items 1..30) of a sampled-head model
    whose output bias is gathered sparsely (as the head does) or densely (every row's gradient and
    Adam moments updated every step), from the same seed."""
    from nextplay.model import heads

    if dense_bias:
        sparse_gather = heads.gather_rows
        monkeypatch.setattr(heads, "gather_rows",
                            lambda table, ids, sparse: table[ids] if table.dim() == 1 else sparse_gather(table, ids, sparse))
    gen = torch.Generator().manual_seed(1)
    successors = torch.randint(1, N_ITEMS + 1, (N_ITEMS + 1, 3), generator=gen)
    counts = torch.bincount(_markov_rows(successors, 2000, 8, gen).flatten(), minlength=N_ITEMS + 1).numpy()
    cfg = ModelConfig(encoder="gru", head="sampled", hidden_size=16, dropout=0.0, embedding_dropout=0.0,
                      n_negatives=16, init_std=0.1, repeat=False, hybrid=HybridConfig(knn_weight=0.0))
    torch.manual_seed(0)
    model = SessionModel(N_ITEMS, cfg, counts)
    opt = build_optimizer(model, TrainConfig(lr=0.01))
    losses = []
    for _ in range(300):
        loss, n = model.loss(_markov_rows(successors, 32, 8, gen), torch.full((32,), 8))
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
        losses.append(float(loss.detach()) / n)
    if dense_bias:
        assert not model.head.bias.grad.is_sparse
    else:
        assert model.head.bias.grad.is_sparse
    test = _markov_rows(successors, 500, 5, torch.Generator().manual_seed(2))
    scores = model.eval().score_all(test[:, :4], torch.full((500,), 4))
    held_out = -scores.gather(1, test[:, 4:]).mean().item()
    return sum(losses[-50:]) / 50, held_out, model.head.bias.detach()[1:].clone()


def test_sparse_bias_training_matches_dense_bias_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """The output bias updated sparsely (only the rows a step's targets and negatives touched, lazy
    Adam moments) trains as well as updated densely: the same training loss and held-out NLL within
    noise after 300 steps. Both learned the chain: the NLL is far below the uniform log(30). The
    losses barely depend on the bias (the session vector can carry what it holds), so the biases
    themselves are compared too: each item's learned bias is the same either way (a gradient on the
    wrong rows, or none, leaves them uncorrelated or at 0)."""
    sparse_train, sparse_nll, sparse_bias = _markov_losses(monkeypatch, dense_bias=False)
    dense_train, dense_nll, dense_bias = _markov_losses(monkeypatch, dense_bias=True)
    assert dense_nll < 0.6 * math.log(N_ITEMS), dense_nll
    assert sparse_train == pytest.approx(dense_train, rel=0.03)
    assert sparse_nll == pytest.approx(dense_nll, rel=0.03)
    assert dense_bias.abs().mean() > 0.05  # the biases trained
    assert torch.corrcoef(torch.stack([sparse_bias, dense_bias]))[0, 1] > 0.99
