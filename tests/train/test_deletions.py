"""Deleted sessions never reach training: the loader reads exactly the pinned Delta version of `sessions`,
whether a DELETE left deletion vectors beside the old files or rewrote them."""
from __future__ import annotations

from pathlib import Path

import pytest

from nextplay import tables
from nextplay.cli import main
from nextplay.tables import Lake
from nextplay.train.launch import apply_deletions, deletions_folder, snapshot_training_data
from nextplay.train.loader import iterate_batches, lane_batches

from .planted import write_planted_lake
from .test_launch import _args, _last_run

START = 1_700_000_000  # write_planted_lake: session k starts at START + k hours, on item k + 1, by user u{k % 50}


def _one_pass(snapshot) -> list[int]:
    """Every train session one pass of the shuffled loader yields, named by its session number."""
    batch = next(iterate_batches(snapshot, batch_size=10_000, seed=3))
    return sorted(int(row[0]) - 1 for row in batch["items"].numpy())


def _lanes(snapshot, rank: int = 0, size: int = 1) -> list[int]:
    """The sessions one pass of the lanes loader starts, in the order it starts them."""
    starts = []
    for batch in lane_batches(snapshot, lanes=4, max_len=50, rank=rank, size=size):
        fresh = batch["first_target"] == 0
        starts += (batch["items"][fresh, 0] - 1).tolist()
    return starts


def _delete(spark, cfg, where: str) -> dict[str, str]:
    lake = Lake(cfg.lake)
    spark.sql(f"DELETE FROM {lake.name(tables.SESSIONS)} WHERE {where}")
    return lake.delta_table(spark, tables.SESSIONS).history(1).first()["operationMetrics"]


def _training_snapshot(spark, cfg, pin, run_id: str = "run-1"):
    """The snapshot as `train_and_log` builds it for a pinned version, in the folder of run `run_id`."""
    snapshot, *_ = snapshot_training_data(spark, cfg, pin)
    return apply_deletions(spark, cfg, snapshot, deletions_folder(cfg, run_id))


@pytest.mark.parametrize("vectors", [True, False], ids=["deletion-vectors", "rewritten-files"])
def test_deleted_sessions_never_reach_training(spark, cfg, vectors):
    write_planted_lake(spark, cfg, n_items=600, files=6, time_ordered=True)
    lake = Lake(cfg.lake)
    spark.sql(f"ALTER TABLE {lake.name(tables.SESSIONS)} "
              f"SET TBLPROPERTIES ('delta.enableDeletionVectors' = '{str(vectors).lower()}')")
    # One listener's sessions of the first half: the older files lose rows, the newer ones stay whole.
    metrics = _delete(spark, cfg, f"user_id = 'u7' AND start_ts < timestamp_seconds({START + 300 * 3600})")
    assert int(metrics["numDeletedRows"]) == 6
    assert (int(metrics.get("numDeletionVectorsAdded", "0")) > 0) == vectors
    pin = lake.pin_generation(spark)
    # A later deletion is not in the pinned version: its sessions still train.
    _delete(spark, cfg, "user_id = 'u8'")

    deleted = {k for k in range(300) if k % 50 == 7}
    expected = [k for k in range(600) if k % 10 > 1 and k not in deleted]
    pinned = {int(r["session_id"]) for r in lake.read_at(spark, tables.SESSIONS, pin.sessions_version)
              .where("split = 'train'").select("session_id").collect()}
    assert pinned == set(expected)  # Delta itself reads the pinned version so

    planned, *_ = snapshot_training_data(spark, cfg, pin)
    if vectors:  # files that hold deleted rows are never read as they are
        with pytest.raises(ValueError, match="hold deleted rows: copy their live rows first"):
            next(iterate_batches(planned, batch_size=8))
    snapshot = _training_snapshot(spark, cfg, pin)
    assert snapshot.n_sessions == len(expected) and snapshot.version == pin.sessions_version
    copied = [f for f in snapshot.files if f"{deletions_folder(cfg, 'run-1')}/" in f]
    # Deletion vectors: the files that lost rows are copied without them, the others are read in place.
    assert len(snapshot.files) == len(lake.read_at(spark, tables.SESSIONS, pin.sessions_version).inputFiles())
    assert (0 < len(copied) < len(snapshot.files)) if vectors else not copied
    assert _one_pass(snapshot) == expected
    lanes = _lanes(snapshot)
    assert sorted(lanes) == expected
    if vectors:  # the copies keep the table's time-ordered layout (a rewriting DELETE lays out its own files)
        assert lanes == expected
    shards = [_lanes(snapshot, r, 2) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == expected


@pytest.mark.slow
def test_a_training_run_reads_the_live_rows_and_removes_its_copies(spark, cfg):
    """`nextplay train` after a DELETE that left deletion vectors: the run trains on the live rows of
    the version it pins and logs, and leaves no copy behind."""
    write_planted_lake(spark, cfg, n_items=600, files=6, time_ordered=True)
    lake = Lake(cfg.lake)
    spark.sql(f"ALTER TABLE {lake.name(tables.SESSIONS)} SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    assert int(_delete(spark, cfg, "user_id = 'u7'")["numDeletionVectorsAdded"]) > 0
    version = lake.pin_generation(spark).sessions_version
    assert main(["train", *_args(cfg, "train.epochs=1", "train.batching=lanes")]) == 0
    run = _last_run(cfg)
    assert run.data.params["train_sessions"] == str(480 - 12)  # u7's 12 sessions are all of the train split
    assert run.data.tags["nextplay.sessions_version"] == str(version)
    assert list(Path(cfg.train.checkpoint_dir).iterdir()) == [], "the run's folder, copies included, is removed"
