"""The whole pipeline on a real cluster: the lake on HDFS, training on the executors, a small driver.

The driver runs with 1g of memory and `spark.driver.maxResultSize=32m`, so a stage that collects
data in proportion to the lake fails at scale; the workers share no disk with the driver or with
each other, so a stage that passes a local path between processes fails at any scale.
`NEXTPLAY_CLUSTER_EVENTS` sets the number of synthetic plays (default: small enough for CI);
`NEXTPLAY_CLUSTER_EXECUTOR_MEMORY` / `NEXTPLAY_CLUSTER_WORKER_MEMORY` the executors' heap and what each
worker offers (1g / 2g by default; the 10M run is measured with 2g executors).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EVENTS = int(os.environ.get("NEXTPLAY_CLUSTER_EVENTS", "100000"))
# The first test's time includes the whole pipeline (the module fixture): far beyond pytest.ini's
# per-test default on 2 busy cores, and growing with the plays (10M plays: over an hour for the
# pipeline alone on 2 cores before evaluate ranked on the executors).
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(max(2700, EVENTS // 400))]
TOP_K = 5
TIMINGS: dict[str, float | None] = {}


def _conf(cluster, launcher: str) -> dict[str, Any]:
    """conf/local.yml, pointed at the cluster and scaled to the test."""
    conf = yaml.safe_load((ROOT / "conf" / "local.yml").read_text())
    scale = max(1, EVENTS // 1_000_000)
    conf["lake"] = {"root": cluster.lake, "webhdfs_port": cluster.webhdfs_port}
    conf["spark"] = {
        "master": cluster.master, "driver_memory": "1g", "jars_dir": str(ROOT / ".cache" / "jars"),
        "conf": {"spark.driver.maxResultSize": "32m", "spark.executor.memory": os.environ.get("NEXTPLAY_CLUSTER_EXECUTOR_MEMORY", "1g"), "spark.executor.cores": "1",
                 "spark.task.cpus": "1", "spark.sql.shuffle.partitions": "4", "spark.ui.showConsoleProgress": "false",
                 "spark.pyspark.python": cluster.env()["PYSPARK_PYTHON"],
                 "spark.executorEnv.PYTHONPATH": cluster.env()["PYTHONPATH"]},
    }
    conf["generate"].update({"output": f"{cluster.hdfs}/raw", "events": EVENTS, "users": 1000 * scale,
                             "tracks": 5000 * scale, "days": 10, "files": 4})
    conf["model"].update({"hidden_size": 32, "n_negatives": 256})
    conf["train"] = {"launcher": launcher, "num_proc": 2, "epochs": 1, "progress": False, "threads": 1,
                     "checkpoint_dir": f"{cluster.hdfs}/checkpoints"}
    # Training's validation and kNN memory stay on the driver (small samples, at every scale); evaluate
    # ranks on the executors at its default samples (max_test_sessions, max_train_sessions), which is
    # what the nightly gate runs, and its seconds and the driver's peak memory are recorded.
    conf["model"]["hybrid"] = {"knn_sessions": 20_000}
    conf["evaluate"] = {"max_valid_sessions": 2_000}
    conf["tracking"] = {"uri": f"sqlite:///{cluster.work / 'mlruns.db'}", "experiment": "cluster",
                        "artifact_location": str(cluster.work / "mlartifacts"), "model_name": "nextplay-cluster"}
    conf["score"] = {"top_k": TOP_K, "lookback_days": 30, "score_date": "2026-01-01"}
    # This test is about where the stages run, not about a one-epoch model's quality: the gate
    # promotes whatever trained, so scoring always has a champion (tests/evaluate covers the rule).
    conf["promote"] = {"min_gain_over_knn": -1.0}
    return conf


def _nextplay(cluster, stage: str, launcher: str, *args: str, timeout: int = max(1800, EVENTS // 800),
              conf: dict[str, Any] | None = None) -> subprocess.CompletedProcess:
    path = cluster.work / f"{stage}-{launcher}.yml"
    path.write_text(yaml.safe_dump(conf or _conf(cluster, launcher)))
    started = time.time()
    log = cluster.logs / f"driver-{stage}-{launcher}.log"  # streamed, so a slow run can be watched
    with open(log, "w") as err:
        out = subprocess.run([str(ROOT / ".venv" / "bin" / "nextplay"), stage, "--conf", str(path), *args],
                             cwd=cluster.work, env=cluster.env(), stdout=subprocess.PIPE, stderr=err, text=True,
                             timeout=timeout)
    TIMINGS[f"{stage}:{launcher}"] = round(time.time() - started, 1)
    assert out.returncode == 0, f"nextplay {stage} failed:\n{log.read_text()[-6000:]}"
    return out


def _runs(cluster) -> list[dict[str, Any]]:
    """The training runs, each with the registry versions that came from it."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{cluster.work / 'mlruns.db'}"
    # The registry too: unnamed, it is this process's current one, which an earlier test may have set.
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    exp = client.get_experiment_by_name("cluster")
    runs = client.search_runs([exp.experiment_id], "tags.`nextplay.stage` = 'train'")
    versions = client.search_model_versions("name = 'nextplay-cluster'")
    return [{"id": r.info.run_id, "params": r.data.params, "metrics": r.data.metrics,
             "versions": [str(v.version) for v in versions if v.run_id == r.info.run_id]} for r in runs]


