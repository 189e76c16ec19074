"""One rank's row groups of a sessions snapshot (`SessionSnapshot`), read by Petastorm in one process or in several.

A Petastorm reader decodes a row group, pads it (`_pad_transform`) and hands it over; one reader
thread per rank delivers about 150 batches/s on one core, and most of that work holds Python's
lock, so more threads in the same process do not add up. `workers` > 1 runs that many readers in
worker processes of a `torch.utils.data.DataLoader`, each over its own part of the rank's row
groups. The DataLoader takes their row groups in turn, worker 0, 1, ..., 0, 1, ..., so what a
rank reads, and in which order, depends on the snapshot, the seed and `workers`, never on which
process was quicker: a run stays reproducible. A row group with no session of the split yields one
empty marker row rather than nothing (Petastorm skips empty results), so the turns stay in step
with the row groups and a time-ordered read (`lanes`) keeps the order of one reader exactly.

Parts: Petastorm gives reader `i` of `n` the row groups whose index is `i` modulo `n`. A rank `r`
of `size` with `w` workers asks for shard `r + size * j` of `size * w` in worker `j`: together they
read exactly the row groups of index `r` modulo `size`, the rank's shard with one reader. When the
snapshot holds fewer row groups than ranks, every rank reads all of them and keeps its hashed
sessions (train/loader.py); its workers then split the row groups among themselves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from nextplay.storage import Storage, local_path

SPLIT_COLUMN = "split"
TIME_COLUMN = "start_ts"
# Row groups each worker process decodes ahead of the trainer.
PREFETCH_ROW_GROUPS = 4

Rows = tuple[np.ndarray, np.ndarray]  # padded items [n, L] and lengths [n] of one row group's sessions


@dataclass(frozen=True)
class SessionSnapshot:
    """What a training process needs to read its shard: built on the driver, pickled to workers."""

    files: tuple[str, ...]  # the Parquet files of one Delta version of `sessions`
    split: str  # which split to read, usually "train"
    n_sessions: int  # sessions of that split in the snapshot (for steps_per_epoch)
    n_events: int  # items in those sessions (for events/s)
    row_groups: int
    storage: Storage = Storage()  # how Python on any node opens `files` (hdfs:// goes over WebHDFS)
    version: int | None = None  # the Delta version of `sessions` the files make up
    # Places in `files` of the files whose rows are partly deleted (deletion vectors): no rank may read
    # until `copy_surviving_rows` has replaced them by copies of their live rows.
    partly_deleted: tuple[int, ...] = ()
    spark_paths: tuple[str, ...] = ()  # while there are such files: each file as `_metadata.file_path` names it

    def steps_per_epoch(self, batch_size: int, world_size: int) -> int:
        return max(1, math.ceil(self.n_sessions / (batch_size * world_size)))


def _pad_transform(split: str, rank: int, size: int, row_sharding: bool, time_order: bool):
    """Build the per-row-group transform: keep one split (and one hash shard), optionally sort the
    sessions by start time, pad `items`."""

    def transform(df: pd.DataFrame) -> pd.DataFrame:
        df = df[df[SPLIT_COLUMN] == split]
        if time_order:
            df = df.sort_values(TIME_COLUMN, kind="stable")
        if row_sharding and size > 1:
            shard = pd.util.hash_pandas_object(df["session_id"], index=False).to_numpy() % size
            df = df[shard == rank]
        if df.empty:  # one marker row of length 0: every row group yields one result (module docstring)
            return pd.DataFrame({"items": [np.zeros(1, dtype=np.int32)], "length": np.zeros(1, dtype=np.int64)})
        seqs = df["items"].to_numpy()
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        padded = np.zeros((len(seqs), int(lengths.max())), dtype=np.int32)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        cols = np.arange(int(lengths.sum())) - starts
        padded[np.repeat(np.arange(len(seqs)), lengths), cols] = np.concatenate(seqs)
        return pd.DataFrame({"items": list(padded), "length": lengths})

    return transform


def reader_workers(asked: int | None, device: torch.device) -> int:
    """`train.reader_workers`, or by default what the device needs (its comment in config/sections.py)."""
    if asked is not None:
        return asked
    return 4 if device.type == "cuda" else 1


def reader_processes(snapshot: SessionSnapshot, size: int, workers: int) -> int:
    """How many of the `workers` asked for can each read a part of a rank's shard: every part needs
    a row group of its own."""
    available = snapshot.row_groups if snapshot.row_groups < size else snapshot.row_groups // size
    return max(1, min(workers, available))


class ShardRows(IterableDataset):
    """The sessions of one rank's shard, row group by row group; in a DataLoader worker, only that
    worker's part of them (module docstring)."""

    def __init__(self, snapshot: SessionSnapshot, rank: int, size: int, seed: int | None, time_order: bool) -> None:
        super().__init__()
        self.snapshot, self.rank, self.size, self.seed, self.time_order = snapshot, rank, size, seed, time_order

    def __iter__(self) -> Iterator[Rows]:
        worker = get_worker_info()
        part, parts = (0, 1) if worker is None else (worker.id, worker.num_workers)
        with self._reader(part, parts) as reader:
            for batch in reader:
                keep = batch.length > 0
                yield batch.items[keep], batch.length[keep]

    def _reader(self, part: int, parts: int):
        """Row groups in random order, or with `time_order` in the snapshot's file order
        (`time_ordered`) with each row group's sessions sorted by start time."""
        from petastorm import make_batch_reader  # deferred: heavy, and only the ranks that read batches need it
        from petastorm.transform import TransformSpec  # deferred: with make_batch_reader above

        snapshot, rank, size = self.snapshot, self.rank, self.size
        row_sharding = snapshot.row_groups < size
        spec = TransformSpec(
            _pad_transform(snapshot.split, rank, size, row_sharding, self.time_order),
            edit_fields=[("items", np.int32, (None,), False), ("length", np.int64, (), False)],
            selected_fields=["items", "length"],
        )
        if row_sharding:
            shards = (part, parts)
        else:
            shards = (rank + size * part, size * parts)
        shard_args = {} if shards[1] == 1 else {"cur_shard": shards[0], "shard_count": shards[1]}
        files = list(snapshot.files)
        filesystem = snapshot.storage.arrow_filesystem(files[0]) if files else None
        if filesystem is None:
            urls = [f"file://{local_path(f)}" for f in files]
        else:  # Petastorm takes URIs of one scheme and host, and hands their paths to `filesystem`
            urls = files
        return make_batch_reader(
            urls,
            filesystem=filesystem,
            schema_fields=["items", SPLIT_COLUMN, "session_id", TIME_COLUMN],
            transform_spec=spec,
            num_epochs=1,
            workers_count=1,  # one thread per reader keeps its row-group order, hence the run, reproducible
            shuffle_row_groups=not self.time_order,
            seed=None if self.time_order else self.seed,  # with a seed Petastorm also shuffles the shard's row groups
            reader_pool_type="thread",
            **shard_args,
        )


def _as_read(rows: Rows) -> Rows:
    """The DataLoader's collate step: the row group's arrays as the reader made them."""
    return rows


def shard_rows(snapshot: SessionSnapshot, rank: int, size: int, seed: int | None, time_order: bool = False,
               workers: int = 1) -> Iterator[Rows]:
    """One pass over the rank's row groups (module docstring), in `workers` reader processes when
    the snapshot has row groups enough for them, else in this process."""
    if snapshot.partly_deleted:
        raise ValueError(f"{len(snapshot.partly_deleted)} file(s) of sessions version {snapshot.version} hold deleted "
                         "rows: copy their live rows first (copy_surviving_rows), or deleted sessions would train")
    rows = ShardRows(snapshot, rank, size, seed, time_order)
    processes = reader_processes(snapshot, size, workers)
    if processes > 1:
        # A generator of its own: the loader would otherwise draw its workers' seeds from torch's
        # global one, and the reader count would change the training's random stream.
        rows = DataLoader(rows, batch_size=None, num_workers=processes, collate_fn=_as_read,
                          prefetch_factor=PREFETCH_ROW_GROUPS, generator=torch.Generator().manual_seed(0))
    return (r for r in rows if len(r[1]))
