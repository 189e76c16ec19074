"""The Databricks bundle, checked without a workspace: its structure, and every task's parameters
run through the real CLI parser and config loader."""
from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from nextplay.cli import STAGES, build_parser, config_from_args
from nextplay.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
STAGE_ORDER = ["ingest", "sessionize", "train", "evaluate", "score"]
VARIABLES = {"catalog", "schema", "experiment", "model_name"}


def load_bundle() -> dict[str, Any]:
    """databricks.yml with every `include` merged in, as the CLI does (resources are maps by name)."""
    bundle = yaml.safe_load((ROOT / "databricks.yml").read_text())
    for pattern in bundle.get("include", []):
        for path in sorted(ROOT.glob(pattern)):
            for kind, items in yaml.safe_load(path.read_text()).get("resources", {}).items():
                bundle.setdefault("resources", {}).setdefault(kind, {}).update(items)
    return bundle


BUNDLE = load_bundle()
JOBS = BUNDLE["resources"]["jobs"]
TARGETS = sorted(BUNDLE["targets"])


def variables(target: str) -> dict[str, str]:
    values = {name: spec["default"] for name, spec in BUNDLE["variables"].items()}
    values.update(BUNDLE["targets"][target].get("variables", {}))
    return values


def substitute(value: str, target: str) -> str:
    values = variables(target)

    def one(m: re.Match) -> str:
        assert m.group(1) in values, f"${{var.{m.group(1)}}} is not a declared variable"
        return str(values[m.group(1)])

    out = re.sub(r"\$\{var\.([A-Za-z_][A-Za-z0-9_]*)\}", one, value)
    assert "${" not in out, f"unresolved reference in {value!r}"
    return out


def job() -> dict[str, Any]:
    assert len(JOBS) == 1, "one job runs the whole pipeline"
    return next(iter(JOBS.values()))


def task_config(task: dict[str, Any], target: str) -> tuple[Config, list[str]]:
    argv = [substitute(p, target) for p in task["python_wheel_task"]["parameters"]]
    return config_from_args(build_parser().parse_args(argv)), argv


def test_variables_and_targets() -> None:
    assert VARIABLES <= set(BUNDLE["variables"])
    assert all("default" in spec for spec in BUNDLE["variables"].values())
    assert TARGETS == ["dev", "prod"]
    dev, prod = BUNDLE["targets"]["dev"], BUNDLE["targets"]["prod"]
    assert dev.get("default") is True and dev["mode"] == "development"
    assert prod["mode"] == "production" and not prod.get("default", False)


def test_wheel_artifact_is_built_from_setup_py() -> None:
    (artifact,) = BUNDLE["artifacts"].values()
    assert artifact["type"] == "whl" and (ROOT / artifact.get("path", ".") / "setup.py").exists()
    assert "wheel" in artifact["build"]


def test_tasks_run_the_stages_in_order() -> None:
    tasks = job()["tasks"]
    assert [t["task_key"] for t in tasks] == STAGE_ORDER
    assert "depends_on" not in tasks[0]
    for prev, task in zip(tasks, tasks[1:]):
        assert task["depends_on"] == [{"task_key": prev["task_key"]}]


def test_every_task_runs_the_nextplay_entry_point() -> None:
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="nextplay")
    assert callable(script.load()) and script.dist.name == "nextplay"
    for task in job()["tasks"]:
        wheel = task["python_wheel_task"]
        assert wheel["package_name"] == script.dist.name and wheel["entry_point"] == script.name
        assert wheel["parameters"][0] == task["task_key"] and task["task_key"] in STAGES
        assert any("dist/" in lib.get("whl", "") for lib in task["libraries"])


def test_train_on_gpu_others_on_cpu() -> None:
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job()["job_clusters"]}
    for task in job()["tasks"]:
        version = clusters[task["job_cluster_key"]]["spark_version"]
        assert ("gpu" in version) == (task["task_key"] == "train"), task["task_key"]


@pytest.mark.parametrize("target", TARGETS)
def test_task_parameters_parse_into_the_databricks_config(target: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each task's config equals conf/databricks.yml plus that task's own overrides.

    The wheel task does not run in a checkout, so conf/local.yml must not leak in: parse from an
    empty folder, as the cluster would.
    """
    conf = ROOT / "conf" / "databricks.yml"
    monkeypatch.chdir(tmp_path)
    v = variables(target)
    for task in job()["tasks"]:
        cfg, argv = task_config(task, target)
        args = build_parser().parse_args(argv)
        assert cfg == load_config(conf, args.overrides), f"task {task['task_key']} drifts from {conf.name}"
        assert (cfg.lake.catalog, cfg.lake.schema) == (v["catalog"], v["schema"])
        assert cfg.spark.master is None and cfg.tracking.uri == "databricks"
        assert cfg.tracking.experiment == v["experiment"]
        assert cfg.tracking.model_name == f"{v['catalog']}.{v['schema']}.{v['model_name']}"


def test_training_uses_horovod_on_spark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    train = next(t for t in job()["tasks"] if t["task_key"] == "train")
    cfg, _ = task_config(train, "dev")
    assert cfg.train.launcher == "spark" and cfg.train.device == "cuda"
    gpu = next(c["new_cluster"] for c in job()["job_clusters"] if c["job_cluster_key"] == train["job_cluster_key"])
    assert cfg.train.num_proc == gpu["num_workers"]
