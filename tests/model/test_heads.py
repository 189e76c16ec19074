"""Every head must give a proper distribution over items 1..V and agree with its own chunked scoring."""
from __future__ import annotations

import numpy as np
import pytest
import torch

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


def test_alias_table_draws_exactly_the_negative_distribution() -> None:
    """The sampled head's negatives come from its alias table: the table's implied distribution is
    neg_probs (the log-q correction's probabilities) to float rounding, and 200k draws pass a
    chi-square test against it; items of probability 0 (padding, unplayed items) are never drawn."""
    from scipy.stats import chisquare

    from nextplay.model.heads import SampledSoftmax

    counts = np.array([0, 500, 0, 3, 40, 1, 1, 0, 90, 7, 1200, 2])
    head = SampledSoftmax(11, counts, n_negatives=16, alpha=0.7, logq=True)
    expected = head.sampler.neg_probs.double()
    torch.testing.assert_close(head.sampler.table.distribution(), expected, atol=1e-7, rtol=1e-6)
    torch.manual_seed(7)
    draws = torch.cat([head.sampler.table.sample(10_000) for _ in range(20)])
    freq = torch.bincount(draws, minlength=12).double()
    assert freq[expected == 0].sum() == 0
    positive = expected > 0
    share = expected[positive] / expected[positive].sum()  # float32 neg_probs sum to 1 within 1e-7
    result = chisquare(freq[positive].numpy(), (share * draws.numel()).numpy())
    assert result.pvalue > 1e-3, result


@pytest.mark.parametrize("probs", [
    [0.0, 1.0, 1.0, 1.0],  # uniform over the items: every column its own
    [0.0, 0.0, 1.0, 0.0, 0.0],  # one item holds all the mass
    [3.0, 1e-9, 1.0, 0.5, 0.0, 7.0, 2.0, 2.0],
    list(np.random.default_rng(0).pareto(0.8, 500) * (np.random.default_rng(1).random(500) < 0.6)),
])
def test_alias_table_is_exact_on_skewed_and_degenerate_distributions(probs: list[float]) -> None:
    from nextplay.model.heads import AliasTable

    p = torch.tensor(probs, dtype=torch.float64)
    table = AliasTable(p)
    assert ((table.prob >= 0) & (table.prob <= 1)).all()
    torch.testing.assert_close(table.distribution(), p / p.sum(), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("probs", [[0.0, 0.0], [1.0, -1.0], [1.0, float("nan")], []])
def test_alias_table_refuses_what_is_not_a_distribution(probs: list[float]) -> None:
    from nextplay.model.heads import AliasTable

    with pytest.raises(ValueError, match="alias table"):
        AliasTable(torch.tensor(probs, dtype=torch.float64))


@pytest.mark.parametrize("head", ["sampled", "bit_tree"])
def test_sparse_heads_send_only_the_touched_rows(head: str) -> None:
    """A sampled or bit-tree step gives every catalog-sized parameter (item vectors, output biases,
    tree nodes) a row-sparse gradient: the optimizer and the all-reduce see the rows the batch and
    its negatives touched, never V. Densified, it equals the gradient of the same step gathered densely."""
    n_items = 200
    cfg = ModelConfig(head=head, hidden_size=8, n_negatives=5, init_std=0.5, tie_embeddings=False)
    torch.manual_seed(8)
    model = SessionModel(n_items, cfg, np.arange(n_items + 1))
    items, lengths = _batch()

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(9)  # the same dropout and negatives in both passes
        loss, n = model.loss(items, lengths)
        (loss / n).backward()
        return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    sparse = grads()
    catalog = {name for name, p in model.named_parameters() if p.shape[0] >= n_items}
    assert catalog >= ({"embedding.weight", "output_items", "head.bias"} if head == "sampled"
                       else {"embedding.weight", "head.node_weight", "head.node_bias"})
    for name in catalog:
        assert sparse[name].is_sparse, f"{name}: dense gradient over the catalog"
        touched = sparse[name].coalesce().indices()[0].unique().numel()
        assert 0 < touched < n_items // 4, f"{name}: {touched} rows"
    model.head.sparse = False
    model.embedding.sparse = False
    dense = grads()
    assert not any(g.is_sparse for g in dense.values())
    for name, g in sparse.items():
        torch.testing.assert_close(g.to_dense() if g.is_sparse else g, dense[name], atol=1e-6, rtol=1e-5)


def test_sampled_model_state_has_no_sampler_entries() -> None:
    """The alias table is rebuilt from item counts, never saved: a sampled model's state (model.pt)
    holds the same entries, with the bias a [V + 1] vector, as before the table existed."""
    model = SessionModel(11, ModelConfig(head="sampled", hidden_size=8, n_negatives=4), np.arange(12))
    state = model.state_dict()
    assert not [k for k in state if k.startswith("head.") and k != "head.bias"]
    assert state["head.bias"].shape == (12,)
