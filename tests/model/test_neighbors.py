"""The hybrid's memory: V-SKNN over stored sessions, mixed into the RNN's distribution at scoring."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nextplay.config import HybridConfig, ModelConfig
from nextplay.metrics import ranks_from_scores
from nextplay.model.io import load_model, save_model
from nextplay.model.neighbors import SessionMemory, SessionNeighbors
from nextplay.model.session import SessionModel

N_ITEMS = 12
SESSIONS = [[1, 2, 3], [2, 3, 4], [5, 6], [1, 2], [7, 8, 9, 7], [10, 11], [3, 4, 12]]
ITEMS = torch.tensor([[1, 2, 0], [5, 0, 0], [2, 3, 4], [12, 0, 0], [11, 10, 11]])
LENGTHS = torch.tensor([2, 1, 3, 1, 3])


def hybrid(weight: float = 0.3, head: str = "sampled", seed: int = 0, encoder: str = "gru") -> SessionModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(encoder=encoder, head=head, hidden_size=8, n_negatives=4, hybrid=HybridConfig(knn_weight=weight))
    model = SessionModel(N_ITEMS, cfg, np.arange(N_ITEMS + 1)).eval()
    model.hybrid.memory.remember(SESSIONS)
    return model


def prefixes() -> list[list[int]]:
    return [row[:n].tolist() for row, n in zip(ITEMS, LENGTHS)]


def test_memory_views_are_the_neighbour_scores_as_distributions() -> None:
    memory = SessionMemory(N_ITEMS)
    memory.remember(SESSIONS)
    assert memory.n_sessions == len(SESSIONS)
    views = memory.distributions(prefixes())
    everything, novel = views.everything.toarray(), views.novel.toarray()
    raw = SessionNeighbors().fit(SESSIONS, N_ITEMS).scores(prefixes()).toarray()
    assert everything.shape == novel.shape == (len(LENGTHS), N_ITEMS + 1)
    np.testing.assert_allclose(everything, raw / raw.sum(axis=1, keepdims=True), rtol=1e-6)
    outside = raw.copy()
    for row, prefix in enumerate(prefixes()):
        outside[row, prefix] = 0.0
    total = outside.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(novel, outside / np.where(total > 0, total, 1.0), rtol=1e-6)
    # [11, 10, 11]: its one neighbour, [10, 11], holds nothing new: an all-zero row, not NaN
    assert (novel[4] == 0).all() and (everything[:, 0] == 0).all() and (novel[:, 0] == 0).all()
    np.testing.assert_allclose(everything.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(novel.sum(axis=1), [1, 1, 1, 1, 0], rtol=1e-6)
    # [1, 2]: sessions 0, 1 and 3 are neighbours, so 3 (in two of them) outranks 4 (in one)
    assert novel[0, 3] > novel[0, 4] > 0 and novel[0, 9] == 0 and novel[0, 1] == novel[0, 2] == 0


def test_a_batch_searched_in_blocks_answers_every_row_as_alone(monkeypatch) -> None:
    """The memory searches a long batch a block of prefixes at a time; no row's view depends on the others."""
    from nextplay.model import neighbors

    memory = SessionMemory(N_ITEMS)
    memory.remember(SESSIONS)
    monkeypatch.setattr(neighbors, "QUERY_BLOCK", 2)
    views = memory.distributions(prefixes())
    assert views.everything.shape == (len(LENGTHS), N_ITEMS + 1)
    for row, prefix in enumerate(prefixes()):
        alone = memory.distributions([prefix])
        np.testing.assert_array_equal(views.everything.toarray()[row], alone.everything.toarray()[0])
        np.testing.assert_array_equal(views.novel.toarray()[row], alone.novel.toarray()[0])


def test_memory_keeps_the_play_order() -> None:
    memory = SessionMemory(N_ITEMS, position_decay=1.0)
    memory.remember([[5, 1, 2, 7, 7]])
    assert memory.items.tolist() == [5, 1, 2, 7, 7] and memory.indptr.tolist() == [0, 5]


def test_memory_refuses_items_outside_the_catalog() -> None:
    with pytest.raises(ValueError, match="1..12"):
        SessionMemory(N_ITEMS).remember([[1, 13]])


def test_prefix_without_neighbours_scores_as_the_rnn_alone() -> None:
    model = hybrid()
    memory = SessionMemory(N_ITEMS)
    memory.remember([[1, 2]])
    model.hybrid.memory = memory
    alone = hybrid(weight=0.3)
    alone.hybrid.memory = None
    items, lengths = torch.tensor([[9, 0], [1, 2]]), torch.tensor([1, 2])
    got, want = model.score_all(items, lengths), alone.score_all(items, lengths)
    torch.testing.assert_close(got[0], want[0])  # no neighbour: the network alone, still a distribution
    # [1, 2]: its only neighbour holds nothing new, so only the whole vote (w) takes part
    assert not torch.allclose(got[1], want[1])


