"""The hybrid's memory: V-SKNN over stored sessions, mixed into the RNN's distribution at scoring."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nextplay.config import ModelConfig
from nextplay.evaluate.metrics import ranks_from_scores
from nextplay.model.io import MODEL_FILE, load_model, save_model
from nextplay.model.neighbors import SessionMemory, SessionNeighbors
from nextplay.model.rnn import SessionRNN

N_ITEMS = 12
SESSIONS = [[1, 2, 3], [2, 3, 4], [5, 6], [1, 2], [7, 8, 9, 7], [10, 11], [3, 4, 12]]
ITEMS = torch.tensor([[1, 2, 0], [5, 0, 0], [2, 3, 4], [12, 0, 0], [11, 10, 11]])
LENGTHS = torch.tensor([2, 1, 3, 1, 3])


def hybrid(weight: float = 0.3, head: str = "sampled", seed: int = 0) -> SessionRNN:
    torch.manual_seed(seed)
    cfg = ModelConfig(head=head, hidden_size=8, n_negatives=4, knn_weight=weight)
    model = SessionRNN(N_ITEMS, cfg, np.arange(N_ITEMS + 1)).eval()
    model.memory.remember(SESSIONS)
    return model


def prefixes() -> list[list[int]]:
    return [row[:n].tolist() for row, n in zip(ITEMS, LENGTHS)]


def test_memory_is_the_neighbour_scores_as_a_distribution() -> None:
    memory = SessionMemory(N_ITEMS)
    memory.remember(SESSIONS)
    assert memory.n_sessions == len(SESSIONS)
    dist = memory.distribution(prefixes()).toarray()
    raw = SessionNeighbors().fit(SESSIONS, N_ITEMS).scores(prefixes()).toarray()
    assert dist.shape == (len(LENGTHS), N_ITEMS + 1) and (dist[:, 0] == 0).all()
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(dist, raw / raw.sum(axis=1, keepdims=True), rtol=1e-6)
    # [1, 2]: sessions 0, 1 and 3 are neighbours, so 3 (in two of them) outranks 4 (in one)
    assert dist[0, 3] > dist[0, 4] > 0 and dist[0, 9] == 0


def test_memory_refuses_items_outside_the_catalog() -> None:
    with pytest.raises(ValueError, match="1..12"):
        SessionMemory(N_ITEMS).remember([[1, 13]])


def test_prefix_without_neighbours_scores_as_the_rnn_alone() -> None:
    model = hybrid()
    memory = SessionMemory(N_ITEMS)
    memory.remember([[1, 2]])
    model.memory = memory
    alone = hybrid(weight=0.3)
    alone.memory = None
    items, lengths = torch.tensor([[9, 0]]), torch.tensor([1])
    got, want = model.score_all(items, lengths), alone.score_all(items, lengths)
    torch.testing.assert_close(got[:, 1:], want[:, 1:] + math.log(0.7))  # (1 - w) p_rnn: same ranking


@pytest.mark.parametrize("head", ["sampled", "full", "bit_tree"])
def test_hybrid_is_the_stated_mixture_and_a_distribution(head: str) -> None:
    model = hybrid(0.3, head)
    got = model.score_all(ITEMS, LENGTHS).exp()[:, 1:].double()
    memory, model.memory = model.memory, None
    p_rnn = model.score_all(ITEMS, LENGTHS).exp()[:, 1:].double()
    p_knn = torch.from_numpy(memory.distribution(prefixes()).toarray()[:, 1:])
    torch.testing.assert_close(got, 0.7 * p_rnn + 0.3 * p_knn, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(len(LENGTHS), dtype=torch.float64), rtol=1e-5, atol=0)


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
    assert loaded.memory.n_sessions == len(SESSIONS)
    assert torch.equal(loaded.score_all(ITEMS, LENGTHS), model.score_all(ITEMS, LENGTHS))


def test_a_model_saved_before_the_hybrid_loads_as_the_rnn_alone(tmp_path: Path) -> None:
    model = hybrid()
    model.memory = None
    save_model(model, tmp_path / "m")
    payload = torch.load(tmp_path / "m" / MODEL_FILE, weights_only=True)
    del payload["config"]["knn_weight"], payload["config"]["knn_sessions"]
    torch.save(payload, tmp_path / "m" / MODEL_FILE)
    loaded = load_model(tmp_path / "m")  # the default weight, with an empty memory: the RNN alone
    assert loaded.memory.n_sessions == 0
    assert torch.equal(loaded.score_all(ITEMS, LENGTHS), model.score_all(ITEMS, LENGTHS))


def test_keep_per_row_keeps_the_largest_and_the_earliest_of_ties() -> None:
    import scipy.sparse as sp

    sim = sp.csr_matrix(np.array([[3.0, 1.0, 2.0, 2.0, 2.0], [1.0, 0.0, 0.0, 0.0, 5.0]]))
    keep = SessionNeighbors._keep_per_row(sim, sim.data, 3)
    # row 0: 3 and the first two 2s (one 2 is cut); row 1 holds two entries, both stay
    assert keep.tolist() == [True, False, True, True, False, True, True]


def test_a_state_dict_without_memory_loads_as_an_empty_memory() -> None:
    """Checkpoints written before the hybrid existed must still resume."""
    model = hybrid()
    older = {k: v for k, v in model.state_dict().items() if not k.startswith("memory.")}
    fresh = hybrid(seed=1)
    assert fresh.memory.n_sessions == len(SESSIONS)
    fresh.load_state_dict(older)
    assert fresh.memory.n_sessions == 0
    fresh.memory = None
    model.memory = None
    assert torch.equal(fresh.score_all(ITEMS, LENGTHS), model.score_all(ITEMS, LENGTHS))
