"""Consecutive numbers in a total order, computed on the executors.

`row_number()` over a window with no partition moves every row into one task (Spark warns "No Partition
Defined for Window operation"): fine for a day's new tracks, one core's memory for a first load of a
catalog of millions. Here the rows are range-partitioned by the order instead, numbered inside each
partition, and shifted by the sizes of the partitions before theirs, a few numbers collected to the
driver. The order must be total (end with a unique column), so the numbers do not depend on where
the partition bounds fall.
"""
from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F


def number_in_order(frame: DataFrame, order: list[str | Column], name: str, after: int = 0,
                    keep: list[str] | None = None) -> DataFrame:
    """`keep` (default: every column of `frame`) and `name` = after+1, after+2, ... in `order`
    (ascending columns, or Columns with their direction), persisted and computed: the caller
    unpersists it when done."""
    spark = frame.sparkSession
    parts = max(1, spark.sparkContext.defaultParallelism)
    local = (frame.repartitionByRange(parts, *order)
             .withColumn("_part", F.spark_partition_id())
             .withColumn("_local", F.row_number().over(Window.partitionBy("_part").orderBy(*order)))
             .persist(StorageLevel.MEMORY_AND_DISK))  # one partitioning for the sizes and the numbers
    sizes = sorted((r["_part"], r["count"]) for r in local.groupBy("_part").count().collect())
    offsets, total = [], after
    for part, size in sizes:
        offsets += [F.lit(part), F.lit(total)]
        total += size
    start = F.create_map(*offsets)[F.col("_part")] if offsets else F.lit(after)
    numbered = local.select(*(keep or frame.columns), (start + F.col("_local")).cast("int").alias(name))
    numbered = numbered.persist(StorageLevel.MEMORY_AND_DISK)
    numbered.count()
    local.unpersist()
    return numbered
