"""Spark stages: building the inputs once, then ingest throughput and the cost of sessionising.

Inputs: the project's own generator writes the largest input once (Parquet); smaller inputs are
subsets of its listeners (a fixed hash bucket of user_id), so data grows the way a service grows,
by audience, with each listener's history unchanged. Every size gets its own lake whose
`plays_silver` is built with the project's reader and validation rules (ingest minus bronze,
quarantine and the de-duplicating MERGE, which are measured by the ingest figure instead).
"""
from __future__ import annotations

import copy
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from nextplay.config import Config
from nextplay.tables import PLAYS_SILVER, PLAYS_SILVER_SCHEMA, Lake

from bench.context import Bench, log
from bench.measure import interleaved, loglog_slope, median, seconds
from bench.report import vocab_label

BUCKETS = 1024  # listener buckets the subsets are cut from


def _with_lake(cfg: Config, root: Path) -> Config:
    out = copy.deepcopy(cfg)
    out.lake.root = str(root)
    return out


def raw_events(b: Bench) -> Path:
    """The largest input, written once by `nextplay.data.generate` as Parquet."""
    if "raw" in b.inputs:
        return b.inputs["raw"]
    from nextplay.data.generate import generate

    cfg = copy.deepcopy(b.cfg)
    g = cfg.generate
    g.events, g.users, g.tracks = b.mode.largest_events, b.mode.largest_events // b.mode.events_per_user, b.mode.tracks
    g.artists, g.format, g.output = min(g.artists, g.tracks), "parquet", str(b.workdir / "raw")
    took = seconds(lambda: generate(b.spark, cfg))
    log(f"generated {g.events:,} events for {g.users:,} listeners in {took:.0f}s")
    b.details["inputs"] = {"generated_events": g.events, "users": g.users, "tracks": g.tracks,
                           "generate_seconds": round(took, 1)}
    b.inputs["raw"] = Path(g.output)
    return b.inputs["raw"]


def _listener_subset(df: DataFrame, events: int, largest: int) -> DataFrame:
    keep = round(BUCKETS * events / largest)
    return df if keep >= BUCKETS else df.where(F.pmod(F.xxhash64("user_id"), F.lit(BUCKETS)) < keep)


def raw_subset(b: Bench, events: int) -> Path:
    """Raw Parquet for about `events` plays (the ingest figure reads files, not a DataFrame)."""
    key = f"raw_{events}"
    if key not in b.inputs:
        path = b.workdir / f"raw_{vocab_label(events)}"
        _listener_subset(b.spark.read.parquet(str(raw_events(b))), events, b.mode.largest_events) \
            .write.mode("overwrite").parquet(str(path))
        b.inputs[key] = path
    return b.inputs[key]


def silver_lake(b: Bench, events: int) -> tuple[Config, int]:
    """A lake whose plays_silver holds about `events` valid plays; returns its config and row count."""
    key = f"silver_{events}"
    if key in b.inputs:
        return b.inputs[key]
    from nextplay.data.readers import list_input, read_raw
    from nextplay.data.validate import validate

    cfg = _with_lake(b.cfg, b.workdir / f"lake_{vocab_label(events)}")
    files = [f.path for f in list_input(b.spark, str(raw_events(b)))]
    raw = _listener_subset(read_raw(b.spark, files, "parquet"), events, b.mode.largest_events)
    checked = validate(raw, cfg.ingest, datetime.now(timezone.utc))
    plays = checked.where(F.col("reason").isNull()).select("play.*")
    lake = Lake(cfg.lake)
    lake.create_if_missing(b.spark, PLAYS_SILVER, PLAYS_SILVER_SCHEMA)
    lake.write(plays.select(*[f.name for f in PLAYS_SILVER_SCHEMA.fields]), PLAYS_SILVER, mode="overwrite")
    rows = lake.read(b.spark, PLAYS_SILVER).count()
    log(f"plays_silver of {rows:,} events ready in {cfg.lake.root}")
    b.inputs[key] = (cfg, rows)
    return b.inputs[key]


def ingest_figure(b: Bench) -> dict[str, Any]:
    """ingest_events_per_second_per_core: one real `ingest` of the ratio-size input into an empty lake.

    One run: re-ingesting the same batch is (by design) a no-op, and the figure is informational.
    """
    from nextplay.data.ingest import ingest

    cfg = _with_lake(b.cfg, b.workdir / "lake_ingest")
    cfg.ingest.input, cfg.ingest.format = str(raw_subset(b, b.mode.ratio_events)), "parquet"
    counts: dict[str, Any] = {}
    costs = SparkCosts(b.spark)
    took = costs("ingest", lambda: counts.update(ingest(b.spark, cfg)))
    cores = os.cpu_count() or 1
    b.details["ingest"] = {"format": "parquet", "rows_in": counts["rows_in"], "seconds": round(took, 2),
                           "cores": cores, "rows_quarantined": counts["rows_quarantined"],
                           **costs.per_event("ingest", counts["rows_in"])}
    return {"ingest_events_per_second_per_core": counts["rows_in"] / took / cores}


