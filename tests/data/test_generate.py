"""The synthetic plays: exact size, reproducible, never in the future, and learnable."""
from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest

from nextplay.config import ConfigError
from nextplay.data.generate import generate


def _small(cfg, events: int, out: str) -> None:
    g = cfg.generate
    g.events, g.users, g.tracks, g.artists, g.files, g.malformed_fraction, g.output = events, 300, 3000, 150, 2, 0.0, out


def _recall_at_10(plays: pd.DataFrame) -> tuple[float, float]:
    """Most-popular vs first-order (last track -> next) on next-play pairs inside sessions, split by time."""
    plays = plays.sort_values(["user_id", "ts"])
    same = (plays.user_id == plays.user_id.shift()) & (plays.ts - plays.ts.shift() <= pd.Timedelta(minutes=30))
    pairs = pd.DataFrame({"prev": plays.track_id.shift()[same], "next": plays.track_id[same], "ts": plays.ts[same]})
    cut = plays.ts.quantile(0.8)
    train, test = pairs[pairs.ts < cut], pairs[pairs.ts >= cut]
    popular = set(plays[plays.ts < cut].track_id.value_counts().index[:10])
    counts = train.groupby(["prev", "next"]).size().rename("n").reset_index()
    top = counts.sort_values(["prev", "n"], ascending=[True, False]).groupby("prev").head(10)
    known = set(zip(top.prev, top.next))
    mp = test.next.isin(popular).mean()
    markov = pd.Series([(p, n) in known for p, n in zip(test.prev, test.next)]).mean()
    return mp, markov


def test_a_first_order_model_beats_most_popular(spark, cfg, tmp_path):
    _small(cfg, 30_000, str(tmp_path / "gen"))
    result = generate(spark, cfg)
    assert result["events"] == 30_000
    plays = spark.read.json(str(tmp_path / "gen" / "*.json")).toPandas()
    assert len(plays) == 30_000 and plays.event_id.is_unique
    plays["ts"] = pd.to_datetime(plays.ts, utc=True)
    end = datetime.fromisoformat(result["history_end"])
    assert plays.ts.max() < end <= datetime.now(timezone.utc)
    assert plays.ts.min() >= end - pd.Timedelta(days=cfg.generate.days + 7)  # busy listeners start a little early
    assert plays.user_id.value_counts().iloc[0] > 3 * len(plays) / plays.user_id.nunique()  # heavy listeners exist
    mp, markov = _recall_at_10(plays)
    print(f"Recall@10 on next-play pairs: most-popular {mp:.3f}, first-order {markov:.3f}")
    assert markov > 0.3 and markov > 2.5 * mp


def test_same_config_same_plays(spark, cfg, tmp_path):
    frames = []
    for run in ("a", "b"):
        _small(cfg, 2_000, str(tmp_path / run))
        cfg.generate.format, cfg.generate.malformed_fraction = "parquet", 0.05
        generate(spark, cfg)
        frames.append(spark.read.parquet(str(tmp_path / run)).toPandas().sort_values("event_id").reset_index(drop=True))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert len(frames[0]) == 2_000


def test_end_date_in_the_future_is_refused(spark, cfg):
    cfg.generate.end_date = "2999-01-01"
    with pytest.raises(ConfigError, match="generate.end_date"):
        generate(spark, cfg)
