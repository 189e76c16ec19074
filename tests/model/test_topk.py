"""Streaming top-k and ranking must equal brute force on score_all, whatever the chunk size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nextplay.config import ModelConfig
from nextplay.model import ranking as ranking_module
from nextplay.model.ranking import RetrievedRanking
from nextplay.model.session import SessionModel


def _model(head: str, n_items: int = 37) -> SessionModel:
    torch.manual_seed(3)
    cfg = ModelConfig(head=head, hidden_size=12, n_negatives=8, init_std=0.5)
    return SessionModel(n_items, cfg, np.arange(n_items + 1)).eval()


ITEMS = torch.tensor([[5, 9, 5, 30, 0, 0], [1, 2, 3, 4, 5, 6], [37, 0, 0, 0, 0, 0]])
LENGTHS = torch.tensor([4, 6, 1])


@pytest.mark.parametrize("head", ["full", "sampled", "bit_tree"])
@pytest.mark.parametrize("exclude_seen", [False, True])
@pytest.mark.parametrize("chunk_size", [5, 16, 1000])
def test_topk_equals_brute_force(head: str, exclude_seen: bool, chunk_size: int) -> None:
    model = _model(head)
    scores = model.score_all(ITEMS, LENGTHS)
    if exclude_seen:
        scores = scores.scatter(1, ITEMS, float("-inf"))
    want_s, want_i = scores.topk(10, dim=1)
    got_s, got_i = model.topk(ITEMS, LENGTHS, 10, exclude_seen=exclude_seen, chunk_size=chunk_size)
    torch.testing.assert_close(got_s, want_s, atol=1e-5, rtol=1e-5)
    assert torch.equal(got_i, want_i)
    assert (got_i != 0).all()
    if exclude_seen:
        for row, n in zip(range(3), LENGTHS.tolist()):
            assert not set(got_i[row].tolist()) & set(ITEMS[row, :n].tolist())


@pytest.mark.parametrize("head", ["full", "bit_tree"])
@pytest.mark.parametrize("chunk_size", [7, 1000])
def test_label_ranks_match_sorting(head: str, chunk_size: int) -> None:
    model = _model(head)
    labels = torch.tensor([5, 17, 0])
    ranks = model.label_ranks(ITEMS, LENGTHS, labels, chunk_size=chunk_size)
    scores = model.score_all(ITEMS, LENGTHS)
    for row in range(2):
        label_score = scores[row, labels[row]]
        assert ranks[row] == 1 + int((scores[row, 1:] > label_score).sum())
    assert torch.isinf(ranks[2])


def test_topk_never_exceeds_catalog() -> None:
    model = _model("full", n_items=4)
    s, i = model.topk(ITEMS.clamp(max=4), LENGTHS, 10)
    assert i.shape == (3, 4)
    assert sorted(i[0].tolist()) == [1, 2, 3, 4]


def _brute_force_search(model: SessionModel):
    """Exact maximum inner product over [item vector, bias] rows: what an ideal index would return."""
    vectors = torch.cat([model._output_weight()[1:], model.head.bias[1:, None]], dim=1).detach().numpy()

    def search(queries: np.ndarray, c: int) -> np.ndarray:
        return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :c] + 1
    return search


@pytest.mark.parametrize("head", ["full", "sampled"])
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_retrieving_every_item_ranks_as_the_exact_path(head: str, exclude_seen: bool) -> None:
    """With every item retrieved the estimated partition is the exact one: scores, ids and ranks agree."""
    model = _model(head)
    ranking = RetrievedRanking(_brute_force_search(model), candidates=model.n_items)
    want_s, want_i = model.topk(ITEMS, LENGTHS, 10, exclude_seen=exclude_seen)
    got_s, got_i = model.topk(ITEMS, LENGTHS, 10, exclude_seen=exclude_seen, ranking=ranking)
    torch.testing.assert_close(got_s, want_s, atol=1e-5, rtol=1e-5)
    assert torch.equal(got_i, want_i)
    labels = torch.tensor([5, 17, 37])
    torch.testing.assert_close(model.label_ranks(ITEMS, LENGTHS, labels, ranking=ranking),
                               model.label_ranks(ITEMS, LENGTHS, labels))


def test_few_candidates_rank_only_the_union_and_miss_the_rest() -> None:
    model = _model("sampled")
    search = _brute_force_search(model)
    ranking = RetrievedRanking(search, candidates=3)
    _, ids = model.topk(ITEMS, LENGTHS, 10, ranking=ranking)
    session = model._context(ITEMS, LENGTHS).session
    retrieved = search(torch.cat([session, torch.ones(3, 1)], 1).detach().numpy(), 3)
    for row, n in enumerate(LENGTHS.tolist()):
        union = set(retrieved[row].tolist()) | set(ITEMS[row, :n].tolist())
        assert set(ids[row].tolist()) - {0} <= union  # the model has no memory: union = retrieved + prefix
    outside = next(i for i in range(1, 38) if i not in set(retrieved[2].tolist()) | {37})
    ranks = model.label_ranks(ITEMS, LENGTHS, torch.tensor([5, 5, outside]), ranking=ranking)
    assert torch.isinf(ranks[2]) and torch.isfinite(ranks[0])


def test_retrieval_refuses_the_bit_tree() -> None:
    model = _model("bit_tree")
    with pytest.raises(ValueError, match="bit tree"):
        model.topk(ITEMS, LENGTHS, 5, ranking=RetrievedRanking(lambda q, c: np.ones((len(q), c), dtype=np.int64), 4))


def test_a_whole_catalog_sample_makes_the_estimated_partition_exact() -> None:
    """With every item in the partition's sample, the items outside the union are counted once each
    (none twice, none missed): the few retrieved candidates score exactly as in score_all."""
    model = _model("sampled")
    ranking = RetrievedRanking(_brute_force_search(model), candidates=3, partition_sample=model.n_items)
    got_s, got_i = model.topk(ITEMS, LENGTHS, 5, ranking=ranking)
    want = model.score_all(ITEMS, LENGTHS).gather(1, got_i)
    torch.testing.assert_close(got_s, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["full", "sampled", "bit_tree"])
@pytest.mark.parametrize("block_bytes", [1, 200, 2**20])
def test_gathered_scores_are_the_heads_item_scores(head: str, block_bytes: int, monkeypatch) -> None:
    """Rows packed or not, with empty slots anywhere, one row per block or all in one, any temperature."""
    monkeypatch.setattr(ranking_module, "GATHER_BLOCK_BYTES", block_bytes)
    model = _model(head)
    ctx = model._context(ITEMS, LENGTHS)
    ctx.temperature = 0.7
    items = torch.tensor([[0, 4, 0, 9, 2], [37, 36, 5, 0, 0], [0, 0, 0, 0, 0]])
    got = ranking_module._item_scores(ctx, items)
    want = model.head.item_scores(ctx.session, ctx.weight, items.clamp_min(1), 0.7)
    filled = items > 0
    torch.testing.assert_close(got[filled], want[filled], atol=1e-6, rtol=1e-6)
    assert torch.isfinite(got).all()
    assert ranking_module._item_scores(ctx, items[:, :0]).shape == (3, 0)


@pytest.mark.parametrize("head", ["sampled", "bit_tree"])
def test_a_batch_wider_than_the_encoder_block_ranks_each_row_as_alone(head: str) -> None:
    """The encoder reads a scoring batch in blocks of rows (session.ENCODE_BLOCK); every row's
    answer is what the row gets in a batch of its own."""
    from nextplay.model.session import ENCODE_BLOCK

    model = _model(head)
    rows = 2 * ENCODE_BLOCK + 3
    generator = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, 7, (rows,), generator=generator)
    items = torch.randint(1, 38, (rows, 6), generator=generator)
    items = items.masked_fill(torch.arange(6)[None, :] >= lengths[:, None], 0)
    got_s, got_i = model.topk(items, lengths, 10, chunk_size=16)
    for row in (0, ENCODE_BLOCK - 1, ENCODE_BLOCK, rows - 1):
        want_s, want_i = model.topk(items[row:row + 1], lengths[row:row + 1], 10, chunk_size=16)
        torch.testing.assert_close(got_s[row:row + 1], want_s, atol=1e-5, rtol=1e-5)
        assert torch.equal(got_i[row:row + 1], want_i)
