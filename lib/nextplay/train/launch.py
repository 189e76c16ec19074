"""`nextplay train`: snapshot the sessions table, start the training processes, log the run.

The driver does everything that needs Spark (which Delta files make up the snapshot, the item
counts, a validation sample) and packs it into a picklable `TrainSpec`. The training function runs
anywhere Python runs: in this process, under Horovod (`horovod.run`, gloo or NCCL), under
`horovod.spark.run` on Spark executors, or under Spark's `TorchDistributor`. Rank 0 writes the
model and a small result file to `output_dir`, which the driver reads back (TorchDistributor returns
an arbitrary rank's value in local mode, so return values are never trusted). On a cluster rank 0
runs on another machine: `output_dir` is a folder of the run under `train.checkpoint_dir`, which
must be storage every node reaches (nextplay/storage.py), never the driver's own disk. The driver
alone talks to MLflow: rank 0 reports its figures through files beside its output, which a thread on
the driver logs into the run while training runs (train/report.py).

Everything a run reads comes from one pinned generation of the lake (`Lake.pin_generation`): the
sessions version and the item_index version sessionize wrote with it, logged as run tags. Each
run checkpoints into its own folder; `--resume` continues the newest interrupted run in that run.
`--warm-start` starts the ranks from a registered model's weights (default: the champion), grown
by rows for the tracks the append-only dictionary gained since (`warm_start_model`).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from nextplay import run_metrics, tables, tracking
from nextplay.config import Config, ConfigError
from nextplay.data.lines import recent_sessions, session_lines
from nextplay.logs import configure_logging
from nextplay.metrics import evaluate_model
from nextplay.model.io import load_model, save_model
from nextplay.model.pyfunc import NextTrackModel, load_logged, log_model
from nextplay.model.session import SessionModel
from nextplay.spark import get_spark
from nextplay.storage import Storage, join
from nextplay.tables import ITEM_INDEX, Lake, Pin, check_model_ids
from nextplay.train.checkpoint import (check_resumable, has_checkpoint, load_latest_checkpoint, model_signature,
                                       remove_run_checkpoints, run_checkpoint_dir, save_checkpoint)
from nextplay.train.distributed import HorovodCollective, TorchCollective
from nextplay.train.index import build_index
from nextplay.train.shard_reader import reader_workers
from nextplay.train.loader import (SessionSnapshot, copy_surviving_rows, iterate_batches, lane_batches,
                                   plan_snapshot)
from nextplay.train.lanes import Lanes
from nextplay.train.loop import Buckets, build_optimizer, fit
from nextplay.train.report import Relay, StepReport, describe, report_folder
from nextplay.train.window import in_window, run_config, window_start

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"


@dataclass
class TrainSpec:
    """Everything a training process needs; pickled to every rank."""

    cfg: Config
    snapshot: SessionSnapshot
    n_items: int
    item_counts: np.ndarray
    output_dir: str
    run_id: str | None = None
    valid_prefixes: list[list[int]] = field(default_factory=list)
    valid_labels: list[int] = field(default_factory=list)
    checkpoint_dir: str = ""  # this run's own folder under train.checkpoint_dir; "" = the base folder
    sessions_version: int | None = None  # the pinned sessions version, recorded in every checkpoint
    initial_model: str = ""  # warm start: a saved model (model/io.py) on shared storage the ranks start from
    report_dir: str = ""  # where rank 0 leaves its figures for the driver to relay (train/report.py); "": none


def _collective(launcher: str):
    if launcher in ("horovod", "spark"):
        return HorovodCollective()
    if launcher == "torch_distributor":
        return TorchCollective()
    return None


def _device(cfg: Config, local_rank: int):
    if cfg.train.device == "cpu" or (cfg.train.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for but no GPU is visible")
    torch.cuda.set_device(local_rank % torch.cuda.device_count())
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def scaled_train_config(cfg: Config, world_size: int):
    """Linear learning-rate scaling with the number of processes, as usual for Horovod: each step
    averages world_size x batch_size sessions, so the step can grow by the same factor."""
    tc = copy.deepcopy(cfg.train)
    tc.lr *= world_size
    return tc


def _log_from_worker(rank: int) -> None:
    """Give a fresh worker process the CLI's log format, its rank in every line.

    Horovod, horovod.spark and TorchDistributor start ranks in new processes whose logging is
    unconfigured, so the per-epoch INFO lines were dropped there and only MLflow had them; the
    launchers forward each rank's stderr to the driver's. In-process ranks keep the CLI's setup.
    """
    if not logging.getLogger().handlers:
        configure_logging(logging.INFO, rank)


def train_worker(spec: TrainSpec) -> None:
    """The training function every rank runs (a module-level function, so launchers can pickle it)."""
    cfg = spec.cfg
    comm = _collective(cfg.train.launcher)
    rank, size = (comm.rank, comm.size) if comm else (0, 1)
    local_rank = comm.local_rank if comm else 0
    _log_from_worker(rank)
    cores = os.cpu_count() or 1
    torch.set_num_threads(cfg.train.threads or max(1, cores // size))
    torch.manual_seed(cfg.train.seed)
    device = _device(cfg, local_rank)

    model = SessionModel(spec.n_items, cfg.model, item_counts=spec.item_counts)
    if spec.initial_model:
        model.load_state_dict({**model.state_dict(), **read_initial_state(spec)})
        log.info("rank %d starts from the warm-start weights in %s", rank, spec.initial_model)
    model = model.to(device)
    train_cfg = scaled_train_config(cfg, size)
    train_cfg.progress = cfg.train.progress and rank == 0
    optimizer = build_optimizer(model, train_cfg)

    start_epoch = 0
    signature = model_signature(cfg, spec.n_items)
    checkpoint_dir = spec.checkpoint_dir or cfg.train.checkpoint_dir
    if cfg.train.resume:
        state = load_latest_checkpoint(checkpoint_dir, map_location=device, storage=spec.snapshot.storage)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch = int(state["epoch"]) + 1
            log.info("rank %d resumes after the checkpoint of epoch %d", rank, state["epoch"])

    report = StepReport(spec.snapshot.storage, spec.report_dir, cfg.train.report_every_steps) \
        if rank == 0 and spec.report_dir else None

    def on_epoch_end(epoch: int, stats: dict[str, Any]) -> None:
        if rank != 0:
            return
        # The optimizer that actually stepped: Horovod's wrapper keeps its own state.
        stepped = getattr(comm, "optimizer", None) or optimizer
        extra = {"run_id": spec.run_id or "", "signature": signature}
        if spec.sessions_version is not None:
            extra["sessions_version"] = spec.sessions_version
        save_checkpoint(checkpoint_dir, epoch, model, stepped, extra=extra, storage=spec.snapshot.storage)
        metrics = {k: float(v) for k, v in stats.items() if k != "epoch" and isinstance(v, (int, float))}
        named = {run_metrics.epoch(k): v for k, v in metrics.items()}
        if spec.valid_prefixes:
            valid = {k: v for k, v in evaluate_model(model, spec.valid_prefixes, spec.valid_labels, ks=cfg.evaluate.ks,
                                                     device=device).items() if k != "lines"}
            model.train()
            metrics.update({f"valid_{k}": v for k, v in valid.items()})
            named.update({run_metrics.valid(k): v for k, v in valid.items()})
            stats.update(metrics)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if report is not None:  # into the MLflow run, live, by the driver (train/report.py)
            report.epoch(epoch, named)

    history = fit(
        model,
        training_strategy(spec, rank, size, device),
        train_cfg,
        start_epoch=start_epoch,
        on_epoch_end=on_epoch_end,
        on_step=report.step if report is not None else None,
        device=device,
        distributed=comm,
        optimizer=optimizer,
    )
    if rank == 0:
        if report is not None:
            report.flush()
        write_output(spec, model.to("cpu"), {"history": history, "world_size": size})
    if comm is not None:
        comm.barrier()


def training_strategy(spec: TrainSpec, rank: int, size: int, device: torch.device):
    """The training strategy train.batching names, over this rank's share of the snapshot
    (train/loop.py `Buckets`, train/lanes.py `Lanes`); chosen here once, so the loop and the model
    never guess it from a batch."""
    cfg = spec.cfg
    workers = reader_workers(cfg.train.reader_workers, device)
    if cfg.train.batching == "lanes":
        lanes = lane_batches(spec.snapshot, lanes=cfg.train.batch_size, max_len=cfg.train.max_len, rank=rank, size=size,
                             workers=workers)
        # One process runs its exact pass: the newest sessions come last and matter most. Ranks
        # must agree on a step count: the one their shares of the split give with the lanes full.
        return Lanes.of(lanes, cfg.train, steps_per_epoch=len(lanes) if size > 1 else None)
    make_batches = lambda epoch: iterate_batches(  # noqa: E731
        spec.snapshot, batch_size=cfg.train.batch_size, rank=rank, size=size, epoch=epoch,
        seed=cfg.train.seed, workers=workers)
    return Buckets.of(make_batches, cfg.train, steps_per_epoch=spec.snapshot.steps_per_epoch(cfg.train.batch_size, size))


def read_initial_state(spec: TrainSpec) -> dict[str, torch.Tensor]:
    """The warm-start weights every rank starts from, read from the run's folder on shared storage; without
    the session memory, which the configured model.hybrid may size otherwise (it is refilled after training)."""
    with tempfile.TemporaryDirectory(prefix="nextplay-warm-") as tmp:
        spec.snapshot.storage.download(spec.initial_model, tmp)
        state = load_model(tmp).state_dict()
    return {k: v for k, v in state.items() if not k.startswith("hybrid.memory.")}


def write_output(spec: TrainSpec, model: Any, result: dict[str, Any]) -> None:
    """Rank 0's model and result, in `spec.output_dir` on shared storage; the result goes last, so
    its presence means the model is complete."""
    storage = spec.snapshot.storage
    with tempfile.TemporaryDirectory(prefix="nextplay-rank0-") as tmp:
        save_model(model, tmp)
        storage.upload(tmp, spec.output_dir)
    storage.write_bytes(join(spec.output_dir, RESULT_FILE), json.dumps(result, default=float).encode())


def launch(spec: TrainSpec) -> dict[str, Any]:
    """Run `train_worker` under the configured launcher and return rank 0's result."""
    launcher, n = spec.cfg.train.launcher, spec.cfg.train.num_proc
    if launcher == "local":
        train_worker(spec)
    elif launcher == "horovod":
        import horovod  # deferred: an optional extra, needed by the horovod launchers only

        horovod.run(train_worker, args=(spec,), np=n, hosts=spec.cfg.train.hosts or f"localhost:{n}", use_gloo=True,
                    network_interface="lo" if _is_local(spec.cfg) else None,
                    start_timeout=120, verbose=0)
    elif launcher == "spark":
        import horovod.spark  # deferred: an optional extra, needed by the horovod launchers only

        horovod.spark.run(train_worker, args=(spec,), num_proc=n, start_timeout=300,
                          nics={"lo"} if _is_local(spec.cfg) else None, verbose=1)
    elif launcher == "torch_distributor":
        from pyspark.ml.torch.distributor import TorchDistributor  # deferred: only this launcher loads pyspark.ml

        TorchDistributor(num_processes=n, local_mode=_is_local(spec.cfg),
                         use_gpu=torch.cuda.is_available() and spec.cfg.train.device != "cpu").run(train_worker, spec)
    result_file = join(spec.output_dir, RESULT_FILE)
    storage = spec.snapshot.storage
    if not storage.exists(result_file):
        raise RuntimeError(f"training under launcher '{launcher}' finished without rank 0 writing {result_file}")
    return json.loads(storage.read_bytes(result_file))


