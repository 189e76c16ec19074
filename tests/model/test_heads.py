"""Every head must give a proper distribution over items 1..V and agree with its own chunked scoring."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nextplay.config import HybridConfig, ModelConfig
from nextplay.model.session import SessionModel

HEADS = ["full", "sampled", "bit_tree"]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    items = torch.tensor([[1, 2, 3, 2, 0], [4, 5, 6, 7, 11], [9, 9, 0, 0, 0], [11, 0, 0, 0, 0]])
    return items, torch.tensor([4, 5, 2, 1])


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("n_items", [11, 16])  # 11: unused leaves in the bit tree; 16: a full tree
@pytest.mark.parametrize("readout,repeat", [("last", False), ("attention", True)])
@pytest.mark.parametrize("encoder", ["gru", "sasrec"])
def test_scores_are_a_distribution(head: str, n_items: int, readout: str, repeat: bool, encoder: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=encoder, head=head, hidden_size=8, readout=readout, repeat=repeat, n_negatives=4,
                      init_std=0.5)
    model = SessionModel(n_items, cfg, np.arange(n_items + 1)).eval()
    items, lengths = _batch()
    scores = model.score_all(items, lengths)
    assert scores.shape == (4, n_items + 1)
    assert torch.isneginf(scores[:, 0]).all()
    torch.testing.assert_close(scores[:, 1:].exp().sum(1), torch.ones(4), atol=1e-5, rtol=0)
    # distinct items get distinct scores: the distribution is not degenerate
    assert (scores[:, 1:].std(1) > 1e-3).all()


@pytest.mark.parametrize("head", ["full", "bit_tree"])
@pytest.mark.parametrize("encoder", ["gru", "sasrec"])
def test_training_log_prob_matches_scoring(head: str, encoder: str) -> None:
    """The loss of one (prefix -> next) pair is minus the scored log-probability of that next item."""
    torch.manual_seed(1)
    model = SessionModel(13, ModelConfig(encoder=encoder, head=head, hidden_size=8, init_std=0.5)).eval()
    seq = torch.tensor([[3, 7, 3, 12]])
    loss, n = model.loss(seq, torch.tensor([4]), first_target=torch.tensor([2]))
    assert n == 1
    scores = model.score_all(seq[:, :3], torch.tensor([3]))
    torch.testing.assert_close(-loss, scores[0, 12], atol=1e-5, rtol=1e-5)


def test_sampled_loss_removes_accidental_hits_and_corrects_popularity() -> None:
    """With every negative equal to the target, the sampled softmax has only the positive left: loss 0."""
    torch.manual_seed(2)
    counts = np.zeros(6)
    counts[4] = 10  # the only item that can be drawn as a negative
    model = SessionModel(5, ModelConfig(head="sampled", hidden_size=8, n_negatives=16, repeat=False), counts)
    loss, n = model.loss(torch.tensor([[1, 4], [2, 4]]), torch.tensor([2, 2]))
    assert n == 2
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)


def test_bpr_max_weights_the_negatives_that_outrank_the_target() -> None:
    """BPR-max is near 0 when the target outscores every negative by far and large when one
    negative outscores it; accidental hits never count as negatives."""
    from nextplay.model.heads import SampledSoftmax

    torch.manual_seed(3)
    head = SampledSoftmax(4, np.array([0, 1, 1, 1, 1]), n_negatives=64, alpha=1.0, logq=False)
    weight = torch.eye(5)[:, :4] * 10.0  # item i's vector is 10 * e_(i-1)
    targets = torch.tensor([1, 1])
    s = torch.stack([weight[1], weight[2]])  # row 0 points at its target, row 1 at another item
    loss, logp = (t.detach() for t in head.bpr_max(s, targets, weight, reg=0.0))
    assert float(loss[0]) < 1e-3
    assert float(loss[1]) > 5.0
    assert float(logp[0]) > float(logp[1])


@pytest.mark.parametrize("head", HEADS)
def test_score_temperature_keeps_a_distribution(head: str) -> None:
    """Scoring-only: logits / T keep every head a distribution. For the softmax heads that is exactly
    log_softmax(logits / T): the same item order, more mass on the top item when T < 1; the bit
    tree divides every node's logit, which changes its leaves' distribution."""
    items, lengths = _batch()
    scores = {}
    for t in (1.0, 0.5):
        cfg = ModelConfig(head=head, hidden_size=8, repeat=False, n_negatives=4, init_std=0.5,
                          hybrid=HybridConfig(score_temperature=t))
        torch.manual_seed(4)
        scores[t] = SessionModel(11, cfg, np.arange(12)).eval().score_all(items, lengths)[:, 1:]
        torch.testing.assert_close(scores[t].exp().sum(1), torch.ones(4), atol=1e-5, rtol=0)
    if head == "bit_tree":
        assert not torch.allclose(scores[0.5], scores[1.0])
        return
    torch.testing.assert_close(scores[0.5], torch.log_softmax(2 * scores[1.0], 1))
    assert torch.equal(scores[1.0].argsort(dim=1, stable=True), scores[0.5].argsort(dim=1, stable=True))
    assert (scores[0.5].max(1).values > scores[1.0].max(1).values).all()


def test_attention_encoder_scores_a_long_history_by_its_most_recent_items() -> None:
    """A history longer than model.sasrec.max_positions scores as its last max_positions items alone."""
    from nextplay.config import SASRecConfig

    torch.manual_seed(6)
    cfg = ModelConfig(encoder="sasrec", hidden_size=8, n_negatives=4, init_std=0.5, sasrec=SASRecConfig(max_positions=3))
    model = SessionModel(11, cfg, np.arange(12)).eval()
    long = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]])
    recent = torch.tensor([[3, 4, 5], [6, 7, 0]])
    lengths = torch.tensor([5, 2])
    torch.testing.assert_close(model.score_all(long, lengths), model.score_all(recent, lengths.clamp_max(3)))
    with pytest.raises(ValueError, match="model.sasrec.max_positions"):
        model.loss(torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([5]))  # training windows must fit
