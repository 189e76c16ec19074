"""The Databricks bundle, checked without a workspace, as the validation step before any deploy.

Three things are checked: the bundle, merged as the Databricks CLI merges it, against the CLI's own
bundle JSON schema (unknown keys, wrong types, missing required fields); every task's parameters,
for every target, through the real CLI parser and config loader after the references are resolved
as the CLI and the Jobs service resolve them; and the conf the tasks name (`--conf databricks`),
which must be shipped inside the wheel and found by the CLI's own resolution.
"""
from __future__ import annotations

import copy
import importlib.metadata
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from nextplay.cli import STAGES, build_parser, config_from_args, main
from nextplay.config import ConfigError, load_config, packaged_confs, resolve_conf

ROOT = Path(__file__).resolve().parents[1]
TRAINING_STAGES = ["ingest", "sessionize", "train", "evaluate", "maintain"]
# Stand-ins for what only a deploy knows.
COMMIT = "3f1c9efcc8e2c3132c36d1ab781d3e419d4d4c87"
USER, SHORT_NAME = "someone@example.com", "someone"
RUN_DATE = "2026-03-14"
SCHEMA_FILE = "databricks-bundle.schema.json"


# -- the bundle as the Databricks CLI loads it --------------------------------------------------


def load_bundle() -> dict[str, Any]:
    """databricks.yml with every `include` merged in, as the CLI does: resources are maps by name,
    and a name defined twice is an error."""
    bundle = yaml.safe_load((ROOT / "databricks.yml").read_text())
    for pattern in bundle.get("include", []):
        paths = sorted(ROOT.glob(pattern))
        assert paths, f"include {pattern!r} matches no file"
        for path in paths:
            doc = yaml.safe_load(path.read_text())
            assert set(doc) == {"resources"}, f"{path.name}: only resources are expected in an included file"
            for kind, items in doc["resources"].items():
                known = bundle.setdefault("resources", {}).setdefault(kind, {})
                assert not set(items) & set(known), f"{path.name}: {kind} {set(items) & set(known)} defined twice"
                known.update(items)
    return bundle


BUNDLE = load_bundle()
JOBS = BUNDLE["resources"]["jobs"]
TARGETS = sorted(BUNDLE["targets"])
TASKS = [(job, task["task_key"]) for job in sorted(JOBS) for task in JOBS[job]["tasks"]]


def variables(target: str) -> dict[str, Any]:
    values = {name: spec.get("default") for name, spec in BUNDLE["variables"].items()}
    values.update(BUNDLE["targets"][target].get("variables", {}))
    return values


class Resolver:
    """`${...}` references as the CLI resolves them for one target, development mode's name prefixes
    included (the CLI's presets add them to schemas, registered models and experiments)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.vars = variables(target)
        self.dev = BUNDLE["targets"][target].get("mode") == "development"

    def lookup(self, path: str) -> str:
        known = {"bundle.git.commit": COMMIT, "bundle.target": self.target, "bundle.name": BUNDLE["bundle"]["name"],
                 "workspace.current_user.userName": USER, "workspace.current_user.short_name": SHORT_NAME}
        if path in known:
            return known[path]
        head, _, rest = path.partition(".")
        if head == "var":
            assert rest in self.vars, f"${{var.{rest}}} is not a declared variable"
            return self.resolve(str(self.vars[rest]))
        if head == "resources":
            kind, name, field = rest.split(".")
            resource = BUNDLE["resources"].get(kind, {}).get(name)
            assert resource is not None and field in resource, f"${{{path}}}: no such resource field"
            value = self.resolve(str(resource[field]))
            return self.deployed_name(kind, value) if field == "name" else value
        raise AssertionError(f"${{{path}}} cannot be resolved")

    def deployed_name(self, kind: str, name: str) -> str:
        if not self.dev:
            return name
        if kind in ("schemas", "registered_models"):
            return f"dev_{SHORT_NAME}_{name}"
        if kind == "experiments":
            folder = PurePosixPath(name)
            return str(folder.parent / f"[dev {SHORT_NAME}] {folder.name}")
        return name

    def resolve(self, value: str) -> str:
        out = re.sub(r"\$\{([A-Za-z0-9_.\[\]-]+)\}", lambda m: self.lookup(m.group(1)), value)
        assert "${" not in out, f"unresolved reference in {value!r}"
        return out


def task(job: str, key: str) -> dict[str, Any]:
    return next(t for t in JOBS[job]["tasks"] if t["task_key"] == key)


def task_argv(job: str, key: str, target: str) -> list[str]:
    """The task's parameters as its process receives them: bundle references resolved at deploy,
    then the Jobs service's dynamic value references ({{...}}) at run time."""
    resolver = Resolver(target)
    params = {p["name"]: resolver.resolve(str(p["default"])) for p in JOBS[job].get("parameters", [])}

    def dynamic(m: re.Match) -> str:
        ref = m.group(1).strip()
        if ref == "task.name":
            return key
        if ref == "job.start_time.iso_date":
            return RUN_DATE
        if ref.startswith("job.parameters."):
            assert ref[len("job.parameters."):] in params, f"{{{{{ref}}}}}: no such job parameter"
            return params[ref[len("job.parameters."):]]
        raise AssertionError(f"{{{{{ref}}}}} is not a dynamic value reference this test knows")

    return [re.sub(r"\{\{([^}]*)\}\}", dynamic, resolver.resolve(str(p)))
            for p in task(job, key)["python_wheel_task"]["parameters"]]


