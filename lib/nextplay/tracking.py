"""MLflow helpers shared by training, evaluation and scoring.

One place decides where runs and models go, so a laptop (sqlite + ./mlartifacts), a tracking
server and Databricks (`databricks` / `databricks-uc`) differ only in `TrackingConfig`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.tracking import MlflowClient

from nextplay.config import TrackingConfig

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


def configure(tcfg: TrackingConfig) -> str:
    """Point this process at the tracking store and registry, create the experiment if needed.

    Returns the experiment id. Safe to call more than once (every stage calls it).
    """
    mlflow.set_tracking_uri(tcfg.uri)
    mlflow.set_registry_uri(tcfg.registry_uri or tcfg.uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(tcfg.experiment)
    if exp is None:
        exp_id = client.create_experiment(tcfg.experiment, artifact_location=artifact_root(tcfg))
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI pinned to one immutable version, plus what predictions record about it."""

    uri: str  # models:/name/version, or the runs:/ or path URI as given
    name: str  # registered name, or the URI itself when the model is not registered
    version: str  # registry version, or the run id ("" when unknown)


def latest_version(name: str) -> str:
    """The highest version number registered under `name` (stages are deprecated in MLflow 3)."""
    versions = MlflowClient().search_model_versions(f"name='{name}'")
    if not versions:
        raise FileNotFoundError(f"no version of registered model '{name}': train (and register) a model first")
    return str(max(int(v.version) for v in versions))


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<ref>[^/]+)|@(?P<alias>[^/]+))?/?$")


def resolve_model(tcfg: TrackingConfig, uri: str | None) -> ResolvedModel:
    """Pin `uri` (default: the latest version of `tcfg.model_name`) to a concrete version.

    Pinning first means every row of one scoring run names the same version, even if a new one is
    registered while the run is going.
    """
    if uri is None:
        uri = f"models:/{tcfg.model_name}/latest"
    m = _MODELS_URI.match(uri)
    if m is None:
        return ResolvedModel(uri=uri, name=uri, version=_run_id_of(uri))
    name, ref, alias = m.group("name"), m.group("ref"), m.group("alias")
    client = MlflowClient()
    if alias:
        version = str(client.get_model_version_by_alias(name, alias).version)
    elif ref is None or ref.lower() == "latest":
        version = latest_version(name)
    elif ref.isdigit():
        version = ref
    else:
        raise ValueError(f"model URI {uri}: expected models:/name[/version|/latest] or models:/name@alias "
                         "(registry stages are deprecated in MLflow 3)")
    return ResolvedModel(uri=f"models:/{name}/{version}", name=name, version=version)


def _run_id_of(uri: str) -> str:
    m = re.match(r"^runs:/(?P<run>[^/]+)/", uri)
    return m.group("run") if m else ""
