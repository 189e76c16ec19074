"""The Petastorm loader on a real Delta table: snapshot isolation, shards, equal step counts."""
from __future__ import annotations

import dataclasses
import posixpath
import uuid

import numpy as np
import pytest
from pyspark.sql import functions as F

from nextplay import tables
from nextplay.storage import Storage, local_path
from nextplay.tables import Lake
from nextplay.train.launch import snapshot_training_data, validation_lines
from nextplay.train.loader import count_row_groups, cut_points, iterate_batches, lane_batches, time_ordered
from nextplay.train.shard_reader import reader_processes, shard_rows

from .planted import write_planted_index, write_planted_lake


def _collect(snapshot, batch_size, rank, size, steps, workers=1):
    """Sessions delivered in `steps` batches, named by their first item (see write_planted_lake)."""
    rows, it = [], iterate_batches(snapshot, batch_size=batch_size, rank=rank, size=size, epoch=0, seed=1,
                                   workers=workers)
    for _, batch in zip(range(steps), it):
        items, lengths = batch["items"].numpy(), batch["length"].numpy()
        assert items.shape[1] == lengths.max(), "a batch is trimmed to its own longest session"
        for row, n in zip(items, lengths):
            assert (row[n:] == 0).all() and (row[:n] > 0).all()
            rows.append(int(row[0]))
    return rows


def _train_firsts(spark, cfg):
    return sorted(r["items"][0] for r in Lake(cfg.lake).read(spark, tables.SESSIONS).where("split = 'train'").collect())


def test_one_process_reads_each_train_session_once(spark, cfg):
    write_planted_lake(spark, cfg, n_items=600)
    snapshot, n_items, counts, splits = snapshot_training_data(spark, cfg)
    assert n_items == 600 and counts[1:].sum() == 100 * 600
    expected = _train_firsts(spark, cfg)
    got = _collect(snapshot, 32, 0, 1, snapshot.steps_per_epoch(32, 1))
    # steps_per_epoch x batch_size may exceed the split: the loader cycles, so compare one pass.
    assert sorted(got[: len(expected)]) == expected
    assert snapshot.n_sessions == len(expected) == splits["train"][0]


@pytest.mark.parametrize("files", [6, 1])  # row-group shards, and hash shards when groups < ranks
def test_shards_partition_the_split_and_run_equal_steps(spark, cfg, files):
    write_planted_lake(spark, cfg, files=files, n_items=600)
    snapshot, *_ = snapshot_training_data(spark, cfg)
    size, batch = 2, 16
    steps = snapshot.steps_per_epoch(batch, size)
    seen = [set(_collect(snapshot, batch, r, size, steps)) for r in range(size)]
    assert seen[0] and seen[1] and seen[0].isdisjoint(seen[1])
    # Uneven shards: the larger one may not finish within the shared step count; most of the split is seen.
    assert len(seen[0] | seen[1]) >= 0.8 * len(_train_firsts(spark, cfg))


def test_reader_processes_read_each_shard_once_in_a_reproducible_order(spark, cfg):
    """Two reader processes per rank deliver the rank's shard of one reader, each session once per
    pass, and the same batches in the same order on every run (train/shard_reader.py)."""
    write_planted_lake(spark, cfg, n_items=600)
    snapshot, *_ = snapshot_training_data(spark, cfg)
    size, batch = 2, 16
    assert reader_processes(snapshot, size, 2) == 2
    for rank in range(size):
        alone, parallel = _pass(snapshot, rank, size, 1), _pass(snapshot, rank, size, 2)
        assert sorted(parallel) == sorted(alone) and len(set(parallel)) == len(parallel)
        assert _pass(snapshot, rank, size, 2) == parallel
    steps = snapshot.steps_per_epoch(batch, size)
    assert _collect(snapshot, batch, 0, size, steps, workers=2) == _collect(snapshot, batch, 0, size, steps, workers=2)


def _pass(snapshot, rank, size, workers):
    """One pass over a rank's shard, each session named by its first item, in delivery order."""
    return [int(row[0]) for items, _ in shard_rows(snapshot, rank, size, seed=3, workers=workers) for row in items]