def _is_local(cfg: Config) -> bool:
    return (cfg.spark.master or "").startswith("local")


def snapshot_training_data(spark, cfg: Config, pin: Pin | None = None):
    """Gather what the workers need from one pinned generation of `sessions` and `item_index`
    (default: the newest, `Lake.pin_generation`). Files that lost rows to deletion vectors are left
    for `apply_deletions`, which needs the run's folder (loader.py)."""
    lake = Lake(cfg.lake)
    pin = pin or lake.pin_generation(spark)
    sessions = lake.read_at(spark, tables.SESSIONS, pin.sessions_version)
    since = window_start(sessions, "train", cfg.train.window_days)
    snapshot, counts = plan_snapshot(in_window(sessions, since), "train", Storage.of(cfg.lake), pin.sessions_version)
    if snapshot.n_sessions == 0:
        raise ValueError("the sessions table has no 'train' sessions: run sessionize on more data, "
                         "or check sessionize.test_days / valid_days against the data's time span")
    if since is not None:
        log.info("training window: the 'train' sessions from %s on (train.window_days=%d): %d sessions",
                 since, cfg.train.window_days, snapshot.n_sessions)

    # V numbers on the driver (the model holds V x H floats anyway), as Arrow columns: no Python row per track.
    index = lake.read_at(spark, tables.ITEM_INDEX, pin.item_index_version).select("item_idx", "play_count").toArrow()
    ids = index.column("item_idx").to_numpy()
    n_items = int(ids.max()) if len(ids) else 0
    item_counts = np.zeros(n_items + 1, dtype=np.float64)
    item_counts[ids] = index.column("play_count").to_numpy()
    return snapshot, n_items, item_counts, counts


