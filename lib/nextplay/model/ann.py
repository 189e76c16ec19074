"""Candidate retrieval: an approximate nearest-neighbour index over a model's item output vectors.

Scoring every listener against every track costs O(catalog) per listener; at a million tracks that
is the day's largest CPU bill. For the `full` and `sampled` heads the logit of item i for session
vector s is s . W[i] + bias[i] (the score temperature divides every logit alike and does not change
the order), so the items a listener ranks highest are the maximum inner products of q = [s, 1] with
x_i = [W[i], bias[i]]. An HNSW graph over those x_i finds them in O(log catalog); the model then
ranks the retrieved candidates exactly.

The index is tied to the vectors it was built from (`fingerprint`): a model retrained or grown gives
other vectors, and an index of the old ones would retrieve the wrong items without any error.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT = 2  # of the folder `save` writes; bumped when its layout changes (2: vectors padded to LANES)
# The index stores vectors (and takes queries) padded with zero coordinates to a multiple of this
# width, which leaves every inner product as it was: faiss then computes them in whole SIMD
# registers (16 floats for AVX-512) with no scalar tail, and a search of a million 257-wide item
# vectors ran about 1.5x faster at 272 (docs/scoring.md).
LANES = 16


def item_vectors(model: nn.Module) -> np.ndarray:
    """float32 [V, D + 1]: row i - 1 is [W[i], bias[i]] of item i (1..V), so that a query [s, 1]
    scores each item by the head's logit. The bit tree has no item vectors: it is refused."""
    head = model.cfg.head
    if head == "bit_tree":
        raise ValueError("model.head=bit_tree has no item vectors (a tree of node classifiers), so it cannot use "
                         "score.candidates=ann; use score.candidates=exact")
    weight = model._output_weight()
    with torch.no_grad():
        rows = torch.cat([weight[1:], model.head.bias[1:, None]], dim=1)
    return np.ascontiguousarray(rows.detach().cpu().numpy(), dtype=np.float32)


def model_fingerprint(model: nn.Module, rows: int = 65536) -> str:
    """`fingerprint(item_vectors(model))` without building the [V, D + 1] matrix: the same bytes hashed
    `rows` items at a time, so checking a loaded index costs a block, not a copy of the item table."""
    if model.cfg.head == "bit_tree":
        item_vectors(model)  # refused there, in its words
    weight, bias = model._output_weight(), model.head.bias
    n_items, dim = weight.shape[0] - 1, weight.shape[1] + 1
    digest = hashlib.sha256(f"{(n_items, dim)}".encode())
    with torch.no_grad():
        for lo in range(1, n_items + 1, rows):
            hi = min(n_items + 1, lo + rows)
            block = torch.cat([weight[lo:hi], bias[lo:hi, None]], dim=1).detach().cpu().numpy()
            digest.update(memoryview(np.ascontiguousarray(block, dtype=np.float32)).cast("B"))
    return digest.hexdigest()


def query_vectors(session: np.ndarray | torch.Tensor) -> np.ndarray:
    """float32 [B, D + 1]: session vectors [B, D] with a 1 appended, which picks up each item's bias."""
    if isinstance(session, torch.Tensor):
        session = session.detach().cpu().numpy()
    s = np.asarray(session, dtype=np.float32)
    if s.ndim != 2:
        raise ValueError(f"session vectors must be [batch, dim], got shape {s.shape}")
    return np.ascontiguousarray(np.hstack([s, np.ones((s.shape[0], 1), np.float32)]))


