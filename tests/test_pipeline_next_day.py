"""The demo's second day: one more generated day, ingested and sessionized incrementally after the
history, re-cuts the days it changed and keeps every id of the dictionary."""
from __future__ import annotations

import pytest

from nextplay.tables import ITEM_INDEX, Lake


@pytest.mark.slow
def test_a_next_day_is_sessionized_incrementally(spark, cfg):
    from nextplay.data.generate import generate
    from nextplay.data.ingest import ingest
    from nextplay.data.sessionize import sessionize
    from nextplay.pipeline import next_day_config

    cfg.generate.events, cfg.generate.users, cfg.generate.tracks, cfg.generate.days = 6_000, 100, 400, 6
    cfg.generate.files = 2
    cfg.sessionize.min_item_count = 2
    cfg.ingest.input = cfg.generate.output
    generate(spark, cfg)
    ingest(spark, cfg)
    first = sessionize(spark, cfg)
    lake = Lake(cfg.lake)
    before = {(r.track_id, r.item_idx) for r in lake.read(spark, ITEM_INDEX).collect()}

    day = next_day_config(cfg)
    assert day.generate.end_date == "2026-01-02" and day.ingest.input != cfg.ingest.input
    generate(spark, day)
    added = ingest(spark, day)
    second = sessionize(spark, day)
    after = {(r.track_id, r.item_idx) for r in lake.read(spark, ITEM_INDEX).collect()}

    assert first["mode"] == "full" and second["mode"] == "incremental" and added["rows_silver"] > 0
    # The new day is re-cut, with the days the split moved across (tracks that entered re-cut no old day).
    # The new day, the day before it and the days the rolling split moved across: not the whole history,
    # although some listener's session crosses every midnight of it.
    assert second["last_recut_day"] == "2026-01-01" and 1 <= second["days_recut"] <= 4
    assert before <= after and second["items"] == len(after) == first["items"] + second["new_items"]
