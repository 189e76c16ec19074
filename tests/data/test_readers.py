"""Each reader on its format (the shared raw samples where present), read and validated, no Delta."""
from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest
from pyspark.sql import functions as F

from nextplay.data.readers import detect_format, list_input, read_input
from nextplay.data.validate import validate
from tests.conftest import shared_data
from tests.data.conftest import utc, write_text

NOW = datetime.now(timezone.utc)


def _read(spark, cfg, path, fmt: str = "auto"):
    """(format, rows sorted by user/track/time) with each row's fields, epoch micros and reason."""
    raw, fmt = read_input(spark, list_input(spark, str(path)), fmt)
    checked = validate(raw, cfg.ingest, NOW)
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
        ("u3", "t3", None, None, "malformed line: expected 4 fields (the header's), got 2"),
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
    _, rows = _read(spark, cfg, tmp_path / "ab", "parquet")  # user_id is a number in one file, a string in the other
    assert [(r.user_id, r.track_id, r.reason) for r in rows] == [("1", "t1", None), ("2", "t2", "ms_played: negative (-1)"),
                                                                ("u3", "t3", None)]


def test_csv_lines_with_another_field_count_than_the_header_are_quarantined(spark, cfg, tmp_path):
    path = write_text(tmp_path / "plays.csv", [
        "user_id,track_id,ts", "u1,t1,1740823200", "u2,Hello, World,1740823200", '"u,3","t,3",1740823200',
        "u4,t4,1740823200,", "u5,t5", '"u6","He said ""hi, there""",1740823200'])
    _, rows = _read(spark, cfg, path, "csv")
    assert [(r.user_id, r.track_id, r.reason) for r in rows] == [
        ("u,3", "t,3", None), ("u1", "t1", None),
        ("u2", "Hello", "malformed line: expected 3 fields (the header's), got 4"),
        ("u4", "t4", "malformed line: expected 3 fields (the header's), got 4"),
        ("u5", "t5", "malformed line: expected 3 fields (the header's), got 2"),
        ("u6", 'He said "hi, there"', None),
    ]


def test_an_unreadable_parquet_file_is_a_quarantine_row(spark, cfg, tmp_path):
    pd.DataFrame({"user_id": ["u1"], "track_id": ["t1"], "ts": ["2025-03-01T10:00:00Z"]}).to_parquet(tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"PAR1 not really")
    _, rows = _read(spark, cfg, tmp_path, "parquet")
    good, bad = [r for r in rows if r.reason is None], [r for r in rows if r.reason is not None]
    assert [r.user_id for r in good] == ["u1"] and len(bad) == 1
    assert bad[0].reason.startswith("file: not a readable Parquet file") and bad[0]._raw.endswith("b.parquet")


def test_parquet_files_are_grouped_by_schema_not_read_one_by_one(spark, tmp_path):
    """A thousand files of two schemas are two reads, whatever their number."""
    from nextplay.data.readers import parquet_groups

    for i in range(6):
        value = [i] if i % 2 else [str(i)]
        pd.DataFrame({"user_id": value, "track_id": ["t"], "ts": [1740823200]}).to_parquet(tmp_path / f"{i}.parquet")
    groups, unreadable = parquet_groups(spark, [f.path for f in list_input(spark, str(tmp_path))])
    assert sorted(len(g) for g in groups) == [3, 3] and unreadable == {}


def test_a_json_structure_where_an_id_belongs_is_quarantined(spark, cfg, tmp_path):
    path = write_text(tmp_path / "plays.json", [
        '{"user_id": {"a": 1}, "track_id": "t1", "ts": 1740823200}',
        '{"user_id": "u2", "track_id": [1, 2], "ts": 1740823200, "event_id": {"x": []}}',
        '{"user_id": 3, "track_id": 4.5, "ts": 1740823200}',
        '{"user_id": "{\\"a\\": 1}", "track_id": "t5", "ts": 1740823200}',
        '{"user_id": true, "track_id": "t6", "ts": 1740823200}',
    ])
    _, rows = _read(spark, cfg, path, "json")
    assert sorted((r.user_id, r.track_id, r.reason) for r in rows) == sorted([
        ('{"a":1}', "t1", 'user_id: not a string or number ({"a":1})'),
        ("u2", "[1,2]", 'track_id: not a string or number ([1,2]); event_id: not a string or number ({"x":[]})'),
        ("3", "4.5", None),
        ('{"a": 1}', "t5", None),  # a string that looks like JSON is still a string
        ("true", "t6", "user_id: not a string or number (true)"),
    ])


def test_the_files_listed_are_the_files_read(spark, cfg, tmp_path):
    """A file that lands after the listing is not read under a batch that does not record it; a file
    name holding glob characters names that one file."""
    write_text(tmp_path / "a [1].json", ['{"user_id": "u1", "track_id": "t1", "ts": 1740823200}'])
    files = list_input(spark, str(tmp_path))
    write_text(tmp_path / "a1.json", ['{"user_id": "u2", "track_id": "t2", "ts": 1740823200}'])
    raw, _ = read_input(spark, files, "auto")
    assert [r.user_id for r in raw.collect()] == ["u1"]


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
