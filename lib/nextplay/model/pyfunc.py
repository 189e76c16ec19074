"""The logged model: a SessionModel (model/session.py) plus the item index it was trained with, as an MLflow pyfunc.

Why a custom pyfunc and not `mlflow.pytorch`: MLflow 3 saves torch models as torch.export
programs with a fixed sequence length (docs/stack.md), and a bare network speaks item indices while its
users speak track ids. This wrapper takes track-id histories and answers track ids, so a notebook,
`mlflow models predict` or a serving endpoint needs nothing else; the batch scorer reaches past the
strings to `topk_items` because it has already mapped histories to item indices in Spark.

The item index travels inside the model as Parquet (a million track ids stay small and load fast),
and for large catalogs the approximate nearest-neighbour index over the item vectors beside it
(model/ann.py; `ranking` chooses between it and the exact scan, and refuses an index built for
other weights).
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

from nextplay.config import AnnConfig, ScoreConfig
from nextplay.model import ann, formats
from nextplay.model.io import load_model, read_model_config
from nextplay.runtime import release
from nextplay.model.ranking import ExactRanking, Ranking, RetrievedRanking

ARTIFACT_RNN = "rnn"
ARTIFACT_INDEX = "item_index"
ARTIFACT_ANN = "ann_index"  # optional: the item-vector index (model/ann.py)
# The models-from-code file logged with every model (it imports the stable `nextplay.serving`).
ENTRY_POINT = str(Path(__file__).resolve().parents[1] / "model_code.py")
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
        self.load_files(context.artifacts[ARTIFACT_RNN], context.artifacts[ARTIFACT_INDEX], context.model_config,
                        context.artifacts.get(ARTIFACT_ANN))

    def load_files(self, rnn_dir: str | Path, index_path: str | Path, config: dict[str, Any],
                   ann_dir: str | Path | None = None, device: str | torch.device | None = None) -> None:
        """Load the weights (on the CPU memory-mapped from `rnn_dir`, model/io.py) and the scoring
        settings; the item index and the item-vector index are read on first use. `device`: default
        CUDA where this process sees a GPU, else the CPU."""
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.rnn = load_model(rnn_dir, map_location=self.device)
        self.top_k = int(config[CONF_TOP_K])
        self.collapse = bool(config[CONF_COLLAPSE])
        self._index_path = str(index_path)
        self._track_ids: pd.Index | None = None  # item_idx - 1 -> track id, read on first use
        self._ann_dir = None if ann_dir is None else Path(ann_dir)
        self._ann: ann.ItemVectorIndex | None = None
        self._retrieved: dict[tuple[int, int], RetrievedRanking] = {}

    @property
    def has_ann_index(self) -> bool:
        return self._ann_dir is not None

    def ranking(self, candidates: str, settings: AnnConfig, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Ranking:
        """The ranking `candidates` asks for (score.candidates / evaluate.candidates; see
        `candidates_mode`). The item-vector index is loaded once, and refused if it was built for
        other weights than this model's."""
        if candidates_mode(candidates, self.has_ann_index, self.rnn.cfg.head) == "exact":
            return ExactRanking(chunk_size)
        key = (settings.candidates, settings.ef_search)
        if key not in self._retrieved:  # one per settings: it keeps its partition sample across batches
            if self._ann is None:
                self._ann = ann.ItemVectorIndex.load(self._ann_dir, ann.model_fingerprint(self.rnn))
            index, ef = self._ann, settings.ef_search
            self._retrieved[key] = RetrievedRanking(lambda queries, c: index.search(queries, c, ef), settings.candidates)
        return self._retrieved[key]

    @property
    def track_ids(self) -> pd.Index:
        """Track ids by position item_idx - 1; read lazily since the batch scorer never needs them."""
        if self._track_ids is None:
            index = pd.read_parquet(self._index_path, columns=["track_id", "item_idx"])
            self._track_ids = pd.Index(index.sort_values("item_idx")["track_id"].to_numpy())
        return self._track_ids

    def topk_items(self, histories: Sequence[np.ndarray], k: int, *, exclude_seen: bool = False,
                   batch_size: int = DEFAULT_BATCH_SIZE, chunk_size: int = DEFAULT_CHUNK_SIZE,
                   ranking: Ranking | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and item indices [N, k'] (k' = min(k, catalog)) for non-empty item-index histories.

        Rows are sorted by length before batching so a batch pads to similar lengths; a batch holds
        `batch_size` histories and the exact ranking streams the catalog in `chunk_size` slices,
        which is what bounds memory (docs/scoring.md). `ranking`: default exact (see `ranking`).
        """
        k = min(k, self.rnn.n_items)
        ranking = ranking or ExactRanking(chunk_size)
        scores = np.empty((len(histories), k), dtype=np.float32)
        items = np.empty((len(histories), k), dtype=np.int64)
        order = np.argsort([len(h) for h in histories], kind="stable")
        with torch.inference_mode():
            for lo in range(0, len(order), batch_size):
                rows = order[lo:lo + batch_size]
                padded, lengths = pad([histories[i] for i in rows])
                s, i = self.rnn.topk(torch.from_numpy(padded).to(self.device), torch.from_numpy(lengths).to(self.device),
                                     k, exclude_seen=exclude_seen, ranking=ranking)
                scores[rows], items[rows] = s.cpu().numpy(), i.cpu().numpy()
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
            s, idx = self.topk_items([histories[i] for i in known], int(ks[known].max()), exclude_seen=exclude,
                                     ranking=self.ranking("auto", AnnConfig()))
            for row, i in enumerate(known):
                keep = np.isfinite(s[row, :ks[i]])  # fewer than k candidates left after exclusion
                track_ids[i] = self.track_ids[idx[row, :ks[i]][keep] - 1].tolist()
                scores[i] = s[row, :ks[i]][keep].tolist()
        return pd.DataFrame({"track_ids": track_ids, "scores": scores})


def candidates_mode(asked: str, has_index: bool, head: str) -> str:
    """`exact` or `ann` for the asked `exact`, `ann` or `auto` (ann when the model carries an index).
    `ann` for a model without an index, or with a head that has no item vectors, is refused in one line."""
    if asked == "exact" or (asked == "auto" and not has_index):
        return "exact"
    if head == "bit_tree":
        raise ValueError("candidates=ann: model.head=bit_tree scores items through its tree and has no item vectors "
                         "to index; use candidates=exact")
    if not has_index:
        raise ValueError("candidates=ann: the model was logged without an item-vector index (ann.build=never, or a "
                         "catalog under ann.min_items with ann.build=auto); use candidates=exact or retrain with "
                         "ann.build=always")
    return "ann"


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


def model_head(model_dir: Path) -> str:
    """The output head of a downloaded model (model.head), read without loading its weights."""
    return read_model_config(_artifact(model_dir, ARTIFACT_RNN)).head


def ann_folder(model_dir: Path) -> Path | None:
    """Where a downloaded model keeps its item-vector index, None when it was logged without one."""
    artifacts = _flavor(model_dir).get("artifacts") or {}
    return _artifact(model_dir, ARTIFACT_ANN) if ARTIFACT_ANN in artifacts else None


def load_trusted(model_dir: str | Path, device: str | torch.device | None = None, with_ann: bool = True) -> NextTrackModel:
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
    model.load_files(_artifact(model_dir, ARTIFACT_RNN), index_file(model_dir), config,
                     ann_folder(model_dir) if with_ann else None, device)
    return model


def load_logged(model_uri: str) -> NextTrackModel:
    """`load_trusted` for a model URI (runs:/, models:/, a path), on the CPU: downloads it to a
    temporary folder and reads the item index now, while the download exists (without the item-vector
    index: the executors load that from their own copy). The weights stay mapped from the downloaded
    file (model/io.py), whose data the system keeps until the model is dropped although its folder is gone."""
    with tempfile.TemporaryDirectory(prefix="nextplay-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        model = load_trusted(local, device="cpu", with_ann=False)
        model.track_ids  # noqa: B018 - read the index now, while the download exists
        return model


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
        f"faiss-cpu=={v('faiss-cpu')}",  # the item-vector index, where the model carries one (nextplay.model.ann)
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
              registered_model_name: str | None, top_k: int, collapse_repeats: bool,
              ann_dir: str | Path | None = None) -> ModelInfo:
    """Log (and register, when a name is given) the model saved by `nextplay.model.io.save_model`,
    with the item-vector index saved in `ann_dir` when one was built (model/ann.py).

    Call inside an active run. The input example is the most played tracks of the index, so the
    logged example always scores to a non-empty answer.
    """
    with tempfile.TemporaryDirectory() as tmp:
        index_path = write_item_index(item_index, Path(tmp) / INDEX_FILE)
        popular = item_index.sort_values("play_count", ascending=False) if "play_count" in item_index else item_index
        example = pd.DataFrame({"history": [popular["track_id"].head(3).tolist()], "k": [top_k]})
        return mlflow.pyfunc.log_model(
            name=artifact_name,
            python_model=ENTRY_POINT,
            artifacts={ARTIFACT_RNN: str(model_dir), ARTIFACT_INDEX: str(index_path),
                       **({ARTIFACT_ANN: str(ann_dir)} if ann_dir is not None else {})},
            model_config={CONF_TOP_K: int(top_k), CONF_COLLAPSE: bool(collapse_repeats)},
            metadata={"nextplay_version": release(), "model_format": formats.FORMAT},
            signature=SIGNATURE,
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
        )
