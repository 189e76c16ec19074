"""Timestamp parsing and the quarantine reasons, on in-memory rows (no files, no Delta)."""
from __future__ import annotations


from pyspark.sql import functions as F

from nextplay.data.validate import parse_timestamp, validate
from nextplay.tables import RAW_PLAYS
from tests.data.conftest import utc

NOW = utc(2026, 6, 1, 12, 0)


def test_timestamp_formats(spark):
    cases = {
        "2024-03-01T10:00:00Z": utc(2024, 3, 1, 10),
        "2024-03-01T10:00:00+02:00": utc(2024, 3, 1, 8),
        "2024-03-01T10:00:00-0500": utc(2024, 3, 1, 15),
        "2024-03-01T10:00:00": utc(2024, 3, 1, 10),  # no offset: UTC
        "2024-03-01 10:00:00.250": utc(2024, 3, 1, 10, 0, 0, 250_000),
        " 2024-03-01T10:00:00.123456Z ": utc(2024, 3, 1, 10, 0, 0, 123_456),
        "1709287200": utc(2024, 3, 1, 10),  # epoch seconds
        "1709287200.5": utc(2024, 3, 1, 10, 0, 0, 500_000),
        "1.7092872E9": utc(2024, 3, 1, 10),
        "1709287200000": utc(2024, 3, 1, 10),  # epoch milliseconds
        "1709287200123.5": utc(2024, 3, 1, 10, 0, 0, 123_500),
        "99999999999": utc(5138, 11, 16, 9, 46, 39),  # just below 1e11: still seconds
        "100000000000": utc(1973, 3, 3, 9, 46, 40),  # 1e11: milliseconds from here on
        "1709287200123456": utc(2024, 3, 1, 10, 0, 0, 123_456),  # microseconds
        "1709287200123456789": utc(2024, 3, 1, 10, 0, 0, 123_457),  # nanoseconds, rounded to the microsecond
        "1e30": None,  # nanoseconds by magnitude, but after the year 9999: garbage
        "yesterday": None, "": None, "2024-02-30T10:00:00Z": None, "12:00": None, "1e400": None,
        "99999999999999999999999": None,
    }
    df = spark.createDataFrame([(k,) for k in cases], "text string")
    got = {r.text: r.ts for r in df.select("text", F.unix_micros(parse_timestamp(F.col("text"))).alias("ts")).collect()}
    for text, want in cases.items():
        expected = None if want is None else round(want.timestamp() * 1_000_000)
        assert got[text] == expected, text


def _reasons(spark, cfg, rows: list[tuple]) -> list[str | None]:
    full = [r + (None,) * (len(RAW_PLAYS.fields) - len(r)) for r in rows]
    raw = spark.createDataFrame(full, RAW_PLAYS)
    return [r.reason for r in validate(raw, cfg.ingest, NOW).collect()]


def test_quarantine_reasons(spark, cfg):
    cfg.ingest.max_id_length = 10
    rows = [
        ("u1", "t1", "2026-05-01T00:00:00Z", "1000"),
        ("u1", "t1", "yesterday"),
        ("", "t1", "2026-05-01T00:00:00Z"),
        (None, " ", "2026-05-01T00:00:00Z"),
        ("u1", "t1", "2026-05-01T00:00:00Z", "-5"),
        ("u1", "t1", "2026-05-01T00:00:00Z", "lots"),
        ("u1", "t1", "2031-01-02T03:04:05Z"),
        ("u1", "t1", "2026-06-01T12:30:00Z"),  # within max_future_minutes (60) of now: clock skew, kept
        ("u1", "t1", "1990-01-01T00:00:00Z"),
        ("u1", "t1", None),
        ("x" * 11, "t\ufffd1", "2026-05-01T00:00:00Z"),
        ("u1", "t1", "2026-05-01T00:00:00Z", None, None, "{broken", None, "malformed line: not a JSON object"),
        ("u1", "t1", "the day after the day after tomorrow, at noon, give or take"),
    ]
    assert _reasons(spark, cfg, rows) == [
        None,
        "ts: unparseable 'yesterday'",
        "user_id: missing",
        "user_id: missing; track_id: missing",
        "ms_played: negative (-5)",
        "ms_played: not a number 'lots'",
        "ts: in the future (2031-01-02T03:04:05Z)",
        None,
        "ts: before 2000-01-01T00:00:00Z (1990-01-01T00:00:00Z)",
        "ts: missing",
        "user_id: longer than 10 characters (11); track_id: not valid UTF-8 text 't\ufffd1'",
        "malformed line: not a JSON object",
        "ts: unparseable 'the day after the day after tomorrow, at...'",
    ]


def test_event_id_is_a_stable_hash_when_the_source_has_none(spark, cfg):
    """The same play written two ways gets one id; a given id is kept as is."""
    rows = [("u1", "t1", "2024-03-01T10:00:00Z"), ("u1", "t1", "1709287200000"), (" u1 ", "t1", "2024-03-01T11:00:00+01:00"),
            ("u1", "t1", "2024-03-01T10:00:00Z", None, "given-1")]
    full = [r + (None,) * (len(RAW_PLAYS.fields) - len(r)) for r in rows]
    ids = [r.id for r in validate(spark.createDataFrame(full, RAW_PLAYS), cfg.ingest, NOW)
           .select(F.col("play.event_id").alias("id")).collect()]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 64
    assert ids[3] == "given-1"
