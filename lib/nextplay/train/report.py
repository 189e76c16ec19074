"""Training figures while training runs: rank 0 writes them to shared storage, the driver relays them.

Ranks never talk to MLflow (on a cluster they have neither its address nor its credentials), and under
TorchDistributor or horovod.spark rank 0 runs on an executor, whose log nobody watching the job reads.
So rank 0 drops small numbered JSON files into `report/` in the run's checkpoint folder, on the storage
every rank and the driver already share for checkpoints and the model (train/launch.py), and a thread
on the driver reads each file as it lands: its figures go into the MLflow run by step (and, for ranks
on executors, a line into the driver's log) while the run is still training. Files are whole when they appear (`Storage.write_bytes` renames them into
place), so the reader never sees half of one.

A report record is `{"step": s, "epoch": e, "metrics": {...}}`. Step records carry `train/loss` (the
mean loss of the steps since the last record) and `train/events_per_second`, by global step; epoch
records carry the epoch's figures (`epoch/...`, `valid/model/...`) with the epoch as the step
(names: nextplay/run_metrics.py).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable

from nextplay import run_metrics
from nextplay.storage import Storage, join

log = logging.getLogger(__name__)

REPORT_FOLDER = "report"
FLUSH_SECONDS = 5.0  # rank 0 writes at most one file this often (and at every epoch's end)
POLL_SECONDS = 2.0  # the driver looks for new files this often

Record = dict[str, Any]


def report_folder(run_dir: str) -> str:
    """The report folder of the run whose checkpoint folder is `run_dir`."""
    return join(run_dir, REPORT_FOLDER)


class StepReport:
    """Rank 0's side: figures every `every_steps` steps and at each epoch's end, written in batches."""

    def __init__(self, storage: Storage, folder: str, every_steps: int, flush_seconds: float = FLUSH_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._storage, self._folder = storage, folder
        self._every = every_steps
        self._flush_seconds, self._clock = flush_seconds, clock
        self._pending: list[Record] = []
        self._files = 0
        self._last_flush = clock()
        self._loss, self._events, self._steps = 0.0, 0, 0
        self._window_started = clock()

    def step(self, epoch: int, global_step: int, loss_sum: float, events: int) -> None:
        """One optimizer step's summed loss over its `events` targets."""
        if self._every <= 0:
            return
        self._loss += loss_sum
        self._events += events
        self._steps += 1
        if self._steps < self._every:
            return
        now = self._clock()
        seconds = now - self._window_started
        self._pending.append({"step": global_step, "epoch": epoch, "metrics": {
            run_metrics.TRAIN_LOSS: self._loss / max(self._events, 1),
            run_metrics.TRAIN_EVENTS_PER_SECOND: self._events / seconds if seconds > 0 else 0.0}})
        self._loss, self._events, self._steps, self._window_started = 0.0, 0, 0, now
        if now - self._last_flush >= self._flush_seconds:
            self.flush()

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """The epoch's own figures, written at once: validation is what a person waits for."""
        self._pending.append({"step": epoch, "epoch": epoch, "metrics": dict(metrics), "kind": "epoch"})
        self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        name = join(self._folder, f"{self._files:08d}.json")
        self._storage.write_bytes(name, json.dumps(self._pending).encode())
        self._files += 1
        self._pending = []
        self._last_flush = self._clock()


class Relay:
    """The driver's side: a thread that hands each new report file's records to `sink`, in order.

    Used as a context manager around the launch. It empties the folder first (a resumed run must not
    relay the figures of the attempt it resumes twice) and reads once more on exit, so every record
    rank 0 wrote reaches the sink, even from a run too short for one poll. A failed read is logged and
    retried at the next poll: the figures never stop the training.
    """

    def __init__(self, storage: Storage, folder: str, sink: Callable[[list[Record]], None],
                 poll_seconds: float = POLL_SECONDS) -> None:
        self._storage, self._folder, self._sink = storage, folder, sink
        self._poll = poll_seconds
        self._done: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nextplay-train-report", daemon=True)

    def __enter__(self) -> Relay:
        self._storage.remove(self._folder, recursive=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read_logging_failure("the last figures are not in the run")

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            self._read_logging_failure("trying again")

    def _read_logging_failure(self, then: str) -> None:
        try:
            self.read_new()
        except Exception as e:  # noqa: BLE001 - the figures never end a run (or hide why it ended)
            log.warning("training report: could not read %s (%s); %s", self._folder, e, then)

    def read_new(self) -> None:
        for name in self._storage.listdir(self._folder):
            if not name.endswith(".json") or name in self._done:
                continue
            records = json.loads(self._storage.read_bytes(join(self._folder, name)))
            self._sink(records)
            self._done.add(name)


def describe(record: Record) -> str:
    """One log line for a record, e.g. `epoch 1 step 1,200: train/loss=5.213, train/events_per_second=3,456`."""
    where = f"epoch {record['epoch']} done" if record.get("kind") == "epoch" else \
        f"epoch {record['epoch']} step {record['step']:,}"
    figures = ", ".join(f"{k}={v:,.4g}" for k, v in record["metrics"].items())
    return f"{where}: {figures}"
