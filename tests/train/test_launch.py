"""`nextplay train` end to end on a real lake: Petastorm -> the model -> MLflow, under each launcher and encoder."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from nextplay.cli import main
from nextplay.evaluate.evaluate import evaluate
from nextplay.tables import Lake

from .planted import write_planted_lake

FAST = ["train.epochs=4", "train.batch_size=32", "model.hidden_size=32", "train.lr=0.01",
        "evaluate.knn_sample=100", "evaluate.knn_neighbors=50"]


def _args(cfg, *overrides: str) -> list[str]:
    args = []
    for kv in [f"lake.root={cfg.lake.root}", f"tracking.uri={cfg.tracking.uri}",
               f"tracking.artifact_location={cfg.tracking.artifact_location}",
               f"train.checkpoint_dir={cfg.train.checkpoint_dir}", "train.progress=false",
               "spark.master=local[2]", *FAST, *overrides]:
        args += ["--set", kv]
    return args


def _last_run(cfg):
    mlflow.set_tracking_uri(cfg.tracking.uri)
    return mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list",
                              order_by=["attributes.start_time DESC"])[0]


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["gru", "sasrec"])
def test_local_training_learns_logs_and_registers(spark, cfg, encoder):
    write_planted_lake(spark, cfg)
    assert main(["train", *_args(cfg, f"model.encoder={encoder}")]) == 0
    run = _last_run(cfg)
    assert run.data.params["world_size"] == "1" and run.data.params["model.encoder"] == encoder
    assert run.data.metrics["valid/model/recall_at_10"] > 0.9  # the successor of every item is fixed
    # The hybrid's memory holds every train-split session (8 in 10 of 600), and still ranks right.
    assert run.data.metrics["run/knn_memory_sessions"] == 480
    assert run.data.metrics["valid/hybrid/recall_at_10"] > 0.9
    history = MlflowClient(cfg.tracking.uri).get_metric_history(run.info.run_id, "epoch/loss")
    assert len(history) == 4 and history[-1].value < history[0].value
    artifacts = {a.path for a in MlflowClient(cfg.tracking.uri).list_artifacts(run.info.run_id)}
    assert "loss_curve.png" in artifacts
    versions = MlflowClient(cfg.tracking.uri).search_model_versions(f"name='{cfg.tracking.model_name}'")
    assert [v.run_id for v in versions] == [run.info.run_id]

    result = evaluate(cfg, run_id=run.info.run_id)
    assert result["recall_at_10"] > 0.9
    pinned = Lake(cfg.lake).pin_generation(spark)
    assert run.data.tags["nextplay.sessions_version"] == str(pinned.sessions_version)
    assert run.data.tags["nextplay.item_index_version"] == str(pinned.item_index_version)
    inputs = MlflowClient(cfg.tracking.uri).get_run(run.info.run_id).inputs.dataset_inputs
    assert {d.dataset.name for d in inputs} == {"sessions", "item_index"}
    assert result["baselines"]["most_popular"]["recall_at_10"] < result["recall_at_10"]
    metrics = MlflowClient(cfg.tracking.uri).get_run(run.info.run_id).data.metrics
    assert {"test/model/recall_at_20", "test/model/mrr_at_20", "test/session_knn/recall_at_20",
            "test/most_popular/mrr_at_20", "test/lines"} <= set(metrics)
    # A newer sessions table (other sessions, other test split) does not change this run's evaluation.
    write_planted_lake(spark, cfg, n_sessions=300)
    again = evaluate(cfg, run_id=run.info.run_id)
    assert again.pop("driver_memory")["python_peak_rss_mib"] > 0  # the process's peak, not a figure of the run
    assert again == {k: v for k, v in result.items() if k != "driver_memory"}


@pytest.mark.slow
@pytest.mark.horovod
@pytest.mark.parametrize("batching,encoder", [("buckets", "gru"), ("lanes", "gru"), ("buckets", "sasrec")])
def test_horovod_two_processes_learn(spark, cfg, capfd, batching, encoder):
    write_planted_lake(spark, cfg, time_ordered=batching == "lanes")
    assert main(["train", *_args(cfg, "train.launcher=horovod", "train.num_proc=2", f"train.batching={batching}",
                                 f"model.encoder={encoder}")]) == 0
    run = _last_run(cfg)
    assert run.data.params["world_size"] == "2"
    assert run.data.metrics["valid/model/recall_at_10"] > 0.9
    printed = "".join(capfd.readouterr())  # the workers' own log lines reach the command's output
    assert "[rank 0]: epoch 3: loss=" in printed, printed[-2000:]


def _interrupted_run(cfg, *overrides: str):
    """A run whose training finished some epochs and then failed: the registry refuses the model
    name, so the run ends FAILED after its checkpoints were written, as a run killed there would."""
    with pytest.raises(MlflowException, match="Invalid model name"):
        main(["train", *_args(cfg, "tracking.model_name=bad:name", *overrides)])
    run = _last_run(cfg)
    assert run.info.status == "FAILED"
    return run


@pytest.mark.slow
def test_resume_continues_the_interrupted_run_not_an_older_one(spark, cfg):
    """An older finished run that reached epoch 4 in the same checkpoint folder must not hide the
    interrupted run's epochs 0 and 1: --resume continues that run, in that run, and registers its
    own weights."""
    write_planted_lake(spark, cfg)
    assert main(["train", *_args(cfg, "train.epochs=5")]) == 0
    older = _last_run(cfg)
    interrupted = _interrupted_run(cfg, "train.epochs=2")
    assert main(["train", "--resume", *_args(cfg, "train.epochs=3")]) == 0
    resumed = _last_run(cfg)
    assert resumed.info.run_id == interrupted.info.run_id and resumed.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(cfg.tracking.uri).get_metric_history(resumed.info.run_id, "epoch/loss")]
    assert steps == [0, 1, 2], "the resumed run trains only the epoch after its own last checkpoint"
    assert resumed.data.tags["nextplay.resumed.train.epochs"] == "3"
    valid = {m.step: m.value for m in MlflowClient(cfg.tracking.uri).get_metric_history(resumed.info.run_id,
                                                                                        "valid/model/recall_at_10")}
    assert valid[2] >= valid[1] - 0.05, "epoch 2 continues from epoch 1's weights"
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")
    assert {r.info.run_id for r in runs} == {older.info.run_id, interrupted.info.run_id}
    versions = MlflowClient(cfg.tracking.uri).search_model_versions(f"name='{cfg.tracking.model_name}'")
    assert max(versions, key=lambda v: int(v.version)).run_id == interrupted.info.run_id
    assert list(Path(cfg.train.checkpoint_dir).iterdir()) == [], "a logged run's checkpoints are removed"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", pytest.param("horovod", marks=pytest.mark.horovod)])
def test_resume_under_other_model_settings_is_refused_in_one_line(spark, cfg, capsys, launcher):
    """Checked on the driver before any worker starts, so a Horovod resume fails as plainly."""
    write_planted_lake(spark, cfg)
    _interrupted_run(cfg, "train.epochs=1", "model.readout=last")
    capsys.readouterr()
    procs = [] if launcher == "local" else ["train.launcher=horovod", "train.num_proc=2"]
    assert main(["train", "--resume", *_args(cfg, "model.readout=attention", *procs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "model.readout='last' there, 'attention' now" in err[-1] and "Traceback" not in "".join(err)


def test_local_launcher_refuses_several_processes(cfg, capsys):
    assert main(["train", "--set", "train.num_proc=2", "--set", f"lake.root={cfg.lake.root}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.num_proc" in err[0] and "horovod" in err[0]
