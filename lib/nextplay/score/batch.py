"""`nextplay score`: the top-K next tracks for every recently active user, into `predictions`.

The model, by default the registry's `champion` (the version the promotion gate of `nextplay
evaluate` last accepted), is pinned to one registry version and downloaded once on the driver,
shipped to the executors as a zip with `SparkContext.addArchive` (Spark ships a local folder only
to in-process executors: a cluster's get the archive and unpack it on their own disk), and loaded
once per executor Python process (Python workers are reused across tasks). Executors never talk to
the tracking server, which on a cluster
they often cannot reach or authenticate to.

The model's item ids must mean the same tracks in the lake's append-only `item_index` (checked with
one join count; a rebuilt or other lake is refused). Listening histories come from the table
`listener_history`, which each run first brings up to date with the days ingested since the last
(score/history.py), and are mapped through the model's own index, so tracks added to the lake after
training are dropped from them, never ranked.

The run replaces its `score_date` partition in one Delta commit (`replaceWhere`): a failure
anywhere before the commit leaves the previous partition exactly as it was, and readers see the
old partition or the new one, never a mix. A run with no user to score (no recent play of a track
the model knows) fails before the commit rather than replace the partition with nothing (unless
`score.allow_empty`).
"""
from __future__ import annotations

import logging
import time
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from nextplay.config import AnnConfig, Config, ConfigError
from nextplay.model import pyfunc
from nextplay.score import history
from nextplay.shipping import load_cached, ship_model
from nextplay.spark import get_spark
from nextplay.tables import ITEM_INDEX, PREDICTIONS, PREDICTIONS_SCHEMA, Lake, check_dictionary
from nextplay.tracking import ResolvedModel, configure, resolve_model

log = logging.getLogger(__name__)

SCORED_SCHEMA = "user_id string, rank int, item_idx int, score float"

def make_scorer(shipped_name: str, *, k: int, exclude_played: bool, batch_size: int, chunk_size: int,
                candidates: str = "exact", ann: AnnConfig | None = None
                ) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The mapInPandas function: (user_id, items) batches in, one row per (user, rank) out, ranked as
    `candidates` (score.candidates) asks, with the model's item-vector index for `ann`."""
    settings = ann or AnnConfig()

    def score_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = load_cached(shipped_name)
        ranking = model.ranking(candidates, settings, chunk_size)
        for pdf in batches:
            if pdf.empty:
                continue
            seqs = [np.asarray(h, dtype=np.int64) for h in pdf["items"]]
            scores, items = model.topk_items(seqs, k, exclude_seen=exclude_played,
                                             batch_size=batch_size, chunk_size=chunk_size, ranking=ranking)
            width = scores.shape[1]
            out = pd.DataFrame({
                "user_id": np.repeat(pdf["user_id"].to_numpy(), width),
                "rank": np.tile(np.arange(1, width + 1, dtype=np.int32), len(pdf)),
                "item_idx": items.ravel().astype(np.int32),
                "score": scores.ravel(),
            })
            # -inf marks "no candidate left" after exclusion; it can only be the tail of a row.
            yield out[np.isfinite(out["score"].to_numpy())]

    return score_partition


def parse_score_date(value: str | None) -> date:
    if value is None:
        return datetime.now(timezone.utc).date()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"score.score_date: expected a date like 2024-01-31, got {value!r}") from None


def item_index_frame(spark: SparkSession, model_dir: Path) -> DataFrame:
    """The model's own item index as a DataFrame.

    Not the lake's `item_index` table: sessionize may have added tracks since this model was
    trained, and a history must be mapped to the ids the model learned (1..its V).
    """
    table = pq.read_table(pyfunc.index_file(model_dir), columns=["track_id", "item_idx"])
    return spark.createDataFrame(table)


def check_lake_dictionary(spark: SparkSession, lake: Lake, index: DataFrame, model_dir: Path, model_uri: str) -> None:
    """Refuse a model whose ids the lake's item_index numbers otherwise (a rebuilt lake, another lake):
    predictions name tracks by the model's ids, and `item_idx` in predictions means item_index's. A lake
    without item_index (plays only) has no dictionary to disagree with."""
    if not lake.exists(spark, ITEM_INDEX):
        log.warning("%s has no item_index table: the model's own dictionary names the tracks", lake.describe())
        return
    n_items = pq.read_metadata(pyfunc.index_file(model_dir)).num_rows
    check_dictionary(index, n_items, lake.read(spark, ITEM_INDEX), model_uri, lake.describe())


def predictions_frame(scored: DataFrame, index: DataFrame, model: ResolvedModel, scored_at: datetime,
                      score_date: date) -> DataFrame:
    """Attach track ids and run columns (the model version and the sessions version it trained on, so
    a prediction traces back to its data), in the order and types of PREDICTIONS_SCHEMA."""
    rows = scored.join(index, "item_idx").select(
        "user_id", "rank", "track_id", "item_idx", "score",
        F.lit(model.name).alias("model_name"), F.lit(model.version).alias("model_version"),
        F.lit(scored_at).alias("scored_at"), F.lit(score_date).alias("score_date"),
        F.lit(model.sessions_version).cast("long").alias("sessions_version"))
    return rows.select([F.col(f.name).cast(f.dataType) for f in PREDICTIONS_SCHEMA.fields])


