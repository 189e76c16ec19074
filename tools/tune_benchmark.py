"""Tune and measure the session RNN in memory on session-benchmark text files (a folder holding
`train_sessions.txt` and `test_prefix_label.tsv`), without Spark: the quick loop for trying a setting
before `nextplay benchmark` measures it through the production path.

    # validation (the last 10% of train_sessions.txt, every prefix -> next item), default config
    .venv/bin/python tools/tune_benchmark.py --data <folder>
    # one change against the defaults
    .venv/bin/python tools/tune_benchmark.py --data <folder> --set model.hidden_size=200
    # the test figures of a chosen config: trains on all of train_sessions.txt, scores test_prefix_label.tsv
    .venv/bin/python tools/tune_benchmark.py --data <folder> --test --baselines

On a CPU shared with other work, one intra-op thread with passive OpenMP waiting was 3-4x faster
than two spinning threads (`OMP_WAIT_POLICY=PASSIVE ... --set train.threads=1`); the validation
figures in docs/benchmarks.md were taken that way, `--set train.progress=true` shows the per-step bar.

Only the config (dataclass defaults + `--set` overrides; conf/local.yml is NOT read) changes what is
trained. Item ids are re-indexed 1..V over the items seen in training; prefix items the model never
saw are dropped from the prefix, and unseen labels become 0, which the metrics count as a miss. Each
JSON line printed to stdout (and appended to `--log`) is one epoch's or one baseline's result.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nextplay.config import Config, load_config
from nextplay.evaluate.baselines import MarkovChain, MostPopular, SessionKNN
from nextplay.metrics import evaluate_model
from nextplay.model.session import SessionModel
from nextplay.train.lanes import LaneBatches, Lanes
from nextplay.train.loader import cut_points
from nextplay.train.loop import Buckets, fit


def read_sessions(path: Path) -> list[list[int]]:
    with open(path) as f:
        return [[int(x) for x in line.split()] for line in f if line.strip()]


def read_lines(path: Path) -> tuple[list[list[int]], list[int]]:
    prefixes, labels = [], []
    with open(path) as f:
        for line in f:
            if line.strip():
                prefix, label = line.rstrip("\n").split("\t")
                prefixes.append([int(x) for x in prefix.split()])
                labels.append(int(label))
    return prefixes, labels


def prefix_lines(sessions: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Every prefix of every session with the item that followed it (how the test files are built)."""
    prefixes, labels = [], []
    for s in sessions:
        for i in range(1, len(s)):
            prefixes.append(s[:i])
            labels.append(s[i])
    return prefixes, labels


class ItemIndex:
    """Raw ids -> 1..V by descending training frequency; 0 for items training never saw."""

    def __init__(self, sessions: list[list[int]]) -> None:
        ids, counts = np.unique(np.concatenate([np.asarray(s) for s in sessions]), return_counts=True)
        order = np.argsort(-counts, kind="stable")
        self.index = {int(raw): i + 1 for i, raw in enumerate(ids[order])}
        self.counts = np.concatenate([[0], counts[order]]).astype(np.int64)
        self.n_items = len(ids)

    def sessions(self, sessions: list[list[int]]) -> list[list[int]]:
        return [[self.index[x] for x in s] for s in sessions]

    def lines(self, prefixes: list[list[int]], labels: list[int]) -> tuple[list[list[int]], list[int], int]:
        """Map lines; returns (prefixes, labels, #prefixes left empty, which keep a lone 0)."""
        out, empty = [], 0
        for p in prefixes:
            mapped = [self.index[x] for x in p if x in self.index]
            empty += not mapped
            out.append(mapped or [0])
        return out, [self.index.get(x, 0) for x in labels], empty


