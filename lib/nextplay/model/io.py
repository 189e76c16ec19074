"""One file per model: `model.pt` with the weights, the catalog size, the ModelConfig and item counts.

Everything is stored as tensors and plain Python values so `torch.load(weights_only=True)` can read
it: loading a model never runs pickled code. The config is read back through the config checks, so
a file written with keys this version does not know fails with one line naming the key.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from nextplay.config import ModelConfig, model_config_from_dict
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
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "n_items": model.n_items,
        "config": dataclasses.asdict(model.cfg),
        "item_counts": None if model.item_counts is None else torch.from_numpy(model.item_counts),
    }
    atomic_save(payload, directory / MODEL_FILE)
    for stale in directory.glob(f".{MODEL_FILE}.tmp-*"):
        stale.unlink(missing_ok=True)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SessionModel:
    payload = torch.load(Path(path) / MODEL_FILE, map_location=map_location, weights_only=True)
    cfg = model_config_from_dict(payload["config"])
    counts = payload["item_counts"]
    model = SessionModel(payload["n_items"], cfg, None if counts is None else counts.numpy())
    model.load_state_dict(payload["state_dict"])
    return model.to(map_location).eval()


def read_model_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig a saved model was trained with, without reading its weights into memory
    (the file is memory-mapped; a million-track model's tables stay on disk)."""
    payload = torch.load(Path(path) / MODEL_FILE, map_location="cpu", weights_only=True, mmap=True)
    return model_config_from_dict(payload["config"])
