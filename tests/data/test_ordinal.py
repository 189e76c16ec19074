"""Numbers in a total order from range partitions equal one global row_number, whatever the partitioning."""
from __future__ import annotations

from pyspark.sql import Window
from pyspark.sql import functions as F

from nextplay.data.ordinal import number_in_order


def test_numbers_follow_the_order_across_partitions(spark) -> None:
    # Ties in the first column, broken by a unique second one; rows spread over 7 input partitions.
    frame = spark.range(5000).select((F.col("id") % 13).alias("at"), F.format_string("t%05d", (F.col("id") * 7919) % 5000)
                                     .alias("track_id")).repartition(7)
    got = number_in_order(frame, ["at", "track_id"], "item_idx", after=100)
    expected = frame.select("at", "track_id", (F.lit(100) + F.row_number().over(Window.orderBy("at", "track_id")))
                            .cast("int").alias("item_idx"))
    assert got.columns == ["at", "track_id", "item_idx"]
    assert got.exceptAll(expected).count() == 0 and expected.exceptAll(got).count() == 0
    assert got.agg(F.min("item_idx"), F.max("item_idx"), F.countDistinct("item_idx")).first() == (101, 5100, 5000)
    got.unpersist()


def test_a_descending_order_and_kept_columns(spark) -> None:
    frame = spark.createDataFrame([("a", 5), ("b", 9), ("c", 5), ("d", 1)], "track_id string, plays int")
    got = number_in_order(frame, [F.desc("plays"), "track_id"], "item_idx", keep=["track_id"])
    assert [tuple(r) for r in got.orderBy("item_idx").collect()] == [("b", 1), ("a", 2), ("c", 3), ("d", 4)]
    got.unpersist()


def test_nothing_to_number(spark) -> None:
    frame = spark.createDataFrame([], "track_id string, at long")
    got = number_in_order(frame, ["at", "track_id"], "item_idx", after=41)
    assert got.count() == 0 and got.columns == ["track_id", "at", "item_idx"]
    got.unpersist()
