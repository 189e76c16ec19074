"""Session-parallel mini-batches in time order (`train.batching=lanes`): how the official GRU4Rec
code feeds its RNN, and what lifted nextplay's RNN on diginetica (docs/model-settings.md).

`lanes` sessions are in flight at once, one per lane. Every step trains one target per lane, the
lane's next item; a lane whose session has no target left takes the next session of the stream.
Sessions arrive oldest first, so each update sees the sessions that were live together, and the
last updates of an epoch come from the newest sessions, the ones closest to what will be scored.
Shuffled, length-sorted batches lost that on diginetica, and so did time-ordered batches of whole
sessions.

The official code carries each lane's hidden state from step to step. Here a step's row is instead
the lane's session up to its target (the last `max_len` items), with `first_target` marking that
one target: the model recomputes the prefix with the current weights. Steps then stay independent
of each other, so checkpoints, resuming, Horovod and the repeat pointer (which reads the whole
prefix) work unchanged, and the prefix's state is exact rather than left over from older weights.
Only a recurrent encoder has the one-step shortcut that makes such steps cheap (model/cells.py
`last_step`); the config check refuses lanes for the attention encoder.

`Lanes` is the training strategy the launcher picks for train.batching=lanes: each step's loss is
the model's `last_target_loss`, the one target per row.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from nextplay.config import TrainConfig

Batch = dict[str, torch.Tensor]


class Lanes:
    """The training strategy of lane steps (train/loop.py `TrainingStrategy`): every epoch the same
    time-ordered pass; `truncate` (train.bptt_steps=1) takes the encoder's one-step shortcut."""

    def __init__(self, lanes: Iterable[Batch], truncate: bool = False, steps_per_epoch: int | None = None) -> None:
        self.lanes, self.truncate, self.steps_per_epoch = lanes, truncate, steps_per_epoch

    @classmethod
    def of(cls, lanes: Iterable[Batch], cfg: TrainConfig, steps_per_epoch: int | None = None) -> Lanes:
        return cls(lanes, cfg.bptt_steps == 1, steps_per_epoch)

    def batches(self, epoch: int) -> Iterable[Batch]:
        return self.lanes

    def loss(self, model: torch.nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, int]:
        return model.last_target_loss(batch["items"].to(device), batch["length"].to(device), truncate=self.truncate)


class LaneBatches:
    """One epoch of lane steps over `sessions()` (called once per pass); `len()` is the step count
    when every lane stays busy, which the last steps fall short of while the lanes drain."""

    def __init__(self, sessions: Callable[[], Iterable[np.ndarray]], lanes: int, max_len: int,
                 n_targets: int) -> None:
        if lanes < 1 or max_len < 2:
            raise ValueError(f"lanes must be >= 1 and max_len >= 2, got {lanes} and {max_len}")
        self.sessions, self.lanes, self.max_len, self.n_targets = sessions, lanes, max_len, n_targets

    def __len__(self) -> int:
        return max(1, math.ceil(self.n_targets / self.lanes))

    def __iter__(self) -> Iterator[Batch]:
        stream = (s for s in self.sessions() if len(s) >= 2)  # a single play has no target
        lane: list[np.ndarray | None] = [next(stream, None) for _ in range(self.lanes)]
        target = [1] * self.lanes  # index of each lane's next target in its session
        while True:
            live = [i for i, s in enumerate(lane) if s is not None]
            if not live:
                return
            rows = [lane[i][max(0, target[i] + 1 - self.max_len): target[i] + 1] for i in live]
            lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
            items = np.zeros((len(rows), int(lengths.max())), dtype=np.int64)
            for r, row in enumerate(rows):
                items[r, : len(row)] = row
            yield {"items": torch.from_numpy(items), "length": torch.from_numpy(lengths),
                   "first_target": torch.from_numpy(lengths - 2)}
            for i in live:
                target[i] += 1
                if target[i] == len(lane[i]):
                    lane[i], target[i] = next(stream, None), 1
