"""Epoch checkpoints that survive a kill at any moment, one folder per training run.

Every run keeps its checkpoints in `<train.checkpoint_dir>/<MLflow run id>/`: a run never reads,
prunes or deletes another run's files, however many runs share the base folder (a nightly job
uses one fixed folder). The folder is removed once the run's model is logged.

Each checkpoint is written to a temporary file in the same folder, flushed to disk and renamed over
its final name with `os.replace` (atomic on POSIX and Windows), so the newest complete checkpoint is
always readable: a process killed mid-write leaves only a stray temp file, which loading ignores.
Files are loaded with `weights_only=True`, so `extra` must hold plain values (numbers, strings,
lists, dicts, tensors).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from nextplay.config import Config, ConfigError
from nextplay.model.io import atomic_save

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")
_TEMP = re.compile(r"^\.checkpoint-\d+\.pt\.tmp-\d+$")


def run_checkpoint_dir(base: str | os.PathLike, run_id: str) -> Path:
    """The folder of one training run's checkpoints."""
    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise ValueError(f"a checkpoint folder needs a plain run id, got {run_id!r}")
    return Path(base) / run_id


def has_checkpoint(directory: str | os.PathLike) -> bool:
    return bool(_checkpoints(Path(directory)))


def remove_run_checkpoints(directory: str | os.PathLike) -> None:
    """Delete a run's checkpoint folder once its model is logged: nothing is left to resume."""
    shutil.rmtree(directory, ignore_errors=True)


def _path(directory: Path, epoch: int) -> Path:
    return directory / f"checkpoint-{epoch:06d}.pt"


def save_checkpoint(directory: str | os.PathLike, epoch: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, extra: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write the checkpoint of a finished `epoch`; keep only the newest `keep` checkpoints.

    `directory` belongs to one run with one writer (rank 0), so any other temp file in it is what a
    killed write left behind, and is removed."""
    directory = Path(directory)
    payload = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "extra": extra or {}}
    final = _path(directory, epoch)
    atomic_save(payload, final)
    for stale in directory.iterdir():
        if _TEMP.match(stale.name):
            stale.unlink(missing_ok=True)
    for old in _checkpoints(directory)[keep:]:
        old.unlink(missing_ok=True)
    return final


def _checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, newest epoch first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_latest_checkpoint(directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                           mmap: bool = False) -> dict[str, Any] | None:
    """The newest readable checkpoint as {"epoch", "model", "optimizer", "extra"}, or None if there is none.

    An unreadable file (a disk that lied about fsync, a truncated copy) is skipped in favour of
    the one before it rather than failing the resume. `mmap` maps the tensors instead of reading
    them, for a caller that only looks at `epoch` and `extra`."""
    for path in _checkpoints(Path(directory)):
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except Exception:  # any failure to unpickle means the file is unusable, whatever the cause
            continue
    return None


def model_signature(cfg: Config, n_items: int) -> dict[str, Any]:
    """What a checkpoint's weights were trained as: every `model.*` key and the catalog size."""
    return {"n_items": n_items, **{k: v for k, v in cfg.flat().items() if k.startswith("model.")}}


def check_resumable(directory: str | os.PathLike, signature: dict[str, Any], sessions_version: int | None = None) -> None:
    """Refuse to resume the newest checkpoint if it was written under other model settings (a resumed
    run is the same run: its logged params must describe every epoch), naming the keys that changed,
    or for another version of the sessions table than `sessions_version`, the one the run pinned.
    Called on the driver before any worker starts, so every launcher fails the same way, in one line.
    Checkpoints without a signature (written before there were any) pass, and so do keys added to
    the config after the checkpoint was written."""
    state = load_latest_checkpoint(directory, mmap=True)
    extra = (state or {}).get("extra", {})
    written_for = extra.get("sessions_version")
    if sessions_version is not None and written_for is not None and int(written_for) != sessions_version:
        raise ConfigError(f"train.resume: the checkpoint in {directory} was trained on sessions table version "
                          f"{int(written_for)} there, {sessions_version} now (the version its run pinned); "
                          "train without --resume")
    saved = extra.get("signature")
    if not saved:
        return
    changed = [f"{k}={saved.get(k)!r} there, {v!r} now" for k, v in signature.items() if k in saved and saved[k] != v]
    if changed:
        raise ConfigError(f"train.resume: the checkpoint in {directory} was trained with other settings "
                          f"({'; '.join(changed)}); resume with the same ones or set another train.checkpoint_dir")
