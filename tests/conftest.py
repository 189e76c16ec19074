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


def temp_config(root: Path, *overrides: str) -> Config:
    """A config whose lake, MLflow store, checkpoints and generated plays all live under `root`,
    on local[2], with `overrides` (`--set` pairs) on top."""
    return load_config(None, [
        f"lake.root={root / 'lake'}",
        "spark.master=local[2]",
        "spark.shuffle_partitions=4",
        f"tracking.uri=sqlite:///{root / 'mlruns.db'}",
        f"tracking.artifact_location={root / 'mlartifacts'}",
        f"train.checkpoint_dir={root / 'checkpoints'}",
        f"generate.output={root / 'raw'}",
        "train.progress=false",
        *overrides,
    ])


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    """A config whose lake, MLflow store and checkpoints all live in this test's temp folder."""
    return temp_config(tmp_path)
