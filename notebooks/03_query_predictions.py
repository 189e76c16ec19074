# Databricks notebook source
# MAGIC %md
# MAGIC # Query the predictions
# MAGIC The latest top-K next tracks per user, with what the item index knows about each track.

# COMMAND ----------

import nbsetup

cfg, spark, lake, show = nbsetup.setup(globals())

# COMMAND ----------

# MAGIC %md Which model wrote which partition, and the sessions version it was trained on (null for
# MAGIC rows written before predictions carried it).

# COMMAND ----------

show(spark.sql("""
    SELECT score_date, model_name, model_version, sessions_version, min(scored_at) AS scored_at,
           count(DISTINCT user_id) AS users, count(*) AS rows
    FROM predictions GROUP BY score_date, model_name, model_version, sessions_version ORDER BY score_date DESC
"""))

# COMMAND ----------

# MAGIC %md The latest partition, joined with the item index (play counts of the training window).

# COMMAND ----------

latest = spark.sql("SELECT max(score_date) AS d FROM predictions").first()["d"]
show(spark.sql(f"""
    SELECT p.user_id, p.rank, p.track_id, round(p.score, 4) AS score, i.play_count
    FROM predictions p JOIN item_index i ON p.track_id = i.track_id
    WHERE p.score_date = DATE'{latest}'
    ORDER BY p.user_id, p.rank
"""), rows=30)

# COMMAND ----------

# MAGIC %md Catalog coverage and popularity bias: how many distinct tracks are recommended at all,
# MAGIC and what share of recommendations goes to the 100 most played tracks.

# COMMAND ----------

show(spark.sql(f"""
    WITH top AS (SELECT track_id FROM item_index ORDER BY play_count DESC LIMIT 100)
    SELECT count(DISTINCT p.track_id) AS distinct_tracks,
           (SELECT count(*) FROM item_index) AS vocabulary,
           round(avg(CASE WHEN t.track_id IS NOT NULL THEN 1.0 ELSE 0.0 END), 3) AS top100_share
    FROM predictions p LEFT JOIN top t ON p.track_id = t.track_id
    WHERE p.score_date = DATE'{latest}'
"""))
