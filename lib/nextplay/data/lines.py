"""Test lines: a session's prefixes and the item that followed each, the unit every metric counts, and
the recent sessions of the lake they are cut from (training validates on them, evaluate tests on them)."""
from __future__ import annotations

import heapq
from pathlib import Path
from typing import Iterable, Mapping

from pyspark.sql import functions as F

from nextplay import tables
from nextplay.config import Config
from nextplay.tables import Lake


def session_lines(sessions: Iterable[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Every next-item step of every session: ([a], b), ([a, b], c), ... as in the benchmark files."""
    prefixes: list[list[int]] = []
    labels: list[int] = []
    for items in sessions:
        for i in range(1, len(items)):
            prefixes.append(items[:i])
            labels.append(items[i])
    return prefixes, labels


def recent_sessions(spark, cfg: Config, split: str, limit: int, version: int | None = None) -> list[list[int]]:
    """Item lists of the `limit` most recent sessions of one split, oldest first, from the sessions
    table as of `version` (default: the newest).

    `orderBy(...).limit(n).collect()` would plan as a top-n in which every partition sends up to n
    whole rows to the driver at once (beyond spark.driver.maxResultSize on a big lake). Instead the
    executors find the start time of the n-th most recent session, and only the sessions from then
    on are streamed to the driver a partition at a time, keeping the newest n (ties at the cut-off
    broken by session id, so the choice is the same on every run).
    """
    lake = Lake(cfg.lake)
    sessions = lake.read(spark, tables.SESSIONS) if version is None else lake.read_at(spark, tables.SESSIONS, version)
    sessions = sessions.where(F.col("split") == split)
    cutoff = (sessions.select("start_ts").orderBy(F.col("start_ts").desc()).limit(limit)
              .agg(F.min("start_ts").alias("cutoff")).first()["cutoff"])
    if cutoff is None:
        return []
    recent = sessions.where(F.col("start_ts") >= F.lit(cutoff)).select("start_ts", "session_id", "items")
    rows = heapq.nlargest(limit, ((r["start_ts"], r["session_id"], r["items"]) for r in recent.toLocalIterator()),
                          key=lambda r: (r[0], r[1]))
    return [list(items) for _, _, items in reversed(rows)]


def read_benchmark_sessions(path: str | Path) -> list[list[str]]:
    """`train_sessions.txt`: one session per line, item ids separated by spaces, oldest first."""
    with open(path, encoding="utf-8") as f:
        return [line.split() for line in f if line.strip()]


def read_benchmark_lines(path: str | Path) -> tuple[list[list[str]], list[str]]:
    """`test_prefix_label.tsv`: `prefix<TAB>label` per line, kept exactly as written (repeats too)."""
    prefixes: list[list[str]] = []
    labels: list[str] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not parts[1].strip():
                raise ValueError(f"{path}:{n}: expected 'prefix<TAB>label', got {line[:80]!r}")
            prefixes.append(parts[0].split())
            labels.append(parts[1].strip())
    if not labels:
        raise ValueError(f"{path}: no test lines")
    return prefixes, labels


def encode_lines(prefixes: list[list[str]], labels: list[str],
                 index: Mapping[str, int]) -> tuple[list[list[int]], list[int]]:
    """Map raw ids to item_idx. Unknown prefix items are dropped; an unknown label becomes 0, which
    every metric counts as a miss (the line stays in the denominator). A prefix with no known item
    at all gives nothing to condition on: it becomes [0] (padding) with label 0, a miss for every
    scorer alike."""
    enc_prefixes: list[list[int]] = []
    enc_labels: list[int] = []
    for p, label in zip(prefixes, labels):
        known = [index[i] for i in p if i in index]
        enc_prefixes.append(known or [0])
        enc_labels.append(index.get(label, 0) if known else 0)
    return enc_prefixes, enc_labels
