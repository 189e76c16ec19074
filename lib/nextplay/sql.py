"""`nextplay sql`: SQL over every table of the lake, each registered under its own name.

Only results go to stdout (Spark and Python logging write to stderr), so `--format json` output
can be piped straight into `json.loads` or `jq`.
"""
from __future__ import annotations

import sys
from typing import Iterable, TextIO

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from nextplay.config import Config
from nextplay.spark import get_spark
from nextplay.tables import Lake

# Spark formats each row itself, in the session time zone (UTC): timestamps keep their offset and
# microseconds, nulls stay as null, nested structs and arrays come out as JSON too.
_JSON_OPTIONS = {"timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX", "dateFormat": "yyyy-MM-dd",
                 "ignoreNullFields": "false"}


def json_lines(df: DataFrame) -> Iterable[str]:
    """Each row of `df` as a JSON object, streamed partition by partition to the driver."""
    for row in df.select(F.to_json(F.struct("*"), _JSON_OPTIONS).alias("j")).toLocalIterator():
        yield row["j"]


def write_json_array(objects: Iterable[str], out: TextIO) -> None:
    out.write("[")
    for i, obj in enumerate(objects):
        out.write(",\n" if i else "\n")
        out.write(obj)
    out.write("\n]\n")


def run_sql(cfg: Config, query: str, fmt: str = "table", limit: int = 1000) -> None:
    """Run `query` with every existing lake table registered; print up to `limit` rows as a table, or
    every row as a JSON array (`fmt="json"`)."""
    spark = get_spark(cfg)
    Lake(cfg.lake).register_views(spark)
    df = spark.sql(query)
    if fmt == "json":
        write_json_array(json_lines(df), sys.stdout)
    else:
        df.show(n=limit, truncate=False)
    sys.stdout.flush()
