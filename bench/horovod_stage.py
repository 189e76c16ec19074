"""horovod_np2_over_np1: what a second Horovod process buys on the same cores.

Both runs go through the production path (`nextplay.train.launch.launch` with the horovod launcher:
Petastorm shards, DistributedOptimizer over Gloo, threads = cores / processes) on the same sessions
snapshot and the same total number of sessions, so the ratio is the change in total training
throughput. On 2 cores the two processes share the cores one process already used: the ratio shows
the cost of the gradient all-reduce and any gain from running two smaller thread pools, not scaling.
"""
from __future__ import annotations

import copy
import dataclasses
import tempfile
from typing import Any

from nextplay.train.launch import TrainSpec, launch

from bench.context import Bench, log
from bench.measure import seconds
from bench.spark_stages import sessions_lake
from bench.training import training_snapshot


def _throughput(b: Bench, processes: int, threads: int = 0) -> tuple[float, float]:
    """Training events/s summed over ranks (from fit's own epoch timing) and the launch's wall time.
    `threads` 0: torch threads per process as `train_worker` sets them (cores / processes)."""
    snapshot, n_items, counts = training_snapshot(b)
    cfg = copy.deepcopy(sessions_lake(b))
    cfg.train.launcher, cfg.train.num_proc, cfg.train.epochs, cfg.train.threads = "horovod", processes, 1, threads
    sessions = min(snapshot.n_sessions, cfg.train.batch_size * b.mode.horovod_steps)
    capped = dataclasses.replace(snapshot, n_sessions=sessions)  # fixes steps_per_epoch, same for both runs
    with tempfile.TemporaryDirectory(prefix="bench-hvd-", dir=b.workdir) as out:
        cfg.train.checkpoint_dir = f"{out}/checkpoints"
        result: dict[str, Any] = {}
        wall = seconds(lambda: result.update(launch(TrainSpec(cfg, capped, n_items, counts, out))))
    rate = float(result["history"][0]["events_per_second"])
    log(f"horovod np={processes} threads={threads or 'auto'}: {rate:,.0f} events/s ({wall:.0f}s with start-up)")
    return rate, wall


def horovod_figure(b: Bench) -> dict[str, Any]:
    """The figure compares the configurations people run (np=1 with all cores' threads, np=2 with one
    thread each); an np=1 run on one thread is kept beside it, to tell the effect of the second
    process from that of the thread count."""
    one, one_wall = _throughput(b, 1)
    two, two_wall = _throughput(b, 2)
    one_single, _ = _throughput(b, 1, threads=1)
    b.details["horovod"] = {"np1_events_per_second": one, "np2_events_per_second": two,
                            "np1_one_thread_events_per_second": one_single,
                            "np1_wall_seconds": one_wall, "np2_wall_seconds": two_wall,
                            "total_steps_np1": b.mode.horovod_steps,
                            "batch_size": b.cfg.train.batch_size}
    return {"horovod_np2_over_np1": two / one}
