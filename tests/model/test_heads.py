"""Every head must give a proper distribution over items 1..V and agree with its own chunked scoring."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nextplay.config import ModelConfig
from nextplay.model.rnn import SessionRNN

HEADS = ["full", "sampled", "bit_tree"]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    items = torch.tensor([[1, 2, 3, 2, 0], [4, 5, 6, 7, 11], [9, 9, 0, 0, 0], [11, 0, 0, 0, 0]])
    return items, torch.tensor([4, 5, 2, 1])


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("n_items", [11, 16])  # 11: unused leaves in the bit tree; 16: a full tree
@pytest.mark.parametrize("readout,repeat", [("last", False), ("attention", True)])
def test_scores_are_a_distribution(head: str, n_items: int, readout: str, repeat: bool) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(head=head, hidden_size=8, readout=readout, repeat=repeat, n_negatives=4, init_std=0.5)
    model = SessionRNN(n_items, cfg, np.arange(n_items + 1)).eval()
    items, lengths = _batch()
    scores = model.score_all(items, lengths)
    assert scores.shape == (4, n_items + 1)
    assert torch.isneginf(scores[:, 0]).all()
    torch.testing.assert_close(scores[:, 1:].exp().sum(1), torch.ones(4), atol=1e-5, rtol=0)
    # distinct items get distinct scores: the distribution is not degenerate
    assert (scores[:, 1:].std(1) > 1e-3).all()


@pytest.mark.parametrize("head", ["full", "bit_tree"])
def test_training_log_prob_matches_scoring(head: str) -> None:
    """The loss of one (prefix -> next) pair is minus the scored log-probability of that next item."""
    torch.manual_seed(1)
    model = SessionRNN(13, ModelConfig(head=head, hidden_size=8, init_std=0.5)).eval()
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
    model = SessionRNN(5, ModelConfig(head="sampled", hidden_size=8, n_negatives=16, repeat=False), counts)
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


@pytest.mark.parametrize("loss", ["cross_entropy", "bpr_max"])
def test_a_sessions_own_items_are_not_its_negatives(loss: str) -> None:
    """With `exclude_session_items`, the batch's targets from the same session leave the
    candidates; those of other sessions stay, and without the key everything stays."""
    from nextplay.model.heads import SampledSoftmax

    torch.manual_seed(5)
    counts = np.array([0, 0, 0, 0, 10.0])  # the drawn negatives are all item 4
    head = SampledSoftmax(4, counts, n_negatives=8, alpha=1.0, logq=False)
    weight = torch.randn(5, 3)
    s = torch.randn(2, 3)
    targets = torch.tensor([1, 2])

    def row0(sessions: torch.Tensor | None, rows: torch.Tensor | None) -> float:
        torch.manual_seed(6)
        if loss == "bpr_max":
            return float(head.bpr_max(s, targets, weight, 0.5, sessions, rows)[0][0].detach())
        return float(head.target_log_prob(s, targets, weight, sessions, rows)[0].detach())

    def expected(with_item_2: bool) -> float:
        """Row 0 against the 8 draws of item 4, and the other target (item 2) if it counts."""
        bias = head.bias.detach()
        pos = float(s[0] @ weight[1] + bias[1])
        negs = [float(s[0] @ weight[4] + bias[4])] * 8 + ([float(s[0] @ weight[2] + bias[2])] if with_item_2 else [])
        z = torch.tensor(negs)
        if loss == "bpr_max":
            r_pos, r_neg = F.elu(torch.tensor(pos)), F.elu(z)
            w = torch.softmax(r_neg, 0)
            return float(-torch.log((w * torch.sigmoid(r_pos - r_neg)).sum()) + 0.5 * (w * r_neg.square()).sum())
        return float(pos - torch.logsumexp(torch.cat([torch.tensor([pos]), z]), 0))

    same = torch.tensor([[1, 2]]), torch.tensor([0, 0])
    apart = torch.tensor([[1, 0], [2, 0]]), torch.tensor([0, 1])
    assert row0(*same) == pytest.approx(expected(with_item_2=False), abs=1e-5)
    assert row0(*apart) == pytest.approx(expected(with_item_2=True), abs=1e-5)
    assert row0(None, None) == pytest.approx(expected(with_item_2=True), abs=1e-5)
    assert expected(False) != pytest.approx(expected(True), abs=1e-3)


def test_model_passes_its_sessions_to_the_head_only_when_asked() -> None:
    """`model.exclude_session_items` changes the sampled loss of a batch whose sessions share
    items with the batch's other targets, and the same seed gives the same loss without it."""
    items, lengths = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]]), torch.tensor([4, 3])

    def loss(exclude: bool) -> float:
        torch.manual_seed(7)
        cfg = ModelConfig(head="sampled", hidden_size=8, n_negatives=4, init_std=0.5, repeat=False,
                          embedding_dropout=0.0, dropout=0.0, exclude_session_items=exclude)
        model = SessionRNN(7, cfg, np.arange(8))
        torch.manual_seed(8)
        return float(model.loss(items, lengths)[0].detach())

    assert loss(False) == loss(False)
    assert loss(True) != pytest.approx(loss(False), rel=1e-4)


@pytest.mark.parametrize("head", ["full", "sampled"])
def test_cosine_scores_are_a_distribution_and_sampled_gradients_stay_sparse(head: str) -> None:
    """Cosine scores normalise item rows as they are read, so the sampled head keeps row-sparse
    gradients (a step touches the batch's rows only) and scoring still sums to one."""
    torch.manual_seed(4)
    cfg = ModelConfig(head=head, hidden_size=8, n_negatives=3, cosine_scale=8.0, init_std=0.5, repeat=False)
    model = SessionRNN(40, cfg, np.arange(41))
    items, lengths = _batch()
    loss, _ = model.loss(items, lengths)
    loss.backward()
    grad = model.embedding.weight.grad
    assert grad.is_sparse == (head == "sampled")
    if head == "sampled":
        assert grad.coalesce().indices().shape[1] < 41
    scores = model.eval().score_all(items, lengths)
    torch.testing.assert_close(scores[:, 1:].exp().sum(1), torch.ones(4), atol=1e-5, rtol=0)
    # cosine logits are bounded by the scale (plus the learned bias, zero at init)
    assert float(scores[:, 1:].max() - scores[:, 1:].min()) <= 2 * 8.0 + 1e-4


@pytest.mark.parametrize("head", HEADS)
def test_score_temperature_keeps_a_distribution(head: str) -> None:
    """Scoring-only: logits / T keep every head a distribution. For the softmax heads that is exactly
    log_softmax(logits / T): the same item order, more mass on the top item when T < 1; the bit
    tree divides every node's logit, which changes its leaves' distribution."""
    items, lengths = _batch()
    scores = {}
    for t in (1.0, 0.5):
        cfg = ModelConfig(head=head, hidden_size=8, repeat=False, n_negatives=4, init_std=0.5, score_temperature=t)
        torch.manual_seed(4)
        scores[t] = SessionRNN(11, cfg, np.arange(12)).eval().score_all(items, lengths)[:, 1:]
        torch.testing.assert_close(scores[t].exp().sum(1), torch.ones(4), atol=1e-5, rtol=0)
    if head == "bit_tree":
        assert not torch.allclose(scores[0.5], scores[1.0])
        return
    torch.testing.assert_close(scores[0.5], torch.log_softmax(2 * scores[1.0], 1))
    assert torch.equal(scores[1.0].argsort(dim=1, stable=True), scores[0.5].argsort(dim=1, stable=True))
    assert (scores[0.5].max(1).values > scores[1.0].max(1).values).all()
