"""Stream the `sessions` Delta table into PyTorch batches with Petastorm.

Petastorm reads the Parquet files of one Delta snapshot (the file list comes from the Delta log on
the driver, so files that older versions left behind are never read). Sessions have any length,
while Petastorm wants equal-length arrays in a batch: a `TransformSpec` pads each row group to its own
longest session on the reader, and the batcher below trims every mini-batch to its own longest
row again, after grouping rows of similar length so that little compute is spent on padding. The
readers run in this process or in `train.reader_workers` processes per rank (train/shard_reader.py).

Sharding: with at least as many row groups as ranks, each rank reads its own row groups
(Petastorm's `cur_shard`); with fewer (small tables, a 2-process demo) every rank reads all row
groups and keeps the sessions whose hashed `session_id` falls in its shard. Either way every rank
runs `steps_per_epoch` steps, cycling its shard when it runs dry, so uneven shards never hang a
collective operation.

`train.batching=lanes` reads the same snapshot in time order instead, oldest sessions first, for
session-parallel steps (`lane_batches`, train/lanes.py).

Deleted rows. Reading a version's Parquet files is exact only while every row in them is live. A
DELETE (or UPDATE, MERGE) on a table with `delta.enableDeletionVectors` (Databricks' default for new
tables) leaves the file in the version and marks the deleted rows in a deletion vector beside it;
read as plain Parquet, those rows would train again. So `plan_snapshot` counts, with one Spark
aggregate at the pinned version (which applies deletion vectors), the live rows of every file, and
compares them with the row count in the file's footer: a file with fewer live rows carries deletions.
That needs no Delta-internal API (the JVM `DeltaLog`, the log's add actions), only what every Delta
reader must honour, and the same aggregate gives the split's counts. Files without deletions are read
as they are; `copy_surviving_rows` has Spark read the others at the pinned version (deletion vectors
applied, `_metadata.file_path` selecting them) and write their live rows of the split to Parquet in
the run's own folder on shared storage: one file per source file, sorted by start time and read in
its source's place, so the time-ordered layout `lanes` relies on is kept. Copying only those files
keeps the extra work in proportion to what was deleted; copying the whole split whenever one vector
exists would copy the table on every run after any deletion. A DELETE that rewrites files instead
(no deletion vectors) needs nothing: the version lists the new files only. The loader refuses a
snapshot whose copies were not made, so deleted rows can never train silently.
"""
from __future__ import annotations

import functools
import os
import posixpath
import re
import warnings
from dataclasses import replace
from typing import Iterator
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow.parquet as pq
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from nextplay.storage import Storage, is_local, join, local_path
from nextplay.train.lanes import LaneBatches
from nextplay.train.shard_reader import SPLIT_COLUMN, TIME_COLUMN, SessionSnapshot, shard_rows

SOURCE_COLUMN = "source_file"  # the folder of a copied file: the place in the snapshot of the file it copies

# Petastorm 0.12 drives pyarrow 14 through its legacy dataset API, which warns on every call.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?$")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"petastorm(\..*)?$")


@functools.lru_cache(maxsize=4096)
def _footer(path: str, storage: Storage = Storage()) -> pq.FileMetaData:
    """A data file's Parquet footer, read once: Delta never rewrites a file under the same name.
    Read through `storage`, so a driver reads footers on HDFS or object stores as well as on disk."""
    if is_local(path):
        return pq.ParquetFile(local_path(path)).metadata
    fs, fs_path = storage.fs(path)
    with fs.open(fs_path, "rb") as f:
        return pq.ParquetFile(f).metadata


def count_row_groups(files: list[str], storage: Storage = Storage()) -> int:
    """Row groups across the snapshot, read from the Parquet footers only."""
    return sum(_footer(f, storage).num_row_groups for f in files)


def time_ordered(files: list[str], storage: Storage = Storage()) -> list[str]:
    """The files sorted by their earliest `start_ts` (footer statistics; a file without them goes
    last), so that a reader that keeps the file order delivers the sessions about oldest first."""

    def earliest(path: str) -> tuple[bool, object]:
        meta = _footer(path, storage)
        stats = [rg.column(c).statistics for rg in map(meta.row_group, range(meta.num_row_groups))
                 for c in range(rg.num_columns) if rg.column(c).path_in_schema == TIME_COLUMN]
        if not stats or any(st is None or not st.has_min_max for st in stats):
            return True, 0
        return False, min(st.min for st in stats)

    return sorted(files, key=lambda f: (*earliest(f), f))


def footer_rows(path: str, storage: Storage = Storage()) -> int:
    """The rows a data file holds, deleted ones included (its Parquet footer)."""
    return _footer(path, storage).num_rows