def test_snapshot_ignores_files_of_older_versions(spark, cfg):
    write_planted_lake(spark, cfg, n_sessions=300, n_items=300)
    write_planted_lake(spark, cfg, n_sessions=100, n_items=300)  # overwrite: old files stay on disk, not in the snapshot
    snapshot, *_ = snapshot_training_data(spark, cfg)
    got = _collect(snapshot, 1000, 0, 1, 1)
    assert len(got) == snapshot.n_sessions == 80


def test_training_pairs_sessions_with_the_item_index_of_their_generation(spark, cfg):
    """The next sessionize has committed its item index but not yet its sessions: training must not
    pair that index with the older sessions."""
    write_planted_lake(spark, cfg, n_items=30)
    write_planted_index(spark, cfg, n_items=40, generation=tables.new_generation())
    assert Lake(cfg.lake).read(spark, tables.ITEM_INDEX).count() == 40
    _, n_items, counts, _ = snapshot_training_data(spark, cfg)
    assert n_items == 30 and len(counts) == 31


def test_tables_without_generation_markers_pair_by_commit_order(spark, cfg):
    """Tables written by hand (or before markers existed): the newest index committed before the sessions."""
    lake = Lake(cfg.lake)
    write_planted_lake(spark, cfg, n_sessions=100)
    for table in (tables.ITEM_INDEX, tables.SESSIONS):  # the same rows again, unstamped
        lake.write(lake.read(spark, table).localCheckpoint(), table, mode="overwrite")
    unstamped = lake.pin_generation(spark)
    write_planted_index(spark, cfg, n_items=40, generation=tables.new_generation())
    pin = lake.pin_generation(spark)
    assert pin == unstamped and pin.generation is None
    assert snapshot_training_data(spark, cfg)[1] == 30


def test_a_row_edit_of_sessions_keeps_the_generation_it_edited(spark, cfg):
    """A DELETE on sessions (a listener's data removed) commits without a generation marker; the next
    sessionize has already committed its item index. The edited sessions still belong to their own
    generation's index, not to the newer one."""
    write_planted_lake(spark, cfg, n_items=30)
    before = Lake(cfg.lake).pin_generation(spark)
    write_planted_index(spark, cfg, n_items=40, generation=tables.new_generation())
    spark.sql(f"DELETE FROM delta.`{Lake(cfg.lake).path(tables.SESSIONS)}` WHERE user_id = 'u1'")
    pin = Lake(cfg.lake).pin_generation(spark)
    assert pin.sessions_version == before.sessions_version + 1
    assert (pin.item_index_version, pin.generation) == (before.item_index_version, before.generation)
    assert snapshot_training_data(spark, cfg)[1] == 30


def test_sessions_of_an_unknown_generation_are_a_clear_error(spark, cfg):
    write_planted_lake(spark, cfg, n_sessions=100)
    lake = Lake(cfg.lake)
    sessions = lake.read(spark, tables.SESSIONS).localCheckpoint()
    lake.write(sessions, tables.SESSIONS, mode="overwrite", **tables.generation_options("orphan"))
    with pytest.raises(ValueError, match="generation orphan.*no version of item_index"):
        snapshot_training_data(spark, cfg)


def test_every_training_read_uses_the_pinned_version(spark, cfg):
    write_planted_lake(spark, cfg, n_sessions=300)
    pin = Lake(cfg.lake).pin_generation(spark)
    pinned = validation_lines(spark, cfg, pin)
    write_planted_lake(spark, cfg, n_sessions=100)
    assert validation_lines(spark, cfg, pin) == pinned
    assert len(validation_lines(spark, cfg)[1]) < len(pinned[1])  # unpinned: the newest generation
    snapshot, *_ = snapshot_training_data(spark, cfg, pin)
    assert snapshot.n_sessions == 240


