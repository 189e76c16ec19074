"""`nextplay train` end to end on a real lake: Petastorm -> the RNN -> MLflow, under each launcher."""
from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from nextplay.cli import main
from nextplay.evaluate.evaluate import evaluate

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
def test_local_training_learns_logs_and_registers(spark, cfg):
    write_planted_lake(spark, cfg)
    assert main(["train", *_args(cfg)]) == 0
    run = _last_run(cfg)
    assert run.data.params["world_size"] == "1"
    assert run.data.metrics["valid_recall_at_10"] > 0.9  # the successor of every item is fixed
    # The hybrid's memory holds every train-split session (8 in 10 of 600), and still ranks right.
    assert run.data.metrics["knn_memory_sessions"] == 480
    assert run.data.metrics["hybrid_valid_recall_at_10"] > 0.9
    history = MlflowClient(cfg.tracking.uri).get_metric_history(run.info.run_id, "loss")
    assert len(history) == 4 and history[-1].value < history[0].value
    artifacts = {a.path for a in MlflowClient(cfg.tracking.uri).list_artifacts(run.info.run_id)}
    assert "loss_curve.png" in artifacts
    versions = MlflowClient(cfg.tracking.uri).search_model_versions(f"name='{cfg.tracking.model_name}'")
    assert [v.run_id for v in versions] == [run.info.run_id]

    result = evaluate(cfg, run_id=run.info.run_id)
    assert result["recall_at_10"] > 0.9
    assert result["baselines"]["most_popular"]["recall_at_10"] < result["recall_at_10"]
    metrics = MlflowClient(cfg.tracking.uri).get_run(run.info.run_id).data.metrics
    assert {"recall_at_20", "mrr_at_20", "session_knn_recall_at_20", "most_popular_mrr_at_20"} <= set(metrics)


@pytest.mark.slow
@pytest.mark.horovod
@pytest.mark.parametrize("batching", ["buckets", "lanes"])
def test_horovod_two_processes_learn(spark, cfg, capfd, batching):
    write_planted_lake(spark, cfg, time_ordered=batching == "lanes")
    assert main(["train", *_args(cfg, "train.launcher=horovod", "train.num_proc=2", f"train.batching={batching}")]) == 0
    run = _last_run(cfg)
    assert run.data.params["world_size"] == "2"
    assert run.data.metrics["valid_recall_at_10"] > 0.9
    printed = "".join(capfd.readouterr())  # the workers' own log lines reach the command's output
    assert "[rank 0]: epoch 3: loss=" in printed, printed[-2000:]


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(spark, cfg, tmp_path):
    write_planted_lake(spark, cfg)
    assert main(["train", *_args(cfg, "train.epochs=2")]) == 0
    first = _last_run(cfg)
    assert main(["train", "--resume", *_args(cfg, "train.epochs=4")]) == 0
    resumed = _last_run(cfg)
    steps = [m.step for m in MlflowClient(cfg.tracking.uri).get_metric_history(resumed.info.run_id, "loss")]
    assert steps == [2, 3], "a resumed run trains only the epochs after the checkpoint"
    assert resumed.data.metrics["valid_recall_at_10"] >= first.data.metrics["valid_recall_at_10"] - 0.05


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", pytest.param("horovod", marks=pytest.mark.horovod)])
def test_resume_under_other_model_settings_is_refused_in_one_line(spark, cfg, capsys, launcher):
    """Checked on the driver before any worker starts, so a Horovod resume fails as plainly."""
    write_planted_lake(spark, cfg)
    assert main(["train", *_args(cfg, "train.epochs=1", "model.readout=last")]) == 0
    capsys.readouterr()
    procs = [] if launcher == "local" else ["train.launcher=horovod", "train.num_proc=2"]
    assert main(["train", "--resume", *_args(cfg, "model.readout=attention", *procs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "model.readout='last' there, 'attention' now" in err[-1] and "Traceback" not in "".join(err)


def test_local_launcher_refuses_several_processes(cfg, capsys):
    assert main(["train", "--set", "train.num_proc=2", "--set", f"lake.root={cfg.lake.root}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.num_proc" in err[0] and "horovod" in err[0]
