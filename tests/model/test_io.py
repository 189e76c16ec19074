"""A saved model loads in eval mode and scores exactly as before."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nextplay.config import ConfigError, ModelConfig, RecurrentConfig, SASRecConfig, TrainConfig
from nextplay.model.io import load_model, save_model
from nextplay.model.session import SessionModel
from nextplay.train.loop import build_optimizer


@pytest.mark.parametrize("cfg", [
    ModelConfig(head="sampled", hidden_size=8, n_negatives=4),
    ModelConfig(head="full", encoder="lstm", hidden_size=8, embedding_size=6, tie_embeddings=False, readout="last",
                repeat=False),
    ModelConfig(head="bit_tree", encoder="rnn", hidden_size=8, recurrent=RecurrentConfig(num_layers=2)),
    ModelConfig(head="sampled", encoder="sasrec", hidden_size=8, embedding_size=6, n_negatives=4,
                sasrec=SASRecConfig(blocks=2, heads=2, max_positions=3)),
], ids=["sampled", "full-untied", "bit_tree", "sasrec"])
def test_round_trip_scores_identically(tmp_path: Path, cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    counts = np.arange(10)
    model = SessionModel(9, cfg, counts)
    opt = build_optimizer(model, TrainConfig(lr=0.05))  # row-wise Adam where item gradients are sparse
    items, lengths = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]]), torch.tensor([4, 2])
    for _ in range(3):  # move the weights away from their initial values
        loss, n = model.loss(items, lengths)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    model.eval()
    save_model(model, tmp_path / "m")
    assert (tmp_path / "m" / "model.pt").exists()
    loaded = load_model(tmp_path / "m")
    assert not loaded.training
    assert loaded.cfg == cfg and loaded.n_items == 9
    np.testing.assert_array_equal(loaded.item_counts, counts)
    assert torch.equal(loaded.score_all(items, lengths), model.score_all(items, lengths))


def test_a_model_file_with_an_unknown_config_key_is_refused_in_one_line(tmp_path: Path) -> None:
    """The config travels as plain values and is checked like a conf's `model` section on load."""
    save_model(SessionModel(5, ModelConfig(hidden_size=4, n_negatives=2)), tmp_path)
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    payload["config"]["cosine_scale"] = 8.0
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(ConfigError, match="unknown config key 'model.cosine_scale'"):
        load_model(tmp_path)
