"""The logged model: a SessionModel (model/session.py) plus the item index it was trained with, as an MLflow pyfunc.

Why a custom pyfunc and not `mlflow.pytorch`: MLflow 3 saves torch models as torch.export
programs with a fixed sequence length (docs/stack.md), and a bare network speaks item indices while its
users speak track ids. This wrapper takes track-id histories and answers track ids, so a notebook,
`mlflow models predict` or a serving endpoint needs nothing else; the batch scorer reaches past the
strings to `topk_items` because it has already mapped histories to item indices in Spark.

The item index travels inside the model as Parquet (a million track ids stay small and load fast).
No code travels with the model: whoever can write a registry version must not be able to run code
where the model is loaded. nextplay's own loading (`load_trusted`: evaluate, batch scoring on every
executor) builds the model from the installed package, reading only the MLmodel file, the weights
(`weights_only=True`) and the item index. The nextplay version that logged it is in the metadata.
"""
from __future__ import annotations

import importlib.metadata
import tempfile
from pathlib import Path
from typing import Any, Sequence

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

from nextplay.config import ScoreConfig
from nextplay.model.io import load_model

ARTIFACT_RNN = "rnn"
ARTIFACT_INDEX = "item_index"
INDEX_FILE = "item_index.parquet"
# Scoring settings fixed at training time, stored as the pyfunc's model_config.
CONF_TOP_K = "top_k"
CONF_COLLAPSE = "collapse_repeats"
# When the pyfunc is called directly; the batch scorer passes the configured values.
DEFAULT_BATCH_SIZE = ScoreConfig.batch_size
DEFAULT_CHUNK_SIZE = ScoreConfig.chunk_size

SIGNATURE = ModelSignature(
    inputs=Schema([
        ColSpec(Array(DataType.string), "history"),  # track ids, oldest first
        # Default: top_k of the model config. Give it for every row or none (a gap reads as NaN).
        ColSpec(DataType.long, "k", required=False),
    ]),
    outputs=Schema([
        ColSpec(Array(DataType.string), "track_ids"),
        ColSpec(Array(DataType.float), "scores"),
    ]),
    params=ParamSchema([ParamSpec("exclude_played", DataType.boolean, False)]),
)


def collapse_repeats(seq: np.ndarray) -> np.ndarray:
    """Drop consecutive repeats (a a b a -> a b a), as sessionize does before training."""
    if len(seq) < 2:
        return seq
    keep = np.empty(len(seq), dtype=bool)
    keep[0] = True
    np.not_equal(seq[1:], seq[:-1], out=keep[1:])
    return seq[keep]


