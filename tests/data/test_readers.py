"""Each reader on its format (the shared raw samples where present), read and validated, no Delta."""
from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest
from pyspark.sql import functions as F

from nextplay.data.readers import detect_format, list_input, read_raw
from nextplay.data.validate import validate
from tests.conftest import shared_data
from tests.data.conftest import utc, write_text

NOW = datetime.now(timezone.utc)


def _read(spark, cfg, path, fmt: str = "auto"):
    """(format, rows sorted by user/track/time) with each row's fields, epoch micros and reason."""
    if fmt == "auto":
        fmt = detect_format(spark, list_input(spark, str(path)))
    checked = validate(read_raw(spark, str(path), fmt), cfg.ingest, NOW)
    rows = checked.select("play.user_id", "play.track_id", F.unix_micros("play.ts").alias("us"), "play.ms_played",
                          "play.event_id", "reason", "_raw").orderBy("user_id", "track_id", "us").collect()
    return fmt, rows


def _us(*args) -> int:
    return round(utc(*args).timestamp() * 1e6)


@pytest.mark.parametrize("folder, name, fmt, n, first", [
    ("rsc15_clicks_100k", "yoochoose-clicks-100k_test.txt", "yoochoose", 13_568,
     ("1", "214536502", _us(2014, 4, 7, 8, 51, 9, 277_000))),
    ("diginetica_views_sample", "sample_train-item-views.csv", "diginetica", 12_391,
     ("2", "24764", _us(2016, 4, 9, 0, 0, 8, 863_000))),  # user 2; 2016-04-09 + 8863 ms
    ("lfm1b_sample", "LFM-1b_LEs-sample.txt", "lfm1b", 51_631, None),
])
def test_sample_files(spark, cfg, folder, name, fmt, n, first):
    path = shared_data("raw_samples", folder, name)
    got_fmt, rows = _read(spark, cfg, path)
    assert got_fmt == fmt and len(rows) == n
    assert [r.reason for r in rows if r.reason] == []
    if first:
        assert first in [(r.user_id, r.track_id, r.us) for r in rows]


def test_diginetica_anonymous_views_belong_to_their_session(spark, cfg, tmp_path):
    path = write_text(tmp_path / "views.csv", ["session_id;user_id;item_id;timeframe;eventdate",
                                               "7;NA;100;1500;2016-05-09", "8;42;101;0;2016-05-10", "9;NA;102;5;2016-13-01"])
    _, rows = _read(spark, cfg, path)
    assert [(r.user_id, r.track_id, r.us, r.reason) for r in rows] == [
        ("42", "101", _us(2016, 5, 10), None),
        ("session-7", "100", _us(2016, 5, 9, 0, 0, 1, 500_000), None),
        ("session-9", "102", None, "ts: unparseable '2016-13-01 + 5 ms'"),
    ]


def test_lastfm_1k_log(spark, cfg, tmp_path):
    """userid, timestamp, artist id, artist name, track id, track name; a missing track id falls back to names."""
    path = write_text(tmp_path / "userid-timestamp-artid-artname-traid-traname.tsv", [
        "user_000001\t2009-05-04T23:08:57Z\tf1b1cf71\tDeep Dish\tf7c1f8f8\tFuck Me Im Famous",
        "user_000001\t2009-05-04T13:54:10Z\ta7f7df4a\tCeephax Acid Crew\t\tFlex To Make Ends",
        "user_000002\t2009-05-04T13:54:10Z\tonly three fields",
    ])
    fmt, rows = _read(spark, cfg, path)
    assert fmt == "lastfm"
    assert [(r.user_id, r.track_id, r.us, r.reason) for r in rows] == [
        ("user_000001", "Ceephax Acid Crew - Flex To Make Ends", _us(2009, 5, 4, 13, 54, 10), None),
        ("user_000001", "f7c1f8f8", _us(2009, 5, 4, 23, 8, 57), None),
        ("user_000002", None, _us(2009, 5, 4, 13, 54, 10), "malformed line: expected 6 tab-separated fields, got 3"),
    ]


