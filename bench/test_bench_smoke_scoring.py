"""The tiny benchmark run of the scoring, retrieval and daily stages (the other half: test_bench_smoke.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.test_bench_smoke import SECOND_HALF, tiny_run_writes_every_figure


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes on a busy 2-core machine: Spark and MLflow start, models train
def test_tiny_run_of_the_scoring_retrieval_and_daily_stages(tmp_path: Path) -> None:
    tiny_run_writes_every_figure(tmp_path, SECOND_HALF)