def pad(histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad non-empty int histories with 0 into [B, max_len], without a loop over items."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    out = np.zeros((len(histories), int(lengths.max(initial=1))), dtype=np.int64)
    out[np.arange(out.shape[1])[None, :] < lengths[:, None]] = np.concatenate(histories)
    return out, lengths


class NextTrackModel(mlflow.pyfunc.PythonModel):
    """Top-K next tracks for track-id histories; see the module docstring."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.load_files(context.artifacts[ARTIFACT_RNN], context.artifacts[ARTIFACT_INDEX], context.model_config)

    def load_files(self, rnn_dir: str | Path, index_path: str | Path, config: dict[str, Any]) -> None:
        """Load the weights and the scoring settings; the item index is read on first use."""
        self.rnn = load_model(rnn_dir, map_location="cpu")
        self.top_k = int(config[CONF_TOP_K])
        self.collapse = bool(config[CONF_COLLAPSE])
        self._index_path = str(index_path)
        self._track_ids: pd.Index | None = None  # item_idx - 1 -> track id, read on first use

    @property
    def track_ids(self) -> pd.Index:
        """Track ids by position item_idx - 1; read lazily since the batch scorer never needs them."""
        if self._track_ids is None:
            index = pd.read_parquet(self._index_path, columns=["track_id", "item_idx"])
            self._track_ids = pd.Index(index.sort_values("item_idx")["track_id"].to_numpy())
        return self._track_ids

    def topk_items(self, histories: Sequence[np.ndarray], k: int, *, exclude_seen: bool = False,
                   batch_size: int = DEFAULT_BATCH_SIZE,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """Scores and item indices [N, k'] (k' = min(k, catalog)) for non-empty item-index histories.

        Rows are sorted by length before batching so a batch pads to similar lengths; a batch holds
        `batch_size` histories and the model streams the catalog in `chunk_size` slices, which is
        what bounds memory (docs/scoring.md).
        """
        k = min(k, self.rnn.n_items)
        scores = np.empty((len(histories), k), dtype=np.float32)
        items = np.empty((len(histories), k), dtype=np.int64)
        order = np.argsort([len(h) for h in histories], kind="stable")
        with torch.inference_mode():
            for lo in range(0, len(order), batch_size):
                rows = order[lo:lo + batch_size]
                padded, lengths = pad([histories[i] for i in rows])
                s, i = self.rnn.topk(torch.from_numpy(padded), torch.from_numpy(lengths), k,
                                     exclude_seen=exclude_seen, chunk_size=chunk_size)
                scores[rows], items[rows] = s.numpy(), i.numpy()
        return scores, items

    def encode(self, history: Sequence[str]) -> np.ndarray:
        """Track ids -> item indices: unknown ids are skipped, then repeats collapsed if training did."""
        pos = self.track_ids.get_indexer(pd.Index(np.asarray(history, dtype=object)))
        seq = (pos[pos >= 0] + 1).astype(np.int64)
        return collapse_repeats(seq) if self.collapse else seq

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        exclude = bool((params or {}).get("exclude_played", False))
        if "k" in model_input:
            ks = model_input["k"].to_numpy(dtype=np.int64).clip(min=0)
        else:
            ks = np.full(len(model_input), self.top_k, dtype=np.int64)
        histories = [self.encode([] if h is None else h) for h in model_input["history"]]
        known = [i for i, h in enumerate(histories) if len(h)]
        track_ids: list[list[str]] = [[] for _ in histories]
        scores: list[list[float]] = [[] for _ in histories]
        if known:
            s, idx = self.topk_items([histories[i] for i in known], int(ks[known].max()), exclude_seen=exclude)
            for row, i in enumerate(known):
                keep = np.isfinite(s[row, :ks[i]])  # fewer than k candidates left after exclusion
                track_ids[i] = self.track_ids[idx[row, :ks[i]][keep] - 1].tolist()
                scores[i] = s[row, :ks[i]][keep].tolist()
        return pd.DataFrame({"track_ids": track_ids, "scores": scores})


def _flavor(model_dir: Path) -> dict[str, Any]:
    return Model.load(str(model_dir)).flavors["python_function"]


def model_config(model_dir: Path) -> dict[str, Any]:
    """The scoring settings stored with a downloaded model, read from its MLmodel file only."""
    return dict(_flavor(model_dir).get("config") or {})


def _artifact(model_dir: Path, name: str) -> Path:
    """A named artifact of a downloaded model, which must stay inside the model's folder."""
    try:
        relative = _flavor(model_dir)["artifacts"][name]["path"]
    except (KeyError, TypeError):
        raise ValueError(f"{model_dir}: no '{name}' artifact: load a model logged by nextplay.model.pyfunc.log_model") from None
    path = (model_dir / relative).resolve()
    if not path.is_relative_to(model_dir.resolve()):
        raise ValueError(f"{model_dir}: artifact '{name}' points outside the model folder ({relative})")
    return path


def index_file(model_dir: Path) -> Path:
    """Where a downloaded model keeps its item index Parquet file."""
    return _artifact(model_dir, ARTIFACT_INDEX)


def load_trusted(model_dir: str | Path) -> NextTrackModel:
    """The model in a downloaded model folder, built from the installed nextplay package.

    Unlike `mlflow.pyfunc.load_model` this never imports or runs anything stored in the folder
    (a python_model file, `code/`): it reads the MLmodel file, the weights with
    `weights_only=True` and the item index Parquet, so writing a registry version cannot run code
    in evaluate or on the scoring executors.
    """
    model_dir = Path(model_dir)
    config = model_config(model_dir)
    missing = [k for k in (CONF_TOP_K, CONF_COLLAPSE) if k not in config]
    if missing:
        raise ValueError(f"{model_dir}: no {', '.join(missing)} in its model config: load a model logged by "
                         "nextplay.model.pyfunc.log_model")
    model = NextTrackModel()
    model.load_files(_artifact(model_dir, ARTIFACT_RNN), index_file(model_dir), config)
    return model


def load_logged(model_uri: str) -> NextTrackModel:
    """`load_trusted` for a model URI (runs:/, models:/, a path): downloads it to a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="nextplay-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        model = load_trusted(local)
        model.track_ids  # noqa: B018 - read the index now, while the download exists
        return model


def nextplay_version() -> str:
    """The installed nextplay version, recorded in the metadata of every logged model."""
    try:
        return importlib.metadata.version("nextplay")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def pip_requirements() -> list[str]:
    """Pinned to this environment, with torch from the CPU wheel index.

    torch==X matches the index's X+cpu build, which pip prefers over PyPI's CUDA build of the
    same version, so a rebuilt environment does not download gigabytes of CUDA libraries.
    """
    v = importlib.metadata.version
    return [
        "--extra-index-url https://download.pytorch.org/whl/cpu",
        f"torch=={v('torch').split('+')[0]}",
        f"mlflow=={v('mlflow')}",
        f"numpy=={v('numpy')}",
        f"pandas=={v('pandas')}",
        f"pyarrow=={v('pyarrow')}",
        f"pyyaml=={v('pyyaml')}",
        f"scipy=={v('scipy')}",  # the hybrid's session memory (nextplay.model.neighbors)
    ]


def write_item_index(item_index: pd.DataFrame, path: Path) -> Path:
    """Check the index is the dense 1..V mapping the model was trained on, and write it as Parquet."""
    index = item_index[["track_id", "item_idx"]].sort_values("item_idx", kind="stable").reset_index(drop=True)
    if not np.array_equal(index["item_idx"].to_numpy(), np.arange(1, len(index) + 1)):
        raise ValueError("item_index: item_idx must be exactly 1..V (0 is padding)")
    if index["track_id"].duplicated().any():
        raise ValueError("item_index: track_id must be unique")
    index.astype({"item_idx": "int32"}).to_parquet(path, index=False)
    return path


def log_model(model_dir: str, item_index: pd.DataFrame, *, artifact_name: str = "model",
              registered_model_name: str | None, top_k: int, collapse_repeats: bool) -> ModelInfo:
    """Log (and register, when a name is given) the model saved by `nextplay.model.io.save_model`.

    Call inside an active run. The input example is the most played tracks of the index, so the
    logged example always scores to a non-empty answer.
    """
    with tempfile.TemporaryDirectory() as tmp:
        index_path = write_item_index(item_index, Path(tmp) / INDEX_FILE)
        popular = item_index.sort_values("play_count", ascending=False) if "play_count" in item_index else item_index
        example = pd.DataFrame({"history": [popular["track_id"].head(3).tolist()], "k": [top_k]})
        return mlflow.pyfunc.log_model(
            name=artifact_name,
            python_model=str(Path(__file__).with_name("model_code.py")),
            artifacts={ARTIFACT_RNN: str(model_dir), ARTIFACT_INDEX: str(index_path)},
            model_config={CONF_TOP_K: int(top_k), CONF_COLLAPSE: bool(collapse_repeats)},
            metadata={"nextplay_version": nextplay_version()},
            signature=SIGNATURE,
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
        )
