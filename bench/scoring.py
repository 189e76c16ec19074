"""Scoring figures: what the Spark path costs on top of the model, and users scored per second.

`score_over_gemm` puts the exact scorer beside the arithmetic it cannot avoid: a bare matrix
product of session vectors with the item matrix plus a streamed top-k, of the same shapes (users x
hidden size x catalog, the same batch and chunk sizes, one torch thread each as in a Spark task),
timed interleaved in the same run. The scorer's extra work is the recurrent encoder, the
log-partition, the repeat pointer and the session-kNN memory.

Both sides score the same users' histories with the same logged model and the same batch and chunk
sizes: in process, `NextTrackModel.topk_items` on a list of arrays (the faster of one torch thread
and one per core); through Spark, the scorer
`nextplay score` runs (`make_scorer` in mapInPandas over the shipped MLflow model, on as many
partitions as `score` uses) into Spark's no-op sink. Building histories from plays_silver and writing
`predictions` are left out on both sides: this isolates the UDF hop (Arrow batches to Python workers
and back, task scheduling, the shuffle that spreads users over cores). Python workers load the
model once; a warm-up run pays that before timing.

`score_memory_over_model` is what the model costs a real scoring worker: before anything else
touches the shipped model, one Spark job runs the scorer in each of Spark's Python workers (one
partition per core) and has the worker that loaded the model report its resident memory before
loading and its peak (VmHWM, restarted at the partition's start) after scoring its partition. The
figure is (peak - before) / the size of the model file: the interpreter and its libraries, which
every worker holds whatever the model, are left out and recorded beside it, with the private
(RssAnon) and file-backed (RssFile) parts and the worker's proportional share (Pss) of pages it
shares with the other workers.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch

from nextplay.model.session import SessionModel

from bench.context import Bench, log
from bench.measure import interleaved, median
from bench.report import vocab_label
from bench.training import zipf_items, zipf_popularity

VOCABS = (10_000, 1_000_000)
MEMORY_BATCHES = 2  # full batches of histories each Python worker scores in the memory job


def _ship(b: Bench, p: np.ndarray):
    """Log an (untrained: speed does not depend on the weights) SessionModel as the project's pyfunc
    model in the bench's own MLflow store and ship it to Spark as `nextplay score` does. With the
    default `model.hybrid.knn_weight` the model is the hybrid, so its memory is filled with sessions drawn
    by the same popularity (their count: the mode's `memory_sessions`)."""
    from nextplay import tracking
    from nextplay.model.io import save_model
    from nextplay.model import pyfunc
    from nextplay.score.batch import ship_model
    from nextplay.tracking import ResolvedModel

    n_items, counts = len(p) - 1, np.round(p * 1e9)
    label = vocab_label(n_items)
    rnn_dir = b.workdir / f"rnn_{label}"
    model = SessionModel(n_items, b.cfg.model, item_counts=counts).eval()
    if model.hybrid.memory is not None:
        model.hybrid.remember(zipf_items(p, (b.mode.memory_sessions, 8), np.random.default_rng(n_items)))
    save_model(model, rnn_dir)
    index = pd.DataFrame({"track_id": [f"t{i}" for i in range(1, n_items + 1)],
                          "item_idx": np.arange(1, n_items + 1, dtype=np.int32),
                          "play_count": counts[1:].astype(np.int64)})
    with tracking.start_run(b.cfg, run_name=f"bench-score-{label}") as run:
        info = pyfunc.log_model(str(rnn_dir), index, registered_model_name=None, top_k=b.cfg.score.top_k,
                                collapse_repeats=b.cfg.sessionize.collapse_repeats)
    resolved = ResolvedModel(uri=info.model_uri, name="bench", version=run.info.run_id)
    shipped, local = ship_model(b.spark, resolved)
    return resolved, shipped, local


def _histories(p: np.ndarray, users: int, max_len: int, seed: int) -> pd.DataFrame:
    """`users` histories of 1..max_len items drawn by popularity `p`."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=users)
    items = zipf_items(p, (users, max_len), rng).astype(np.int32)
    return pd.DataFrame({"user_id": [f"u{i}" for i in range(users)],
                         "items": [items[i, :n] for i, n in enumerate(lengths)]})


def gemm_topk(weight: torch.Tensor, users: int, batch_size: int, chunk_size: int, k: int) -> None:
    """The bare product + top-k: random session vectors against items 1..V, streamed by chunks."""
    n_items = weight.shape[0] - 1
    for lo in range(0, users, batch_size):
        s = torch.randn(min(batch_size, users - lo), weight.shape[1])
        best = torch.full((s.shape[0], 0), float("-inf"))
        for c in range(1, n_items + 1, chunk_size):
            top = (s @ weight[c:c + chunk_size].t()).topk(min(k, weight[c:c + chunk_size].shape[0]), dim=1).values
            best = torch.cat([best, top], dim=1).topk(min(k, best.shape[1] + top.shape[1]), dim=1).values


def score_figures(b: Bench) -> dict[str, Any]:
    from nextplay.model import pyfunc
    from nextplay.score.batch import SCORED_SCHEMA, make_scorer

    s = b.cfg.score
    spark = b.spark
    partitions = 2 * spark.sparkContext.defaultParallelism  # as `nextplay score` spreads users
    details: dict[str, Any] = {"top_k": s.top_k, "batch_size": s.batch_size, "chunk_size": s.chunk_size,
                               "partitions": partitions}
    rates: dict[str, float] = {}
    ratios: dict[str, float] = {}
    memory: dict[str, dict[str, Any]] = {}
    for v in VOCABS:
        label = vocab_label(v)
        users = b.mode.score_users[v]
        p = zipf_popularity(v)
        resolved, shipped, local = _ship(b, p)
        pdf = _histories(p, users, s.history_length, seed=v)
        hist = spark.createDataFrame(pdf.assign(items=pdf["items"].map(np.ndarray.tolist)), "user_id string, items array<int>")
        hist = hist.cache()
        hist.count()
        scorer = make_scorer(shipped, k=s.top_k, exclude_played=s.exclude_played,
                             batch_size=s.batch_size, chunk_size=s.chunk_size)
        if v in b.mode.memory_vocabs:  # before the warm-up: the workers have not loaded this model yet
            memory[label] = worker_memory(b, p, shipped, local)
        model = pyfunc.load_trusted(local)
        seqs = [np.asarray(h, dtype=np.int64) for h in pdf["items"]]

        def through_spark() -> None:
            hist.repartition(partitions).mapInPandas(scorer, SCORED_SCHEMA).write.format("noop").mode("overwrite").save()

        def in_process(threads: int):
            def run() -> None:
                torch.set_num_threads(threads)
                model.topk_items(seqs, s.top_k, exclude_seen=s.exclude_played, batch_size=s.batch_size,
                                 chunk_size=s.chunk_size)
            return run

        # In process, the best of one thread and all cores is the baseline: on a busy machine the
        # threads of one process wait for each other, while Spark runs one single-threaded task per core.
        runs = {"spark": through_spark, **{f"inprocess_{t}": in_process(t) for t in sorted({1, os.cpu_count() or 1})}}
        interleaved(runs, 1)  # warm-up: Spark's Python workers load the model once
        times = interleaved(runs, b.mode.repeats)
        hist.unpersist()
        best = min((k for k in times if k != "spark"), key=lambda k: median(times[k]))
        rates[label] = users / median(times["spark"])
        ratios[label] = median(times["spark"]) / median(times[best])
        details[label] = {"users": users, "seconds": times, "inprocess_baseline": best,
                          "inprocess_users_per_second": users / median(times[best]), "udf_over_inprocess": ratios[label]}
        log(f"score V={label}: Spark {rates[label]:,.0f} users/s, UDF / in-process {ratios[label]:.2f}")
        if v == VOCABS[-1]:
            details["gemm"] = _over_gemm(model, seqs, s)
    for v in b.mode.memory_vocabs:
        if v not in VOCABS:
            memory[vocab_label(v)] = _memory_only(b, v)
    details["memory"] = memory
    b.details["score"] = details
    return {"udf_over_inprocess": ratios[vocab_label(VOCABS[0])], "score_users_per_second": rates,
            "score_over_gemm": details["gemm"]["score_over_gemm"],
            "score_memory_over_model": {label: m["memory_over_model"] for label, m in memory.items()
                                        if "memory_over_model" in m}}


def _over_gemm(model, seqs: list[np.ndarray], s) -> dict[str, Any]:
    """The exact scorer in process against `gemm_topk` of its shapes, one thread each, interleaved."""
    weight = model.rnn._output_weight().detach()
    users = len(seqs)
    torch.set_num_threads(1)
    runs = {"scorer": lambda: model.topk_items(seqs, s.top_k, exclude_seen=s.exclude_played, batch_size=s.batch_size,
                                               chunk_size=s.chunk_size),
            "gemm_topk": lambda: gemm_topk(weight, users, s.batch_size, s.chunk_size, s.top_k)}
    times = interleaved(runs, 2)
    ratio = median(times["gemm_topk"]) / median(times["scorer"])
    log(f"score V={len(weight) - 1:,}: exact scorer {users / median(times['scorer']):,.0f} users/s, bare product + "
        f"top-k {users / median(times['gemm_topk']):,.0f} users/s (score_over_gemm {ratio:.2f})")
    return {"users": users, "hidden": int(weight.shape[1]), "threads": 1, "seconds": times,
            "scorer_users_per_second": users / median(times["scorer"]),
            "gemm_users_per_second": users / median(times["gemm_topk"]), "score_over_gemm": ratio}


def _proc_memory() -> dict[str, int]:
    """This process's resident memory in bytes: VmRSS, VmHWM (its peak), RssAnon, RssFile and Pss."""
    out: dict[str, int] = {}
    for name in ("/proc/self/status", "/proc/self/smaps_rollup"):
        for line in Path(name).read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Pss"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _measured(scorer: Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]], shipped: str
              ) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A mapInPandas function that runs `scorer` over its partition in a Python worker and answers one
    row: the worker's memory before and after, and whether it loaded the model in this partition."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from nextplay import shipping

        loads = shipped not in shipping._LOADED
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current resident size
        before = _proc_memory()
        rows = sum(len(out) for out in scorer(batches))
        after = _proc_memory()
        yield pd.DataFrame([{"pid": os.getpid(), "loads": loads, "rows": rows, "before": before["VmRSS"],
                             "peak": after["VmHWM"], "anon": after["RssAnon"], "file": after["RssFile"],
                             "pss": after["Pss"]}])

    return run