@pytest.mark.parametrize("head,encoder", [("sampled", "gru"), ("full", "gru"), ("bit_tree", "gru"), ("sampled", "sasrec")])
def test_hybrid_is_the_stated_mixture_and_a_distribution(head: str, encoder: str) -> None:
    """p = (1 - w) [g p_repeat + (1 - g) ((1 - v) p_head + v p_new)] + w p_knn (model/hybrid.py); v is
    0 in a row whose neighbours hold nothing new (the last one), so every row stays a distribution."""
    w, v = 0.3, 0.5
    model = hybrid(w, head, encoder=encoder)
    model.cfg.hybrid.knn_explore_weight = v
    got = model.score_all(ITEMS, LENGTHS).exp()[:, 1:].double()
    with torch.no_grad():
        ctx = model._context(ITEMS, LENGTHS)
        head_scores = model.head.chunk_scores(ctx.session, ctx.weight, 1, N_ITEMS + 1).double()
        p_head = (head_scores if model.head.normalized else head_scores.log_softmax(dim=1)).exp()
    gate = ctx.log_gate.exp().double()[:, None]
    p_repeat = torch.zeros_like(p_head).scatter_add_(
        1, (ITEMS - 1).clamp_min(0), torch.where(ITEMS > 0, ctx.pointer, 0.0).double())
    views = model.hybrid.memory.distributions(prefixes())
    p_new, p_knn = (torch.from_numpy(m.toarray()[:, 1:]) for m in (views.novel, views.everything))
    v = torch.tensor([v, v, v, v, 0.0], dtype=torch.float64)[:, None]
    want = (1 - w) * (gate * p_repeat + (1 - gate) * ((1 - v) * p_head + v * p_new)) + w * p_knn
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(len(LENGTHS), dtype=torch.float64), rtol=1e-5, atol=0)


def test_without_the_repeat_mixture_the_hybrid_is_one_mixture() -> None:
    torch.manual_seed(0)
    model = SessionModel(N_ITEMS, ModelConfig(hidden_size=8, n_negatives=4, repeat=False, hybrid=HybridConfig(knn_weight=0.3)),
                       np.arange(N_ITEMS + 1)).eval()
    model.hybrid.memory.remember(SESSIONS)
    got = model.score_all(ITEMS, LENGTHS).exp()[:, 1:].double()
    memory, model.hybrid.memory = model.hybrid.memory, None
    p_rnn = model.score_all(ITEMS, LENGTHS).exp()[:, 1:].double()
    p_knn = torch.from_numpy(memory.distributions(prefixes()).everything.toarray()[:, 1:])
    torch.testing.assert_close(got, 0.7 * p_rnn + 0.3 * p_knn, rtol=1e-5, atol=1e-7)


def test_streamed_topk_and_ranks_agree_with_the_dense_scores() -> None:
    model = hybrid(0.5)
    dense = model.score_all(ITEMS, LENGTHS)
    s, i = model.topk(ITEMS, LENGTHS, 5, chunk_size=5)  # chunks cut the memory's columns too
    torch.testing.assert_close(s, dense.gather(1, i))
    torch.testing.assert_close(s, dense.topk(5, dim=1).values)
    labels = torch.tensor([3, 6, 12, 4, 10])
    ranks = model.label_ranks(ITEMS, LENGTHS, labels, chunk_size=5).numpy()
    np.testing.assert_array_equal(ranks, ranks_from_scores(dense.numpy(), labels.numpy()))


def test_memory_lifts_what_co_occurred() -> None:
    """An untrained network knows nothing; with the memory, the neighbours' items lead: 1 itself
    and 2 (both in the two stored sessions holding 1), then 3 (in one of them)."""
    model = hybrid(0.9)
    _, top = model.topk(torch.tensor([[1]]), torch.tensor([1]), 3)
    assert set(top[0, :2].tolist()) == {1, 2} and top[0, 2] == 3


def test_memory_travels_in_the_model_file(tmp_path: Path) -> None:
    model = hybrid()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.hybrid.memory.n_sessions == len(SESSIONS)
    assert torch.equal(loaded.score_all(ITEMS, LENGTHS), model.score_all(ITEMS, LENGTHS))


