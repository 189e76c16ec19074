"""Session-parallel lane steps: every target once, with its real prefix, in the stream's order."""
from __future__ import annotations

import numpy as np
import pytest

from nextplay.train.lanes import LaneBatches


def _sessions(n: int, seed: int = 0) -> list[np.ndarray]:
    """Session k holds items 100k + 1, 100k + 2, ...: an item names its session and position."""
    rng = np.random.default_rng(seed)
    return [100 * k + 1 + np.arange(int(rng.integers(1, 14))) for k in range(n)]


def _trained(batches: LaneBatches) -> list[tuple[int, int, tuple[int, ...]]]:
    """(session, target position, context) of each trained target, in training order."""
    out = []
    for batch in batches:
        items, lengths, first = batch["items"].numpy(), batch["length"].numpy(), batch["first_target"].numpy()
        assert len(items) <= batches.lanes and items.shape[1] == lengths.max()
        for row, n, f in zip(items, lengths, first):
            assert f == n - 2, "a lane trains exactly one target per step: its last item"
            assert (row[n:] == 0).all()
            target = int(row[n - 1])
            out.append((target // 100, target % 100 - 1, tuple(int(x) for x in row[: n - 1])))
    return out


@pytest.mark.parametrize("lanes,max_len", [(1, 50), (3, 4), (8, 2)])
def test_every_target_trains_once_with_its_prefix(lanes: int, max_len: int) -> None:
    sessions = _sessions(40)
    batches = LaneBatches(lambda: iter(sessions), lanes, max_len, sum(len(s) - 1 for s in sessions))
    trained = _trained(batches)
    expected = {(k, t) for k, s in enumerate(sessions) for t in range(1, len(s))}
    assert sorted((k, t) for k, t, _ in trained) == sorted(expected)  # once each; one-play sessions have none
    for k, t, context in trained:
        prefix = sessions[k][:t]
        assert context == tuple(prefix[-(max_len - 1):]), "context is the session's latest max_len - 1 items"
    assert len(batches) == -(-len(expected) // lanes)


def test_lanes_take_sessions_in_stream_order_and_train_them_side_by_side() -> None:
    sessions = _sessions(30, seed=1)
    trained = _trained(LaneBatches(lambda: iter(sessions), 4, 50, 1))
    starts = [k for k, t, _ in trained if t == 1]
    assert starts == sorted(starts), "a session starts only after every older one has"
    first_step = {k for k, t, _ in trained[:4]}
    assert len(first_step) == 4, "the first step trains four sessions at once"


def test_a_stream_without_targets_gives_no_steps() -> None:
    assert list(LaneBatches(lambda: iter([np.array([5]), np.array([6])]), 4, 10, 0)) == []
    with pytest.raises(ValueError, match="lanes"):
        LaneBatches(lambda: iter([]), 0, 10, 0)
