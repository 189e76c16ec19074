"""Batch identity by file content, play identity by the play itself, and every format in one folder.

A nightly job ingests the whole raw folder every night; people re-run ingest by hand with other path
spellings and reused batch ids. Each file must land exactly once, and two different plays must never
merge because a producer reused an event id.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import functions as F

from nextplay.cli import main
from nextplay.data.validate import play_id
from nextplay.tables import INGEST_LOG, PLAY_IDENTITY, PLAYS_BRONZE, PLAYS_QUARANTINE, PLAYS_SILVER, Lake
from tests.data.conftest import write_text


def _play(user="u1", track="t1", ts="2025-03-01T10:00:00Z", ms=1000, event_id=None) -> str:
    record = {"user_id": user, "track_id": track, "ts": ts, "ms_played": ms}
    if event_id is not None:
        record["event_id"] = event_id
    return json.dumps(record)


def _spellings(folder: Path) -> list[str]:
    """The same folder as a person or a scheduler might write it."""
    return [str(folder), f"{folder}/", f"file:{folder}", f"file://{folder}/", f"{folder}/*",
            os.path.join(".", os.path.relpath(folder))]


def _counts(spark, lake: Lake) -> tuple[int, int, int]:
    return tuple(lake.read(spark, t).count() for t in (PLAYS_BRONZE, PLAYS_QUARANTINE, PLAYS_SILVER))


def test_the_same_files_by_any_path_spelling_land_once(spark, cfg, tmp_path, ingest_file):
    folder = tmp_path / "raw"
    write_text(folder / "a.json", [_play(event_id="e1"), _play(track="t2", event_id="e2"), "{broken"])
    first = ingest_file(folder)
    assert (first["rows_in"], first["rows_silver"], first["rows_quarantined"]) == (3, 2, 1)
    lake = Lake(cfg.lake)
    for spelling in _spellings(folder):
        again = ingest_file(spelling)
        assert again["skipped"] and again["rows_in"] == 0 and again["files_new"] == 0, spelling
    assert _counts(spark, lake) == (3, 1, 2)
    assert lake.read(spark, INGEST_LOG).count() == 1


def test_a_nightly_folder_ingests_each_file_once(spark, cfg, tmp_path, ingest_file):
    folder = tmp_path / "raw"
    write_text(folder / "day1.json", [_play(event_id="d1-1"), _play(track="t2", event_id="d1-2"), "{broken"])
    night1 = ingest_file(folder)
    write_text(folder / "day2.json", [_play(track="t3", event_id="d2-1")])
    night2 = ingest_file(folder)
    assert (night2["files_new"], night2["files_known"], night2["rows_in"], night2["rows_silver"]) == (1, 1, 1, 1)
    assert night2["batch_id"] != night1["batch_id"]
    lake = Lake(cfg.lake)
    assert _counts(spark, lake) == (4, 1, 3)  # day1's rows were not appended again
    logged = {r.batch_id: sorted(f.path.rsplit("/", 1)[-1] for f in r.files) for r in lake.read(spark, INGEST_LOG).collect()}
    assert logged == {night1["batch_id"]: ["day1.json"], night2["batch_id"]: ["day2.json"]}


def test_no_new_files_is_a_clear_no_op_with_exit_code_0(spark, cfg, tmp_path, ingest_file, capsys):
    folder = tmp_path / "raw"
    write_text(folder / "a.json", [_play(event_id="e1")])
    ingest_file(folder)
    assert main(["ingest", "--lake", cfg.lake.root, "--input", str(folder) + "/"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["skipped"] and out["files_new"] == 0 and out["files_known"] == 1 and "no new files" in out["message"]


def test_a_reused_batch_id_with_other_files_is_an_error_not_a_skip(spark, cfg, tmp_path, ingest_file):
    write_text(tmp_path / "a" / "a.json", [_play(event_id="e1")])
    write_text(tmp_path / "b" / "b.json", [_play(track="t2", event_id="e2")])
    ingest_file(tmp_path / "a", batch_id="nightly")
    same = ingest_file(f"{tmp_path / 'a'}/", batch_id="nightly")  # the same files again: nothing to do
    assert same["skipped"] and same["batch_id"] == "nightly"
    with pytest.raises(ValueError, match="batch id 'nightly' was ingested with other files"):
        ingest_file(tmp_path / "b", batch_id="nightly")
    landed = ingest_file(tmp_path / "b")  # under its own id, b lands
    assert landed["rows_silver"] == 1
    assert Lake(cfg.lake).read(spark, PLAYS_SILVER).count() == 2


def test_a_file_that_changed_is_new_content_and_plays_stay_single(spark, cfg, tmp_path, ingest_file):
    """A known path with another size or modification time is ingested again: its old plays are
    duplicates of silver rows, its new plays land."""
    path = write_text(tmp_path / "raw" / "a.json", [_play(event_id="e1")])
    ingest_file(tmp_path / "raw")
    write_text(path, [_play(event_id="e1"), _play(track="t2", event_id="e2")])
    os.utime(path, (time.time() + 5, time.time() + 5))
    again = ingest_file(tmp_path / "raw")
    assert (again["rows_in"], again["rows_silver"], again["duplicates_in_silver"]) == (2, 1, 1)
    assert Lake(cfg.lake).read(spark, PLAYS_SILVER).count() == 2


def test_two_plays_sharing_an_event_id_both_land(spark, cfg, tmp_path, ingest_file):
    """Producers reset their counters and share a namespace: the event id alone is not a play."""
    write_text(tmp_path / "a.json", [_play(user="u1", event_id="1"), _play(user="u2", track="t9", event_id="1")])
    first = ingest_file(tmp_path / "a.json")
    assert (first["rows_silver"], first["duplicates_removed"]) == (2, 0)
    write_text(tmp_path / "b.json", [_play(user="u3", ts="2025-03-02T10:00:00Z", event_id="1"),
                                     _play(user="u1", event_id="1", ms=5)])  # the second one is u1's play again
    second = ingest_file(tmp_path / "b.json")
    assert (second["rows_silver"], second["duplicates_in_silver"]) == (1, 1)
    lake = Lake(cfg.lake)
    assert sorted(r.user_id for r in lake.read(spark, PLAYS_SILVER).collect()) == ["u1", "u2", "u3"]
    # The duplicate is traceable: its bronze row carries the play_id of the silver row it repeats,
    # and the bronze row that landed it is the first batch's.
    silver = lake.read(spark, PLAYS_SILVER).where(F.col("user_id") == "u1")
    twin = silver.select(play_id(*[F.col(c) for c in PLAY_IDENTITY]).alias("id")).first().id
    bronze = lake.read(spark, PLAYS_BRONZE).where(F.col("play_id") == twin).orderBy("_ingested_at").collect()
    assert [(r._batch_id, r.ms_played_raw) for r in bronze] == [(first["batch_id"], "1000"), (second["batch_id"], "5")]


def test_the_merge_reads_only_the_batchs_dates(spark, cfg, tmp_path, ingest_file):
    """A silver partition the batch does not touch is never read: with one of its files gone (and
    missing files an error), the merge still succeeds."""
    write_text(tmp_path / "old.json", [_play(ts="2024-01-01T10:00:00Z", event_id="old")])
    ingest_file(tmp_path / "old.json")
    old_part = Path(Lake(cfg.lake).path(PLAYS_SILVER).removeprefix("file:")) / "event_date=2024-01-01"
    files = list(old_part.glob("*.parquet"))
    assert files
    for f in files:
        f.unlink()
    spark.conf.set("spark.sql.files.ignoreMissingFiles", "false")
    write_text(tmp_path / "new.json", [_play(ts="2025-03-01T10:00:00Z", event_id="new")])
    landed = ingest_file(tmp_path / "new.json")
    assert landed["rows_silver"] == 1


def test_every_format_in_one_folder_is_read_by_its_own_reader(spark, cfg, tmp_path, ingest_file):
    folder = tmp_path / "raw"
    write_text(folder / "a.json", [_play(event_id="j1"), _play(track="t2", event_id="j2")])
    write_text(folder / "b.csv", ["user_id,track_id,ts,event_id", "u5,t5,2025-03-01T10:00:00Z,c1"])
    pd.DataFrame({"user_id": ["u6"], "track_id": ["t6"], "ts": ["2025-03-01T10:00:00Z"]}).to_parquet(folder / "c.parquet")
    counts = ingest_file(folder)
    assert (counts["rows_in"], counts["rows_silver"], counts["rows_quarantined"]) == (4, 4, 0)
    assert counts["format"] == "csv,json,parquet"


BAD = {  # planted bad rows and the reason each must carry (a prefix of it)
    "json object id": "user_id: not a string or number",
    "json cut short": "malformed line: not a JSON object",
    "csv extra fields": "malformed line: expected 5 fields (the header's), got 7",
    "csv missing fields": "malformed line: expected 5 fields (the header's), got 2",
    "broken parquet": "file: not a readable Parquet file",
}


def _bad_batch(folder: Path) -> int:
    """A folder of every format with good plays, duplicates and bad rows; returns the distinct good plays."""
    write_text(folder / "a.json", [
        _play(event_id="e1"), _play(track="t2", event_id="e2"), _play(track="t3", event_id="e3"),
        _play(event_id="e1"),  # a duplicate of the first line
        _play(user="u4", track="t4", event_id="e1"),  # another play that reuses the event id
        json.dumps({"user_id": {"a": 1}, "track_id": "t1", "ts": "2025-03-01T10:00:00Z"}),
        '{"user_id": "u1", "track_id"',
    ])
    write_text(folder / "b.csv", [
        "user_id,track_id,ts,ms_played,event_id", "u5,t5,2025-03-01T10:00:00Z,100,c5",
        '"u,6",t6,2025-03-01T10:00:00Z,,c6', "u7,t7,2025-03-01T10:00:00Z,100,c7,Hello, World", "u8,t8",
    ])
    pd.DataFrame({"user_id": [9, 10], "track_id": ["t9", "t10"], "ts": [1740823200, 1740823200]}).to_parquet(folder / "c.parquet")
    pd.DataFrame({"user_id": ["u11"], "track_id": ["t11"], "ts": ["2025-03-01T10:00:00Z"]}).to_parquet(folder / "d.parquet")
    (folder / "e.parquet").write_bytes(b"PAR1 this is not Parquet at all")
    return 9


def test_a_bad_batch_lands_exactly_once_by_any_path_and_batch_id(spark, cfg, tmp_path, ingest_file):
    folder = tmp_path / "raw"
    good = _bad_batch(folder)
    first = ingest_file(folder, batch_id="night-1")
    assert (first["rows_in"], first["rows_silver"], first["rows_quarantined"], first["duplicates_in_batch"]) == (
        15, good, len(BAD), 1)
    assert first["rows_in"] == first["rows_silver"] + first["rows_quarantined"] + first["duplicates_removed"]
    for spelling in _spellings(folder):
        assert ingest_file(spelling)["skipped"], spelling
        assert ingest_file(spelling, batch_id="night-1")["skipped"], spelling
    write_text(folder / "f.json", [_play(track="t12", event_id="e12"), _play(track="t2", event_id="e2")])
    with pytest.raises(ValueError, match="batch id 'night-1'"):
        ingest_file(folder, batch_id="night-1")
    second = ingest_file(f"{folder}/*")
    assert (second["rows_in"], second["rows_silver"], second["duplicates_in_silver"], second["files_new"]) == (2, 1, 1, 1)

    lake = Lake(cfg.lake)
    assert _counts(spark, lake) == (17, len(BAD), good + 1)
    reasons = [r.reason for r in lake.read(spark, PLAYS_QUARANTINE).collect()]
    for what, reason in BAD.items():
        assert sum(r.startswith(reason) for r in reasons) == 1, (what, reasons)
    silver_users = sorted(r.user_id for r in lake.read(spark, PLAYS_SILVER).select("user_id").distinct().collect())
    assert silver_users == ["10", "9", "u,6", "u1", "u11", "u4", "u5"]


def test_a_lake_written_by_an_older_release_gains_the_new_columns(spark, cfg, tmp_path, ingest_file):
    """Bronze without play_id and the id-structure flag, ingest_log without its files: ingest adds them."""
    from pyspark.sql import types as T

    from nextplay.tables import SCHEMAS

    lake = Lake(cfg.lake)
    for table, dropped in ((PLAYS_BRONZE, {"play_id", "_non_scalar_ids"}), (INGEST_LOG, {"files"})):
        lake.create_if_missing(spark, table, T.StructType([f for f in SCHEMAS[table].fields if f.name not in dropped]))
    write_text(tmp_path / "a.json", [_play(event_id="e1")])
    assert ingest_file(tmp_path / "a.json")["rows_silver"] == 1
    assert ingest_file(tmp_path / "a.json")["skipped"]
    assert lake.read(spark, PLAYS_BRONZE).where(F.col("play_id").isNotNull()).count() == 1
