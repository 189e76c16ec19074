"""`nextplay pipeline`: generate -> ingest -> sessionize -> train -> evaluate -> score in one process.

One SparkSession serves every stage, and each stage is the same function its own subcommand runs,
so the pipeline is a demo of the stages rather than a second implementation of them. In particular
it goes through the promotion gate as the nightly jobs do: evaluate decides whether the model just
trained becomes the champion, and score serves the champion (or `score.model_uri`), not simply the
newest model.
"""
from __future__ import annotations

import logging
import time
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


def run_pipeline(cfg: Config) -> dict[str, Any]:
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
    lines.append(f"MLflow run {result['train']['run_id']} (model version {result['train']['model_version']})")
    lines.append(f"promotion: {ev['promotion']['decision']}: {ev['promotion']['reason']}")
    sc = result["score"]
    lines.append(f"scored with {sc['model_name']} version {sc['model_version']}: {sc['rows']} predictions "
                 f"for {sc['scored_users']} users")
    return "\n".join(lines)
