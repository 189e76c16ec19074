"""Test lines: a session's prefixes and the item that followed each, the unit every metric counts, and
the recent sessions of the lake they are cut from (training validates on them, evaluate tests on them)."""
from __future__ import annotations

from array import array
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from pyspark.sql import DataFrame
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


def recent_sessions_frame(spark, cfg: Config, split: str, limit: int, version: int | None = None) -> DataFrame:
    """The `limit` most recent sessions of one split (start_ts, session_id, items), from the sessions
    table as of `version` (default: the newest), as a DataFrame that stays on the executors.

    `orderBy(...).limit(n).collect()` would plan as a top-n in which every partition sends up to n
    whole rows to the driver at once (beyond spark.driver.maxResultSize on a big lake). Instead the
    executors find the (start_ts, session_id) of the n-th most recent session, ties at the same
    start time broken by session id so the choice is the same on every run, and the sessions from
    that one on are selected with a filter. An empty split gives an empty frame.
    """
    lake = Lake(cfg.lake)
    sessions = lake.read(spark, tables.SESSIONS) if version is None else lake.read_at(spark, tables.SESSIONS, version)
    sessions = sessions.where(F.col("split") == split).select("start_ts", "session_id", "items")
    cut = (sessions.select("start_ts", "session_id")
           .orderBy(F.col("start_ts").desc(), F.col("session_id").desc()).limit(limit)
           .agg(F.min(F.struct("start_ts", "session_id")).alias("cut")).first()["cut"])
    if cut is None:
        return sessions.limit(0)
    ts, sid = F.lit(cut["start_ts"]), F.lit(cut["session_id"])
    return sessions.where((F.col("start_ts") > ts) | ((F.col("start_ts") == ts) & (F.col("session_id") >= sid)))


def recent_sessions(spark, cfg: Config, split: str, limit: int, version: int | None = None) -> list[list[int]]:
    """Item lists of the `limit` most recent sessions of one split, oldest first, streamed to the
    driver a slice at a time (training validates and fills its memory with them on the driver)."""
    indptr, items = sessions_csr(recent_sessions_frame(spark, cfg, split, limit, version), limit)
    return [items[a:b].tolist() for a, b in zip(indptr[:-1], indptr[1:])]


def known_items(sessions: DataFrame, n_items: int, collapse: bool, items: str = "items") -> DataFrame:
    """`sessions` with the ids a model of `n_items` does not know dropped from `items` (tracks the
    dictionary gained after it was trained), repeats collapsed again when training collapsed them,
    as scoring maps histories. Two projections, so the collapse reads the filtered array once."""
    kept = sessions.withColumn(items, F.filter(items, lambda x: x <= F.lit(n_items)))
    if not collapse:
        return kept
    # i is 0-based and element_at 1-based: element_at(items, i) is the element before the i-th
    return kept.withColumn(items, F.filter(items, lambda x, i: (i == 0) | (x != F.element_at(F.col(items), i))))


def lines_frame(sessions: DataFrame, items: str = "items") -> DataFrame:
    """Every next-item step of every session as rows (prefix array<int>, label int), built by the
    executors: what `session_lines` gives on the driver, one row per line."""
    step = F.explode(F.sequence(F.lit(1), F.size(items) - 1)).alias("step")
    return (sessions.where(F.size(items) >= 2).select(F.col(items).alias("items"), step)
            .select(F.slice("items", 1, F.col("step")).cast("array<int>").alias("prefix"),
                    F.element_at("items", F.col("step") + 1).cast("int").alias("label")))


SESSIONS_PER_SLICE = 20_000  # sessions the driver receives at once (a few MB under maxResultSize)


def sessions_csr(sessions: DataFrame, expected: int, items: str = "items",
                 order: Sequence[str] = ("start_ts", "session_id")) -> tuple[np.ndarray, np.ndarray]:
    """Sessions as compact CSR arrays on the driver, in `order` (oldest first): session r holds
    items[indptr[r]:indptr[r + 1]] (int32).

    The sessions are range-partitioned into slices of about `SESSIONS_PER_SLICE` of the `expected`
    rows (an explicit count, which adaptive execution never coalesces into one result beyond
    spark.driver.maxResultSize), and streamed a slice at a time in key order, packed into arrays
    as they arrive: the driver never holds the sessions as Python lists.
    """
    slices = max(1, -(-expected // SESSIONS_PER_SLICE))
    ordered = sessions.repartitionByRange(slices, *order).sortWithinPartitions(*order).select(items)
    lengths: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    pending: list[Sequence[int]] = []

    def pack() -> None:
        lengths.append(np.fromiter((len(p) for p in pending), dtype=np.int64, count=len(pending)))
        chunks.append(np.fromiter((x for p in pending for x in p), dtype=np.int32, count=int(lengths[-1].sum())))
        pending.clear()

    for row in ordered.toLocalIterator():
        pending.append(row[0])
        if len(pending) >= SESSIONS_PER_SLICE:
            pack()
    pack()
    counts = np.concatenate(lengths)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), np.concatenate(chunks)


def benchmark_sessions_csr(path: str | Path, index: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """`train_sessions.txt` mapped through `index` as CSR arrays (see `sessions_csr`), read a line at a
    time into compact arrays. Every id of the file must be in `index` (it was built from the file)."""
    lengths, items = array("q"), array("i")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            tracks = line.split()
            if not tracks:
                continue
            try:
                items.extend(index[t] for t in tracks)
            except KeyError as e:
                raise ValueError(f"{path}:{n}: track {e.args[0]!r} is not in the item index") from None
            lengths.append(len(tracks))
    indptr = np.concatenate([[0], np.cumsum(np.frombuffer(lengths, dtype=np.int64))]).astype(np.int64)
    return indptr, np.frombuffer(items, dtype=np.int32).copy()


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
