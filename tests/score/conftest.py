"""A tiny real setup for the scoring tests, built once per test session: a SessionModel trained for a
few steps on made-up plays, logged and registered in a temp sqlite MLflow store (the champion), and
those plays in a temp lake. The plays hold what scoring must handle: unknown tracks, repeats (also repeats broken
only by an unknown track), equal timestamps, users outside the lookback and a user whose recent
plays are all unknown."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nextplay.config import Config, load_config

N_TRACKS = 30
NEWEST = datetime(2024, 3, 31, 12, 0)
LOOKBACK_DAYS = 30
HISTORY_LENGTH = 5
TOP_K = 4
SESSIONS_VERSION = 3  # the sessions version the tiny model's run says it trained on


@dataclass(frozen=True)
class TinyModel:
    cfg: Config  # lake, MLflow store and score.* settings of the setup
    rnn_dir: Path  # nextplay.model.io.save_model output
    item_index: pd.DataFrame  # track_id, item_idx, play_count
    plays: pd.DataFrame  # the rows of plays_silver
    version: str  # registered version of cfg.tracking.model_name


def make_plays(rng: np.random.Generator) -> pd.DataFrame:
    known = [f"t{i:02d}" for i in range(1, N_TRACKS + 1)]
    rows = []

    def play(user: str, track: str, ts: datetime) -> None:
        rows.append((f"{user}-{len(rows):04d}", user, track, ts))

    for u in range(10):
        user = f"u{u}"
        t = NEWEST - timedelta(days=int(rng.integers(0, 20)), hours=int(rng.integers(0, 24)))
        for _ in range(int(rng.integers(1, 12))):
            track = known[int(rng.integers(0, 8))] if rng.random() < 0.5 else str(rng.choice(known))
            if rng.random() < 0.15:
                track = f"x{int(rng.integers(0, 3))}"  # unknown to the model
            play(user, track, t)
            if rng.random() < 0.2:
                play(user, track, t + timedelta(seconds=1))  # a consecutive repeat
            t -= timedelta(minutes=int(rng.integers(0, 3)))  # 0: equal timestamps
    play("u_repeat", "t05", NEWEST - timedelta(hours=3))  # t05 x t05 collapses to t05
    play("u_repeat", "x1", NEWEST - timedelta(hours=2))
    play("u_repeat", "t05", NEWEST - timedelta(hours=1))
    play("u_old", "t01", NEWEST - timedelta(days=LOOKBACK_DAYS + 2))  # outside the lookback
    play("u_unknown", "x2", NEWEST - timedelta(days=1))  # active, nothing the model knows
    play("u_unknown", "t03", NEWEST - timedelta(days=LOOKBACK_DAYS + 1))
    play("u_newest", "t07", NEWEST)
    df = pd.DataFrame(rows, columns=["event_id", "user_id", "track_id", "ts"])
    df["ms_played"] = 30_000
    df["event_date"] = df["ts"].dt.date
    return df


def expected_histories(plays: pd.DataFrame, item_index: pd.DataFrame, *, history_length: int,
                       collapse: bool) -> dict[str, np.ndarray]:
    """The scoring contract written out in pandas, independently of the Spark implementation."""
    since = plays["ts"].max() - timedelta(days=LOOKBACK_DAYS)
    recent = plays[plays["ts"] > since].sort_values(["ts", "event_id"])
    mapped = recent.merge(item_index[["track_id", "item_idx"]], on="track_id")
    out = {}
    for user, group in mapped.groupby("user_id", sort=True):
        seq = group.sort_values(["ts", "event_id"])["item_idx"].to_numpy(np.int64)
        if collapse:
            seq = np.array([x for i, x in enumerate(seq) if i == 0 or x != seq[i - 1]], dtype=np.int64)
        out[user] = seq[-history_length:]
    return out


def train_tiny_rnn(histories: list[np.ndarray], n_items: int, steps: int = 40, encoder: str = "gru"):
    """A few Adam steps on the users' histories: enough for distinct, non-uniform scores."""
    import torch

    from nextplay.config import TrainConfig
    from nextplay.model.session import SessionModel
    from nextplay.model.pyfunc import pad
    from nextplay.train.loop import build_optimizer

    torch.manual_seed(3)
    cfg = load_config(None, ["model.hidden_size=16", "model.dropout=0.0", f"model.encoder={encoder}"]).model
    model = SessionModel(n_items, cfg)
    seqs = [h for h in histories if len(h) >= 2]
    items, lengths = (torch.from_numpy(a) for a in pad(seqs))
    opt = build_optimizer(model, TrainConfig(lr=0.05))  # row-wise Adam where item gradients are sparse
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss, n = model.loss(items, lengths)
        (loss / n).backward()
        opt.step()
    return model.eval()


def build_tiny(root: Path, encoder: str, model_name: str | None = None) -> TinyModel:
    """The setup of the module docstring, its model built with `encoder`, registered under `model_name`
    (default: tracking.model_name) as that name's champion."""
    import mlflow

    from nextplay import tracking
    from nextplay.model.io import save_model
    from nextplay.model.pyfunc import log_model
    from nextplay.tables import Pin

    cfg = load_config(None, [
        f"lake.root={root / 'lake'}", "spark.master=local[2]", "spark.shuffle_partitions=4",
        f"tracking.uri=sqlite:///{root / 'mlruns.db'}", f"tracking.artifact_location={root / 'mlartifacts'}",
        f"score.lookback_days={LOOKBACK_DAYS}", f"score.history_length={HISTORY_LENGTH}",
        f"score.top_k={TOP_K}", "score.batch_size=3", "score.chunk_size=7", "score.score_date=2024-04-01",
        *([f"tracking.model_name={model_name}"] if model_name else []),
    ])
    rng = np.random.default_rng(11)
    plays = make_plays(rng)
    counts = plays["track_id"].value_counts()
    index = pd.DataFrame({"track_id": [f"t{i:02d}" for i in range(1, N_TRACKS + 1)]})
    index["item_idx"] = np.arange(1, N_TRACKS + 1, dtype=np.int32)
    index["play_count"] = index["track_id"].map(counts).fillna(0).astype(np.int64)
    hist = expected_histories(plays, index, history_length=50, collapse=True)
    rnn_dir = root / f"model-{encoder}"
    save_model(train_tiny_rnn(list(hist.values()), N_TRACKS, encoder=encoder), rnn_dir)
    with tracking.start_run(cfg, run_name=f"tiny-{encoder}"):
        mlflow.set_tags(Pin(SESSIONS_VERSION, 1, None).as_tags())  # the table versions, as training tags them
        info = log_model(str(rnn_dir), index, registered_model_name=cfg.tracking.model_name,
                         top_k=TOP_K, collapse_repeats=True)
    assert mlflow.active_run() is None
    # What `nextplay score` loads by default; the promotion gate sets it after evaluation.
    tracking.set_alias(cfg.tracking.model_name, tracking.CHAMPION, str(info.registered_model_version))
    return TinyModel(cfg, rnn_dir, index, plays, str(info.registered_model_version))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny(tmp_path_factory.mktemp("score"), "gru")


@pytest.fixture(scope="session", params=["gru", "sasrec"])
def tiny_each(request: pytest.FixtureRequest, tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The tiny setup once per encoder: the scoring paths must not care which one the model holds."""
    if request.param == "gru":
        return tiny
    return build_tiny(tmp_path_factory.mktemp(f"score-{request.param}"), request.param,
                      model_name=f"nextplay-tiny-{request.param}")
