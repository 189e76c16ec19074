"""Shared fixtures: one real local SparkSession with Delta for the whole test run, a temp lake,
and a temp MLflow store. Tests use the real parts, never mocks of them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from nextplay.config import Config, load_config

# The public benchmark sets: NEXTPLAY_DATA, else `shared/data` beside the checkout.
SHARED_DATA = Path(os.environ.get("NEXTPLAY_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def shared_data(*parts: str) -> Path:
    """A path under the benchmark data folder (NEXTPLAY_DATA), or skip the test with a clear message when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"benchmark data not found at {path} (set NEXTPLAY_DATA to the folder holding the sets)")
    return path


@pytest.fixture(scope="session")
def spark():
    from nextplay.spark import get_spark

    cfg = load_config(None, ["spark.master=local[2]", "spark.shuffle_partitions=4", "spark.driver_memory=2g"])
    session = get_spark(cfg)
    yield session
    session.stop()


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    """A config whose lake, MLflow store and checkpoints all live in this test's temp folder."""
    return load_config(None, [
        f"lake.root={tmp_path / 'lake'}",
        "spark.master=local[2]",
        "spark.shuffle_partitions=4",
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
        f"train.checkpoint_dir={tmp_path / 'checkpoints'}",
        f"generate.output={tmp_path / 'raw'}",
        "train.progress=false",
    ])
