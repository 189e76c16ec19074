"""The approximate nearest-neighbour libraries the item index was chosen among, behind one small
interface, so the `ann` stage measures them alike: build, save, search at a given `ef`.

Every candidate is an HNSW graph (voyager, faiss-cpu's IndexHNSWFlat, hnswlib, usearch), built with
the same M and ef_construction. Two ways to search by inner product are measured:

- `ip`: the library's own inner-product space. HNSW over inner product is not a metric graph (an item
  is not its own nearest neighbour), which can cost recall when norms vary.
- `l2`: the standard MIPS -> nearest-neighbour reduction: each item gets an extra coordinate
  sqrt(M^2 - |x|^2) (M the largest norm), each query a 0 there, so |q - x|^2 = |q|^2 + M^2 - 2 q.x
  ranks items exactly as q.x does, and the graph is built over a true metric.

Only the winner is used by the product (lib/nextplay/model/ann.py); the others live here.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Protocol

import numpy as np

LIBRARIES = ("voyager", "faiss-cpu", "hnswlib", "usearch")
SPACES = ("ip", "l2")


def augment_items(x: np.ndarray) -> np.ndarray:
    """[V, d] -> [V, d + 1] of equal norm M: the extra coordinate sqrt(M^2 - |x|^2)."""
    sq = np.einsum("ij,ij->i", x, x)
    extra = np.sqrt(np.maximum(sq.max() - sq, 0.0))
    return np.ascontiguousarray(np.hstack([x, extra[:, None]]), dtype=np.float32)


def augment_queries(q: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.hstack([q, np.zeros((q.shape[0], 1), q.dtype)]), dtype=np.float32)


class Candidate(Protocol):
    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        """Row positions [B, k] (0-based) of the nearest items; -1 where fewer were found."""
        ...

    def save(self, path: Path) -> None: ...


class _Voyager:
    def __init__(self, x: np.ndarray, space: str, m: int, ef_construction: int, threads: int) -> None:
        import voyager  # deferred: optional, measured only when installed

        kind = voyager.Space.InnerProduct if space == "ip" else voyager.Space.Euclidean
        self.index = voyager.Index(kind, num_dimensions=x.shape[1], M=m, ef_construction=ef_construction,
                                   random_seed=1, max_elements=x.shape[0])
        self.index.add_items(x, ids=np.arange(x.shape[0], dtype=np.uint64), num_threads=threads)

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        ids, _ = self.index.query(queries, k=k, num_threads=threads, query_ef=ef)
        return ids.astype(np.int64)

    def save(self, path: Path) -> None:
        self.index.save(str(path))


class _Faiss:
    def __init__(self, x: np.ndarray, space: str, m: int, ef_construction: int, threads: int) -> None:
        import faiss  # deferred: optional, measured only when installed

        self.faiss = faiss
        faiss.omp_set_num_threads(threads)
        metric = faiss.METRIC_INNER_PRODUCT if space == "ip" else faiss.METRIC_L2
        self.index = faiss.IndexHNSWFlat(x.shape[1], m, metric)
        self.index.hnsw.efConstruction = ef_construction
        self.index.add(x)

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        self.faiss.omp_set_num_threads(threads)
        self.index.hnsw.efSearch = ef
        _, ids = self.index.search(queries, k)
        return ids.astype(np.int64)

    def save(self, path: Path) -> None:
        self.faiss.write_index(self.index, str(path))


class _Hnswlib:
    def __init__(self, x: np.ndarray, space: str, m: int, ef_construction: int, threads: int) -> None:
        import hnswlib  # deferred: optional, measured only when installed

        self.index = hnswlib.Index(space="ip" if space == "ip" else "l2", dim=x.shape[1])
        self.index.init_index(max_elements=x.shape[0], ef_construction=ef_construction, M=m, random_seed=1)
        self.index.add_items(x, np.arange(x.shape[0]), num_threads=threads)

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        self.index.set_ef(max(ef, k))
        ids, _ = self.index.knn_query(queries, k=k, num_threads=threads)
        return ids.astype(np.int64)

    def save(self, path: Path) -> None:
        self.index.save_index(str(path))


class _Usearch:
    def __init__(self, x: np.ndarray, space: str, m: int, ef_construction: int, threads: int) -> None:
        from usearch.index import Index  # deferred: optional, measured only when installed

        self.index = Index(ndim=x.shape[1], metric="ip" if space == "ip" else "l2sq", dtype="f32",
                           connectivity=m, expansion_add=ef_construction)
        self.index.add(np.arange(x.shape[0], dtype=np.uint64), x, threads=threads)

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        self.index.expansion_search = ef
        found = self.index.search(queries, k, threads=threads)
        keys = found.keys.astype(np.int64)
        counts = found.counts
        return np.where(np.arange(k)[None, :] < counts[:, None], keys, -1)

    def save(self, path: Path) -> None:
        self.index.save(str(path))


_BUILDERS = {"voyager": _Voyager, "faiss-cpu": _Faiss, "hnswlib": _Hnswlib, "usearch": _Usearch}


def version(library: str) -> str | None:
    """The installed version, or None when the library is not installed (then it is not measured)."""
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return None


def build(library: str, x: np.ndarray, space: str, m: int, ef_construction: int, threads: int) -> Candidate:
    """An index over `x` (already augmented for the `l2` space) with `threads` build threads."""
    return _BUILDERS[library](np.ascontiguousarray(x, dtype=np.float32), space, m, ef_construction, threads)
