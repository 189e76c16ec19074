# Databricks notebook source
# MAGIC %md
# MAGIC # Compare training runs
# MAGIC Every evaluated run of the experiment: Recall@20 and MRR@20 of the model next to the
# MAGIC baselines measured on the same test lines. These are offline proxies for what listeners do.

# COMMAND ----------

import nbsetup

from nextplay.tracking import compare_runs

cfg, spark, lake, show = nbsetup.setup(globals())

# COMMAND ----------

runs = compare_runs(cfg, k=20)
show(runs)

# COMMAND ----------

# MAGIC %md How far the best run is ahead of the strongest baseline.

# COMMAND ----------

if runs.empty:
    print(f"no evaluated run in experiment {cfg.tracking.experiment} yet: run `nextplay train` and `nextplay evaluate`")
else:
    best = runs.sort_values("recall_at_20", ascending=False).iloc[0]
    baselines = [c for c in runs.columns if c.endswith("_recall_at_20") and c != "recall_at_20"]
    strongest = max(baselines, key=lambda c: best[c], default=None)
    if strongest is None:
        print(f"best run {best['run_id']}: Recall@20 {best['recall_at_20']:.4f} (no baseline logged)")
    else:
        print(f"best run {best['run_id']}: Recall@20 {best['recall_at_20']:.4f} vs "
              f"{strongest.removesuffix('_recall_at_20')} {best[strongest]:.4f}")
