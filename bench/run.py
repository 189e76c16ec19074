"""`python -m bench.run [--quick | --tiny] [--out FILE] [--only STAGES]`: every figure in one command.

Stages run in one process that shares one Spark session and builds each input once. A stage that
fails does not stop the others: its figures are left out, and the error is recorded under
`context.errors` and shown in the table (benchmarks report; they do not pass or fail).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from bench import machine, report
from bench.context import Bench, bench_config, log
from bench.modes import MODES

HERE = Path(__file__).resolve().parent


# Stage name -> the figures it produces, in the order they run.
STAGE_FIGURES = {
    "ingest": ("ingest_events_per_second_per_core",),
    "sessionize": ("sessionize_over_sort", "sessionize_scaling_exponent"),
    "loader": ("loader_over_train", "loader_workers_2_over_1"),
    "heads": ("train_events_per_second", "sampled_over_full", "bit_tree_over_full", "step_1m_over_10k"),
    "horovod": ("horovod_np2_over_np1",),
    "score": ("udf_over_inprocess", "score_users_per_second", "score_over_gemm", "score_memory_over_model"),
    "yoochoose": ("train_events_per_second_yoochoose1_64", "bptt1_over_full_yoochoose1_64"),
    "ann": ("ann_library_recall_at_20",),
    "candidates": ("ann_over_exact", "ann_recall_at_20"),
    "catalog": ("catalog_ann_users_per_second",),
    "daily": ("daily_28d_over_7d", "full_retrain_28d_over_7d"),
}


def _stages() -> dict[str, Callable[[Bench], dict[str, Any]]]:
    from bench.ann import ann_figures
    from bench.candidates import candidates_figures
    from bench.catalog import catalog_figures
    from bench.daily import daily_figures
    from bench.horovod_stage import horovod_figure
    from bench.scoring import score_figures
    from bench.spark_stages import ingest_figure, sessionize_figures
    from bench.training import head_figures, loader_over_train
    from bench.yoochoose import yoochoose_figure

    return {"ingest": ingest_figure, "sessionize": sessionize_figures, "loader": loader_over_train,
            "heads": head_figures, "horovod": horovod_figure, "score": score_figures, "yoochoose": yoochoose_figure,
            "ann": ann_figures, "candidates": candidates_figures, "catalog": catalog_figures, "daily": daily_figures}


def _skips() -> dict[str, str]:
    """Stages that cannot run here, and why (a message, not a failure)."""
    from bench.yoochoose import skip_reason

    reason = skip_reason()
    return {"yoochoose": reason} if reason else {}


def run(mode_name: str, out: Path, only: list[str] | None) -> dict[str, Any]:
    mode = MODES[mode_name]
    started = time.perf_counter()
    results: dict[str, Any] = {}
    context: dict[str, Any] = {"mode": mode.name, "machine": machine.describe(),
                               "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "skipped": {}, "errors": {}, "stage_runs": {}}
    stages = _stages()
    unknown = set(only or []) - set(stages)
    if unknown:
        raise SystemExit(f"--only: unknown stage(s) {', '.join(sorted(unknown))}; choose from {', '.join(stages)}")
    skips = _skips()
    workdir = Path(tempfile.mkdtemp(prefix="nextplay-bench-"))
    b = Bench(mode, workdir, bench_config(workdir, mode))
    try:
        for name, stage in stages.items():
            if only and name not in only:
                continue
            if name in skips:
                log(f"{name}: skipped: {skips[name]}")
                context["skipped"].update(dict.fromkeys(STAGE_FIGURES[name], skips[name]))
                continue
            log(f"{name}: starting")
            t0 = time.perf_counter()
            try:
                results.update(stage(b))
            except Exception:  # one broken stage must not hide the others' figures
                error = traceback.format_exc()
                context["errors"].update(dict.fromkeys(STAGE_FIGURES[name], error))
                log(f"{name}: FAILED\n{error}")
            log(f"{name}: {time.perf_counter() - t0:.0f}s")
            context["stage_runs"][name] = {"mode": mode.name, "started_at": context["started_at"],
                                           "seconds": round(time.perf_counter() - t0, 1)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    context.update(details=b.details, seconds=round(time.perf_counter() - started, 1),
                   load_average_at_end=machine.load_average())
    results["context"] = context
    if only and out.exists():
        figures = [f for name in only for f in STAGE_FIGURES[name]]
        results = report.merged(json.loads(out.read_text()), results, figures)
    report.write(results, out)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller inputs and fewer steps (< 10 min on 2 cores)")
    size.add_argument("--tiny", action="store_true", help="checks the harness only (the smoke test)")
    parser.add_argument("--out", type=Path, help="results file (default: bench/results.json; tiny: bench/out/)")
    parser.add_argument("--only", help="comma-separated stages to run (default: all); their figures replace "
                                         "those in the results file, every other figure is kept")
    args = parser.parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    out = args.out or (HERE / "out" / "results-tiny.json" if args.tiny else HERE / "results.json")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr readable
    results = run(mode, out, args.only.split(",") if args.only else None)
    print(report.table(results))
    print(f"\n{mode} mode, {results['context']['seconds']:.0f}s on {results['context']['machine']['nproc']} cores; "
          f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
