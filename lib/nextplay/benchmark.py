"""`nextplay benchmark`: the session-benchmark text format through the production path.

The training sessions become a `sessions` Delta table (and an `item_index`) in a temporary lake;
the regular `train` stage reads them with Petastorm under the configured launcher and logs the run;
the test lines are then ranked against all items on the executors, through the path of `nextplay
evaluate` (the logged model shipped to them, as the scorer ships it). The
sequences are taken exactly as the files give them: consecutive repeats stay, because the test
lines keep them and 15% (yoochoose1_64) of the labels repeat the last item. With
`evaluate.candidates=ann` the same model is also ranked among its index's candidates (`ann` in the
result, `model_ann_*` in MLflow), so one training run gives both figures.
"""
from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from nextplay import tables
from nextplay.config import Config
from nextplay.data.lines import benchmark_sessions_csr, encode_lines, read_benchmark_lines
from nextplay.data.ordinal import number_in_order
from nextplay.evaluate.ranking import BaselineRanker, ModelRanker, ship_baselines, task_count
from nextplay.evaluate.report import evaluate_lines, log_evaluation
from nextplay.shipping import ship_model
from nextplay.spark import get_spark
from nextplay.tables import Lake
from nextplay.train.launch import train_and_log

log = logging.getLogger(__name__)

ANN_SCORER = "model_ann"  # with evaluate.candidates=ann: the model ranked among its index's candidates
BASE_TS = 1_600_000_000  # sessions get synthetic, increasing start times one second apart


def write_benchmark_lake(spark, cfg: Config, train_path: str) -> dict[str, int]:
    """Turn `train_sessions.txt` into `item_index` and `sessions` tables with Spark."""
    if not Path(train_path).exists():
        raise FileNotFoundError(f"--train {train_path}: file not found")
    lake = Lake(cfg.lake)
    raw = (spark.read.text(train_path)
           .where(F.length(F.trim("value")) > 0)
           .select(F.monotonically_increasing_id().alias("line"), F.split(F.trim("value"), r"\s+").alias("tracks")))
    lines = raw.select("line", F.posexplode("tracks").alias("pos", "track_id")).persist()
    if lines.isEmpty():
        raise ValueError(f"--train {train_path}: no sessions in the file")
    counts = lines.groupBy("track_id").agg(F.count("*").alias("play_count"))
    numbered = number_in_order(counts, [F.desc("play_count"), "track_id"], "item_idx")
    lake.write(numbered.select("track_id", "item_idx", "play_count"), tables.ITEM_INDEX, mode="overwrite")
    numbered.unpersist()
    index = lake.read(spark, tables.ITEM_INDEX)

    n_lines = raw.count()
    first_valid = int(n_lines * (1.0 - cfg.train.valid_fraction))
    kept = (lines.join(F.broadcast(index.select("track_id", "item_idx")), "track_id")
            .groupBy("line")
            .agg(F.array_sort(F.collect_list(F.struct("pos", "item_idx"))).alias("seq"))
            .select("line", F.col("seq.item_idx").alias("items"))
            .where(F.size("items") >= 2))
    numbered_lines = number_in_order(kept, ["line"], "n", after=-1)  # the line ids are increasing, not dense
    sessions = (numbered_lines
                .select(
                    F.concat(F.lit("u"), F.col("n").cast("string")).alias("user_id"),
                    F.col("n").cast("string").alias("session_id"),
                    F.timestamp_seconds(F.lit(BASE_TS) + F.col("n")).alias("start_ts"),
                    F.timestamp_seconds(F.lit(BASE_TS) + F.col("n")).alias("end_ts"),
                    F.to_date(F.timestamp_seconds(F.lit(BASE_TS) + F.col("n"))).alias("event_date"),
                    F.col("items"),
                    F.size("items").cast("int").alias("length"),
                    F.when(F.col("n") >= first_valid, "valid").otherwise("train").alias("split"),
                ))
    # Many small files, each Horovod rank then reads its own row groups; each file a span of
    # consecutive sessions in the files' order, which `train.batching=lanes` trains oldest first.
    n_files = max(8, cfg.train.num_proc * 4)
    lake.write(sessions.repartitionByRange(n_files, "start_ts").sortWithinPartitions("start_ts"),
               tables.SESSIONS, mode="overwrite")
    lines.unpersist()
    numbered_lines.unpersist()
    return {"train_lines": n_lines, "items": index.count()}


def test_frame(spark, prefixes: list[list[str]], labels: list[str], index: dict[str, int]) -> DataFrame:
    """The file's test lines, encoded through the item index, as the DataFrame (prefix, label) that
    `nextplay evaluate` ranks on the executors: one evaluation path for both."""
    enc_prefixes, enc_labels = encode_lines(prefixes, labels, index)
    rows = spark.createDataFrame(list(zip(enc_prefixes, enc_labels)), "prefix array<int>, label int")
    return rows.repartition(task_count(spark))


def benchmark(cfg: Config, *, train_path: str, test_path: str, out_path: str) -> dict[str, Any]:
    if not Path(test_path).exists():
        raise FileNotFoundError(f"--test {test_path}: file not found")
    cfg = copy.deepcopy(cfg)
    cfg.sessionize.collapse_repeats = False  # the files' sequences are used as given (module docstring)
    test_prefixes, test_labels = read_benchmark_lines(test_path)
    with tempfile.TemporaryDirectory(prefix="nextplay-bench-") as tmp:
        cfg.lake.root = str(Path(tmp) / "lake")
        cfg.lake.catalog = cfg.lake.schema = None
        spark = get_spark(cfg)
        started = time.time()
        sizes = write_benchmark_lake(spark, cfg, train_path)
        log.info("benchmark lake written in %.1fs: %s", time.time() - started, sizes)
        ids = Lake(cfg.lake).read(spark, tables.ITEM_INDEX).select("track_id", "item_idx").toArrow()
        index = dict(zip(ids.column("track_id").to_pylist(), ids.column("item_idx").to_pylist()))
        trained = train_and_log(spark, cfg, run_name=f"benchmark-{Path(train_path).parent.name}")
        shipped = ship_model(spark, f"runs:/{trained.run_id}/model")[0]
        rankers = [ModelRanker(shipped, cfg.evaluate.batch_size),
                   BaselineRanker(ship_baselines(spark, *benchmark_sessions_csr(train_path, index), len(index),
                                                 cfg.evaluate), cfg.evaluate.batch_size)]
        if cfg.evaluate.candidates == "ann":  # the same model among its retrieved candidates, beside exact
            rankers.append(ModelRanker(shipped, cfg.evaluate.batch_size, "ann", cfg.ann, names=(ANN_SCORER,)))
        report = evaluate_lines(test_frame(spark, test_prefixes, test_labels, index), rankers, cfg)
        log_evaluation(cfg, trained.run_id, report)
    ann = report.baselines.pop(ANN_SCORER, None)
    metrics: dict[str, Any] = dict(report.model)
    metrics.update({
        "lines": len(test_labels),
        "train_seconds": trained.seconds,
        "events_per_second": trained.events_per_second,
        "epochs": trained.epochs,
        "world_size": trained.world_size,
        "run_id": trained.run_id,
        "baselines": report.baselines,
        **({"ann": {**ann, "candidates": cfg.ann.candidates, "ef_search": cfg.ann.ef_search}} if ann else {}),
        "config": {"encoder": cfg.model.encoder, "head": cfg.model.head, "hidden_size": cfg.model.hidden_size,
                   "batch_size": cfg.train.batch_size, "launcher": cfg.train.launcher},
    })
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(metrics, indent=2))
    return metrics
