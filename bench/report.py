"""The figures: their goals, the results.json layout, and the table printed to stdout.

results.json holds every figure under its own top-level key (a number, or for the per-size rates a
mapping of labels to numbers) and one `context` key with the machine, the mode, each stage's raw
timings and settings, and any figure that was skipped or failed with the reason.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    key: str
    unit: str
    goal: str | None = None  # e.g. "<= 1.3"; None for informational figures

    def met(self, value: float) -> bool | None:
        if self.goal is None or not math.isfinite(value):
            return None
        op, bound = self.goal.split()
        return value <= float(bound) if op == "<=" else value >= float(bound)


FIGURES = (
    Figure("sessionize_over_sort", "x", "<= 1.3"),
    Figure("sessionize_scaling_exponent", "slope", "<= 1.1"),
    Figure("ingest_events_per_second_per_core", "events/s/core"),
    Figure("loader_over_train", "x", ">= 5"),
    Figure("loader_workers_2_over_1", "x", ">= 1.6"),
    Figure("train_events_per_second", "events/s"),
    Figure("sampled_over_full", "x", ">= 20"),
    Figure("bit_tree_over_full", "x", ">= 20"),
    Figure("step_1m_over_10k", "x", "<= 1.5"),
    Figure("horovod_np2_over_np1", "x"),
    Figure("udf_over_inprocess", "x", "<= 1.5"),
    Figure("score_users_per_second", "users/s"),
    Figure("score_over_gemm", "x", ">= 0.5"),
    Figure("score_memory_over_model", "x", "<= 1.3"),
    Figure("ann_recall_at_20", "recall", ">= 0.98"),
    Figure("ann_over_exact", "x", ">= 10"),
    Figure("catalog_ann_users_per_second", "users/s"),
    Figure("train_events_per_second_yoochoose1_64", "events/s"),
    Figure("bptt1_over_full_yoochoose1_64", "x"),
    Figure("ann_library_recall_at_20", "recall", ">= 0.98"),
    Figure("daily_28d_over_7d", "x", "<= 1.3"),
    Figure("full_retrain_28d_over_7d", "x"),
)
KEYS = tuple(f.key for f in FIGURES)


def vocab_label(n: int) -> str:
    """10000 -> '10k', 1000000 -> '1M': the labels the per-size figures are keyed by."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def leaves(value: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every number in a figure with its path: ((), 1.2) for a plain figure, (("full", "1M"), 950.0)
    for a nested one."""
    if isinstance(value, dict):
        return [leaf for sub, inner in value.items() for leaf in leaves(inner, path + (str(sub),))]
    return [(path, value)]


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}"


def table(results: dict[str, Any]) -> str:
    """A fixed-width table: figure, value, goal and whether it is met."""
    spec = {f.key: f for f in FIGURES}
    lines = [f"{'figure':<52} {'value':>12}  {'unit':<14} {'goal':<8} met"]
    context = results.get("context", {})
    for key in KEYS:
        if key not in results:
            skipped, error = context.get("skipped", {}).get(key), context.get("errors", {}).get(key)
            why = f"skipped: {skipped}" if skipped else f"failed: {error.strip().splitlines()[-1]}" if error \
                else "not run"
            lines.append(f"{key:<52} {'-':>12}  {'':<14} {spec[key].goal or '':<8} ({why[:90]})")
            continue
        for path, number in leaves(results[key]):
            label = f"{key}[{', '.join(path)}]" if path else key
            met = spec[key].met(number)
            lines.append(f"{label:<52} {_fmt(number):>12}  {spec[key].unit:<14} {spec[key].goal or '':<8} "
                         f"{'' if met is None else ('yes' if met else 'NO')}")
    return "\n".join(lines)


def write(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def merged(previous: dict[str, Any], results: dict[str, Any], figures: list[str]) -> dict[str, Any]:
    """`previous` (an earlier results file) with the `figures` of this run replaced by `results`'
    (a figure this run failed or skipped is removed, with its reason), and this run's details and
    stage runs added to the context: `--only` reruns some stages without losing the others' figures.
    `context.stage_runs` says when and in which mode each stage's figures were measured."""
    out = {k: v for k, v in previous.items() if k != "context" and k not in figures}
    out.update({k: v for k, v in results.items() if k != "context" and k in figures})
    context = dict(previous.get("context", {}))
    new = results["context"]
    for part in ("skipped", "errors"):
        kept = {k: v for k, v in context.get(part, {}).items() if k not in figures}
        context[part] = {**kept, **new.get(part, {})}
    context["details"] = {**context.get("details", {}), **new.get("details", {})}
    context["stage_runs"] = {**context.get("stage_runs", {}), **new.get("stage_runs", {})}
    context.update({k: new[k] for k in ("machine", "load_average_at_end") if k in new})
    out["context"] = context
    return out
