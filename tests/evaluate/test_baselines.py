"""Baselines on tiny hand-made sessions, where the right answer is obvious."""
from __future__ import annotations

import numpy as np

from nextplay.evaluate.baselines import MarkovChain, MostPopular, SessionKNN

SESSIONS = [[1, 2, 3], [1, 2, 3], [1, 2, 4], [5, 6], [5, 6], [6, 5], [2, 3, 3]]


def test_most_popular_ranks_by_frequency() -> None:
    scores = MostPopular().fit(SESSIONS, 6).score([[1], [6]])
    assert scores.shape == (2, 7)
    assert np.isneginf(scores[:, 0]).all()
    assert list(np.argsort(-scores[0, 1:])[:2] + 1) == [2, 3]  # 2 and 3 appear 4 times each...
    np.testing.assert_array_equal(scores[0], scores[1])


def test_markov_chain_follows_the_last_item() -> None:
    scores = MarkovChain().fit(SESSIONS, 6).score([[5, 1, 2], [4, 5], [3]])
    assert np.argmax(scores[0]) == 3  # 2 -> 3 three times, 2 -> 4 once
    assert scores[0, 3] > scores[0, 4] > scores[0, 1]
    assert np.argmax(scores[1]) == 6  # 5 -> 6
    assert np.argmax(scores[2]) == 3  # 3 -> 3, the repeat
    assert np.isneginf(scores[:, 0]).all()


def test_session_knn_scores_items_of_similar_sessions() -> None:
    knn = SessionKNN(k=3, sample=10).fit(SESSIONS, 6)
    scores = knn.score([[5], [1, 2], [4]])
    # every session with 5 also holds 6; items of the prefix itself are not excluded (repeats happen)
    assert scores[0, 6] == scores[0, 5] > max(scores[0, 1:5])
    assert scores[1, 3] > scores[1, 4] > scores[1, 5]  # neighbours of (1, 2): mostly ...3, once ...4
    assert set(np.argsort(-scores[2])[:3].tolist()) == {1, 2, 4}  # the one session with 4 is (1, 2, 4)


def test_session_knn_keeps_only_the_most_recent_sample() -> None:
    # item 9 is in an old session and a newer one; with sample=1 only the newest neighbour counts
    sessions = [[9, 1], [9, 2]]
    scores = SessionKNN(k=5, sample=1).fit(sessions, 9).score([[9]])
    assert scores[0, 2] > scores[0, 1]
    both = SessionKNN(k=5, sample=2).fit(sessions, 9).score([[9]])
    assert both[0, 1] > 0.5 * both[0, 2]


def test_a_huge_catalog_scores_in_bounded_memory() -> None:
    """Baselines score dense [batch, V + 1] rows: with two million items a batch of 1024 would be
    8 GB, so evaluation shrinks the batch to a fixed memory budget instead (same metrics)."""
    import tracemalloc

    from nextplay.metrics import evaluate_model

    n_items = 2_000_000
    scorer = MostPopular().fit([[1, 2, 2, 3]], n_items)
    tracemalloc.start()
    try:
        got = evaluate_model(scorer, [[1]] * 60, [2] * 60, ks=[10])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got["recall_at_10"] == 1.0 and got["lines"] == 60
    assert peak < 300 * 2**20, f"peak {peak / 2**20:.0f} MiB"
