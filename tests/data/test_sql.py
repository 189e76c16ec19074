"""`nextplay sql`: lake tables by name; JSON output that json.loads takes as is."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from nextplay.cli import main
from nextplay.sql import run_sql
from nextplay.tables import SESSIONS, SESSIONS_SCHEMA, Lake


def test_json_output_parses_and_keeps_types(spark, cfg, capsys):
    lake = Lake(cfg.lake)
    start = datetime(2025, 3, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)
    rows = [("u1", "s1", start, start, start.date(), [3, 1, 2], 3, "train"),
            ("u2", "s2", start, start, start.date(), [5, 4], 2, "test")]
    lake.create_if_missing(spark, SESSIONS, SESSIONS_SCHEMA)
    lake.write(spark.createDataFrame(rows, SESSIONS_SCHEMA), SESSIONS)
    capsys.readouterr()

    run_sql(cfg, "SELECT user_id, items, start_ts, event_date, CAST(NULL AS STRING) AS note FROM sessions ORDER BY user_id",
            fmt="json")
    assert json.loads(capsys.readouterr().out) == [
        {"user_id": "u1", "items": [3, 1, 2], "start_ts": "2025-03-01T10:00:00.123456Z", "event_date": "2025-03-01", "note": None},
        {"user_id": "u2", "items": [5, 4], "start_ts": "2025-03-01T10:00:00.123456Z", "event_date": "2025-03-01", "note": None},
    ]
    assert main(["sql", "--lake", cfg.lake.root, "--format", "json",
                 "SELECT split, count(*) AS n FROM sessions WHERE length > 5 GROUP BY split"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["sql", "--lake", cfg.lake.root, "SELECT split, length FROM sessions ORDER BY split"]) == 0
    table = capsys.readouterr().out
    assert "|split|length|" in table.replace(" ", "") and "train" in table
