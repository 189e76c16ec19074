"""A saved model loads in eval mode and scores exactly as before."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nextplay.config import ModelConfig, TrainConfig
from nextplay.model.io import load_model, save_model
from nextplay.model.rnn import SessionRNN
from nextplay.train.loop import build_optimizer


@pytest.mark.parametrize("cfg", [
    ModelConfig(head="sampled", hidden_size=8, n_negatives=4),
    ModelConfig(head="full", cell="lstm", hidden_size=8, embedding_size=6, tie_embeddings=False, readout="last",
                repeat=False, cosine_scale=10.0),
    ModelConfig(head="bit_tree", cell="rnn", hidden_size=8, num_layers=2),
], ids=["sampled", "full-untied-cosine", "bit_tree"])
def test_round_trip_scores_identically(tmp_path: Path, cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    counts = np.arange(10)
    model = SessionRNN(9, cfg, counts)
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