MEMORY_SCHEMA = "pid long, loads boolean, rows long, before long, peak long, anon long, file long, pss long"


def worker_memory(b: Bench, p: np.ndarray, shipped: str, local: Path) -> dict[str, Any]:
    """`score_memory_over_model` of the module docstring, for a model shipped as `shipped` that no
    Python worker has loaded yet (downloaded on the driver to `local`; `p` the popularity its
    histories are drawn from). Each worker scores `MEMORY_BATCHES` full batches of histories, as a
    worker of `nextplay score` does (its partitions hold far more listeners than one batch)."""
    from nextplay.score.batch import make_scorer

    s = b.cfg.score
    spark = b.spark
    workers = spark.sparkContext.defaultParallelism
    pdf = _histories(p, workers * MEMORY_BATCHES * s.batch_size, s.history_length, seed=len(p))
    hist = spark.createDataFrame(pdf.assign(items=pdf["items"].map(np.ndarray.tolist)), "user_id string, items array<int>")
    scorer = make_scorer(shipped, k=s.top_k, exclude_played=s.exclude_played, batch_size=s.batch_size,
                         chunk_size=s.chunk_size)
    rows = hist.repartition(workers).mapInPandas(_measured(scorer, shipped), MEMORY_SCHEMA).toPandas()
    model_bytes = sum(f.stat().st_size for f in Path(local).rglob("model.pt"))
    loaded = rows[rows["loads"]]
    if loaded.empty:
        raise RuntimeError("no Python worker loaded the model during the memory job: the figure would be the "
                           "memory of workers that already held it")
    mib = lambda x: round(float(x) / 2**20, 1)  # noqa: E731
    extra = loaded["peak"] - loaded["before"]
    ratio = float(extra.max()) / model_bytes
    log(f"score memory V={vocab_label(len(p) - 1)}: model {mib(model_bytes):,} MiB, worker peak "
        f"{mib(loaded['peak'].max()):,} MiB of which {mib(extra.max()):,} over its {mib(loaded['before'].max()):,} "
        f"MiB before loading (score_memory_over_model {ratio:.2f}; {len(loaded)} worker(s) loaded it)")
    return {"model_mib": mib(model_bytes), "memory_over_model": ratio,
            "peak_over_model": float(loaded["peak"].max()) / model_bytes, "batch_size": s.batch_size,
            "workers": [{"pid": int(r.pid), "rows_out": int(r.rows), "before_mib": mib(r.before),
                         "peak_mib": mib(r.peak), "anon_mib": mib(r.anon), "file_mib": mib(r.file), "pss_mib": mib(r.pss)}
                        for r in loaded.itertuples()]}


def _memory_only(b: Bench, n_items: int) -> dict[str, Any]:
    """The memory figure at a catalog with no speed runs (10M in full mode), where this machine holds
    it: the driver builds a random model in memory and the file passes through MLflow, the download
    and the shipped archive on disk."""
    import psutil

    model_bytes = (n_items + 1) * (b.cfg.model.embedding_size or b.cfg.model.hidden_size) * 4
    disk = shutil.disk_usage(b.workdir).free
    memory = psutil.virtual_memory().available
    if memory < 3 * model_bytes or disk < 6 * model_bytes:
        reason = (f"a {model_bytes / 2**30:.1f} GiB model needs 3x its size in memory and 6x on disk; "
                  f"{memory / 2**30:.1f} GiB and {disk / 2**30:.1f} GiB are free")
        log(f"score memory V={vocab_label(n_items)}: skipped: {reason}")
        return {"skipped": reason}
    p = zipf_popularity(n_items)
    _, shipped, local = _ship(b, p)
    return worker_memory(b, p, shipped, local)