def sort_baseline(b: Bench, cfg: Config, out: Path) -> None:
    """The least any sessioniser must do: read the silver columns it needs, bring each listener's
    plays together in time order (hash shuffle on user + sort, as a window needs) and write them."""
    plays = Lake(cfg.lake).read(b.spark, PLAYS_SILVER).select("user_id", "track_id", "ts")
    plays.repartition("user_id").sortWithinPartitions("user_id", "ts").write.mode("overwrite").parquet(str(out))


class SparkCosts:
    """An `interleaved` timer that also keeps each run's bytes read and shuffled, per run name."""

    def __init__(self, spark) -> None:
        self.spark = spark
        self.runs: dict[str, list[dict[str, float]]] = {}

    def __call__(self, name: str, fn) -> float:
        from bench.sparkmetrics import measured

        costs = measured(self.spark, fn)
        self.runs.setdefault(name, []).append(costs)
        return costs["seconds"]

    def per_event(self, name: str, events: int) -> dict[str, float]:
        last = self.runs[name][-1]
        return {"input_bytes_per_event": last["input_bytes"] / events,
                "shuffle_bytes_per_event": last["shuffle_write_bytes"] / events}


def _fixed_and_marginal(medians: dict[int, float]) -> dict[str, float]:
    """Least-squares time = fixed + events / rate over the sweep: the fixed part (job scheduling, Delta
    commits, small-table reads) dominates small inputs; the marginal rate is what a cluster-sized
    input costs per event (docs/scaling.md)."""
    xs, ys = list(medians), list(medians.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    cores = os.cpu_count() or 1
    return {"fixed_seconds": my - slope * mx,
            "marginal_events_per_second_per_core": (1.0 / slope / cores) if slope > 0 else float("nan")}


def sessionize_figures(b: Bench) -> dict[str, Any]:
    """sessionize_over_sort at the ratio size (interleaved repetitions) and the scaling exponent
    over the three sizes (repeated where a run is as short as the ratio size's)."""
    from nextplay.data.sessionize import sessionize

    sizes = b.mode.event_sizes
    lakes = {n: silver_lake(b, n) for n in sizes}
    sort_out = b.workdir / "sorted"
    smallest_cfg = lakes[sizes[0]][0]
    if b.mode.repeats > 1:  # JVM warm-up (class loading, code generation) before anything is timed
        seconds(lambda: sessionize(b.spark, smallest_cfg))
        seconds(lambda: sort_baseline(b, smallest_cfg, sort_out))
    ratio_cfg, ratio_rows = lakes[b.mode.ratio_events]
    costs = SparkCosts(b.spark)
    times = interleaved({"sessionize": lambda: sessionize(b.spark, ratio_cfg),
                         "sort": lambda: sort_baseline(b, ratio_cfg, sort_out)}, b.mode.repeats, costs)
    log(f"sessionize {times['sessionize']} s vs sort+write {times['sort']} s at {ratio_rows:,} events")
    sweep, per_event = {}, {}
    for n in sizes:
        cfg, rows = lakes[n]
        if n != b.mode.ratio_events:
            interleaved({f"sessionize_{n}": lambda c=cfg: sessionize(b.spark, c)},
                        b.mode.repeats if n < b.mode.ratio_events else 1, costs)
        name = "sessionize" if n == b.mode.ratio_events else f"sessionize_{n}"
        sweep[rows] = [c["seconds"] for c in costs.runs[name]]
        per_event[str(rows)] = costs.per_event(name, rows)
        log(f"sessionize {rows:,} events: {sweep[rows]} s, {per_event[str(rows)]}")
    b.inputs["sessions_cfg"] = ratio_cfg  # the ratio runs left a sessions table: training reads it
    largest = max(sweep)
    b.details["sessionize"] = {
        "ratio_events": ratio_rows, "sessionize_seconds": times["sessionize"], "sort_write_seconds": times["sort"],
        "sort_bytes_per_event": costs.per_event("sort", ratio_rows), "method": b.cfg.sessionize.method,
        "sweep_seconds": {str(rows): runs for rows, runs in sweep.items()}, "bytes_per_event": per_event,
        "events_per_second_per_core_at_largest": largest / median(sweep[largest]) / (os.cpu_count() or 1),
        **_fixed_and_marginal({r: median(t) for r, t in sweep.items()}),
    }
    rows = sorted(sweep)
    return {
        "sessionize_over_sort": median(times["sessionize"]) / median(times["sort"]),
        "sessionize_scaling_exponent": loglog_slope([float(r) for r in rows], [median(sweep[r]) for r in rows]),
    }


def sessions_lake(b: Bench) -> Config:
    """The config of a lake with a `sessions` table of the ratio size (the training figures' input):
    the one the sessionize figures left behind, or a fresh sessionize when they were not run."""
    if "sessions_cfg" not in b.inputs:
        from nextplay.data.sessionize import sessionize

        cfg, _ = silver_lake(b, b.mode.ratio_events)
        sessionize(b.spark, cfg)
        b.inputs["sessions_cfg"] = cfg
    return b.inputs["sessions_cfg"]