def cluster(job: str, key: str) -> dict[str, Any]:
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in JOBS[job]["job_clusters"]}
    return clusters[task(job, key)["job_cluster_key"]]


# -- (a) the Databricks CLI's bundle schema -----------------------------------------------------


def _schema_path() -> Path | None:
    """The CLI's schema (`databricks bundle schema`), kept beside the checkout and never inside it.

    NEXTPLAY_BUNDLE_SCHEMA names it directly; otherwise it is looked for under shared/schemas/ next
    to the repository, and next to the main checkout when this one is a git worktree.
    """
    if os.environ.get("NEXTPLAY_BUNDLE_SCHEMA"):
        return Path(os.environ["NEXTPLAY_BUNDLE_SCHEMA"])
    parents = [ROOT.parent]
    dot_git = ROOT / ".git"
    if dot_git.is_file() and dot_git.read_text().startswith("gitdir:"):
        gitdir = Path(dot_git.read_text().split(":", 1)[1].strip())
        common = gitdir / (gitdir / "commondir").read_text().strip() if (gitdir / "commondir").exists() else gitdir
        parents.append(common.resolve().parent.parent)
    return next((p / "shared" / "schemas" / SCHEMA_FILE for p in parents
                 if (p / "shared" / "schemas" / SCHEMA_FILE).exists()), None)


# The schema's `${...}` patterns use Unicode property classes (Go's regexp syntax); Python's `re`
# spells them with negated classes. A pattern with any other \p class fails loudly below.
_UNICODE_CLASSES = [(r"[\p{L}\p{N}]", r"[^\W_]"), (r"\p{L}", r"[^\W\d_]"), (r"\p{N}", r"\d")]


def _python_patterns(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _python_patterns(v) for k, v in node.items()}
        if isinstance(node.get("pattern"), str):
            pattern = node["pattern"]
            for go, py in _UNICODE_CLASSES:
                pattern = pattern.replace(go, py)
            assert r"\p{" not in pattern, f"schema pattern with an unknown Unicode class: {node['pattern']}"
            out["pattern"] = pattern
        return out
    if isinstance(node, list):
        return [_python_patterns(v) for v in node]
    return node


@lru_cache(maxsize=1)
def schema_validator():
    path = _schema_path()
    if path is None:
        pytest.skip(f"the Databricks CLI's {SCHEMA_FILE} is not beside this checkout (shared/schemas/) and "
                    "NEXTPLAY_BUNDLE_SCHEMA is unset; write it with `databricks bundle schema` to run this check")
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.Draft202012Validator(_python_patterns(json.loads(path.read_text())))