def apply_deletions(spark, cfg: Config, snapshot: SessionSnapshot, folder: str) -> SessionSnapshot:
    """`snapshot` with the live rows of its partly deleted files copied to `folder` (under the run's
    checkpoint folder: shared storage every rank reaches), read at the snapshot's own version."""
    if not snapshot.partly_deleted:
        return snapshot
    sessions = Lake(cfg.lake).read_at(spark, tables.SESSIONS, snapshot.version)
    copied = copy_surviving_rows(sessions, snapshot, folder)
    log.info("sessions version %s: %d file(s) hold deleted rows; their live rows were copied to %s",
             snapshot.version, len(snapshot.partly_deleted), folder)
    return copied


def deletions_folder(cfg: Config, run_id: str) -> str:
    """Where run `run_id` keeps the live rows of partly deleted `sessions` files (`apply_deletions`)."""
    return join(str(run_checkpoint_dir(cfg.train.checkpoint_dir, run_id)), "sessions")


def validation_lines(spark, cfg: Config, pin: Pin | None = None) -> tuple[list[list[int]], list[int]]:
    """Every next-item step of the most recent valid-split sessions (of the pinned sessions version),
    as prefix/label pairs."""
    version = None if pin is None else pin.sessions_version
    return session_lines(recent_sessions(spark, cfg, "valid", cfg.evaluate.max_valid_sessions, version=version))