def test_empty_shard_is_a_clear_error(spark, cfg):
    write_planted_lake(spark, cfg, n_sessions=300)
    snapshot, *_ = snapshot_training_data(spark, cfg)
    empty = snapshot.__class__(snapshot.files, "no-such-split", 0, 0, snapshot.row_groups)
    with pytest.raises(ValueError, match="found no 'no-such-split' sessions"):
        next(iterate_batches(empty, batch_size=8))
    assert np.isfinite(snapshot.n_events)


def test_item_batches_hold_about_equal_targets_and_cover_every_session_once():
    rng = np.random.default_rng(0)
    lengths = np.sort(rng.choice([2, 3, 5, 20, 50], size=1000, p=[0.5, 0.2, 0.15, 0.1, 0.05]))
    spans = cut_points(lengths, 32)
    assert spans[0][0] == 0 and spans[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, nothing lost or repeated
    assert len(spans) <= -(-len(lengths) // 32)  # never more steps than snapshot.steps_per_epoch counts
    budget = 32 * lengths.mean()
    items = np.array([lengths[lo:hi].sum() for lo, hi in spans])
    assert (np.abs(items[:-1] - budget) <= lengths.max()).all()
    rows = [hi - lo for lo, hi in spans]
    assert max(rows) > 5 * min(rows)  # many short sessions to a batch, few long ones
    equal = cut_points(np.full(64, 3), 32)
    assert equal == [(0, 32), (32, 64)]


def _lane_sessions(snapshot, rank: int, size: int, workers: int = 1) -> list[int]:
    """The sessions a rank's lanes start, in order, each named by its first item."""
    starts = []
    for batch in lane_batches(snapshot, lanes=4, max_len=50, rank=rank, size=size, workers=workers):
        fresh = batch["first_target"] == 0
        starts += (batch["items"][fresh, 0] - 1).tolist()
    return starts


def test_lanes_read_the_split_oldest_first(spark, cfg):
    write_planted_lake(spark, cfg, n_items=600, files=5, time_ordered=True)
    snapshot, *_ = snapshot_training_data(spark, cfg)
    train = sorted(r["session_id"] for r in Lake(cfg.lake).read(spark, tables.SESSIONS)
                   .where("split = 'train'").select(F.col("session_id").cast("int")).collect())
    assert _lane_sessions(snapshot, 0, 1) == train  # Delta may list the files in any order
    assert _lane_sessions(snapshot, 0, 1, workers=2) == train  # reader processes take the row groups in turn
    shards = [_lane_sessions(snapshot, r, 2) for r in range(2)]
    assert all(s == sorted(s) and s for s in shards)
    assert sorted(shards[0] + shards[1]) == train


def test_a_snapshot_on_a_remote_file_system_reads_like_a_local_one(spark, cfg):
    """Footers and Petastorm's readers go through the storage layer (fsspec), so files on any file
    system it reaches by URI (here fsspec's in-memory one; HDFS in tests/cluster) read as on disk."""
    write_planted_lake(spark, cfg, n_items=600, files=5, time_ordered=True)
    local, *_ = snapshot_training_data(spark, cfg)
    storage, base = Storage(), f"memory://nextplay-{uuid.uuid4().hex[:8]}"
    fs, _ = storage.fs(base)
    remote = []
    for f in reversed(local.files):  # listed in reverse: time_ordered must restore the reading order
        url = posixpath.join(base, *local_path(f).rsplit("/", 2)[-2:])
        with open(local_path(f), "rb") as src, fs.open(storage.fs(url)[1], "wb") as dst:
            dst.write(src.read())
        remote.append(url)
    ordered = time_ordered(remote, storage)
    assert [u.rsplit("/", 2)[-2:] for u in ordered] == [local_path(f).rsplit("/", 2)[-2:] for f in local.files]
    snapshot = dataclasses.replace(local, files=tuple(ordered), row_groups=count_row_groups(ordered, storage),
                                   storage=storage)
    assert snapshot.row_groups == local.row_groups
    assert _lane_sessions(snapshot, 0, 1) == _lane_sessions(local, 0, 1)
    assert sorted(_collect(snapshot, 1000, 0, 1, 1)) == _train_firsts(spark, cfg)
    storage.remove(base, recursive=True)