def _leaves(error) -> list:
    """The innermost reasons behind an error. Nearly every node is a oneOf of the real shape and a
    `${...}` reference string; of its branches, the one that got furthest into the value is the
    one meant, and all of its own failures are reported."""
    if not error.context:
        return [error]
    branches: dict[Any, list] = {}
    for e in error.context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)
    meant = max(branches.values(), key=lambda errs: max(len(e.absolute_path) for e in errs))
    return [leaf for e in meant for leaf in _leaves(e)]


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Every schema violation, each with its path and its innermost reason."""
    return [f"{leaf.json_path}: {leaf.message}" for error in schema_validator().iter_errors(doc)
            for leaf in _leaves(error)]


def test_bundle_matches_the_databricks_cli_schema() -> None:
    errors = schema_errors(BUNDLE)
    assert not errors, "\n".join(errors)


def _break_task(bundle: dict[str, Any], field: str, value: Any) -> None:
    bundle["resources"]["jobs"]["nextplay_training"]["tasks"][0][field] = value


@pytest.mark.parametrize("field, value", [
    ("max_retry", 2),  # unknown key (a typo of max_retries)
    ("max_retries", "twice"),  # wrong type, and not a ${...} reference either
    ("timeout_seconds", [3600]),
])
def test_the_schema_check_catches_a_broken_task(field: str, value: Any) -> None:
    """The check above is not vacuous: one bad field in one task fails it, at that task."""
    broken = copy.deepcopy(BUNDLE)
    _break_task(broken, field, value)
    errors = schema_errors(broken)
    assert errors and all("nextplay_training.tasks[0]" in e for e in errors), errors


def test_the_schema_allows_references_only_where_the_cli_resolves_them() -> None:
    """An int field takes a `${var...}` reference (as gpu_workers does) but not free text."""
    ok = copy.deepcopy(BUNDLE)
    _break_task(ok, "max_retries", "${var.gpu_workers}")
    assert not schema_errors(ok)
    broken = copy.deepcopy(BUNDLE)
    _break_task(broken, "max_retries", "{{job.parameters.retries}}")
    assert schema_errors(broken)


# -- targets and resources ----------------------------------------------------------------------


def test_targets_dev_staging_prod_each_with_its_own_catalog_schema_and_experiment() -> None:
    assert TARGETS == ["dev", "prod", "staging"]
    targets = BUNDLE["targets"]
    assert targets["dev"].get("default") is True and targets["dev"]["mode"] == "development"
    assert targets["prod"]["mode"] == "production" and not targets["prod"].get("default", False)
    assert "mode" not in targets["staging"]
    for key in ("catalog", "schema", "experiment"):
        values = [Resolver(t).resolve(str(variables(t)[key])) for t in TARGETS]
        assert len(set(values)) == len(TARGETS), f"targets share a {key}: {values}"
    # prod runs as a named identity, and its deployed resources carry explicit permissions.
    assert targets["prod"]["run_as"] == {"service_principal_name": "${var.run_as_service_principal}"}
    assert {p["level"] for p in targets["prod"]["permissions"]} == {"CAN_MANAGE", "CAN_VIEW"}
    for name in ("staging", "prod"):
        assert targets[name]["workspace"]["root_path"].startswith("/Workspace/Shared/"), name


def test_resources_live_in_the_bundles_schema() -> None:
    resources = BUNDLE["resources"]
    assert set(resources["schemas"]) == {"nextplay"} and set(resources["volumes"]) == {"raw", "checkpoints"}
    assert set(resources["experiments"]) == {"nextplay"} and set(resources["registered_models"]) == {"nextplay"}
    for kind in ("volumes", "registered_models"):
        for name, item in resources[kind].items():
            assert item["schema_name"] == "${resources.schemas.nextplay.name}", f"{kind}.{name}"
            assert item["catalog_name"] == resources["schemas"]["nextplay"]["catalog_name"], f"{kind}.{name}"


# -- the two jobs -------------------------------------------------------------------------------


def _cron_hour(job: str) -> int:
    seconds, minutes, hours, *_ = JOBS[job]["schedule"]["quartz_cron_expression"].split()
    assert seconds == "0" and minutes.isdigit() and hours.isdigit(), "a fixed daily time is expected"
    return int(hours)


def test_training_and_scoring_are_separate_scheduled_jobs() -> None:
    assert set(JOBS) == {"nextplay_training", "nextplay_scoring"}
    assert [t["task_key"] for t in JOBS["nextplay_training"]["tasks"]] == TRAINING_STAGES
    assert [t["task_key"] for t in JOBS["nextplay_scoring"]["tasks"]] == ["score"]
    for job in JOBS.values():
        assert job["schedule"]["timezone_id"] == "UTC"
    assert _cron_hour("nextplay_training") < _cron_hour("nextplay_scoring"), "scoring runs after training"


def test_training_tasks_run_in_order() -> None:
    tasks = JOBS["nextplay_training"]["tasks"]
    assert "depends_on" not in tasks[0]
    for prev, t in zip(tasks, tasks[1:]):
        assert t["depends_on"] == [{"task_key": prev["task_key"]}]


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_job_is_guarded(job: str) -> None:
    """One run at a time, mail on failure, the deployed commit on every run, bounded and retried tasks."""
    spec = JOBS[job]
    assert spec["max_concurrent_runs"] == 1
    assert spec["email_notifications"]["on_failure"] == ["${var.alert_email}"]
    assert {"name": "git_commit", "default": "${bundle.git.commit}"} in spec["parameters"]
    for t in spec["tasks"]:
        assert 0 < t["timeout_seconds"] <= 6 * 3600, t["task_key"]
        assert t["max_retries"] >= 1 and t["min_retry_interval_millis"] >= 60_000, t["task_key"]
        assert "retry_on_timeout" in t, t["task_key"]


def test_every_task_runs_the_wheels_entry_point() -> None:
    (artifact,) = BUNDLE["artifacts"].values()
    assert artifact["type"] == "whl" and (ROOT / artifact.get("path", ".") / "setup.py").exists()
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="nextplay")
    assert callable(script.load()) and script.dist.name == "nextplay"
    for job, key in TASKS:
        t = task(job, key)
        assert t["python_wheel_task"]["package_name"] == script.dist.name
        assert t["python_wheel_task"]["entry_point"] == script.name
        assert t["libraries"] == [{"whl": "../dist/*.whl"}], f"{key}: the bundle's wheel and nothing else"


def test_training_uses_torch_distributor_on_a_gpu_ml_runtime_without_horovod(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Databricks ML runtimes 16 and later ship no Horovod, so no task may need it."""
    monkeypatch.chdir(tmp_path)
    resolver = Resolver("prod")
    for job, key in TASKS:
        version = resolver.resolve(cluster(job, key)["spark_version"])
        assert int(version.split(".")[0]) >= 16, version
        assert ("-gpu-ml-" in version) == (key == "train"), (key, version)
        assert "horovod" not in json.dumps(task(job, key)["libraries"]).lower()
    assert not [name for name in BUNDLE["variables"] if "horovod" in name]
    cfg = config_from_args(build_parser().parse_args(task_argv("nextplay_training", "train", "prod")))
    assert cfg.train.launcher == "torch_distributor" and cfg.train.device == "cuda"
    assert cfg.train.num_proc == int(resolver.resolve(str(cluster("nextplay_training", "train")["num_workers"])))