def test_csv_columns_are_found_by_name_in_each_files_header(spark, cfg, tmp_path):
    write_text(tmp_path / "in" / "a.csv", ["user_id,track_id,ts,ms_played", "u1,t1,2025-03-01T10:00:00Z,1000",
                                          '"u,2",t2,1740823200,', "u3,t3"])
    write_text(tmp_path / "in" / "b.csv", ["\ufeffTS, Track_ID ,extra,user_id,event_id", "1740823200000,t4,x,u4,e-4"])
    write_text(tmp_path / "in" / "c.csv", ["user_id,ts", "u5,2025-03-01T10:00:00Z"])  # no track_id column at all
    fmt, rows = _read(spark, cfg, tmp_path / "in")
    assert fmt == "csv"
    assert [(r.user_id, r.track_id, r.us, r.ms_played, r.reason) for r in rows] == [
        ("u,2", "t2", _us(2025, 3, 1, 10), None, None),
        ("u1", "t1", _us(2025, 3, 1, 10), 1000, None),
        ("u3", "t3", None, None, "ts: missing"),
        ("u4", "t4", _us(2025, 3, 1, 10), None, None),
        ("u5", None, _us(2025, 3, 1, 10), None, "track_id: missing"),
    ]
    assert rows[3].event_id == "e-4"


def test_parquet_of_any_column_types(spark, cfg, tmp_path):
    """Numbers and pandas' nanosecond timestamps where strings are expected; mixed-case names; extra columns."""
    for folder in ("a", "b", "ab"):
        (tmp_path / folder).mkdir()
    typed = pd.DataFrame({"user_id": [1, 2], "Track_Id": ["t1", "t2"],
                          "ts": pd.to_datetime(["2025-03-01T10:00:00Z", "2025-03-01T11:00:00Z"]), "ms_played": [1000, -1]})
    loose = pd.DataFrame({"user_id": ["u3"], "track_id": ["t3"], "ts": [1740823200.5], "extra": [[1, 2]]})
    typed.to_parquet(tmp_path / "a" / "a.parquet")
    loose.to_parquet(tmp_path / "b" / "b.parquet")
    fmt, rows = _read(spark, cfg, tmp_path / "a")
    assert fmt == "parquet"
    assert [(r.user_id, r.track_id, r.us, r.ms_played, r.reason) for r in rows] == [
        ("1", "t1", _us(2025, 3, 1, 10), 1000, None),
        ("2", "t2", _us(2025, 3, 1, 11), -1, "ms_played: negative (-1)"),
    ]
    _, rows = _read(spark, cfg, tmp_path / "b")
    assert [(r.user_id, r.track_id, r.us, r.reason) for r in rows] == [("u3", "t3", _us(2025, 3, 1, 10, 0, 0, 500_000), None)]
    assert '"extra":"[1, 2]"' in rows[0]._raw
    typed.to_parquet(tmp_path / "ab" / "a.parquet")
    loose.to_parquet(tmp_path / "ab" / "b.parquet")
    with pytest.raises(ValueError, match="cannot read the Parquet files"):
        _read(spark, cfg, tmp_path / "ab", "parquet")


@pytest.mark.parametrize("name, first_line, fmt", [
    ("plays.jsonl.gz", None, "json"), ("part-0.parquet", None, "parquet"),
    ("x.txt", '{"user_id": "u"}', "json"), ("x.csv", "user_id,track_id,ts", "csv"),
    ("x.dat", "SessionId\tItemId\tTime", "yoochoose"), ("x.csv", "session_id;user_id;item_id;timeframe;eventdate", "diginetica"),
    ("x.tsv", "u\t2009-05-04T23:08:57Z\ta\tb\tc\td", "lastfm"), ("x.txt", "1\t2\t3\t4\t1331060664", "lfm1b"),
])
def test_format_is_guessed_from_name_or_first_line(spark, tmp_path, name, first_line, fmt):
    path = tmp_path / name
    if first_line is None:
        path.write_bytes(b"not read")
    else:
        write_text(path, ["", first_line])
    assert detect_format(spark, list_input(spark, str(path))) == fmt


def test_unknown_format_says_what_to_do(spark, tmp_path):
    path = write_text(tmp_path / "x.txt", ["hello world"])
    with pytest.raises(ValueError, match="pass --format"):
        detect_format(spark, list_input(spark, str(path)))
