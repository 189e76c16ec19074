"""Ingest into a real Delta lake: every row accounted for, reasons, idempotence, errors, concurrency."""
from __future__ import annotations

import json
import threading

import pytest
from pyspark.sql import functions as F

from nextplay.cli import main
from nextplay.config import load_config
from nextplay.data.ingest import ingest
from nextplay.tables import INGEST_LOG, PLAYS_BRONZE, PLAYS_QUARANTINE, PLAYS_SILVER, Lake
from tests.data.conftest import write_text


def _play(user="u1", track="t1", ts="2025-03-01T10:00:00Z", ms=1000, event_id=None) -> str:
    record = {"user_id": user, "track_id": track, "ts": ts, "ms_played": ms}
    if event_id is not None:
        record["event_id"] = event_id
    return json.dumps(record)


MIXED = [
    _play(event_id="e1"), _play(track="t2", event_id="e2"), _play(track="t3", event_id="e3"),
    _play(track="t4", event_id="e4", ms=None),
    _play(event_id="e1"),  # the same event sent twice: a duplicate within the batch
    _play(user="u2", ts="1740823200"), _play(user="u2", ts="1740823200000"),  # one play, two spellings, no id
    '{"user_id": "u3", "track_id"',  # cut short
    "[1, 2, 3]",
    "",  # blank lines are not rows
    _play(ts="yesterday"), _play(user=""), _play(ms=-5), _play(ts="2031-01-01T00:00:00Z"),
]
REASONS = ["malformed line: not a JSON object"] * 2 + [
    "ts: unparseable 'yesterday'", "user_id: missing", "ms_played: negative (-5)",
    "ts: in the future (2031-01-01T00:00:00Z)",
]


@pytest.fixture(scope="module")
def landed(spark, tmp_path_factory):
    """One lake with the MIXED batch ingested once (shared: each ingest costs several Delta commits)."""
    root = tmp_path_factory.mktemp("ingest")
    cfg = load_config(None, [f"lake.root={root / 'lake'}", f"ingest.input={write_text(root / 'mixed.json', MIXED)}"])
    return cfg, ingest(spark, cfg)


def test_every_row_is_accounted_for(spark, landed):
    cfg, counts = landed
    assert {k: counts[k] for k in ("rows_in", "rows_silver", "rows_quarantined", "duplicates_removed",
                                   "duplicates_in_batch", "duplicates_in_silver", "format", "skipped")} == {
        "rows_in": 13, "rows_silver": 5, "rows_quarantined": 6, "duplicates_removed": 2,
        "duplicates_in_batch": 2, "duplicates_in_silver": 0, "format": "json", "skipped": False}
    lake = Lake(cfg.lake)
    batch = F.col("_batch_id") == counts["batch_id"]
    assert lake.read(spark, PLAYS_BRONZE).where(batch).count() == 13
    assert sorted(r.reason for r in lake.read(spark, PLAYS_QUARANTINE).where(batch).collect()) == sorted(REASONS)
    assert lake.read(spark, PLAYS_SILVER).count() == 5
    logged = lake.read(spark, INGEST_LOG).where(F.col("batch_id") == counts["batch_id"]).collect()
    assert len(logged) == 1 and logged[0]["rows_quarantined"] == 6


def test_quarantine_keeps_the_record_as_received(spark, landed):
    cfg, counts = landed
    rows = Lake(cfg.lake).read(spark, PLAYS_QUARANTINE).where(F.col("reason").startswith("malformed")).collect()
    assert sorted(r.raw for r in rows) == sorted(['{"user_id": "u3", "track_id"', "[1, 2, 3]"])
    assert all(r._source_file.endswith("mixed.json") for r in rows)


def test_reingest_changes_nothing(spark, landed):
    cfg, first = landed
    lake = Lake(cfg.lake)
    silver = sorted(lake.read(spark, PLAYS_SILVER).collect())
    again = ingest(spark, cfg)  # the same file: already recorded in ingest_log, nothing to read
    assert again["skipped"] and again["files_new"] == 0 and again["rows_in"] == 0
    cfg.ingest.batch_id = "the-same-file-under-another-name"
    renamed = ingest(spark, cfg)  # a new id does not make old files new
    assert renamed["skipped"] and renamed["files_new"] == 0 and renamed["rows_silver"] == 0
    cfg.ingest.batch_id = first["batch_id"]
    assert ingest(spark, cfg)["skipped"]  # the id that recorded this very file: nothing to do either
    cfg.ingest.batch_id = None
    assert lake.read(spark, PLAYS_BRONZE).count() == 13
    assert lake.read(spark, INGEST_LOG).count() == 1
    assert sorted(lake.read(spark, PLAYS_SILVER).collect()) == silver


def test_a_batch_that_died_before_its_log_row_is_redone_without_doubling(spark, cfg, tmp_path):
    cfg.ingest.input = str(write_text(tmp_path / "plays.json", MIXED))
    first = ingest(spark, cfg)
    lake = Lake(cfg.lake)
    lake.delta_table(spark, INGEST_LOG).delete(F.col("batch_id") == first["batch_id"])  # as if it crashed there
    redo = ingest(spark, cfg)
    assert not redo["skipped"] and redo["rows_in"] == 13
    assert lake.read(spark, PLAYS_BRONZE).count() == 13  # the bronze append was not repeated
    assert lake.read(spark, PLAYS_QUARANTINE).count() == 6
    assert lake.read(spark, PLAYS_SILVER).count() == 5


def test_missing_or_empty_input_is_a_plain_error(spark, cfg, tmp_path, capsys):
    cfg.ingest.input = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ingest(spark, cfg)
    cfg.ingest.input = str(write_text(tmp_path / "empty.csv", []))
    with pytest.raises(ValueError, match="empty"):
        ingest(spark, cfg)
    cfg.ingest.input = str(write_text(tmp_path / "header_only.csv", ["user_id,track_id,ts", ""]))
    with pytest.raises(ValueError, match="no rows"):
        ingest(spark, cfg)
    assert main(["ingest", "--lake", cfg.lake.root, "--input", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_two_batches_ingested_at_once_both_land(spark, cfg, tmp_path):
    inputs = [write_text(tmp_path / f"b{i}.json", [_play(user=f"u{i}", track=f"t{j}", event_id=f"b{i}-{j}")
                                                   for j in range(50)]) for i in range(2)]
    results, errors = {}, []

    def run(i: int) -> None:
        mine = load_config(None, [f"lake.root={cfg.lake.root}", f"ingest.input={inputs[i]}", f"ingest.batch_id=b{i}"])
        try:
            results[i] = ingest(spark, mine)
        except Exception as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [results[i]["rows_silver"] for i in range(2)] == [50, 50]
    lake = Lake(cfg.lake)
    assert lake.read(spark, PLAYS_SILVER).count() == 100
    assert lake.read(spark, PLAYS_BRONZE).count() == 100
    assert sorted(r.batch_id for r in lake.read(spark, INGEST_LOG).collect()) == ["b0", "b1"]
