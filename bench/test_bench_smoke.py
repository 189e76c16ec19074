"""The harness works: `python -m bench.run --tiny` produces every figure as a finite number.

This checks the benchmark code, not speed (tiny inputs say nothing about speed). A figure may be
missing only when its stage was skipped for a stated reason (the shared data is absent here).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import KEYS, leaves
from bench.run import STAGE_FIGURES

ROOT = Path(__file__).resolve().parents[1]


def test_every_figure_has_a_stage() -> None:
    assert sorted(k for keys in STAGE_FIGURES.values() for k in keys) == sorted(KEYS)


# The stages in two halves, one per file, so that `make test`'s two pytest workers (which take a file
# each) run them side by side; together they are every stage.
FIRST_HALF = ("ingest", "sessionize", "loader", "heads", "horovod")
SECOND_HALF = ("score", "yoochoose", "ann", "candidates", "catalog", "daily")


def test_the_halves_are_every_stage() -> None:
    assert sorted(FIRST_HALF + SECOND_HALF) == sorted(STAGE_FIGURES)


def tiny_run_writes_every_figure(tmp_path: Path, stages: tuple[str, ...]) -> None:
    """`bench.run --tiny --only <stages>` exits 0 with every figure of those stages a finite number."""
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "bench.run", "--tiny", "--out", str(out), "--only", ",".join(stages)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1700)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    context = results["context"]
    assert not context["errors"], next(iter(context["errors"].values()))
    for key in (k for stage in stages for k in STAGE_FIGURES[stage]):
        if key in context["skipped"]:
            assert key not in results and context["skipped"][key]
            continue
        numbers = leaves(results[key])
        assert numbers and all(isinstance(v, (int, float)) and math.isfinite(v) for _, v in numbers), (key, results[key])
    assert STAGE_FIGURES[stages[0]][0] in done.stdout  # the table went to stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes on a busy 2-core machine: Spark, Horovod and MLflow all start
def test_tiny_run_of_the_data_and_training_stages(tmp_path: Path) -> None:
    tiny_run_writes_every_figure(tmp_path, FIRST_HALF)


def test_only_replaces_the_figures_of_the_stages_it_ran() -> None:
    """`--only` merges: an earlier run's other figures and details stay, its stale errors of the rerun go."""
    from bench.report import merged

    previous = {"sessionize_over_sort": 7.0, "score_over_gemm": 0.3,
                "context": {"mode": "full", "details": {"sessionize": {"a": 1}, "score": {"old": 1}},
                            "errors": {"score_over_gemm": "boom"}, "skipped": {}, "stage_runs": {"sessionize": {"mode": "full"}}}}
    rerun = {"score_over_gemm": 0.6, "udf_over_inprocess": 0.9,
             "context": {"mode": "quick", "details": {"score": {"new": 2}}, "errors": {}, "skipped": {},
                         "stage_runs": {"score": {"mode": "quick"}}}}
    out = merged(previous, rerun, list(STAGE_FIGURES["score"]))
    assert out["sessionize_over_sort"] == 7.0 and out["score_over_gemm"] == 0.6 and out["udf_over_inprocess"] == 0.9
    assert out["context"]["details"] == {"sessionize": {"a": 1}, "score": {"new": 2}}
    assert out["context"]["errors"] == {}
    assert out["context"]["stage_runs"] == {"sessionize": {"mode": "full"}, "score": {"mode": "quick"}}
