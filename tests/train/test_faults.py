"""Crashes: a SIGKILLed training resumes from its last checkpoint; a dead Horovod rank fails the
job quickly instead of hanging the others."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

from .planted import write_planted_lake

NEXTPLAY = str(Path(sys.executable).with_name("nextplay"))


def _train_cmd(cfg, *overrides: str) -> list[str]:
    sets = [f"lake.root={cfg.lake.root}", f"tracking.uri={cfg.tracking.uri}",
            f"tracking.artifact_location={cfg.tracking.artifact_location}",
            f"train.checkpoint_dir={cfg.train.checkpoint_dir}", "train.progress=false", "spark.master=local[2]",
            "train.batch_size=16", "model.hidden_size=32", "train.lr=0.01", *overrides]
    return [NEXTPLAY, "train", *[a for kv in sets for a in ("--set", kv)]]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(spark, cfg):
    write_planted_lake(spark, cfg, n_sessions=3000)
    ckpt = Path(cfg.train.checkpoint_dir)
    proc = subprocess.Popen(_train_cmd(cfg, "train.epochs=5"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Each run keeps its checkpoints in its own folder, named by its MLflow run id.
        _wait_for(lambda: any(ckpt.glob("*/checkpoint-000001.pt")), 600, "the checkpoint of epoch 1")
        time.sleep(1.0)  # into epoch 2
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (folder,) = ckpt.iterdir()
    done = sorted(p.name for p in folder.glob("checkpoint-*.pt"))
    assert done and done[-1] < "checkpoint-000004.pt", "the run was killed before it finished"
    last = int(done[-1].split("-")[1].split(".")[0])

    resumed = subprocess.run(_train_cmd(cfg, "train.epochs=5", "train.resume=true"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    mlflow.set_tracking_uri(cfg.tracking.uri)
    run = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list",
                             filter_string="attributes.status = 'FINISHED'")[0]
    assert run.info.run_id == folder.name, "the resume continues the killed run"
    steps = [m.step for m in MlflowClient(cfg.tracking.uri).get_metric_history(run.info.run_id, "epoch/loss")]
    assert [s for s in steps if s > last] == list(range(last + 1, 5))
    assert not folder.exists(), "the finished run's checkpoints are removed"
    assert run.data.metrics["valid/model/recall_at_10"] > 0.9


@pytest.mark.slow
@pytest.mark.horovod
def test_dead_horovod_rank_fails_fast(spark, cfg):
    write_planted_lake(spark, cfg, n_sessions=3000)
    proc = subprocess.Popen(_train_cmd(cfg, "train.epochs=50", "train.launcher=horovod", "train.num_proc=2"),
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def rank(n: int):
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if child.environ().get("HOROVOD_RANK") == str(n) and "run_task" in " ".join(child.cmdline()):
                    return child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return None

    try:
        _wait_for(lambda: rank(1) is not None and Path(cfg.train.checkpoint_dir).exists(), 600, "training on rank 1")
        rank(1).kill()
        killed_at = time.time()
        proc.wait(timeout=180)
        took = time.time() - killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stderr = proc.stderr.read()
    assert proc.returncode not in (0, None)
    assert took < 180
    assert "exited with non-zero status" in stderr