# -- (b) every task's parameters through the real CLI -------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("job, key", TASKS)
def test_task_parameters_parse_into_the_targets_config(job: str, key: str, target: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The wheel task does not run in a checkout: parse from an empty folder, as the cluster does,
    so `--conf databricks` can only be the packaged conf and conf/local.yml cannot leak in."""
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(task_argv(job, key, target))
    assert args.stage == key and key in STAGES
    assert args.conf == "databricks"
    cfg = config_from_args(args)
    r = Resolver(target)
    catalog, schema = r.resolve("${var.catalog}"), r.lookup("resources.schemas.nextplay.name")
    assert (cfg.lake.catalog, cfg.lake.schema) == (catalog, schema)
    assert cfg.tracking.experiment == r.lookup("resources.experiments.nextplay.name")
    assert cfg.tracking.model_name == f"{catalog}.{schema}.{r.lookup('resources.registered_models.nextplay.name')}"
    assert (cfg.tracking.uri, cfg.tracking.registry_uri, cfg.spark.master) == ("databricks", "databricks-uc", None)
    assert cfg.tracking.git_commit == COMMIT
    # One config for every stage of both jobs (each stage reads its own sections).
    assert cfg.ingest.input == f"/Volumes/{catalog}/{schema}/raw"
    assert cfg.train.checkpoint_dir == f"/Volumes/{catalog}/{schema}/checkpoints"
    assert cfg.score.score_date == RUN_DATE
    assert cfg.score.model_uri is None, "scoring resolves the registered model itself"
    if target == "dev":
        assert schema.startswith(f"dev_{SHORT_NAME}_"), "development mode's prefix must reach the tasks"


def test_the_deployed_commit_tags_the_training_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit the tasks receive becomes the MLflow run's source tag (and a param, with the rest)."""
    import mlflow

    from nextplay import tracking

    monkeypatch.chdir(tmp_path)
    argv = task_argv("nextplay_training", "train", "prod") + [
        "--set", f"tracking.uri=sqlite:///{tmp_path}/mlruns.db", "--set", "tracking.registry_uri=null"]
    cfg = config_from_args(build_parser().parse_args(argv))
    with tracking.start_run(cfg, run_name="tagged") as run:
        tracking.log_params(cfg)
    tagged = mlflow.MlflowClient(cfg.tracking.uri).get_run(run.info.run_id)
    assert tagged.data.tags["mlflow.source.git.commit"] == COMMIT
    assert tagged.data.params["tracking.git_commit"] == COMMIT
    cfg.tracking.git_commit = None
    with tracking.start_run(cfg, run_name="untagged") as run:
        pass
    assert "mlflow.source.git.commit" not in mlflow.MlflowClient(cfg.tracking.uri).get_run(run.info.run_id).data.tags


# -- (c) the packaged conf: in the wheel, found by the CLI --------------------------------------


def test_the_wheel_ships_every_packaged_conf(tmp_path: Path) -> None:
    """The wheel the bundle deploys, built by setup.py from a copy of the sources (no stale build/ folder
    of the checkout can leak into it), holds every packaged conf under nextplay/conf/, byte for byte."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "lib", src / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "setup.py", src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("nextplay-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n: z.read(n) for n in z.namelist() if n.startswith("nextplay/conf/")}
    confs = {f"nextplay/conf/{p.name}": p.read_bytes() for p in (ROOT / "lib" / "nextplay" / "conf").glob("*.yml")}
    assert "nextplay/conf/databricks.yml" in confs
    assert shipped == confs
    assert not (ROOT / "conf" / "databricks.yml").exists(), "one source: the packaged conf"


def test_the_cli_finds_the_packaged_conf_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shipped = importlib.resources.files("nextplay").joinpath("conf", "databricks.yml")
    assert shipped.is_file() and packaged_confs()["databricks"] == shipped
    assert resolve_conf("databricks") == shipped
    cfg = load_config("databricks")
    assert cfg == load_config(Path(str(shipped)))
    assert (cfg.tracking.uri, cfg.spark.jars_dir, cfg.train.launcher) == ("databricks", None, "torch_distributor")


def test_a_conf_path_still_wins_over_a_packaged_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "databricks").write_text("train:\n  epochs: 9\n")
    assert load_config("databricks").train.epochs == 9
    (tmp_path / "mine.yml").write_text("train:\n  epochs: 4\n")
    assert load_config(str(tmp_path / "mine.yml")).train.epochs == 4


def test_an_unknown_conf_name_is_one_line_naming_the_packaged_ones(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"file not found, nor a conf shipped in the package \(databricks\)"):
        load_config("databrick")
    assert main(["score", "--conf", "databrick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "databricks" in err[0]