def batch_maker(sessions: list[list[int]], batch_size: int, seed: int, by_length: bool = True):
    """In-memory batches cut as the Petastorm loader cuts them (`cut_points`, equal item counts):
    sessions grouped by length (little padding), batch order shuffled per epoch; without
    `by_length`, batch_size random sessions (all lengths together, more padding)."""
    lengths = np.array([len(s) for s in sessions])
    padded = np.zeros((len(sessions), lengths.max()), dtype=np.int64)
    for i, s in enumerate(sessions):
        padded[i, : len(s)] = s

    def make(epoch: int) -> list[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(len(sessions))
        order = perm[np.argsort(lengths[perm], kind="stable")] if by_length else perm
        n = len(order)
        spans = cut_points(lengths[order], batch_size) if by_length else [(lo, min(n, lo + batch_size)) for lo in range(0, n, batch_size)]
        out = []
        for i in rng.permutation(len(spans)):
            idx = order[spans[i][0]: spans[i][1]]
            width = int(lengths[idx].max())
            out.append({"items": torch.from_numpy(padded[idx, :width]), "length": torch.from_numpy(lengths[idx])})
        return out

    return make


def emit(record: dict, log: Path | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if log is not None:
        with open(log, "a") as f:
            f.write(line + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. model.hidden_size=200")
    ap.add_argument("--test", action="store_true", help="train on all sessions, report on test_prefix_label.tsv")
    ap.add_argument("--valid-fraction", type=float, default=0.1)
    ap.add_argument("--baselines", action="store_true")
    ap.add_argument("--no-model", action="store_true", help="baselines only")
    ap.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (the last always)")
    ap.add_argument("--log", type=Path, default=None)
    ap.add_argument("--tag", default="")
    ap.add_argument("--random-batches", action="store_true",
                    help="batches of random sessions instead of sessions of similar length")
    ap.add_argument("--save", type=Path, default=None, help="write the trained RNN's state_dict here")
    ap.add_argument("--load", type=Path, default=None,
                    help="skip training: load this state_dict (from --save, same data and --set) and evaluate it")
    args = ap.parse_args(argv)

    # An empty YAML file: the dataclass defaults plus --set, never conf/local.yml.
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as empty:
        cfg: Config = load_config(empty.name, ["train.progress=false", *args.set])
    torch.set_num_threads(cfg.train.threads or 2)
    sessions = read_sessions(args.data / "train_sessions.txt")
    if args.test:
        train = sessions
        prefixes, labels = read_lines(args.data / "test_prefix_label.tsv")
    else:
        cut = int(len(sessions) * (1 - args.valid_fraction))
        train = sessions[:cut]
        prefixes, labels = prefix_lines(sessions[cut:])
    index = ItemIndex(train)
    train_ids = index.sessions(train)
    eval_prefixes, eval_labels, empty = index.lines(prefixes, labels)
    split = "test" if args.test else "valid"
    base = {"data": args.data.name, "split": split, "tag": args.tag, "set": args.set,
            "lines": len(eval_labels), "unknown_labels": int(sum(x == 0 for x in eval_labels)), "empty_prefixes": empty}
    ks = cfg.evaluate.ks
    if args.baselines:
        for name, scorer in [("most_popular", MostPopular()), ("markov", MarkovChain()),
                             ("sknn", SessionKNN(k=cfg.evaluate.knn_neighbors, sample=cfg.evaluate.knn_sample))]:
            t0 = time.perf_counter()
            scorer.fit(train_ids, index.n_items)
            res = evaluate_model(scorer, eval_prefixes, eval_labels, ks=ks, batch_size=cfg.evaluate.batch_size)
            emit({**base, "model": name, **res, "seconds": round(time.perf_counter() - t0, 1)}, args.log)
    if args.no_model:
        return
    model = SessionModel(index.n_items, cfg.model, index.counts)
    if cfg.train.batching == "lanes":  # the file's order is the sessions' time order
        arrays = [np.asarray(s, dtype=np.int64) for s in train_ids]
        strategy = Lanes.of(LaneBatches(lambda: arrays, cfg.train.batch_size, cfg.train.max_len,
                                        sum(len(s) - 1 for s in train_ids)), cfg.train)
    else:
        strategy = Buckets.of(batch_maker(train_ids, cfg.train.batch_size, cfg.train.seed, not args.random_batches), cfg.train)
    started = time.perf_counter()

    def on_epoch_end(epoch: int, stats: dict) -> None:
        record = {**base, "model": f"model:{cfg.model.encoder}/{cfg.model.head}", **stats,
                  "wall_seconds": round(time.perf_counter() - started, 1)}
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            t0 = time.perf_counter()
            record.update(evaluate_model(model, eval_prefixes, eval_labels, ks=ks, batch_size=512))
            record["eval_seconds"] = round(time.perf_counter() - t0, 1)
        emit(record, args.log)

    if args.load is not None:
        model.load_state_dict(torch.load(args.load, weights_only=True))
    else:
        fit(model, strategy, cfg.train, on_epoch_end=on_epoch_end, device="cpu")
    if args.save is not None:
        torch.save(model.state_dict(), args.save)


if __name__ == "__main__":
    sys.exit(main())
