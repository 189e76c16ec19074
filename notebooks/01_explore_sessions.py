# Databricks notebook source
# MAGIC %md
# MAGIC # Explore the sessions
# MAGIC How long sessions are, which tracks dominate, and how the time split divides the data.
# MAGIC Configuration: `NEXTPLAY_CONF` / `NEXTPLAY_SET` (see `nbsetup.py`).

# COMMAND ----------

import nbsetup
from pyspark.sql import functions as F

from nextplay.tables import SESSIONS

cfg, spark, lake, show = nbsetup.setup(globals())

# COMMAND ----------

# MAGIC %md Session lengths (in plays, after repeats were collapsed), through the library.

# COMMAND ----------

sessions = lake.read(spark, SESSIONS)
show(sessions.select("length").summary("count", "mean", "50%", "90%", "99%", "max"))
show(sessions.groupBy("length").count().orderBy("length"), rows=50)

# COMMAND ----------

# MAGIC %md Split sizes and time ranges: the split is by time, so the ranges must not overlap.

# COMMAND ----------

show(spark.sql("""
    SELECT split, count(*) AS sessions, sum(length) AS plays, count(DISTINCT user_id) AS users,
           min(start_ts) AS first_start, max(end_ts) AS last_end
    FROM sessions GROUP BY split ORDER BY first_start
"""))

# COMMAND ----------

# MAGIC %md The most played tracks of the vocabulary, and how much of all plays the top 1% takes.

# COMMAND ----------

show(spark.sql("SELECT track_id, item_idx, play_count FROM item_index ORDER BY play_count DESC LIMIT 20"))
show(spark.sql("""
    WITH ranked AS (SELECT play_count, percent_rank() OVER (ORDER BY play_count DESC) AS pr FROM item_index)
    SELECT round(sum(CASE WHEN pr <= 0.01 THEN play_count ELSE 0 END) / sum(play_count), 3) AS top_1pct_share,
           count(*) AS vocabulary
    FROM ranked
"""))
show(sessions.where(F.col("split") == "test").select("user_id", "start_ts", "items").orderBy(F.desc("start_ts")), rows=5)