def remember_sessions(spark, cfg: Config, model: Any, output_dir: str, prefixes: list[list[int]],
                      labels: list[int], pin: Pin | None = None) -> None:
    """Fill the hybrid's memory with the most recent training sessions and save the model again.

    Done on the driver, after training: the memory is data read from the same lake version the
    run trained on, not something a rank learns. The per-epoch `valid/model/*` metrics measured the
    network alone; `valid/hybrid/*` is the model as it will score.
    """
    version = None if pin is None else pin.sessions_version
    model.hybrid.remember(recent_sessions(spark, cfg, "train", cfg.model.hybrid.knn_sessions, version=version))
    save_model(model, output_dir)
    mlflow.log_metric(run_metrics.run("knn_memory_sessions"), model.hybrid.memory_sessions)
    if labels:
        valid = evaluate_model(model, prefixes, labels, ks=cfg.evaluate.ks)
        mlflow.log_metrics({run_metrics.valid(k, "hybrid"): v for k, v in valid.items() if k != "lines"})


def resumable_run(cfg: Config):
    """The newest training run of the experiment that did not finish and left checkpoints, or None.

    Only runs that are not FINISHED qualify: a finished run logged its model and removed its
    checkpoints, so an older run's files can never be mistaken for an interrupted one's."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], max_results=200, order_by=["attributes.start_time DESC"],
                              filter_string="tags.`nextplay.stage` = 'train' and attributes.status != 'FINISHED'")
    storage = Storage.of(cfg.lake)
    return next((r for r in runs if has_checkpoint(run_checkpoint_dir(cfg.train.checkpoint_dir, r.info.run_id), storage)),
                None)


def _pin_of(run) -> Pin:
    pin = Pin.from_tags(run.data.tags)
    if pin is None:
        raise ConfigError(f"train.resume: run {run.info.run_id} has checkpoints but no pinned table versions; "
                          "train without --resume")
    return pin


def _log_run_inputs(cfg: Config, pin: Pin) -> None:
    """Record the pinned Delta versions as the run's dataset inputs (MLflow's lineage view)."""
    lake = Lake(cfg.lake)
    for table, version in ((tables.SESSIONS, pin.sessions_version), (tables.ITEM_INDEX, pin.item_index_version)):
        where = {"delta_table_name": lake.name(table)} if lake.is_catalog else {"path": lake.path(table)}
        source = DeltaDatasetSource(**where, delta_table_version=version)
        mlflow.log_input(MetaDataset(source, name=table, digest=f"v{version}"), context="training")


def _log_resumed_params(params: dict[str, Any], logged: dict[str, str]) -> None:
    """A resumed run keeps the params it started with (MLflow never changes a param): settings the
    resume changed, such as train.epochs, are recorded as `nextplay.resumed.<key>` tags."""
    values = {k: str(v) for k, v in params.items()}
    new = sorted((k, v) for k, v in values.items() if k not in logged)
    for lo in range(0, len(new), 100):
        mlflow.log_params(dict(new[lo:lo + 100]))
    mlflow.set_tags({f"nextplay.resumed.{k}": v for k, v in values.items() if k in logged and logged[k] != v})


@dataclass
class WarmStart:
    """The registered model a run starts from, checked against the lake and the configuration."""

    uri: str  # pinned: models:/name/version, or the runs:/ URI given
    run_id: str
    model: NextTrackModel


def warm_start_model(spark, cfg: Config, pin: Pin) -> WarmStart | None:
    """Resolve and load `train.warm_start` (the trusted way: no code from the artifact) and refuse, in
    one line, a model this run cannot grow: one whose item ids the pinned item_index names otherwise
    (a rebuilt lake, another lake), or one trained with other model settings (shapes, encoder, head)."""
    if cfg.train.warm_start is None:
        return None
    wanted = None if cfg.train.warm_start.strip() == "champion" else cfg.train.warm_start.strip()
    resolved = tracking.resolve_model(cfg.tracking, wanted)
    logged = load_logged(resolved.uri)
    mine, theirs = dataclasses.asdict(cfg.model), dataclasses.asdict(logged.rnn.cfg)
    differ = [f"model.{k}={theirs.get(k)!r} (configured: {mine[k]!r})" for k in sorted(mine)
              if k != "hybrid" and mine[k] != theirs.get(k)]
    if differ:
        raise ValueError(f"train.warm_start: {resolved.uri} was trained with {', '.join(differ)}: configure the model "
                         "it was trained with, or train without --warm-start")
    check_model_ids(spark, Lake(cfg.lake), logged.track_ids, pin.item_index_version, f"train.warm_start {resolved.uri}")
    return WarmStart(resolved.uri, resolved.run_id, logged)


def write_initial_model(cfg: Config, warm: WarmStart, n_items: int, item_counts: np.ndarray, folder: str,
                        storage: Storage) -> None:
    """The warm-start model grown to this lake's `n_items`, saved to `folder` on shared storage. New
    rows are drawn from train.seed, so a warm run starts from the same weights every time."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        grown = warm.model.rnn.grown(n_items, item_counts)
    with tempfile.TemporaryDirectory(prefix="nextplay-warm-") as tmp:
        save_model(grown, tmp)
        storage.upload(tmp, folder)


