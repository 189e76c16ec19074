"""Candidate retrieval figures: which ANN library indexes a trained model's item vectors best, and
what an index costs at 1M items (bench/catalog.py scores at 10M).

The vectors are a trained model's, not random ones: recall of an HNSW graph depends on how the
vectors cluster and how their norms spread, which random vectors do not have. A sampled-head
SessionModel is trained for a bounded time on synthetic sessions that follow "artists" (groups of
tracks, popular by a Zipf law, each session staying with one artist or moving to a related one),
so the item vectors gain the structure of co-occurrence and popularity. The model is kept in
`b.inputs["ann_model"]` (and saved under the bench's work folder) for the rest of the stage.

For every library (bench/ann_libraries.py): build seconds on 2 threads, index bytes on disk, recall
of the exact top-20 (a brute-force matmul + topk over every item) on held-out session vectors at a
few `ef`, and queries/s on 1 and 2 threads.
"""
from __future__ import annotations

import copy
import gc
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nextplay.config import TrainConfig
from nextplay.model.ann import fingerprint, item_vectors, query_vectors
from nextplay.model.session import SessionModel
from nextplay.train.loop import build_optimizer

from bench import ann_libraries
from bench.context import Bench, log
from bench.report import vocab_label

K = 20
EFS = (50, 100, 200)
M, EF_CONSTRUCTION = 16, 100
BUILD_THREADS = 2
ARTIST_TRACKS = 16  # tracks per synthetic artist


@dataclass(frozen=True)
class AnnSizes:
    n_items: int
    train_seconds: float
    queries: int
    candidates: tuple[str, ...]  # library/space pairs measured


EVERY = tuple(f"{lib}/{space}" for lib in ann_libraries.LIBRARIES for space in ann_libraries.SPACES)
# Quick mode measures the two that led on a small trained model (docs/stack.md); each 1M build
# takes minutes on 2 cores.
FINALISTS = ("faiss-cpu/ip", "hnswlib/ip")
SIZES = {"full": AnnSizes(1_000_000, 600, 2000, EVERY),
         "quick": AnnSizes(1_000_000, 120, 500, FINALISTS),
         "tiny": AnnSizes(20_000, 5, 100, EVERY)}


class ArtistSessions:
    """Synthetic sessions over artists of ARTIST_TRACKS consecutive item ids.

    Artists are popular by rank ** -1.1, tracks within an artist by rank ** -1.0; a session starts at
    an artist, plays one of its tracks each step, and after each play moves with probability 0.2 to
    a related artist (one of the 8 next ids) or, 5% of the time, to any artist by popularity."""

    def __init__(self, n_items: int, seed: int) -> None:
        self.n_artists = n_items // ARTIST_TRACKS
        self.n_items = self.n_artists * ARTIST_TRACKS
        a = 1.0 / np.arange(1, self.n_artists + 1) ** 1.1
        self.artist_p = a / a.sum()
        t = 1.0 / np.arange(1, ARTIST_TRACKS + 1)
        self.track_p = t / t.sum()
        self.rng = np.random.default_rng(seed)

    def item_counts(self) -> np.ndarray:
        """Expected plays per item (index 0: padding), for the sampled head's negatives."""
        counts = np.zeros(self.n_items + 1)
        counts[1:] = np.round(np.outer(self.artist_p, self.track_p).ravel() * 1e9)
        return counts

    def batch(self, n: int, length: int) -> torch.Tensor:
        rng = self.rng
        artist = rng.choice(self.n_artists, size=n, p=self.artist_p)
        rows = np.empty((n, length), dtype=np.int64)
        for step in range(length):
            track = rng.choice(ARTIST_TRACKS, size=n, p=self.track_p)
            rows[:, step] = artist * ARTIST_TRACKS + track + 1
            move = rng.random(n)
            related = (artist + rng.integers(1, 9, size=n)) % self.n_artists
            anywhere = rng.choice(self.n_artists, size=n, p=self.artist_p)
            artist = np.where(move < 0.15, related, np.where(move < 0.2, anywhere, artist))
        return torch.from_numpy(rows)


