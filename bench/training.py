"""Training figures: does Petastorm keep the trainer fed, what each output head costs per event as
the catalog grows, and whether a sampled-head step costs the batch rather than the catalog.

Both run the project's own `fit` (windowing, clipping, optimizer, learning-rate schedule) on batches
held in memory, so the figure is the trainer's speed alone; the loader is timed on its own.
"""
from __future__ import annotations

import copy
import math
import gc
import os
import time
from itertools import islice
from typing import Any, Callable, Iterable

import numpy as np
import torch

from nextplay.config import Config, ModelConfig, TrainConfig
from nextplay.model.session import SessionModel
from nextplay.train.loop import Batch, Buckets, build_optimizer, fit

from bench.context import Bench, log
from bench.measure import interleaved, median
from bench.modes import HEADS, VOCABS
from bench.report import vocab_label
from bench.spark_stages import sessions_lake

WARMUP_STEPS = 2  # first steps allocate optimizer state and buffers; they are not timed


def use_all_cores(cfg: TrainConfig) -> int:
    """Threads as `train_worker` sets them for one process."""
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


class Trainer:
    """One model and optimizer trained for a fixed number of steps per call, state kept between calls
    (so repetitions measure steady-state steps, not optimizer-state allocation)."""

    def __init__(self, n_items: int, model_cfg: ModelConfig, train_cfg: TrainConfig, counts: np.ndarray) -> None:
        self.cfg = train_cfg
        self.model = SessionModel(n_items, model_cfg, item_counts=counts)
        self.optimizer = build_optimizer(self.model, train_cfg)

    def run(self, batches: list[Batch], steps: int) -> dict[str, float]:
        """Train `steps` steps cycling over `batches`; returns fit's stats (events, seconds)."""
        return fit(self.model, Buckets.of(lambda epoch: batches, self.cfg, steps), self.cfg, device="cpu",
                   optimizer=self.optimizer)[0]


def training_snapshot(b: Bench) -> tuple[Any, int, np.ndarray]:
    """The pinned sessions snapshot, catalog size and item counts `train` would use, built once."""
    if "snapshot" not in b.inputs:
        from nextplay.train.launch import snapshot_training_data

        snapshot, n_items, counts, _ = snapshot_training_data(b.spark, sessions_lake(b))
        b.inputs["snapshot"] = (snapshot, n_items, counts)
    return b.inputs["snapshot"]


def timed_batches(make: Callable[[], Iterable[Batch]], n: int) -> tuple[list[Batch], float]:
    """The first `n` batches and the seconds it took to get them, start-up included."""
    started = time.perf_counter()
    batches = list(islice(make(), n))
    return batches, time.perf_counter() - started


def loader_over_train(b: Bench) -> dict[str, Any]:
    """Batches/s Petastorm delivers from the sessions table alone / batches/s `fit` consumes, at the
    configured batch size and model.

    The loader is timed over one whole epoch, reader start-up included: it fills a buffer of 64
    batches before the first one comes out, so only a whole pass says what it sustains. Training is
    timed over the first `train_batches` of those batches, held in memory.

    `loader_workers_2_over_1`: the rate after the first batch with two reader processes over the same
    with one. Starting the processes and their readers costs a fixed tenth of a second or so per
    pass, which decides the whole-epoch rate of the bench's small epochs but not of a real one;
    both whole-epoch rates are recorded beside it.
    """
    from nextplay.train.loader import iterate_batches

    cfg = sessions_lake(b)
    snapshot, n_items, counts = training_snapshot(b)
    bs = cfg.train.batch_size
    epoch = snapshot.steps_per_epoch(bs, 1)
    n = max(1, min(b.mode.train_batches, epoch))
    threads = use_all_cores(cfg.train)
    loaded: dict[str, Any] = {}

    def load(workers: int = 1) -> None:
        started = time.perf_counter()
        it = iterate_batches(snapshot, batch_size=bs, seed=cfg.train.seed, workers=workers)
        batches = [next(it)]
        first = time.perf_counter()
        batches += list(islice(it, epoch - 1))
        done = time.perf_counter()
        loaded[f"rate_{workers}"].append(epoch / (done - started))
        loaded[f"steady_{workers}"].append((epoch - 1) / (done - first) if epoch > 1 else math.nan)
        if workers == 1:
            loaded["batches"] = batches[:n]  # what training is timed on: one reader's, every repetition alike

    loaded.update(rate_1=[], steady_1=[], rate_2=[], steady_2=[])
    load(2)
    load()  # warm-ups, not counted; the batches training is timed on
    trainer = Trainer(n_items, cfg.model, cfg.train, counts)
    trainer.run(loaded["batches"], WARMUP_STEPS)
    trained: list[float] = []
    interleaved({"load": load, "load_2": lambda: load(2),
                 "train": lambda: trained.append(n / trainer.run(loaded["batches"], n)["seconds"])}, b.mode.repeats)
    load_rate, train_rate = median(loaded["rate_1"][1:]), median(trained)
    steady_1, steady_2 = median(loaded["steady_1"][1:]), median(loaded["steady_2"][1:])
    log(f"loader {load_rate:.1f} batches/s over an epoch of {epoch} ({median(loaded['rate_2'][1:]):.1f} with 2 reader "
        f"processes; after the first batch {steady_1:.1f} and {steady_2:.1f}), training {train_rate:.2f} batches/s "
        f"(batch {bs})")
    b.details["loader_over_train"] = {
        "batch_size": bs, "epoch_batches": epoch, "train_batches": n, "train_sessions": snapshot.n_sessions,
        "row_groups": snapshot.row_groups, "n_items": n_items, "threads": threads,
        "loader_batches_per_second": loaded["rate_1"][1:], "loader_2_workers_batches_per_second": loaded["rate_2"][1:],
        "after_first_batch_per_second": {"1": loaded["steady_1"][1:], "2": loaded["steady_2"][1:]},
        "train_batches_per_second": trained, "model": _model_summary(cfg.model),
    }
    return {"loader_over_train": load_rate / train_rate, "loader_workers_2_over_1": steady_2 / steady_1}


