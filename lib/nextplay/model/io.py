"""One file per model: `model.pt` with the weights, the catalog size, the ModelConfig and item counts.

Everything is stored as tensors and plain Python values so `torch.load(weights_only=True)` can read
it: loading a model never runs pickled code. Each file records its layout and the release that wrote
it; an older layout is brought up to date when read (model/formats.py), and the config is then read
back through the config checks, so a file with keys this release does not know fails with one line
naming the key.

Loading maps the file instead of reading it (`torch.load(mmap=True)`): the weights stay pages of
the file, read from disk when first touched, held once in the page cache and shared by every
process that maps the same file (each Python worker of a scoring executor maps the one unpacked copy
of the shipped model; shipping.py). The mapping is private: a process that writes into a weight
(training a loaded model) gets its own copy of the pages it writes, and the file never changes. The
model is built around the mapped tensors without first initialising weights of its own
(`_MatricesOnMeta`), so no moment of loading holds the item matrix twice.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

from nextplay.config import ModelConfig, model_config_from_dict
from nextplay.model import formats
from nextplay.runtime import release
from nextplay.model.session import SessionModel

MODEL_FILE = "model.pt"


def atomic_save(payload: dict, final: Path) -> None:
    """`torch.save` that a kill or power loss at any moment leaves as the old file or the new one.

    The bytes go to a temp file in the same folder, are flushed to disk, renamed over `final`
    (atomic on POSIX and Windows), and the folder entry is flushed too. A temp file that a killed
    writer left is never read; callers remove it on their next save."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_folder(final.parent)


def _fsync_folder(directory: Path) -> None:
    """Persist a rename; folders cannot be opened for this on Windows, where the rename is durable already."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_model(model: SessionModel, path: str | os.PathLike) -> None:
    """Write `model.pt` atomically into `path`, removing temp files an earlier killed save left there."""
    directory = Path(path)
    payload = {
        "format": formats.FORMAT,
        "nextplay_version": release(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "n_items": model.n_items,
        "config": dataclasses.asdict(model.cfg),
        "item_counts": None if model.item_counts is None else torch.from_numpy(model.item_counts),
    }
    atomic_save(payload, directory / MODEL_FILE)
    for stale in directory.glob(f".{MODEL_FILE}.tmp-*"):
        stale.unlink(missing_ok=True)


# Factories whose output `_MatricesOnMeta` places on the meta device when it is a matrix.
_ALLOCATORS = frozenset({torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.rand,
                         torch.randn, torch.randint, torch.eye})


class _MatricesOnMeta(TorchFunctionMode):
    """While active, tensors of two or more dimensions made by an allocating factory (`torch.empty`,
    `torch.randn`, ...) without an explicit device live on the meta device: shapes without storage.

    Those are the weight matrices (item tables, tree nodes, encoder weights), which loading replaces
    by the saved ones anyway, so building them for real would only allocate and fill a throwaway copy
    of the catalog. Vectors stay real: modules derive non-saved buffers from their arguments as
    vectors (the sampled head's sampling distributions, the bit tree's masks), and a vector of biases
    costs a row of the matrix. `load_model` refuses a model left with any meta tensor."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _ALLOCATORS and kwargs.get("device") is None:
            shape_only = func(*args, **{**kwargs, "device": "meta"})
            if shape_only.dim() >= 2:
                return shape_only
        return func(*args, **kwargs)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SessionModel:
    """The model saved in `path`, in eval mode, on `map_location`.

    On the CPU its tensors are the memory-mapped file itself (module docstring): loading costs what
    the scoring touches, once per machine, not a copy per process. Elsewhere (CUDA) they are copied
    from the mapping to the device."""
    payload = _read(path)
    cfg = model_config_from_dict(payload["config"])
    counts = payload["item_counts"]
    with _MatricesOnMeta():
        model = SessionModel(payload["n_items"], cfg, None if counts is None else counts.numpy())
    model.load_state_dict(payload["state_dict"], assign=True)
    unloaded = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if unloaded:
        raise ValueError(f"{Path(path) / MODEL_FILE}: no saved values for {', '.join(unloaded)}: the model code "
                         "builds a tensor that is neither saved nor derived as a vector")
    return model.to(map_location).eval()


def read_model_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig a saved model was trained with, without reading its weights into memory
    (the file is memory-mapped; a million-track model's tables stay on disk)."""
    return model_config_from_dict(_read(path)["config"])


def _read(path: str | os.PathLike) -> dict[str, Any]:
    """The payload of `path`'s model.pt, mapped, in the current layout (model/formats.py)."""
    file = Path(path) / MODEL_FILE
    return formats.current(torch.load(file, map_location="cpu", weights_only=True, mmap=True), str(file))

