"""Helpers for the data-stage tests: tiny inputs written to the test's temp folder, ingested for real."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from nextplay.config import Config


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def write_text(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


@pytest.fixture
def ingest_file(spark, cfg: Config):
    """ingest(path, format, batch_id) against the test's own lake; returns the batch's counts."""
    from nextplay.data.ingest import ingest

    def run(path: Path | str, fmt: str = "auto", batch_id: str | None = None) -> dict:
        cfg.ingest.input, cfg.ingest.format, cfg.ingest.batch_id = str(path), fmt, batch_id
        return ingest(spark, cfg)

    return run
