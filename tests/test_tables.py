"""The lake's addressing: the default config uses a relative root (`lake`), which must work as a
folder under the current directory, exactly as `make demo` runs it."""
from __future__ import annotations

from pathlib import Path

from nextplay import tables
from nextplay.config import LakeConfig
from nextplay.tables import Lake


def test_relative_root_resolves_under_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Lake(LakeConfig(root="lake")).path("sessions") == str(tmp_path / "lake" / "sessions")
    assert Lake(LakeConfig(root="s3a://bucket/lake/")).path("sessions") == "s3a://bucket/lake/sessions"
    assert Lake(LakeConfig(root="dbfs:/mnt/lake")).path("sessions") == "dbfs:/mnt/lake/sessions"
    assert Lake(LakeConfig(root="/data/lake")).path("sessions") == "/data/lake/sessions"


def test_tables_are_created_under_a_relative_root(spark, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    lake = Lake(LakeConfig(root="lake"))
    lake.create_if_missing(spark, tables.PLAYS_BRONZE, tables.SCHEMAS[tables.PLAYS_BRONZE])
    assert (tmp_path / "lake" / tables.PLAYS_BRONZE / "_delta_log").is_dir()
    assert lake.read(spark, tables.PLAYS_BRONZE).schema == tables.SCHEMAS[tables.PLAYS_BRONZE]
