"""Ranks against all items, ties counted against the label, unknown labels as misses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nextplay.config import ModelConfig
from nextplay.metrics import evaluate_model, metrics_from_ranks, ranks_from_scores
from nextplay.model.session import SessionModel


def test_ranks_count_ties_against_the_label() -> None:
    scores = np.array([
        [-np.inf, 0.1, 0.5, 0.3, 0.9],  # label 3: items 4 and 2 score higher -> rank 3
        [-np.inf, 0.2, 0.2, 0.2, 0.1],  # label 2 ties with 1 and 3 -> rank 3, not 1
        [-np.inf, 0.2, 0.2, 0.2, 0.1],  # label 4: three items higher -> rank 4
        [-np.inf, 1.0, 0.0, 0.0, 0.0],  # label 0: unknown item -> miss
        [-np.inf, 1.0, 0.0, 0.0, 0.0],  # label 7: outside the catalog -> miss
    ])
    ranks = ranks_from_scores(scores, np.array([3, 2, 4, 0, 7]))
    np.testing.assert_array_equal(ranks, [3, 3, 4, np.inf, np.inf])


def test_metrics_from_ranks_by_hand() -> None:
    m = metrics_from_ranks(np.array([1, 2, 10, 11, np.inf]), ks=(1, 10))
    assert m["lines"] == 5
    assert m["recall_at_1"] == pytest.approx(1 / 5)
    assert m["mrr_at_1"] == pytest.approx(1 / 5)
    assert m["recall_at_10"] == pytest.approx(3 / 5)
    assert m["mrr_at_10"] == pytest.approx((1 + 1 / 2 + 1 / 10) / 5)


class _FixedScorer:
    """A scorer whose scores depend on the last prefix item only: score(i) = -|i - last|."""

    def score(self, prefixes: list[list[int]]) -> np.ndarray:
        items = np.arange(7)
        out = -np.abs(items[None, :] - np.array([p[-1] for p in prefixes])[:, None]).astype(float)
        out[:, 0] = -np.inf
        return out


def test_evaluate_model_with_a_scorer() -> None:
    # last=3: scores 4:-1, 2:-1 ... label 3 -> rank 1; label 4 ties with 2 -> rank 3; label 0 -> miss
    m = evaluate_model(_FixedScorer(), [[1, 3], [3], [5]], [3, 4, 0], ks=(1, 3), batch_size=2)
    assert m["lines"] == 3
    assert m["recall_at_1"] == pytest.approx(1 / 3)
    assert m["recall_at_3"] == pytest.approx(2 / 3)
    assert m["mrr_at_3"] == pytest.approx((1 + 1 / 3) / 3)


def test_evaluate_model_with_the_rnn_matches_its_scores() -> None:
    torch.manual_seed(0)
    model = SessionModel(12, ModelConfig(head="full", hidden_size=8, init_std=0.5))
    prefixes = [[1, 2, 3], [4], [5, 5, 6, 7], [8, 9]]
    labels = [4, 12, 5, 0]
    got = evaluate_model(model, prefixes, labels, ks=(1, 5, 12), batch_size=3)
    model.eval()
    ranks = []
    for p, y in zip(prefixes, labels):
        s = model.score_all(torch.tensor([p]), torch.tensor([len(p)]))[0].numpy()
        ranks.append(ranks_from_scores(s[None, :], np.array([y]))[0])
    assert got == metrics_from_ranks(np.array(ranks), ks=(1, 5, 12))
    assert got["recall_at_12"] == pytest.approx(3 / 4)  # every known label ranks within the catalog
