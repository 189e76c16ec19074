"""`nextplay pipeline`: generate -> ingest -> sessionize -> train -> evaluate -> score in one process.

One SparkSession serves every stage, and each stage is the same function its own subcommand runs,
so the pipeline is a demo of the stages rather than a second implementation of them. In particular
it goes through the promotion gate as the nightly jobs do: evaluate decides whether the model just
trained becomes the champion, and score serves the champion (or `score.model_uri`), not simply the
newest model.

With `next_day` (`nextplay pipeline --next-day`, what `make demo` runs) it then plays the nightly
routine once more: a day of plays after the history is generated, ingested and sessionized
incrementally (only the days it touched are re-cut; tracks that reached their count get new ids, every
old id keeps its track), a daily run warm-starts from the champion and trains on the newest days
(`train.mode: daily`), the gate measures it against the champion, and the champion scores again.
"""
from __future__ import annotations

import copy
import logging
import time
from datetime import date, timedelta
from typing import Any, Callable

from nextplay.config import Config
from nextplay.data.generate import generate
from nextplay.data.ingest import ingest
from nextplay.data.sessionize import sessionize
from nextplay.evaluate.evaluate import evaluate
from nextplay.score.batch import score
from nextplay.spark import get_spark
from nextplay.train.launch import train

log = logging.getLogger(__name__)


def _timed(name: str, timings: dict[str, float], fn: Callable[[], Any]) -> Any:
    started = time.time()
    log.info("stage %s: starting", name)
    result = fn()
    timings[name] = round(time.time() - started, 1)
    log.info("stage %s: done in %.1fs", name, timings[name])
    return result


def next_day_config(cfg: Config) -> Config:
    """The generator set for one more day of the same listeners and tracks, right after the history, into
    a folder of its own: `generate.events / generate.days` plays, another seed."""
    day = copy.deepcopy(cfg)
    g = day.generate
    g.end_date = (date.fromisoformat(g.end_date[:10]) + timedelta(days=1)).isoformat()
    g.events, g.days, g.seed = max(1, g.events // g.days), 1, g.seed + 1
    g.files = 1
    g.output = g.output.rstrip("/") + "-next-day"
    day.ingest.input, day.ingest.batch_id = g.output, None
    return day


def run_next_day(spark, cfg: Config, timings: dict[str, float]) -> dict[str, Any]:
    """generate one more day -> ingest -> sessionize (incremental) -> train (daily, from the champion)
    -> evaluate (the gate) -> score with the champion."""
    day = next_day_config(cfg)
    day.train.mode = "daily"
    out: dict[str, Any] = {"generate": _timed("next-day generate", timings, lambda: generate(spark, day))}
    out["ingest"] = _timed("next-day ingest", timings, lambda: ingest(spark, day))
    out["sessionize"] = _timed("next-day sessionize", timings, lambda: sessionize(spark, day))
    trained = _timed("next-day train", timings, lambda: train(day))
    out["train"] = trained
    out["evaluate"] = _timed("next-day evaluate", timings, lambda: evaluate(day, run_id=trained["run_id"]))
    out["score"] = _timed("next-day score", timings, lambda: score(day))
    return out


def run_pipeline(cfg: Config, next_day: bool = False) -> dict[str, Any]:
    spark = get_spark(cfg)
    timings: dict[str, float] = {}
    result: dict[str, Any] = {}
    result["generate"] = _timed("generate", timings, lambda: generate(spark, cfg))
    if cfg.ingest.input is None:
        cfg.ingest.input = cfg.generate.output
    result["ingest"] = _timed("ingest", timings, lambda: ingest(spark, cfg))
    result["sessionize"] = _timed("sessionize", timings, lambda: sessionize(spark, cfg))
    trained = _timed("train", timings, lambda: train(cfg))
    result["train"] = trained
    result["evaluate"] = _timed("evaluate", timings, lambda: evaluate(cfg, run_id=trained["run_id"]))
    result["score"] = _timed("score", timings, lambda: score(cfg))
    if next_day:
        result["next_day"] = run_next_day(spark, cfg, timings)
    timings["total"] = round(sum(timings.values()), 1)
    result["seconds"] = timings
    return result


def summary(result: dict[str, Any]) -> str:
    """A few lines a person reads after `make demo`."""
    ev = result["evaluate"]
    lines = ["", "nextplay pipeline finished in {total}s ({stages})".format(
        total=result["seconds"]["total"],
        stages=", ".join(f"{k} {v}s" for k, v in result["seconds"].items() if k != "total"))]
    lines.append(f"test split, {int(ev['lines'])} next-item lines ranked against all items:")
    rows = [("RNN (this run)", ev)] + [(name, m) for name, m in ev["baselines"].items()]
    for name, m in rows:
        lines.append(f"  {name:<16} Recall@20 {100 * m['recall_at_20']:6.2f}%   MRR@20 {100 * m['mrr_at_20']:6.2f}%")
    memory = ev.get("driver_memory") or {}
    if memory:
        lines.append(f"evaluate's driver peak memory: Python {memory.get('python_peak_rss_mib')} MiB, "
                     f"JVM {memory.get('jvm_peak_rss_mib')} MiB")
    lines.append(f"MLflow run {result['train']['run_id']} (model version {result['train']['model_version']}); in the UI: "
                 f"http://127.0.0.1:5000/{result['train']['ui_path']}")
    lines.append(f"promotion: {ev['promotion']['decision']}: {ev['promotion']['reason']}")
    sc = result["score"]
    lines.append(f"scored with {sc['model_name']} version {sc['model_version']}: {sc['rows']} predictions "
                 f"for {sc['scored_users']} users")
    if "next_day" in result:
        lines += next_day_summary(result["sessionize"], result["next_day"])
    return "\n".join(lines)


def next_day_summary(first: dict[str, Any], day: dict[str, Any]) -> list[str]:
    """What the second day changed: plays, new tracks, the days re-cut, and who scored."""
    ing, ses, sc, tr, ev = day["ingest"], day["sessionize"], day["score"], day["train"], day["evaluate"]
    recut = ("every day (full)" if ses["days_recut"] is None else
             f"{ses['days_recut']} days re-cut ({ses['first_recut_day']} .. {ses['last_recut_day']})"
             if ses["days_recut"] else "nothing re-cut")
    return [
        f"next day ({date.fromisoformat(day['generate']['history_end'][:10]) - timedelta(days=1)}): ingested {ing['rows_silver']} plays; sessionize "
        f"{ses['mode']}: {recut}",
        f"  item dictionary {first['items']} -> {ses['items']} tracks ({ses['new_items']} new ids; every old id kept its "
        f"track); sessions train/valid/test {first['sessions_train']}/{first['sessions_valid']}/{first['sessions_test']}"
        f" -> {ses['sessions_train']}/{ses['sessions_valid']}/{ses['sessions_test']}",
        f"  trained daily ({tr['train_mode']}, {tr['train_sessions']} sessions in {tr['epochs']} epoch(s), "
        f"{tr['train_seconds']}s); Recall@20 {100 * ev['recall_at_20']:.2f}%; promotion: {ev['promotion']['decision']}",
        f"  scored with {sc['model_uri']} ({sc['model_name']} version {sc['model_version']}; it ranks only the tracks "
        f"it was trained on): {sc['rows']} predictions for {sc['scored_users']} users",
    ]
