"""What every notebook needs first, on Databricks and as plain Python alike.

A plain module rather than a notebook, so `import nbsetup` works in both places: Databricks puts
a notebook's folder on sys.path, and `python notebooks/01_explore_sessions.py` does the same.
"""
from __future__ import annotations

import os
import shlex
from typing import Any, Callable

from pyspark.sql import SparkSession

from nextplay.config import Config, load_config
from nextplay.spark import get_spark
from nextplay.tables import Lake

ON_DATABRICKS = "DATABRICKS_RUNTIME_VERSION" in os.environ


def config() -> Config:
    """`NEXTPLAY_CONF` (default: the packaged `databricks` conf on Databricks, conf/local.yml elsewhere)
    plus the `key=value` pairs in `NEXTPLAY_SET`, e.g. NEXTPLAY_SET="lake.schema=nextplay_dev"."""
    default = "databricks" if ON_DATABRICKS else None
    return load_config(os.environ.get("NEXTPLAY_CONF") or default, shlex.split(os.environ.get("NEXTPLAY_SET", "")))


def show_fn(namespace: dict[str, Any]) -> Callable[[Any], None]:
    """Databricks' `display` when the notebook has one, else a plain-text table."""
    if "display" in namespace:
        return namespace["display"]

    def show(df: Any, rows: int = 20) -> None:
        frame = df.limit(rows).toPandas() if hasattr(df, "toPandas") else df
        print(frame.to_string(max_rows=rows))

    return show


def setup(namespace: dict[str, Any]) -> tuple[Config, SparkSession, Lake, Callable[[Any], None]]:
    """Config, the Spark session, the lake with every table registered as a view, and `show`."""
    cfg = config()
    spark = get_spark(cfg)
    lake = Lake(cfg.lake)
    found = lake.register_views(spark)
    print(f"lake {lake.describe()}: tables {', '.join(found) or '(none yet)'}")
    return cfg, spark, lake, show_fn(namespace)