def _nothing_scored(model: ResolvedModel, index: DataFrame, cfg: Config, active: int, newest_iso: str,
                    score_date: date) -> str:
    """Why a run has no history to score, in one line, for the error that keeps the old partition."""
    return (f"{model.uri}: none of the model's {index.count()} tracks appear in the plays of the {active} users "
            f"active in the {cfg.score.lookback_days} days before {newest_iso} (a model trained on another catalog?); "
            f"refusing to replace the predictions of {score_date} with nothing (set score.allow_empty=true to "
            "empty that partition anyway)")


def score(cfg: Config) -> dict:
    """Score every user active in the last `score.lookback_days` and replace today's partition, with
    `score.model_uri` or, by default, the version behind the alias `champion` (set by the promotion
    gate of `nextplay evaluate`; none yet is a one-line error)."""
    started = time.monotonic()
    scored_at = datetime.now(timezone.utc)
    score_date = parse_score_date(cfg.score.score_date)
    configure(cfg.tracking)
    model = resolve_model(cfg.tracking, cfg.score.model_uri)
    spark = get_spark(cfg)
    lake = Lake(cfg.lake)
    shipped, local = ship_model(spark, model)
    config = pyfunc.model_config(local)
    if pyfunc.CONF_COLLAPSE not in config:
        raise ValueError(f"{model.uri} was not logged by nextplay.model.pyfunc.log_model (no '{pyfunc.CONF_COLLAPSE}' "
                         "in its model config): score a model that the train stage logged")
    collapse = bool(config[pyfunc.CONF_COLLAPSE])
    candidates = pyfunc.candidates_mode(cfg.score.candidates, pyfunc.ann_folder(local) is not None,
                                        pyfunc.model_head(local))
    index = item_index_frame(spark, local)
    # Tracks the lake added after training have ids above the model's: histories map track ids
    # through the model's own index, so they are dropped there and never ranked.
    check_lake_dictionary(spark, lake, index, local, model.uri)
    kept = history.refresh(spark, lake, index, history_length=cfg.score.history_length,
                           lookback_days=cfg.score.lookback_days)
    recent, newest = kept.recent, kept.newest_us
    active = kept.active_users()
    newest_iso = datetime.fromtimestamp(newest / 1e6, tz=timezone.utc).isoformat()
    if active == 0:
        raise ValueError(f"no plays in the {cfg.score.lookback_days} days before {newest_iso}")
    hist = history.histories(recent, index, history_length=cfg.score.history_length, collapse=collapse)
    scorer = make_scorer(shipped, k=cfg.score.top_k, exclude_played=cfg.score.exclude_played,
                         batch_size=cfg.score.batch_size, chunk_size=cfg.score.chunk_size, candidates=candidates,
                         ann=cfg.ann)
    # Scoring is CPU-bound on little data, so adaptive execution would pack it into one task:
    # spread it over every core instead (an explicit partition count is never coalesced).
    hist = hist.repartition(2 * spark.sparkContext.defaultParallelism)
    rows = predictions_frame(hist.mapInPandas(scorer, SCORED_SCHEMA), index, model, scored_at, score_date)
    # A user gets rows only for a history in the model's catalog: with no recent play of any of its
    # tracks the write would replace the day's partition with nothing. A cheap join answers it
    # before any scoring, which still runs once, inside the write.
    if recent.join(index.select("track_id"), "track_id").isEmpty() and not cfg.score.allow_empty:
        raise ValueError(_nothing_scored(model, index, cfg, active, newest_iso, score_date))
    lake.create_if_missing(spark, PREDICTIONS, PREDICTIONS_SCHEMA)
    added = lake.add_missing_columns(spark, PREDICTIONS)
    if added:
        log.warning("%s: added the columns %s (table written by an older release)", lake.name(PREDICTIONS),
                    ", ".join(added))
    log.info("scoring %d active users with %s (%s candidates) into %s, score_date=%s", active, model.uri,
             candidates, lake.name(PREDICTIONS), score_date)
    lake.write(rows, PREDICTIONS, mode="overwrite", replaceWhere=f"score_date = DATE'{score_date}'")
    written = lake.read(spark, PREDICTIONS).where(F.col("score_date") == F.lit(score_date))
    counts = written.agg(F.count("*").alias("rows"), F.countDistinct("user_id").alias("users")).first()
    seconds = time.monotonic() - started
    return {
        "table": lake.name(PREDICTIONS), "score_date": str(score_date), "model_uri": model.uri,
        "model_name": model.name, "model_version": model.version, "sessions_version": model.sessions_version,
        "newest_play": newest_iso, "candidates": candidates, "histories": kept.mode,
        "histories_days_read": len(kept.days) if kept.days is not None else None,
        "active_users": active, "scored_users": counts["users"], "rows": counts["rows"],
        "seconds": round(seconds, 1), "users_per_s": round(counts["users"] / seconds, 1),
    }