def train_model(b: Bench, n_items: int, seconds: float) -> tuple[SessionModel, ArtistSessions, dict[str, Any]]:
    """A sampled-head model (the bench's model settings, hidden size included) trained for `seconds`."""
    data = ArtistSessions(n_items, seed=n_items)
    cfg = copy.deepcopy(b.cfg.model)
    cfg.head = "sampled"
    torch.manual_seed(0)
    model = SessionModel(data.n_items, cfg, item_counts=data.item_counts())
    optimizer = build_optimizer(model, TrainConfig(lr=0.01))
    batch, length = 128, 10
    lengths = torch.full((batch,), length)
    started, steps = time.perf_counter(), 0
    model.train()
    while time.perf_counter() - started < seconds:
        loss, n = model.loss(data.batch(batch, length), lengths)
        optimizer.zero_grad()
        (loss / n).backward()
        optimizer.step()
        steps += 1
    model.eval()
    info = {"n_items": data.n_items, "hidden_size": cfg.hidden_size, "head": cfg.head, "encoder": cfg.encoder,
            "train_seconds": round(time.perf_counter() - started, 1), "train_steps": steps,
            "sessions_per_step": batch, "session_length": length, "last_loss": round(loss.item() / n, 3)}
    log(f"ann: trained V={vocab_label(data.n_items)} D={cfg.hidden_size} for {steps} steps, loss {info['last_loss']}")
    return model, data, info


@torch.no_grad()
def session_vectors(model: SessionModel, items: torch.Tensor) -> torch.Tensor:
    """The head's input for each row's last item: the session vector whose logits the index ranks."""
    lengths = torch.full((items.shape[0],), items.shape[1])
    ro = model.readout(model.forward(items, lengths), lengths, last_only=True)
    return ro.session[:, 0]


def exact_top(x: np.ndarray, q: np.ndarray, k: int, chunk: int = 262_144) -> np.ndarray:
    """Row positions [B, k] of the k largest q . x, brute force over every item."""
    qt = torch.from_numpy(q)
    best_s = torch.full((q.shape[0], 0), -float("inf"))
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
    for lo in range(0, x.shape[0], chunk):
        block = torch.from_numpy(x[lo:lo + chunk])
        ids = torch.arange(lo, lo + block.shape[0]).expand(q.shape[0], -1)
        best_s, pos = torch.cat([best_s, qt @ block.T], 1).topk(min(k, best_s.shape[1] + block.shape[0]), dim=1)
        best_i = torch.cat([best_i, ids], 1).gather(1, pos)
    return best_i.numpy()


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def _queries_per_second(index: ann_libraries.Candidate, q: np.ndarray, ef: int, threads: int) -> float:
    index.search(q[:50], K, ef, threads)  # warm caches
    started = time.perf_counter()
    index.search(q, K, ef, threads)
    return q.shape[0] / (time.perf_counter() - started)


def compare_libraries(x: np.ndarray, q: np.ndarray, truth: np.ndarray, candidates: tuple[str, ...], m: int = M,
                      ef_construction: int = EF_CONSTRUCTION) -> dict[str, Any]:
    """Each "library/space" candidate: build seconds, bytes, recall and queries/s per ef."""
    out: dict[str, Any] = {}
    augmented = {"ip": (x, q), "l2": None}
    for candidate in candidates:
        library, space = candidate.split("/")
        version = ann_libraries.version(library)
        if version is None:
            out[candidate] = {"skipped": "not installed"}
            continue
        if space == "l2" and augmented["l2"] is None:
            augmented["l2"] = (ann_libraries.augment_items(x), ann_libraries.augment_queries(q))
        xs, qs = augmented[space]
        started = time.perf_counter()
        index = ann_libraries.build(library, xs, space, m, ef_construction, BUILD_THREADS)
        built = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "index"
            index.save(path)
            size = path.stat().st_size
        row: dict[str, Any] = {"version": version, "build_seconds": round(built, 2), "index_bytes": size,
                               "recall_at_20": {}, "queries_per_second_1_thread": {},
                               "queries_per_second_2_threads": {}}
        for ef in EFS:
            row["recall_at_20"][ef] = round(recall(index.search(qs, K, ef, BUILD_THREADS), truth), 4)
            row["queries_per_second_1_thread"][ef] = round(_queries_per_second(index, qs, ef, 1))
            row["queries_per_second_2_threads"][ef] = round(_queries_per_second(index, qs, ef, 2))
        log(f"ann: {library:<9} {space}: build {built:.1f}s, {size / 2**20:.0f} MiB, "
            f"recall {row['recall_at_20']}, q/s 1 thread {row['queries_per_second_1_thread']}")
        out[f"{library}/{space}"] = row
        del index
        gc.collect()
    return out