def log_trained_model(spark: SparkSession, cfg: Config, model_dir: str, item_index_version: int | None = None,
                      model: SessionModel | None = None) -> str | None:
    """Log the model saved in `model_dir` with the lake's item index (as of `item_index_version`, the
    one the run trained with; default the newest) and, where `ann.build` wants one, the item-vector
    index of `model` (the same weights, loaded; default: read from `model_dir`); returns the
    registered version.

    The model is registered under `tracking.model_name` unless `tracking.register` is false.
    """
    lake = Lake(cfg.lake)
    index = lake.read(spark, ITEM_INDEX) if item_index_version is None else lake.read_at(spark, ITEM_INDEX, item_index_version)
    item_index = index.select("track_id", "item_idx", "play_count").toArrow().to_pandas()
    with tempfile.TemporaryDirectory(prefix="nextplay-ann-") as tmp:
        ann_dir = build_index(cfg, model if model is not None else load_model(model_dir), Path(tmp) / "ann")
        info = log_model(model_dir, item_index, registered_model_name=cfg.tracking.model_name if cfg.tracking.register else None,
                         top_k=cfg.score.top_k, collapse_repeats=cfg.sessionize.collapse_repeats, ann_dir=ann_dir)
    return None if info.registered_model_version is None else str(info.registered_model_version)