def _model_summary(m: ModelConfig) -> dict[str, Any]:
    return {"encoder": m.encoder, "head": m.head, "hidden_size": m.hidden_size, "readout": m.readout, "repeat": m.repeat,
            "n_negatives": m.n_negatives}


def zipf_popularity(n_items: int) -> np.ndarray:
    """P(item) ~ rank ** -1.1 over items 1..n_items, with 0 (padding) at index 0: a catalog's long tail."""
    p = np.zeros(n_items + 1)
    p[1:] = 1.0 / np.arange(1, n_items + 1) ** 1.1
    return p / p.sum()


def zipf_items(p: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return rng.choice(len(p) - 1, size=shape, p=p[1:]) + 1


def zipf_batches(p: np.ndarray, batch: int, length: int, count: int, seed: int) -> list[Batch]:
    """`count` batches of full-length sessions with items drawn by popularity `p`."""
    rng = np.random.default_rng(seed)
    return [{"items": torch.from_numpy(zipf_items(p, (batch, length), rng)),
             "length": torch.full((batch,), length, dtype=torch.int64)} for _ in range(count)]


def head_figures(b: Bench) -> dict[str, Any]:
    """train_events_per_second per head and catalog size, through `fit` on synthetic in-memory batches
    of the same shape for every head, and the sampled / bit-tree speed-ups at the largest catalog."""
    cfg: Config = b.cfg
    threads = use_all_cores(cfg.train)
    rates: dict[str, dict[str, float]] = {h: {} for h in HEADS}
    raw: dict[str, dict[str, list[float]]] = {h: {} for h in HEADS}
    for v in VOCABS:
        p = zipf_popularity(v)
        counts = np.round(p * 1e9)  # the sampled head draws its negatives from these
        batches = zipf_batches(p, b.mode.head_batch, b.mode.head_length, 4, seed=v)
        steps = b.mode.head_steps[v]
        for head in HEADS:
            model_cfg = copy.deepcopy(cfg.model)
            model_cfg.head = head
            trainer = Trainer(v, model_cfg, cfg.train, counts)
            trainer.run(batches, WARMUP_STEPS if steps > 1 else 1)
            runs = [trainer.run(batches, steps) for _ in range(b.mode.repeats if steps >= 8 else 1)]
            per_run = [r["events"] / r["seconds"] for r in runs]
            rates[head][vocab_label(v)] = median(per_run)
            raw[head][vocab_label(v)] = per_run
            log(f"head {head:<8} V={vocab_label(v):>4}: {median(per_run):,.0f} events/s ({steps} steps)")
            del trainer
            gc.collect()
    top = vocab_label(VOCABS[-1])
    step = step_over_catalog(b)
    b.details["train_heads"] = {"batch_sessions": b.mode.head_batch, "session_length": b.mode.head_length,
                                "steps": {vocab_label(v): s for v, s in b.mode.head_steps.items()},
                                "threads": threads, "optimizer": cfg.train.optimizer,
                                "model": _model_summary(cfg.model), "events_per_second_runs": raw}
    return {"train_events_per_second": rates,
            "sampled_over_full": rates["sampled"][top] / rates["full"][top],
            "bit_tree_over_full": rates["bit_tree"][top] / rates["full"][top],
            "step_1m_over_10k": step}


def step_over_catalog(b: Bench) -> float:
    """Seconds per sampled-head training step at the largest catalog over the smallest (1M / 10k):
    the same batches (Zipf items below 10k, so both catalogs see the same sessions), hidden size and
    negatives. Both models are built and warmed up first, then timed in interleaved runs of
    `step_steps` steps, so a change in the machine's load lands on both sides alike."""
    cfg: Config = b.cfg
    small, large = VOCABS[0], VOCABS[-1]
    batches = zipf_batches(zipf_popularity(small), b.mode.head_batch, b.mode.head_length, 4, seed=small)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.head = "sampled"
    steps = b.mode.step_steps
    trainers: dict[int, Trainer] = {}
    for v in (small, large):
        trainers[v] = Trainer(v, model_cfg, cfg.train, np.round(zipf_popularity(v) * 1e9))
        trainers[v].run(batches, WARMUP_STEPS)
    per_step: dict[int, list[float]] = {small: [], large: []}

    def timed(v: int) -> Callable[[], None]:
        return lambda: per_step[v].append(trainers[v].run(batches, steps)["seconds"] / steps)

    interleaved({vocab_label(v): timed(v) for v in (small, large)}, b.mode.repeats)
    ratio = median(per_step[large]) / median(per_step[small])
    log(f"sampled step: {median(per_step[small]) * 1e3:.1f} ms at V={vocab_label(small)}, "
        f"{median(per_step[large]) * 1e3:.1f} ms at V={vocab_label(large)} ({steps} steps a run): {ratio:.2f}x")
    b.details["train_step"] = {"steps_per_run": steps, "batch_sessions": b.mode.head_batch,
                               "session_length": b.mode.head_length, "model": _model_summary(model_cfg),
                               "seconds_per_step": {vocab_label(v): s for v, s in per_step.items()}}
    trainers.clear()  # the 1M model and its optimizer state: several GB at the default width
    gc.collect()
    return ratio
