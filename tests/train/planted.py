"""A small sessions lake whose next item is fully determined by the current one (item i -> i+1
on a cycle of N items): any working trainer must learn it almost perfectly."""
from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from nextplay import tables
from nextplay.config import Config
from nextplay.tables import Lake

N_ITEMS = 30


def write_planted_index(spark: SparkSession, cfg: Config, n_items: int, generation: str) -> None:
    """The item index of `n_items` tracks, committed as sessionize commits it (stamped with its generation)."""
    index = spark.range(1, n_items + 1).select(
        F.format_string("t%03d", "id").alias("track_id"), F.col("id").cast("int").alias("item_idx"),
        F.lit(100).cast("long").alias("play_count"))
    Lake(cfg.lake).write(index, tables.ITEM_INDEX, mode="overwrite", **tables.generation_options(generation))


def write_planted_lake(spark: SparkSession, cfg: Config, n_sessions: int = 600, files: int = 6,
                       n_items: int = N_ITEMS, time_ordered: bool = False) -> None:
    """With n_items >= n_sessions every session starts on its own item (session k on item k + 1), so
    its first item names it; start times increase with k. The files hold random sessions, or with
    `time_ordered` spans of consecutive ones. Both tables carry one generation, as sessionize writes them."""
    lake = Lake(cfg.lake)
    generation = tables.new_generation()
    write_planted_index(spark, cfg, n_items, generation)
    length = (F.col("id") % 7 + 3).cast("int")
    start = (F.col("id") % n_items).cast("int")
    items = F.transform(F.sequence(F.lit(0), length - 1), lambda i: ((start + i) % n_items + 1).cast("int"))
    ts = F.timestamp_seconds(F.lit(1_700_000_000) + F.col("id") * 3600)
    sessions = spark.range(n_sessions).select(
        F.format_string("u%d", F.col("id") % 50).alias("user_id"), F.col("id").cast("string").alias("session_id"),
        ts.alias("start_ts"), ts.alias("end_ts"), F.to_date(ts).alias("event_date"), items.alias("items"),
        length.alias("length"),
        F.when(F.col("id") % 10 == 0, "valid").when(F.col("id") % 10 == 1, "test").otherwise("train").alias("split"))
    layout = (sessions.repartitionByRange(files, "start_ts").sortWithinPartitions("start_ts") if time_ordered
              else sessions.repartition(files))
    lake.write(layout, tables.SESSIONS, mode="overwrite", **tables.generation_options(generation))