@pytest.fixture(scope="module")
def pipeline(cluster, request):
    """generate -> ingest -> sessionize -> train (TorchDistributor on the executors) -> evaluate -> score."""
    out = _nextplay(cluster, "pipeline", "torch_distributor")
    m = re.search(r"nextplay pipeline finished in [\d.]+s \(([^)]*)\)", out.stdout)
    assert m, out.stdout[-2000:]
    for part in m.group(1).split(", "):
        name, seconds = part.rsplit(" ", 1)
        TIMINGS[f"stage:{name}"] = float(seconds.rstrip("s"))
    memory = re.search(r"evaluate's driver peak memory: Python ([\d.]+) MiB, JVM ([\d.]+|None) MiB", out.stdout)
    assert memory, out.stdout[-2000:]
    TIMINGS["evaluate:driver_python_peak_mib"] = float(memory.group(1))
    TIMINGS["evaluate:driver_jvm_peak_mib"] = None if memory.group(2) == "None" else float(memory.group(2))
    # In the test output whatever pytest captures: evaluate's time at the default samples, and its memory.
    request.config.pluginmanager.get_plugin("terminalreporter").write_line(
        f"cluster evaluate ({EVENTS} plays, default samples): {TIMINGS['stage:evaluate']}s, driver peak "
        f"Python {TIMINGS['evaluate:driver_python_peak_mib']} MiB / JVM {TIMINGS['evaluate:driver_jvm_peak_mib']} MiB")
    yield out.stdout
    # The per-stage seconds, kept beside the cluster's logs for the record (not asserted on).
    (cluster.logs / "timings.json").write_text(json.dumps({"events": EVENTS, **TIMINGS}, indent=2))
    print("cluster timings:", json.dumps({"events": EVENTS, **TIMINGS}))


def _sql(cluster, query: str) -> list[dict[str, Any]]:
    out = _nextplay(cluster, "sql", "torch_distributor", "--format", "json", query)
    return json.loads(out.stdout[out.stdout.index("["):])


def test_pipeline_with_torch_distributor(cluster, pipeline: str) -> None:
    counts = _sql(cluster, "SELECT * FROM (SELECT count(*) AS silver FROM plays_silver) "
                           "CROSS JOIN (SELECT count(*) AS quarantine FROM plays_quarantine) "
                           "CROSS JOIN (SELECT count(*) AS sessions FROM sessions) "
                           "CROSS JOIN (SELECT count(*) AS items FROM item_index) "
                           "CROSS JOIN (SELECT count(*) AS users, min(k) AS lo, max(k) AS hi FROM "
                           "(SELECT user_id, count(*) AS k FROM predictions GROUP BY user_id))")[0]
    # Every generated event lands in silver or quarantine (duplicates are dropped, never invented).
    assert 0.95 * EVENTS <= counts["silver"] + counts["quarantine"] <= EVENTS
    assert counts["sessions"] > 0 and counts["items"] > 0
    assert counts["users"] > 0 and counts["lo"] == counts["hi"] == TOP_K  # K rows for every scored user
    runs = [r for r in _runs(cluster) if r["params"].get("train.launcher") == "torch_distributor"]
    assert len(runs) == 1
    assert runs[0]["params"]["world_size"] == "2" and runs[0]["metrics"]["run/world_size"] == 2
    assert runs[0]["metrics"]["run/seconds"] > 0 and runs[0]["metrics"]["epoch/loss"] > 0  # logged by the driver
    assert runs[0]["metrics"]["valid/model/recall_at_20"] > 0
    assert runs[0]["versions"] == ["1"]


def test_train_with_horovod_on_spark(cluster, pipeline: str) -> None:
    out = _nextplay(cluster, "train", "spark")
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert result["world_size"] == 2 and result["model_version"] == "2"
    runs = [r for r in _runs(cluster) if r["params"].get("train.launcher") == "spark"]
    assert len(runs) == 1 and runs[0]["id"] == result["run_id"]
    assert runs[0]["metrics"]["run/world_size"] == 2 and runs[0]["metrics"]["epoch/loss"] > 0
    assert runs[0]["versions"] == ["2"]
    # Rank 0 runs on an executor: its epoch figures reach the driver's own log through the report relay.
    assert "training: epoch 0 done: epoch/loss=" in (cluster.logs / "driver-train-spark.log").read_text()


def test_a_cluster_keeps_its_own_shuffle_partitions(cluster, pipeline) -> None:
    """spark.shuffle_partitions is the local default; on a cluster only spark.conf sets it."""
    conf = _conf(cluster, "torch_distributor")
    del conf["spark"]["conf"]["spark.sql.shuffle.partitions"]
    path = cluster.work / "shuffle.yml"
    path.write_text(yaml.safe_dump(conf))
    probe = ("import sys; from nextplay.config import load_config; from nextplay.spark import get_spark; "
             "print('PARTITIONS', get_spark(load_config(sys.argv[1])).conf.get('spark.sql.shuffle.partitions'))")
    out = subprocess.run([cluster.env()["PYSPARK_PYTHON"], "-c", probe, str(path)], cwd=cluster.work,
                         env=cluster.env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("PARTITIONS ", 1)[1].split()[0] == "200"  # Spark's own default, not the local 8
