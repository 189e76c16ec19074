"""What the executors need from the driver, sent once per run: a logged model, or a file of fitted state.

The model is downloaded once on the driver and shipped as a zip with `SparkContext.addArchive`
(Spark ships a local folder only to in-process executors: a cluster's get the archive and unpack it
on their own disk, once per executor), then loaded once per executor Python process (Python workers
are reused across tasks). Loading memory-maps the weights (model/io.py), so every Python worker of
an executor reads the item matrix from the same unpacked file through the page cache: an executor
holds the model once, not once per worker. Executors never talk to the tracking server, which on a
cluster they often cannot reach or authenticate to. `nextplay score` ranks listeners' histories this
way and `nextplay evaluate` its test lines, so both measure and serve the model through the same
loading.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

import mlflow
from pyspark import SparkFiles
from pyspark.sql import SparkSession

from nextplay.model import pyfunc
from nextplay.tracking import ResolvedModel

# Per Python worker process: the one model it has loaded, by shipped name (see load_cached).
_LOADED: dict[str, pyfunc.NextTrackModel] = {}


def _run_folder() -> Path:
    """A driver folder that lives until the process exits: an executor that joins later in the same
    SparkContext fetches every added file and archive, and would fail on a deleted one."""
    tmp = tempfile.mkdtemp(prefix="nextplay-ship-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return Path(tmp)


def fresh_name(stem: str) -> str:
    """A name no earlier shipment of this SparkContext used: Spark refuses to register a name again
    with other content."""
    return f"{stem}-{uuid.uuid4().hex[:12]}"


def ship_model(spark: SparkSession, model: ResolvedModel | str) -> tuple[str, Path]:
    """Download the model (a ResolvedModel or a model URI) on the driver and register it as an
    archive; returns (shipped name, local dir).

    `SparkFiles.get(name)` on an executor is then the unpacked model folder. The archive gets a fresh
    name per run (see `fresh_name`) and lives until the process exits (see `_run_folder`).
    """
    uri = model if isinstance(model, str) else model.uri
    tmp = _run_folder()
    name = fresh_name("model")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp / name)))
    archive = shutil.make_archive(str(tmp / name), "zip", root_dir=local)
    spark.sparkContext.addArchive(archive)
    return Path(archive).name, local


def load_cached(shipped_name: str) -> pyfunc.NextTrackModel:
    """The model Spark shipped as `shipped_name`, loaded at most once per Python worker process.

    Keyed by the shipped name, which is fresh per run, and not by model URI: workers outlive a
    run, and `models:/name/1` of another tracking store (or a name deleted and registered again)
    is another model under the same URI. Only the latest model is kept, so a long-lived worker
    that ranks with several versions in turn does not map all of them.
    """
    model = _LOADED.get(shipped_name)
    if model is None:
        _LOADED.clear()
        model = pyfunc.load_trusted(SparkFiles.get(shipped_name))  # never runs code shipped in the model
        _LOADED[shipped_name] = model
    return model


def ship_file(spark: SparkSession, write: Callable[[Path], None], suffix: str, stem: str = "state") -> str:
    """Write a file with `write(path)` on the driver and register it with `SparkContext.addFile`;
    returns the shipped name, which `SparkFiles.get(name)` turns into a local path on an executor."""
    name = fresh_name(stem) + suffix
    path = _run_folder() / name
    write(path)
    spark.sparkContext.addFile(str(path))
    return name
