"""The promotion rule on numbers, its configuration, and the translation of test lines between two
item indexes (real saved models, no Spark)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nextplay.config import ConfigError, PromoteConfig, load_config
from nextplay.evaluate.promote import decide, lines_for


def test_a_challenger_beating_both_is_promoted_with_the_numbers_in_the_reason() -> None:
    ok, reason = decide(PromoteConfig(), challenger=0.60, session_knn=0.50, champion=0.55, champion_version="3")
    assert ok
    assert "recall_at_20 0.6000" in reason and "session_knn 0.5000 (gain +0.1000" in reason
    assert "champion v3 0.5500 (gain +0.0500" in reason


def test_not_worse_than_the_champion_is_enough_by_default() -> None:
    assert decide(PromoteConfig(), 0.55, 0.50, 0.55, "3")[0]
    ok, reason = decide(PromoteConfig(), 0.5499, 0.50, 0.55, "3")
    assert not ok and reason.startswith("not good enough against champion v3")


def test_session_knn_must_be_beaten_strictly_even_without_a_champion() -> None:
    ok, reason = decide(PromoteConfig(), 0.50, 0.50, None)
    assert not ok and "session_knn" in reason.split(":")[0] and "no champion yet" in reason
    assert decide(PromoteConfig(), 0.5001, 0.50, None)[0]


def test_configured_margins_and_the_off_switch() -> None:
    strict = PromoteConfig(min_gain_over_champion=0.02, min_gain_over_knn=0.05)
    assert not decide(strict, 0.56, 0.50, 0.55, "1")[0]  # +0.01 over the champion, needs 0.02
    assert not decide(strict, 0.60, 0.56, 0.55, "1")[0]  # +0.04 over session-kNN, needs more than 0.05
    assert decide(strict, 0.62, 0.50, 0.55, "1")[0]
    tolerant = PromoteConfig(min_gain_over_champion=-0.01)
    assert decide(tolerant, 0.545, 0.50, 0.55, "1")[0]
    ok, reason = decide(PromoteConfig(enabled=False), 0.9, 0.5, None)
    assert not ok and "promote.enabled=false" in reason


def test_the_champion_evaluated_again_is_checked_against_the_baseline_only() -> None:
    ok, reason = decide(PromoteConfig(min_gain_over_champion=0.01), 0.6, 0.5, 0.6, "2", is_champion=True)
    assert ok and "champion already (v2)" in reason


@pytest.mark.parametrize("override, fragment", [
    ("promote.metric=precision_at_20", "promote.metric: expected recall_at_K or mrr_at_K"),
    ("promote.metric=recall_at_5", "K in evaluate.ks (10, 20)"),
    ("promote.min_gain_over_champion=2", "promote.min_gain_over_champion: must be in [-1, 1]"),
    ("promote.min_gain_over_knn=-1.5", "promote.min_gain_over_knn: must be in [-1, 1]"),
    ("promote.enabled=sometimes", "promote.enabled: expected true or false"),
])
def test_bad_promote_settings_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_promote_metric_follows_evaluate_ks() -> None:
    cfg = load_config(None, ["evaluate.ks=[5, 50]", "promote.metric=mrr_at_50"])
    assert cfg.promote.metric == "mrr_at_50"


def _model(tmp: Path, tracks: list[str], collapse: bool):
    """A real logged-model folder's parts (weights, item index, config) loaded as evaluate loads them."""
    from nextplay.model.io import save_model
    from nextplay.model.session import SessionModel
    from nextplay.model.pyfunc import CONF_COLLAPSE, CONF_TOP_K, NextTrackModel, write_item_index

    tmp.mkdir()
    save_model(SessionModel(len(tracks), load_config(None, ["model.hidden_size=4"]).model), tmp / "rnn")
    index = pd.DataFrame({"track_id": tracks, "item_idx": np.arange(1, len(tracks) + 1, dtype=np.int32)})
    model = NextTrackModel()
    model.load_files(tmp / "rnn", write_item_index(index, tmp / "index.parquet"), {CONF_TOP_K: 5, CONF_COLLAPSE: collapse})
    return model


def test_lines_are_translated_through_track_ids(tmp_path: Path) -> None:
    """The champion numbers the tracks in reverse and lacks one (c) that the challenger knows."""
    challenger = _model(tmp_path / "new", ["a", "b", "c", "d", "e"], collapse=True)
    champion = _model(tmp_path / "old", ["e", "d", "b", "a"], collapse=True)
    prefixes = [[1], [1, 2], [3], [1, 3, 1], [2, 4]]
    labels = [2, 3, 1, 5, 3]
    got_prefixes, got_labels = lines_for(champion, challenger, prefixes, labels)
    # a=4, b=3, d=2, e=1 for the champion; c unknown: dropped from prefixes, a miss (0) as a label.
    assert got_prefixes == [[4], [4, 3], [0], [4], [3, 2]]  # [a, c, a] -> [a, a] -> collapsed to [a]
    assert got_labels == [3, 0, 0, 1, 0]
    assert len(got_labels) == len(labels), "every line still counts"


def test_lines_stay_as_they_are_when_both_models_number_tracks_alike(tmp_path: Path) -> None:
    a = _model(tmp_path / "a", ["a", "b", "c"], collapse=True)
    b = _model(tmp_path / "b", ["a", "b", "c"], collapse=True)
    assert lines_for(b, a, [[1, 2], [3]], [3, 1]) == ([[1, 2], [3]], [3, 1])