def fingerprint(vectors: np.ndarray) -> str:
    """sha256 of the vectors' shape and float32 bytes: equal only for the exact same vectors (about
    1 s for 1M x 257 floats; docs/stack.md)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    digest = hashlib.sha256(f"{x.shape}".encode())
    digest.update(memoryview(x).cast("B"))
    return digest.hexdigest()


def padded_width(dim: int) -> int:
    """The stored width of `dim`-wide vectors: the next multiple of LANES."""
    return -(-dim // LANES) * LANES


def _padded(x: np.ndarray) -> np.ndarray:
    """float32 `x` [n, d] with zero columns appended up to `padded_width(d)`."""
    width = padded_width(x.shape[1])
    if width == x.shape[1]:
        return np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((x.shape[0], width), dtype=np.float32)
    out[:, :x.shape[1]] = x
    return out


def _faiss() -> Any:
    import faiss  # deferred: only scoring with score.candidates=ann needs the index library

    return faiss


@dataclass
class ItemVectorIndex:
    """An HNSW graph (faiss-cpu's IndexHNSWFlat) searched by inner product itself, over item vectors
    in item order: graph position p is item p + 1, so a search answers item ids directly. `dim` is
    the vectors' width; the index holds them padded to `padded_width(dim)` (LANES).

    faiss won the measurement in docs/stack.md: it was the one library whose recall of the exact
    top 20 held in every set of vectors measured. On a trained model's vectors (whose norms spread:
    popular items grow long vectors) the usual MIPS -> L2 reduction (an extra coordinate
    sqrt(M^2 - |x|^2)), and voyager's inner-product space, lost up to a fifth of the top 20: the
    extra coordinate dominates most items, so the graph tells them apart poorly. faiss also ships
    wheels for numpy 1.26.

    faiss sets its thread count process-wide (OpenMP); `build` and `search` set it for their call.
    """

    index: Any
    n_items: int
    dim: int
    fingerprint: str
    settings: dict[str, Any]

    LIBRARY = "faiss-cpu"
    INDEX_FILE = "items.faiss"
    META_FILE = "index.json"

    @classmethod
    def build(cls, vectors: np.ndarray, *, m: int, ef_construction: int, threads: int) -> "ItemVectorIndex":
        """Index `vectors` [V, D + 1] (row i - 1: item i, as `item_vectors` returns them) on `threads` threads."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] < 1:
            raise ValueError(f"item vectors must be a non-empty [items, dim] array, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("item vectors hold NaN or infinite values: the model's weights are broken; retrain it")
        faiss = _faiss()
        faiss.omp_set_num_threads(threads)
        index = faiss.IndexHNSWFlat(padded_width(x.shape[1]), m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(_padded(x))
        settings = {"kind": "IndexHNSWFlat", "metric": "inner_product", "m": m, "ef_construction": ef_construction}
        return cls(index, x.shape[0], x.shape[1], fingerprint(x), settings)

    def save(self, folder: Path) -> None:
        """The index file and a small JSON that says what it was built from and with."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self.index, str(folder / self.INDEX_FILE))
        meta = {"library": self.LIBRARY, "library_version": importlib.metadata.version(self.LIBRARY),
                "format": FORMAT, "n_items": self.n_items, "dim": self.dim, "fingerprint": self.fingerprint,
                "settings": self.settings}
        (folder / self.META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path, expected_fingerprint: str) -> "ItemVectorIndex":
        """The index saved in `folder`, refused unless it was built, by this library and format, from
        the vectors whose fingerprint is `expected_fingerprint` (the model being scored)."""
        folder = Path(folder)
        meta_path = folder / cls.META_FILE
        if not meta_path.is_file() or not (folder / cls.INDEX_FILE).is_file():
            raise ValueError(f"{folder} holds no item index ({cls.META_FILE} and {cls.INDEX_FILE}); build one first")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path} is not valid JSON ({e}); rebuild the index") from None
        if meta.get("library") != cls.LIBRARY or meta.get("format") != FORMAT:
            raise ValueError(f"{folder}: index of library {meta.get('library')!r} format {meta.get('format')!r}, this "
                             f"code reads {cls.LIBRARY!r} format {FORMAT}; rebuild the index")
        if meta.get("fingerprint") != expected_fingerprint:
            raise ValueError(f"{folder}: index built for other item vectors (fingerprint "
                             f"{str(meta.get('fingerprint'))[:12]}, this model's {expected_fingerprint[:12]}): "
                             "another model version; rebuild the index")
        faiss = _faiss()
        # Mapped, not read: the graph and the vectors stay pages of the file, shared by every process
        # on the machine that maps the same file (the Python workers of a scoring executor).
        index = faiss.read_index(str(folder / cls.INDEX_FILE), faiss.IO_FLAG_MMAP_IFC)
        stored = (meta["n_items"], padded_width(meta["dim"]))
        if (index.ntotal, index.d) != stored or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{folder}: {cls.INDEX_FILE} holds {index.ntotal} x {index.d} (metric {index.metric_type}), "
                             f"{cls.META_FILE} says {stored[0]} x {stored[1]} by inner product; rebuild the index")
        return cls(index, meta["n_items"], meta["dim"], meta["fingerprint"], meta["settings"])

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int = 1) -> np.ndarray:
        """int64 [B, k] item ids (1..V) of the largest inner products with each query [B, D + 1]
        (`query_vectors`), best first; 0 where fewer were found. `ef` is the search's breadth
        (at least k is used): larger finds more of the true top k, slower."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be [batch, {self.dim}] (session vectors with a 1 appended), got shape "
                             f"{q.shape}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if q.shape[0] == 0:
            return np.zeros((0, k), dtype=np.int64)
        _faiss().omp_set_num_threads(threads)
        self.index.hnsw.efSearch = max(ef, k)
        _, positions = self.index.search(_padded(q), k)
        return positions.astype(np.int64) + 1  # position p is item p + 1; faiss's -1 (none found) becomes 0
