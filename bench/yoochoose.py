"""train_events_per_second_yoochoose1_64: training speed on a public benchmark set, so this model can
be set beside other implementations measured on the same data and machine.

The sessions of `$NEXTPLAY_DATA/yoochoose1_64/train_sessions.txt` are written to a Parquet file and
batched by the project's Petastorm loader (length-bucketed, as in training); the batches are then
held in memory and `fit` runs the configured default model on them. Measured on one thread, the
setting of the published reference (the official GRU4Rec PyTorch code: about 1,800 events/s on one
thread of this machine kind), and on all cores. `bptt1_over_full_yoochoose1_64`: the same steps on
one thread with one-step truncated backpropagation (`train.bptt_steps=1`, the official code's way)
over the default's whole-window backpropagation, alternated in this process.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench.context import Bench, log
from bench.measure import interleaved, median
from bench.training import WARMUP_STEPS, Trainer, timed_batches

# Where the public benchmark sets live: NEXTPLAY_DATA, else `shared/data` beside the checkout.
SHARED_DATA = Path(os.environ.get("NEXTPLAY_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TRAIN_FILE = SHARED_DATA / "yoochoose1_64" / "train_sessions.txt"


def skip_reason() -> str | None:
    if not TRAIN_FILE.exists():
        return f"benchmark data not found at {TRAIN_FILE} (set NEXTPLAY_DATA to the folder holding yoochoose1_64/)"
    return None


def _sessions_parquet(path: Path, out: Path) -> tuple[int, int, np.ndarray]:
    """Item ids re-indexed 1..V by popularity; returns (sessions, V, item counts by index)."""
    with open(path, encoding="utf-8") as f:  # train_sessions.txt: one session a line, ids split by spaces
        sessions = [s for s in (line.split() for line in f) if len(s) >= 2]
    popularity = Counter(t for s in sessions for t in s)
    index = {t: i for i, (t, _) in enumerate(popularity.most_common(), start=1)}
    counts = np.zeros(len(index) + 1)
    for t, c in popularity.items():
        counts[index[t]] = c
    table = pa.table({
        "session_id": [str(i) for i in range(len(sessions))],
        "items": pa.array([[index[t] for t in s] for s in sessions], type=pa.list_(pa.int32())),
        "split": ["train"] * len(sessions),
    })
    pq.write_table(table, out, row_group_size=16_384)
    return len(sessions), len(index), counts


def yoochoose_figure(b: Bench) -> dict[str, Any]:
    from nextplay.train.loader import SessionSnapshot, count_row_groups, iterate_batches

    file = b.workdir / "yoochoose_train.parquet"
    n_sessions, n_items, counts = _sessions_parquet(TRAIN_FILE, file)
    snapshot = SessionSnapshot((str(file),), "train", n_sessions, int(counts.sum()), count_row_groups([str(file)]))
    cfg = b.cfg
    steps = b.mode.yoochoose_steps
    batches, _ = timed_batches(lambda: iterate_batches(snapshot, batch_size=cfg.train.batch_size,
                                                       seed=cfg.train.seed), steps)
    rates = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        trainer = Trainer(n_items, cfg.model, cfg.train, counts)
        trainer.run(batches, WARMUP_STEPS)
        stats = trainer.run(batches, steps)
        rates[threads] = stats["events"] / stats["seconds"]
        log(f"yoochoose1_64, {threads} thread(s): {rates[threads]:,.0f} events/s over {steps} steps")
    torch.set_num_threads(1)
    trainers = {k: Trainer(n_items, cfg.model, dataclasses.replace(cfg.train, bptt_steps=k), counts) for k in (0, 1)}
    for trainer in trainers.values():
        trainer.run(batches, WARMUP_STEPS)
    times = interleaved({str(k): (lambda t=t: t.run(batches, steps)) for k, t in trainers.items()}, repeats=3)
    bptt_ratio = median(times["0"]) / median(times["1"])
    log(f"yoochoose1_64, 1 thread: one-step truncated BPTT {bptt_ratio:.2f}x the full-window steps/s")
    b.details["yoochoose1_64"] = {
        "sessions": n_sessions, "items": n_items, "steps": steps, "batch_size": cfg.train.batch_size,
        "events_per_second_by_threads": {str(k): v for k, v in rates.items()},
        "model": {"encoder": cfg.model.encoder, "head": cfg.model.head, "hidden_size": cfg.model.hidden_size,
                  "readout": cfg.model.readout, "repeat": cfg.model.repeat, "optimizer": cfg.train.optimizer},
    }
    return {"train_events_per_second_yoochoose1_64": rates[1], "bptt1_over_full_yoochoose1_64": bptt_ratio}
