"""Epoch checkpoints that survive a kill at any moment, one folder per training run.

Every run keeps its checkpoints in `<train.checkpoint_dir>/<MLflow run id>/`: a run never reads,
prunes or deletes another run's files, however many runs share the base folder (a nightly job
uses one fixed folder). The folder is removed once the run's model is logged.

Each checkpoint is written to a temporary file in the same folder, flushed to disk and renamed over
its final name with `os.replace` (atomic on POSIX and Windows), so the newest complete checkpoint is
always readable: a process killed mid-write leaves only a stray temp file, which loading ignores.
Files are loaded with `weights_only=True`, so `extra` must hold plain values (numbers, strings,
lists, dicts, tensors). A folder that is not on this machine's disk (hdfs://, s3://: on a cluster,
rank 0 and a resumed run's driver are on different machines) is reached through nextplay/storage.py,
which writes each file whole under a temporary name and renames it the same way.
"""
from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from nextplay.config import Config, ConfigError
from nextplay.model.io import atomic_save
from nextplay.storage import Storage, is_local, join, local_path

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")
_TEMP = re.compile(r"^\.checkpoint-\d+\.pt\.tmp-\d+$")


def run_checkpoint_dir(base: str | os.PathLike, run_id: str) -> Path | str:
    """The folder of one training run's checkpoints: a Path under a local `base`, a URI under a remote one."""
    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise ValueError(f"a checkpoint folder needs a plain run id, got {run_id!r}")
    if not is_local(str(base)):
        return join(str(base), run_id)
    return Path(local_path(str(base))) / run_id


def has_checkpoint(directory: str | os.PathLike, storage: Storage = Storage()) -> bool:
    if not is_local(str(directory)):
        return bool(_remote_checkpoints(str(directory), storage))
    return bool(_checkpoints(Path(local_path(str(directory)))))


def remove_run_checkpoints(directory: str | os.PathLike, storage: Storage = Storage()) -> None:
    """Delete a run's checkpoint folder once its model is logged: nothing is left to resume."""
    if not is_local(str(directory)):
        storage.remove(str(directory), recursive=True)
        return
    shutil.rmtree(local_path(str(directory)), ignore_errors=True)


def _path(directory: Path, epoch: int) -> Path:
    return directory / f"checkpoint-{epoch:06d}.pt"


def save_checkpoint(directory: str | os.PathLike, epoch: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, extra: dict[str, Any] | None = None, keep: int = 2,
                    storage: Storage = Storage()) -> Path | str:
    """Write the checkpoint of a finished `epoch`; keep only the newest `keep` checkpoints.

    `directory` belongs to one run with one writer (rank 0), so any other temp file in it is what a
    killed write left behind, and is removed."""
    payload = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "extra": extra or {}}
    if not is_local(str(directory)):
        return _save_remote(str(directory), epoch, payload, keep, storage)
    directory = Path(local_path(str(directory)))
    directory.mkdir(parents=True, exist_ok=True)
    final = _path(directory, epoch)
    atomic_save(payload, final)
    for stale in directory.iterdir():
        if _TEMP.match(stale.name):
            stale.unlink(missing_ok=True)
    for old in _checkpoints(directory)[keep:]:
        old.unlink(missing_ok=True)
    return final


def _save_remote(directory: str, epoch: int, payload: dict[str, Any], keep: int, storage: Storage) -> str:
    buf = io.BytesIO()
    torch.save(payload, buf)
    final = join(directory, _path(Path("."), epoch).name)
    storage.write_bytes(final, buf.getvalue())
    for old in _remote_checkpoints(directory, storage)[keep:]:
        storage.remove(join(directory, old))
    return final


def _remote_checkpoints(directory: str, storage: Storage) -> list[str]:
    """Names of the complete checkpoints in a folder on shared storage, newest epoch first."""
    found = [(int(m.group(1)), name) for name in storage.listdir(directory) if (m := _NAME.match(name))]
    return [name for _, name in sorted(found, reverse=True)]


def _checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, newest epoch first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_latest_checkpoint(directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                           mmap: bool = False, storage: Storage = Storage()) -> dict[str, Any] | None:
    """The newest readable checkpoint as {"epoch", "model", "optimizer", "extra"}, or None if there is none.

    An unreadable file (a disk that lied about fsync, a truncated copy) is skipped in favour of
    the one before it rather than failing the resume. `mmap` maps the tensors instead of reading
    them, for a caller that only looks at `epoch` and `extra`."""
    if not is_local(str(directory)):
        for name in _remote_checkpoints(str(directory), storage):
            try:
                data = storage.read_bytes(join(str(directory), name))
                return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
            except Exception:  # as below: an unreadable file is skipped for the one before it
                continue
        return None
    for path in _checkpoints(Path(local_path(str(directory)))):
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except Exception:  # any failure to unpickle means the file is unusable, whatever the cause
            continue
    return None


def model_signature(cfg: Config, n_items: int) -> dict[str, Any]:
    """What a checkpoint's weights were trained as: every `model.*` key and the catalog size."""
    return {"n_items": n_items, **{k: v for k, v in cfg.flat().items() if k.startswith("model.")}}


def check_resumable(directory: str | os.PathLike, signature: dict[str, Any], sessions_version: int | None = None,
                    storage: Storage = Storage()) -> None:
    """Refuse to resume the newest checkpoint if it was written under other model settings (a resumed
    run is the same run: its logged params must describe every epoch), naming the keys that changed,
    or for another version of the sessions table than `sessions_version`, the one the run pinned.
    Called on the driver before any worker starts, so every launcher fails the same way, in one line.
    Checkpoints without a signature (written before there were any) pass, and so do keys added to
    the config after the checkpoint was written."""
    state = load_latest_checkpoint(directory, mmap=True, storage=storage)
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
