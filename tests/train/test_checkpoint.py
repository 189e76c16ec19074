"""Checkpoint and model files on disk: one folder per training run, no stale temp files, atomic saves."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nextplay.config import ConfigError, load_config
from nextplay.model.io import MODEL_FILE, load_model, save_model
from nextplay.model.session import SessionModel
from nextplay.train.checkpoint import (check_resumable, has_checkpoint, load_latest_checkpoint, model_signature,
                                       remove_run_checkpoints, run_checkpoint_dir, save_checkpoint)
from nextplay.train.loop import build_optimizer

N_ITEMS = 20


def _model_and_optimizer() -> tuple[SessionModel, torch.optim.Optimizer]:
    cfg = load_config(None, ["model.hidden_size=8", "model.head=full"])
    model = SessionModel(N_ITEMS, cfg.model)
    return model, build_optimizer(model, cfg.train)


def test_runs_keep_their_checkpoints_apart(tmp_path: Path) -> None:
    """An older run that reached epoch 4 in the same base folder neither hides nor prunes a new run's epochs."""
    model, opt = _model_and_optimizer()
    older, newer = run_checkpoint_dir(tmp_path, "older-run"), run_checkpoint_dir(tmp_path, "newer-run")
    for epoch in range(5):
        save_checkpoint(older, epoch, model, opt, {"run_id": "older-run"})
    for epoch in range(2):
        save_checkpoint(newer, epoch, model, opt, {"run_id": "newer-run"})
    assert sorted(p.name for p in newer.iterdir()) == ["checkpoint-000000.pt", "checkpoint-000001.pt"]
    assert load_latest_checkpoint(newer)["epoch"] == 1
    assert load_latest_checkpoint(older)["epoch"] == 4
    remove_run_checkpoints(newer)
    assert not newer.exists() and has_checkpoint(older) and not has_checkpoint(newer)


def test_a_checkpoint_write_killed_earlier_leaves_no_temp_file(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer()
    stale = tmp_path / ".checkpoint-000001.pt.tmp-4242"
    stale.write_bytes(b"half a checkpoint")  # what a writer killed mid-write leaves
    save_checkpoint(tmp_path, 1, model, opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000001.pt"]
    assert load_latest_checkpoint(tmp_path)["epoch"] == 1


def test_save_model_is_atomic_and_clears_stale_temp_files(tmp_path: Path) -> None:
    model, _ = _model_and_optimizer()
    stale = tmp_path / f".{MODEL_FILE}.tmp-4242"
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(b"half a model")
    save_model(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MODEL_FILE]
    loaded = load_model(tmp_path)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_resume_refuses_a_checkpoint_of_another_sessions_version(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer()
    signature = model_signature(load_config(None, []), N_ITEMS)
    save_checkpoint(tmp_path, 0, model, opt, {"signature": signature, "sessions_version": 3})
    check_resumable(tmp_path, signature, sessions_version=3)
    with pytest.raises(ConfigError, match="sessions table version 3 there, 5 now") as e:
        check_resumable(tmp_path, signature, sessions_version=5)
    assert "\n" not in str(e.value)
