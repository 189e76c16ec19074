"""MLflow helpers shared by training, evaluation and scoring.

One place decides where runs and models go, so a laptop (sqlite + ./mlartifacts), a tracking
server and Databricks (`databricks` / `databricks-uc`) differ only in `TrackingConfig`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from nextplay import run_metrics
from nextplay.config import Config, TrackingConfig
from nextplay.tables import Pin

# Stores on this machine's disk (sqlite, file:, a bare folder): the client picks their artifact root.
_LOCAL_SCHEMES = {"", "file", "sqlite"}


def artifact_root(tcfg: TrackingConfig) -> str | None:
    """Where a new experiment keeps its artifacts, or None to let the server decide.

    A bare folder only makes sense for a local store: it is made absolute so runs started from
    any working directory land in the same ./mlartifacts (MLflow would otherwise default to
    ./mlruns next to wherever the process started). A URI (s3://, dbfs:/) is passed as is.
    A tracking server or Databricks owns its artifact store, so a bare folder is ignored there.
    """
    loc = tcfg.artifact_location
    if not loc:
        return None
    if urlparse(loc).scheme not in ("", "file"):
        return loc
    if urlparse(tcfg.uri).scheme not in _LOCAL_SCHEMES:
        return None
    return Path(urlparse(loc).path if loc.startswith("file:") else loc).resolve().as_uri()


# The MLflow UI opens an experiment on the view its kind names; untagged, it guesses the GenAI
# overview (traces, token usage). These runs train models: the UI should open on them.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def ui_path(experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment's runs (or of one run), after the server's address.

    MLflow 3.17's UI opens every experiment in its GenAI view (traces, token usage) until the
    sidebar's switch is set to Model training, whatever the experiment's kind tag says; the
    `workflowType` parameter sets the switch, so the links nextplay prints open on the runs."""
    page = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return f"{page}?workflowType=machine_learning"


def configure(tcfg: TrackingConfig) -> str:
    """Point this process at the tracking store and registry, create the experiment if needed.

    Returns the experiment id. Safe to call more than once (every stage calls it).
    """
    mlflow.set_tracking_uri(tcfg.uri)
    mlflow.set_registry_uri(tcfg.registry_uri or tcfg.uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(tcfg.experiment)
    if exp is None:
        exp_id = client.create_experiment(tcfg.experiment, artifact_location=artifact_root(tcfg),
                                          tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    else:
        exp_id = exp.experiment_id
        if EXPERIMENT_KIND_TAG not in exp.tags:  # an experiment made by an earlier release, or by hand
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI pinned to one immutable version, plus what predictions record about it."""

    uri: str  # models:/name/version, or the runs:/ or path URI as given
    name: str  # registered name, or the URI itself when the model is not registered
    version: str  # registry version, or the run id ("" when unknown)
    run_id: str = ""  # the training run that logged it ("" when unknown)
    sessions_version: int | None = None  # the sessions version that run trained on (None: not recorded)


# -- the registry: versions and aliases ------------------------------------------------------------
#
# Aliases, not stages: stages are deprecated in MLflow 3 and do not exist in Unity Catalog. Only
# set_registered_model_alias / get_model_version_by_alias are used, which the local sqlite registry
# and `databricks-uc` both implement.

CHAMPION = "champion"  # the version `nextplay score` loads; moved only by the promotion gate
CHALLENGER = "challenger"  # the version evaluated last, promoted or not

# How registries answer a lookup of an alias (or a model) that does not exist: the sqlite store says
# INVALID_PARAMETER_VALUE "... alias X not found", Unity Catalog and REST stores RESOURCE_DOES_NOT_EXIST.
_MISSING_CODES = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}


def _is_missing(e: Exception) -> bool:
    code = getattr(e, "error_code", "")
    text = str(e).lower()
    said_missing = "not found" in text or "does not exist" in text
    return code in _MISSING_CODES or (code == "INVALID_PARAMETER_VALUE" and said_missing)


def alias_version(name: str, alias: str) -> str | None:
    """The version behind `alias` of registered model `name`, or None when the alias (or the model)
    does not exist yet."""
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException as e:
        if _is_missing(e):
            return None
        raise


def set_alias(name: str, alias: str, version: str) -> None:
    """Point `alias` of `name` at `version` (an alias names one version at a time: it moves)."""
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def annotate_version(name: str, version: str, description: str, tags: Mapping[str, str]) -> None:
    """Give registered version `version` of `name` a description and tags: what the registry's page
    of the version shows, so it says what the version scored and what the gate made of it."""
    client = MlflowClient()
    client.update_model_version(name, str(version), description=description)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def version_of_run(name: str, run_id: str) -> str | None:
    """The version of `name` that training run `run_id` registered (the highest if it registered
    several), or None when it registered none (`tracking.register` false).

    Filtered by run id, the one filter Unity Catalog accepts besides the name."""
    versions = [v for v in MlflowClient().search_model_versions(f"run_id='{run_id}'") if v.name == name]
    return str(max(int(v.version) for v in versions)) if versions else None


def trained_sessions_version(run_id: str) -> int | None:
    """The sessions version training run `run_id` pinned and trained on, from its run tags; None for a
    run logged before runs pinned their tables, or one this store cannot read."""
    if not run_id:
        return None
    try:
        pin = Pin.from_tags(MlflowClient().get_run(run_id).data.tags)
    except MlflowException:
        return None
    return None if pin is None else pin.sessions_version


def latest_version(name: str) -> str:
    """The highest version number registered under `name` (stages are deprecated in MLflow 3)."""
    versions = MlflowClient().search_model_versions(f"name='{name}'")
    if not versions:
        raise FileNotFoundError(f"no version of registered model '{name}': train (and register) a model first")
    return str(max(int(v.version) for v in versions))


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<ref>[^/]+)|@(?P<alias>[^/]+))?/?$")


def resolve_model(tcfg: TrackingConfig, uri: str | None) -> ResolvedModel:
    """Pin `uri` (default: the `champion` of `tcfg.model_name`) to a concrete version, with the run
    that logged it and the sessions version that run trained on.

    Pinning first means every row of one scoring run names the same version, even if the alias
    moves or a new version is registered while the run is going.
    """
    if uri is None:
        uri = f"models:/{tcfg.model_name}@{CHAMPION}"
    m = _MODELS_URI.match(uri)
    if m is None:
        run_id = _run_id_of(uri)
        return ResolvedModel(uri=uri, name=uri, version=run_id, run_id=run_id,
                             sessions_version=trained_sessions_version(run_id))
    name, ref, alias = m.group("name"), m.group("ref"), m.group("alias")
    if alias:
        version = alias_version(name, alias)
        if version is None:
            hint = ("run `nextplay evaluate` to measure a trained model and promote it, or set score.model_uri"
                    if alias == CHAMPION else "set the alias, or name another model")
            raise FileNotFoundError(f"no version of registered model '{name}' holds the alias '{alias}': {hint}")
    elif ref is None or ref.lower() == "latest":
        version = latest_version(name)
    elif ref.isdigit():
        version = ref
    else:
        raise ValueError(f"model URI {uri}: expected models:/name[/version|/latest] or models:/name@alias "
                         "(registry stages are deprecated in MLflow 3)")
    run_id = MlflowClient().get_model_version(name, version).run_id or ""
    return ResolvedModel(uri=f"models:/{name}/{version}", name=name, version=version, run_id=run_id,
                         sessions_version=trained_sessions_version(run_id))


def _run_id_of(uri: str) -> str:
    m = re.match(r"^runs:/(?P<run>[^/]+)/", uri)
    return m.group("run") if m else ""


# -- what a training run logs (called by nextplay.train) -----------------------------------------

_PARAMS_PER_CALL = 100  # MLflow's limit on params in one log_batch request


def start_run(cfg: Config, run_name: str | None = None) -> mlflow.ActiveRun:
    """Configure tracking from `cfg` and start a run in its experiment (use as a context manager).

    The run is tagged with `tracking.git_commit` when it is known, under MLflow's own source tag, so
    the UI shows which commit produced the model.
    """
    configure(cfg.tracking)
    tags = {"mlflow.source.git.commit": cfg.tracking.git_commit} if cfg.tracking.git_commit else None
    return mlflow.start_run(run_name=run_name, tags=tags)


# Params are readable by everyone with access to the experiment and cannot be deleted, so no
# credential may reach them. A key is secret when one of its segments (split on . _ -) names a
# credential: `fs.s3a.secret.key`, `fs.azure.account.key.<account>`, `db_password`, `session.token`.
_SECRET_SEGMENTS = frozenset({"secret", "password", "passwd", "pwd", "token", "credential", "credentials", "key",
                              "apikey", "sas", "signature", "auth", "authorization"})
# Keys that name where credentials come from, not credentials (e.g. fs.s3a.aws.credentials.provider).
_NOT_SECRET_LAST = frozenset({"provider", "providers", "type", "class", "path", "file", "enabled"})
# URI userinfo `user:password@`: the password goes, the user stays.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/?#@:\s]*:)(?P<pw>[^/?#@\s]*)@")
# `name=value` pairs in query strings and connection strings whose name looks like a credential.
_SECRET_PAIR = re.compile(r"(?P<name>(?<![A-Za-z0-9])[A-Za-z0-9_.-]*(?:sig|signature|token|key|password|passwd|pwd|"
                          r"secret|credential|auth)[A-Za-z0-9_.-]*)=(?P<value>[^&;#\s]+)", re.IGNORECASE)
REDACTED = "***"


def _is_secret_key(key: str) -> bool:
    segments = [s for s in re.split(r"[._\-]", key.lower()) if s]
    return bool(segments) and segments[-1] not in _NOT_SECRET_LAST and any(s in _SECRET_SEGMENTS for s in segments)


def redact(key: str, value: Any) -> Any:
    """`value` with credentials replaced by `***`: the whole value when `key` names a secret, else
    URI passwords and credential-like `name=value` pairs inside strings; dicts key by key."""
    if isinstance(value, Mapping):
        return {k: redact(str(k), v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if _is_secret_key(key):
        return REDACTED
    if isinstance(value, str):
        value = _USERINFO.sub(lambda m: f"{m.group('head')}{REDACTED}@", value)
        return _SECRET_PAIR.sub(lambda m: f"{m.group('name')}={REDACTED}", value)
    if isinstance(value, (list, tuple)):
        return type(value)(redact(key, v) for v in value)
    return value


def log_params(cfg: Config, extra: Mapping[str, Any] | None = None) -> None:
    """Every config key as a dotted param (the run is reproducible from its params), plus `extra`,
    with credentials redacted (see `redact`)."""
    params = {k: str(redact(k, v)) for k, v in {**cfg.flat(), **(extra or {})}.items()}
    items = sorted(params.items())
    for lo in range(0, len(items), _PARAMS_PER_CALL):
        mlflow.log_params(dict(items[lo:lo + _PARAMS_PER_CALL]))


def log_loss_curve(history: Sequence[Mapping[str, Any]], artifact_file: str = "loss_curve.png") -> None:
    """Plot the per-epoch training loss (and any valid_* metric on a second axis) as a run artifact."""
    import matplotlib  # deferred: plotting only; pyplot must be imported after matplotlib.use

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after matplotlib.use("Agg"), so no display is needed

    epochs = [h.get("epoch", i) for i, h in enumerate(history)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h.get("loss") for h in history], marker="o", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    valid = sorted({k for h in history for k in h if k.startswith("valid_")})
    if valid:
        right = ax.twinx()
        for key in valid:
            right.plot(epochs, [h.get(key) for h in history], linestyle="--", label=key)
        right.set_ylabel("validation")
        right.legend(loc="upper right", fontsize="small")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)


# -- reading runs back (notebooks) ---------------------------------------------------------------

_RUN_PARAMS = ("model.encoder", "model.head", "model.hidden_size", "train.epochs", "train.num_proc")


def compare_runs(cfg: Config, k: int = 20) -> pd.DataFrame:
    """One row per evaluated run of the experiment, newest first: the model's recall/MRR at `k`
    (`recall_at_{k}`), every other scorer's beside it (`{scorer}_recall_at_{k}`: the baselines, the
    champion), from the `test/<scorer>/` metrics the evaluator logs, and the params that usually
    explain a difference."""
    configure(cfg.tracking)
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], order_by=["attributes.start_time DESC"])
    model_recall = f"metrics.{run_metrics.test('model', f'recall_at_{k}')}"
    if runs.empty or model_recall not in runs:
        return pd.DataFrame(columns=["run_id", "start_time", f"recall_at_{k}", f"mrr_at_{k}"])
    metric = re.compile(rf"^metrics\.test/(\w+)/((recall|mrr)_at_{k})$")
    names = {c: (m[2] if m[1] == "model" else f"{m[1]}_{m[2]}") for c in runs.columns if (m := metric.match(c))}
    params = {f"params.{p}": p for p in _RUN_PARAMS if f"params.{p}" in runs}
    table = runs[runs[model_recall].notna()][["run_id", "start_time", *names, *params]]
    return table.rename(columns={**names, **params})