def winner(results: dict[str, Any], ef: int = 100) -> str:
    """The fastest single-threaded search among those with recall >= 0.98 at `ef` (the best recall
    when none reaches it)."""
    rows = {k: v for k, v in results.items() if "recall_at_20" in v}
    good = [k for k, v in rows.items() if v["recall_at_20"][ef] >= 0.98]
    if good:
        return max(good, key=lambda k: rows[k]["queries_per_second_1_thread"][ef])
    return max(rows, key=lambda k: rows[k]["recall_at_20"][ef])


def small_trained(steps: int) -> dict[str, Any]:
    """Every candidate on a small model trained to convergence (3,200 items, D = 32, `steps` steps):
    its vectors' norms spread as a long-trained catalog's do (popular items grow long vectors), which
    the bounded 1M training cannot reach on 2 cores."""
    from nextplay.config import ModelConfig

    torch.manual_seed(0)
    data = ArtistSessions(3200, seed=3)
    model = SessionModel(data.n_items, ModelConfig(head="sampled", hidden_size=32, n_negatives=128, repeat=False,
                                                   init_std=0.1), item_counts=data.item_counts())
    optimizer = build_optimizer(model, TrainConfig(lr=0.01))
    lengths = torch.full((64,), 8)
    for _ in range(steps):
        loss, n = model.loss(data.batch(64, 8), lengths)
        optimizer.zero_grad()
        (loss / n).backward()
        optimizer.step()
    model.eval()
    x = item_vectors(model)
    q = query_vectors(session_vectors(model, data.batch(300, 5)))
    out = {"n_items": data.n_items, "hidden_size": 32, "train_steps": steps, "last_loss": round(loss.item() / n, 3),
           "item_norm_percentiles_1_50_99_100": [round(float(v), 3) for v in
                                                 np.percentile(np.linalg.norm(x, axis=1), [1, 50, 99, 100])]}
    out["libraries"] = compare_libraries(x, q, exact_top(x, q, K), EVERY)
    return out


def ann_figures(b: Bench) -> dict[str, Any]:
    sizes = SIZES[b.mode.name]
    model, data, info = train_model(b, sizes.n_items, sizes.train_seconds)
    model_dir = b.workdir / f"ann_model_{vocab_label(data.n_items)}"
    from nextplay.model.io import save_model

    save_model(model, model_dir)
    b.inputs["ann_model"] = (model, model_dir)
    b.inputs["ann_data"] = data
    x = item_vectors(model)
    t0 = time.perf_counter()
    fingerprint(x)
    fp_seconds = time.perf_counter() - t0
    norms = np.linalg.norm(x, axis=1)
    q = query_vectors(session_vectors(model, data.batch(sizes.queries, 6)))
    truth = exact_top(x, q, K)
    libraries = compare_libraries(x, q, truth, sizes.candidates)
    best = winner(libraries)
    details: dict[str, Any] = {"model": info, "k": K, "m": M, "ef_construction": EF_CONSTRUCTION,
                               "build_threads": BUILD_THREADS, "queries": sizes.queries,
                               "fingerprint_seconds": round(fp_seconds, 3), "vectors_shape": list(x.shape),
                               "item_norm_percentiles_1_50_99_100": [round(float(v), 3) for v in
                                                                     np.percentile(norms, [1, 50, 99, 100])],
                               "libraries": libraries, "winner": best}
    b.details["ann"] = details
    details["small_trained"] = small_trained(300 if b.mode.name != "tiny" else 20)
    del x
    gc.collect()
    return {"ann_library_recall_at_20": libraries[best]["recall_at_20"][100]}