def plan_snapshot(sessions: DataFrame, split: str, storage: Storage = Storage(),
                  version: int | None = None) -> tuple[SessionSnapshot, dict[str, tuple[int, int]]]:
    """The snapshot of `sessions` (one Delta version, read by Spark) for training on `split`, and the
    (sessions, items) count of every split.

    One aggregate per (file, split) gives both the counts and, compared with each file's footer, which
    files lose rows to deletion vectors (module docstring): those are marked `partly_deleted` when any
    of their live rows is of `split`, and left out when none is."""
    files = sessions.inputFiles()
    per_file = (sessions.groupBy(F.col("_metadata.file_path").alias("file"), F.col(SPLIT_COLUMN).alias("split"))
                .agg(F.count("*").alias("n"), F.sum("length").alias("events")).toLocalIterator())
    listed = set(files)
    live: dict[str, int] = {}
    spark_name: dict[str, str] = {}
    counts: dict[str, tuple[int, int]] = {}
    has_split: set[str] = set()
    for row in per_file:  # streamed: a few rows per file, never the table
        name = unquote(row["file"])  # `_metadata.file_path` is URI-encoded, inputFiles() is not
        if name not in listed:
            raise RuntimeError(f"Spark read rows from {row['file']}, which is not among the files of sessions "
                               f"version {version}: cannot tell which rows are deleted")
        spark_name[name] = row["file"]
        live[name] = live.get(name, 0) + row["n"]
        if row["split"] == split:
            has_split.add(name)
        n, events = counts.get(row["split"], (0, 0))
        counts[row["split"]] = (n + row["n"], events + (row["events"] or 0))
    # Only files that hold a live row of `sessions` take part: a filtered `sessions` (a training window)
    # leaves out the other days' files, whose footers are then never opened.
    files = [f for f in files if f in live]
    deleted = {f for f in files if live[f] < footer_rows(f, storage)}
    read = time_ordered([f for f in files if f not in deleted or f in has_split], storage)
    places = tuple(i for i, f in enumerate(read) if f in deleted)
    n_split, n_events = counts.get(split, (0, 0))
    snapshot = SessionSnapshot(tuple(read), split, int(n_split), int(n_events), count_row_groups(read, storage),
                               storage, version, places, tuple(spark_name.get(f, "") for f in read) if places else ())
    return snapshot, counts


def copy_surviving_rows(sessions: DataFrame, snapshot: SessionSnapshot, folder: str) -> SessionSnapshot:
    """`snapshot` with its partly deleted files replaced by copies of their live `split` rows, written by
    Spark under `folder` (shared storage: the ranks read it from any node); `sessions` is the table at
    `snapshot.version`, so Delta applies the deletion vectors of exactly that version.

    Each source file becomes one file in the source's own columns, its rows sorted by start time, in
    a folder named after the source's place in `snapshot.files`, and takes that place: the reading
    order (`time_ordered`) stays the table's. One Petastorm reader reads one file system: when `folder`
    is on another one than the table, every file of the split is copied, not only the partly deleted."""
    if not snapshot.partly_deleted:
        return snapshot
    spark = sessions.sparkSession
    places = sorted(snapshot.partly_deleted)
    if _file_system(snapshot.files[0]) != _file_system(folder):
        places = list(range(len(snapshot.files)))
    sources = spark.createDataFrame([(snapshot.spark_paths[i], i) for i in places],
                                    f"source_path string, {SOURCE_COLUMN} int")
    columns = _footer(snapshot.files[places[0]], snapshot.storage).schema.to_arrow_schema().names
    replaced = set(places)
    (sessions.where(F.col(SPLIT_COLUMN) == snapshot.split)
     .withColumn("source_path", F.col("_metadata.file_path"))
     .join(F.broadcast(sources), "source_path")
     .select(*columns, SOURCE_COLUMN)
     .repartition(SOURCE_COLUMN).sortWithinPartitions(SOURCE_COLUMN, TIME_COLUMN)
     .write.mode("overwrite").partitionBy(SOURCE_COLUMN).parquet(folder))
    copies: dict[int, list[str]] = {}
    for path in written_parquet(folder, snapshot.storage):
        place = re.search(rf"/{SOURCE_COLUMN}=(\d+)/", path)
        copies.setdefault(int(place.group(1)), []).append(path)
    files = [c for i, f in enumerate(snapshot.files) for c in (copies.get(i, []) if i in replaced else [f])]
    return replace(snapshot, files=tuple(files), row_groups=count_row_groups(files, snapshot.storage),
                   partly_deleted=(), spark_paths=())


def written_parquet(folder: str, storage: Storage = Storage()) -> list[str]:
    """The Parquet files under `folder`, as URIs of its own scheme (absolute paths for a local one)."""
    fs, root = storage.fs(folder)
    base = os.path.abspath(local_path(folder)) if is_local(folder) else folder.rstrip("/")
    return sorted(join(base, posixpath.relpath(p, root)) for p in fs.find(root) if p.endswith(".parquet"))