@dataclass
class TrainedModel:
    run_id: str
    model: Any  # the trained SessionModel, on CPU, in eval mode
    model_version: str | None
    seconds: float
    events_per_second: float
    epochs: int
    world_size: int
    history: list[dict[str, Any]]
    mode: str = "full"  # how it trained (train.mode after `run_config`: a daily run without a champion is full)
    sessions: int = 0  # training sessions in its snapshot (its window's, with one)


def train_and_log(spark, cfg: Config, run_name: str | None = None) -> TrainedModel:
    """Pin, snapshot, launch, and log one training run (params, curves, the registered model).

    With `train.resume` the newest interrupted run continues: same MLflow run, same checkpoint
    folder, same pinned table versions. Without it, or when there is none, a new run starts."""
    tracking.configure(cfg.tracking)
    resumed = resumable_run(cfg) if cfg.train.resume else None
    if cfg.train.resume and resumed is None:
        log.info("train.resume: no interrupted training run with checkpoints in %s; starting a new run",
                 cfg.train.checkpoint_dir)
    pin = _pin_of(resumed) if resumed else Lake(cfg.lake).pin_generation(spark)
    cfg = run_config(cfg, lambda: tracking.alias_version(cfg.tracking.model_name, tracking.CHAMPION) is not None,
                     resumed=resumed is not None)
    snapshot, n_items, item_counts, _ = snapshot_training_data(spark, cfg, pin)
    warm = warm_start_model(spark, cfg, pin)
    if resumed:
        check_resumable(run_checkpoint_dir(cfg.train.checkpoint_dir, resumed.info.run_id),
                        model_signature(cfg, n_items), pin.sessions_version, snapshot.storage)
    prefixes, labels = validation_lines(spark, cfg, pin)
    local_dir = tempfile.mkdtemp(prefix="nextplay-train-")
    shared_dir = copies = initial = None
    name = run_name or f"train-{cfg.model.encoder}-{cfg.model.head}"
    try:
        system = cfg.tracking.system_metrics  # CPU, memory and GPU of the driver, sampled through the run
        with (mlflow.start_run(run_id=resumed.info.run_id, log_system_metrics=system) if resumed
              else mlflow.start_run(run_name=name, log_system_metrics=system)) as run:
            run_id = run.info.run_id
            mlflow.set_tags({"nextplay.stage": "train", **pin.as_tags()})
            if warm is not None:
                mlflow.set_tags({"nextplay.warm_start_from": warm.uri, "nextplay.warm_start_run": warm.run_id,
                                 "nextplay.warm_start_items": str(warm.model.rnn.n_items)})
            extra = {"world_size": cfg.train.num_proc, "n_items": n_items, "train_sessions": snapshot.n_sessions,
                     "train_events": snapshot.n_events, "valid_lines": len(labels)}
            if resumed:
                _log_resumed_params({**cfg.flat(), **extra}, resumed.data.params)
            else:
                tracking.log_params(cfg, extra=extra)
                _log_run_inputs(cfg, pin)
            checkpoints = run_checkpoint_dir(cfg.train.checkpoint_dir, run_id)
            shared_dir, copies = output_folder(cfg, run_id), deletions_folder(cfg, run_id)
            snapshot = apply_deletions(spark, cfg, snapshot, copies)
            if warm is not None:
                initial = join(str(checkpoints), "warm_start")
                write_initial_model(cfg, warm, n_items, item_counts, initial, snapshot.storage)
            spec = TrainSpec(cfg, snapshot, n_items, item_counts, shared_dir, run_id, prefixes, labels,
                             checkpoint_dir=str(checkpoints), sessions_version=pin.sessions_version,
                             initial_model=initial or "", report_dir=report_folder(str(checkpoints)))
            started = time.time()
            # Ranks on executors log there; the driver repeats their figures for the job's own log.
            echo = cfg.train.launcher in ("spark", "torch_distributor")
            with Relay(snapshot.storage, spec.report_dir, relay_to_run(run_id, echo=echo)):
                result = launch(spec)
            seconds = time.time() - started
            history = result["history"]
            events_per_second = sum(h.get("events", 0) for h in history) / max(seconds, 1e-9)
            mlflow.log_metrics({run_metrics.run("seconds"): seconds, run_metrics.run("events_per_second"): events_per_second,
                                run_metrics.run("world_size"): float(result["world_size"])})
            tracking.log_loss_curve(history)
            snapshot.storage.download(shared_dir, local_dir)
            model = load_model(local_dir)
            if model.hybrid.memory is not None:
                remember_sessions(spark, cfg, model, local_dir, prefixes, labels, pin)
            version = log_trained_model(spark, cfg, local_dir, item_index_version=pin.item_index_version, model=model)
            remove_run_checkpoints(checkpoints, snapshot.storage)  # the model is logged: nothing is left to resume
        return TrainedModel(run_id, model, version, seconds, events_per_second,
                            len(history), int(result["world_size"]), history, cfg.train.mode, snapshot.n_sessions)
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)
        for folder in (shared_dir, copies, initial):  # the model now lives in MLflow; a failed run leaves nothing either
            if folder is not None:  # (a resumed run copies the live rows of its pinned version again)
                snapshot.storage.remove(folder, recursive=True)