def test_keep_per_row_keeps_the_largest_and_the_latest_of_ties() -> None:
    import scipy.sparse as sp

    sim = sp.csr_matrix(np.array([[3.0, 1.0, 2.0, 2.0, 2.0], [1.0, 0.0, 0.0, 0.0, 5.0]]))
    keep = SessionNeighbors._keep_per_row(sim, sim.data, 3)
    # row 0: 3 and the last two 2s (the oldest 2 is cut); row 1 holds two entries, both stay
    assert keep.tolist() == [True, False, False, True, True, True, True]


def test_keep_per_row_breaks_ties_by_column_whatever_the_entry_order() -> None:
    """A sparse product leaves a row's columns unsorted: the most recent session (largest column)
    must stay among equal keys, not the last entry."""
    import scipy.sparse as sp

    sim = sp.csr_matrix((np.array([2.0, 2.0, 3.0, 2.0]), np.array([4, 1, 3, 0]), np.array([0, 4])), shape=(1, 5))
    assert not sim.has_sorted_indices
    assert SessionNeighbors._keep_per_row(sim, sim.data, 2).tolist() == [True, False, True, False]


def test_cut_posting_lists_find_the_same_neighbours_as_every_holder() -> None:
    """The candidates come from posting lists cut to each item's most recent `sample` sessions; the
    similarities and scores must equal a search over every session holding a prefix item."""
    rng = np.random.default_rng(1)
    popular = rng.zipf(1.3, size=(3000, 8)).clip(max=300)
    prefixes = [list(rng.zipf(1.3, size=int(n)).clip(max=300)) for n in rng.integers(1, 20, size=80)]
    nb = SessionNeighbors(k=20, sample=50, position_decay=1.0).fit(popular.tolist(), 300)
    queries = nb.queries(prefixes)
    everyone = (queries @ nb.sessions.T.tocsr()).tocsr()
    recent = nb._keep_per_row(everyone, everyone.indices.astype(np.float64), nb.sample)
    everyone.data[~recent] = 0.0
    everyone.eliminate_zeros()
    got = nb._recent_similarities(queries)
    assert got.nnz == everyone.nnz > 0
    assert abs(got - everyone).max() == 0.0


def test_position_decay_weighs_neighbour_items_by_distance_from_the_shared_item() -> None:
    neighbour = [1, 2, 3, 4, 5, 6]
    nb = SessionNeighbors(idf_weight=0.0, position_decay=1.0).fit([neighbour], 8)
    scores = nb.scores([[7, 3]]).toarray()[0]  # 3 meets the neighbour at position 2; 7 it lacks
    sim = 1.0 / 1.0  # 3 is the prefix's last item: recency weight 1
    expected = {1: math.exp(-2), 2: math.exp(-1), 3: 1.0, 4: math.exp(-1), 5: math.exp(-2), 6: math.exp(-3)}
    for item, weight in expected.items():
        assert scores[item] == pytest.approx(sim * weight, rel=1e-6)
    assert scores[7] == 0 and scores[8] == 0


def test_position_decay_anchors_on_the_most_recent_shared_item() -> None:
    nb = SessionNeighbors(idf_weight=0.0, position_decay=1.0).fit([[1, 2, 3, 4, 5]], 6)
    # both 1 and 5 are shared; 5 was played last, so the neighbour is read from its end
    scores = nb.scores([[1, 5]]).toarray()[0]
    similarity = 1 / 2 + 1 / 1
    for item in range(1, 6):
        assert scores[item] == pytest.approx(similarity * math.exp(-(5 - item)), rel=1e-6)


def test_large_position_decay_is_plain_v_sknn() -> None:
    rng = np.random.default_rng(0)
    sessions = [list(rng.choice(np.arange(1, 40), size=rng.integers(2, 8), replace=False)) for _ in range(300)]
    queries = [list(rng.choice(np.arange(1, 40), size=rng.integers(1, 5), replace=False)) for _ in range(50)]
    plain = SessionNeighbors(k=20, sample=100).fit(sessions, 40).scores(queries).toarray()
    decayed = SessionNeighbors(k=20, sample=100, position_decay=1e9).fit(sessions, 40).scores(queries).toarray()
    np.testing.assert_allclose(decayed, plain, rtol=1e-5)


def test_position_decay_holds_past_int32_keys() -> None:
    """Row x catalog width passes 2**31 here (3,001 prefixes, a million items)."""
    n = 1_000_000
    nb = SessionNeighbors(k=5, sample=10, idf_weight=0.0, position_decay=1.0).fit([[1, 2, 3], [n - 1, n, 5]], n)
    scores = nb.scores([[7]] * 3000 + [[n]]).getrow(3000).toarray()[0]
    assert scores[n] == pytest.approx(1.0) and scores[5] == pytest.approx(math.exp(-1))
    assert scores[n - 1] == pytest.approx(math.exp(-1))