def _file_system(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    return parsed.scheme if parsed.scheme not in ("", "file") else "file", parsed.netloc


def lane_batches(snapshot: SessionSnapshot, *, lanes: int, max_len: int, rank: int = 0,
                 size: int = 1, workers: int = 1) -> LaneBatches:
    """One epoch of session-parallel steps (train/lanes.py) over this rank's shard, oldest sessions
    first. Time order is as good as the table's layout: files by earliest start, row groups in file
    order, sessions sorted inside each row group."""

    def sessions() -> Iterator[np.ndarray]:
        seen = 0
        for items, lengths in shard_rows(snapshot, rank, size, seed=None, time_order=True, workers=workers):
            seen += len(lengths)
            for row, n in zip(items, lengths):
                yield row[:n]
        if seen == 0:
            raise ValueError(f"rank {rank}/{size} found no '{snapshot.split}' sessions in its shard of the sessions table")

    return LaneBatches(sessions, lanes, max_len, (snapshot.n_events - snapshot.n_sessions) // size)


def iterate_batches(snapshot: SessionSnapshot, *, batch_size: int, rank: int = 0, size: int = 1,
                    epoch: int = 0, seed: int = 0, buffer_batches: int = 64, workers: int = 1
                   ) -> Iterator[dict[str, torch.Tensor]]:
    """Yield shuffled, length-bucketed mini-batches `{"items": [B, L], "length": [B]}` from one pass
    over this rank's shard, and keep cycling the shard (with a new shuffle) until the caller stops.

    A buffer of `buffer_batches` batches is filled, sorted by length, cut into batches and those
    batches are shuffled: the row order stays random across batches while each batch needs little
    padding; `cut_points` says where the cuts go. `workers`: reader processes (train/shard_reader.py).
    """
    rng = np.random.default_rng([seed, epoch, rank])
    cycle = 0
    while True:
        seen = 0
        buf_items: list[np.ndarray] = []
        buf_len: list[np.ndarray] = []
        buffered = 0
        for items, lengths in shard_rows(snapshot, rank, size, seed * 1009 + epoch * 31 + cycle, workers=workers):
            seen += len(lengths)
            buf_items.append(items)
            buf_len.append(lengths)
            buffered += len(lengths)
            if buffered >= batch_size * buffer_batches:
                yield from _drain(buf_items, buf_len, batch_size, rng)
                buf_items, buf_len, buffered = [], [], 0
        if buffered:
            yield from _drain(buf_items, buf_len, batch_size, rng)
        if seen == 0:
            raise ValueError(f"rank {rank}/{size} found no '{snapshot.split}' sessions in its shard of the sessions table")
        cycle += 1


def cut_points(sorted_lengths: np.ndarray, batch_size: int) -> list[tuple[int, int]]:
    """Where to cut length-sorted sessions into batches: wherever the running item count passes
    another multiple of batch_size x the mean length, so a batch of short sessions holds many of them
    and one of long sessions few.

    Why items: the loss is a mean over a batch's targets and every step moves the weights about
    equally far, so with a fixed number of sessions per batch a target in a batch of two-item
    sessions (one target each) weighed ~19x one in a batch of twenty-item sessions (19 each). There
    are about len / batch_size batches, so the step count per epoch is what batches of batch_size
    sessions would give.
    """
    n = len(sorted_lengths)
    if n == 0:
        return []
    budget = max(1.0, batch_size * float(sorted_lengths.mean()))
    first_item = np.cumsum(sorted_lengths) - sorted_lengths  # a session goes where its first item falls
    ends = np.flatnonzero(np.diff(np.floor(first_item / budget))) + 1
    bounds = [0, *ends.tolist(), n]
    return list(zip(bounds[:-1], bounds[1:]))


def _drain(items: list[np.ndarray], lengths: list[np.ndarray], batch_size: int,
           rng: np.random.Generator) -> Iterator[dict[str, torch.Tensor]]:
    width = max(a.shape[1] for a in items)
    all_items = np.zeros((sum(len(a) for a in items), width), dtype=np.int64)
    row = 0
    for a in items:
        all_items[row: row + len(a), : a.shape[1]] = a
        row += len(a)
    all_len = np.concatenate(lengths)
    perm = rng.permutation(len(all_len))  # random tie order inside equal lengths
    order = perm[np.argsort(all_len[perm], kind="stable")]
    spans = cut_points(all_len[order], batch_size)
    for i in rng.permutation(len(spans)):
        idx = order[spans[i][0]: spans[i][1]]
        lens = all_len[idx]
        yield {"items": torch.from_numpy(all_items[idx, : int(lens.max())]), "length": torch.from_numpy(lens)}