def output_folder(cfg: Config, run_id: str) -> str:
    """Where rank 0 leaves the model and result of run `run_id`: in the run's checkpoint folder, which
    every rank and the driver reach (on a cluster it must be shared storage, like the checkpoints)."""
    return join(str(run_checkpoint_dir(cfg.train.checkpoint_dir, run_id)), "output")


def relay_to_run(run_id: str, echo: bool):
    """The sink of the training report (train/report.py): each record's figures into run `run_id`
    by its step as they arrive; with `echo`, also one line per batch of records to this process's
    log (for ranks whose own log lines stay on the executors)."""
    client = MlflowClient()

    def sink(records: list[dict[str, Any]]) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(r["step"])) for r in records
                   for key, value in r["metrics"].items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        if echo:
            for r in [r for r in records if r.get("kind") == "epoch"] or records[-1:]:
                log.info("training: %s", describe(r))

    return sink


def train(cfg: Config) -> dict[str, Any]:
    """The `train` stage."""
    trained = train_and_log(get_spark(cfg), cfg)
    return {"run_id": trained.run_id, "model_version": trained.model_version, "world_size": trained.world_size,
            "train_mode": trained.mode, "train_sessions": trained.sessions, "epochs": trained.epochs,
            "train_seconds": round(trained.seconds, 1),
            "train_events_per_second": round(trained.events_per_second),
            "final_loss": trained.history[-1].get("loss") if trained.history else None,
            "ui_path": tracking.ui_path(mlflow.get_run(trained.run_id).info.experiment_id, trained.run_id)}
