"""Training figures reach the MLflow run while the run trains (train/report.py), from rank 0 through
files on shared storage to the driver's relay thread."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from nextplay.cli import main
from nextplay.storage import Storage
from nextplay.train.report import Relay, StepReport, describe

from .planted import write_planted_lake
from .test_launch import _args


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_step_records_average_their_window_and_files_follow_the_flush_interval(tmp_path: Path) -> None:
    clock, storage, folder = Clock(), Storage(), str(tmp_path / "report")
    report = StepReport(storage, folder, every_steps=2, flush_seconds=10.0, clock=clock)
    for step, loss in enumerate([4.0, 2.0, 6.0, 2.0], start=1):
        clock.now += 1.0
        report.step(0, step, loss_sum=loss * 8, events=8)
    assert storage.listdir(folder) == []  # two records, but 10 s have not passed
    clock.now = 12.0
    report.step(0, 5, 1.0, 1)
    report.step(0, 6, 1.0, 1)
    assert storage.listdir(folder) == ["00000000.json"]
    report.epoch(0, {"loss": 2.5, "valid_recall_at_20": 0.4})  # an epoch's figures go out at once
    assert storage.listdir(folder) == ["00000000.json", "00000001.json"]

    got: list[dict] = []
    Relay(storage, folder, got.extend).read_new()
    steps = [r for r in got if r.get("kind") != "epoch"]
    assert [r["step"] for r in steps] == [2, 4, 6]
    assert steps[0]["metrics"]["train/loss"] == pytest.approx(3.0)  # (4*8 + 2*8) / 16 targets
    assert steps[0]["metrics"]["train/events_per_second"] == pytest.approx(16 / 2.0)
    assert steps[1]["metrics"]["train/loss"] == pytest.approx(4.0)
    assert got[-1] == {"step": 0, "epoch": 0, "metrics": {"loss": 2.5, "valid_recall_at_20": 0.4}, "kind": "epoch"}
    assert describe(got[-1]) == "epoch 0 done: loss=2.5, valid_recall_at_20=0.4"


def test_no_step_records_when_turned_off(tmp_path: Path) -> None:
    storage, folder = Storage(), str(tmp_path / "report")
    report = StepReport(storage, folder, every_steps=0, flush_seconds=0.0)
    for step in range(1, 10):
        report.step(0, step, 1.0, 1)
    report.flush()
    assert storage.listdir(folder) == []


def test_the_relay_hands_on_each_file_once_in_order_and_drains_on_exit(tmp_path: Path) -> None:
    storage, folder = Storage(), str(tmp_path / "report")
    storage.write_bytes(f"{folder}/00000000.json", b'[{"step": 99, "epoch": 9, "metrics": {}}]')  # an earlier attempt's
    got: list[dict] = []
    report = StepReport(storage, folder, every_steps=1, flush_seconds=0.0)
    with Relay(storage, folder, got.extend, poll_seconds=0.05):
        report.step(0, 1, 1.0, 1)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r["step"] for r in got] == [1], "the thread relays while the run goes on"
        report.step(0, 2, 1.0, 1)
        report.step(0, 3, 1.0, 1)
    assert [r["step"] for r in got] == [1, 2, 3]  # the last files arrive on exit, none twice, none stale


def test_a_failed_read_is_retried_at_the_next_poll(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage, folder = Storage(), str(tmp_path / "report")
    got: list[dict] = []
    with Relay(storage, folder, got.extend, poll_seconds=0.05):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "00000000.json").write_text('[{"step": 1, "epoch": 0, "metri')  # unreadable for now
        time.sleep(0.3)
        (Path(folder) / "00000000.json").write_text('[{"step": 1, "epoch": 0, "metrics": {"train/loss": 1.0}}]')
    assert [r["step"] for r in got] == [1]
    assert "could not read" in caplog.text


@pytest.mark.slow
def test_figures_are_in_the_run_before_training_ends(spark, cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test watches the tracking store from another thread while `nextplay train` runs: step figures
    and the first epoch's validation must be there while the run has not yet logged its end figures."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # a sample a second, not every 10 s
    write_planted_lake(spark, cfg)
    args = _args(cfg, "train.epochs=6", "train.report_every_steps=2")
    done: list[int] = []
    runner = threading.Thread(target=lambda: done.append(main(["train", *args])))
    runner.start()
    client = MlflowClient(cfg.tracking.uri)
    seen_live: dict[str, float] | None = None
    try:
        deadline = time.monotonic() + 600
        while runner.is_alive() and time.monotonic() < deadline and seen_live is None:
            time.sleep(0.2)
            experiment = client.get_experiment_by_name(cfg.tracking.experiment)
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            for run in runs:
                metrics = run.data.metrics
                if "train/loss" in metrics and "valid/model/recall_at_10" in metrics and "run/seconds" not in metrics:
                    seen_live = metrics
    finally:
        runner.join()
    assert done == [0]
    assert seen_live is not None, "no figure reached the run before training ended"

    mlflow.set_tracking_uri(cfg.tracking.uri)
    run = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")[0]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == sorted(steps) and len(steps) >= 6 and len(set(steps)) == len(steps)
    assert len(client.get_metric_history(run.info.run_id, "epoch/loss")) == 6  # each epoch once
    assert len(client.get_metric_history(run.info.run_id, "valid/model/recall_at_10")) == 6
    sections = {k.split("/", 1)[0] for k in run.data.metrics}
    assert sections == {"train", "epoch", "valid", "run", "system"}, "every figure in a section the UI groups by"
    assert any(k.startswith("system/") for k in run.data.metrics), "MLflow's system metrics are on"
