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


def _reference_load(path: Path) -> SessionModel:
    """Loading as a plain read does it: the whole file read into memory, copied into a freshly
    initialised model. The mapped loader must give the same model."""
    payload = torch.load(path / "model.pt", weights_only=True)
    counts = payload["item_counts"]
    model = SessionModel(payload["n_items"], load_model(path).cfg, None if counts is None else counts.numpy())
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def _file_mappings(name: str) -> list[tuple[int, int]]:
    """Address ranges this process maps from files called `name` (Linux /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith("/" + name):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


linux_only = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")


@linux_only
@pytest.mark.parametrize("head", ["sampled", "bit_tree"])
def test_loaded_weights_are_the_mapped_file_not_a_copy(tmp_path: Path, head: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(head=head, hidden_size=8, n_negatives=4, tie_embeddings=False)
    save_model(SessionModel(300, cfg, np.arange(301)), tmp_path)
    loaded = load_model(tmp_path)
    mapped = _file_mappings("model.pt")
    assert mapped, "model.pt is memory-mapped"
    matrices = [t for t in loaded.state_dict().values() if t.dim() == 2]
    assert len(matrices) >= 2
    for t in matrices:
        ptr = t.untyped_storage().data_ptr()
        assert any(lo <= ptr < hi for lo, hi in mapped), "every weight matrix lives in the mapped file"
    reference = _reference_load(tmp_path)
    assert loaded.state_dict().keys() == reference.state_dict().keys()
    for name, t in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    items, lengths = torch.tensor([[1, 2, 3], [7, 0, 0]]), torch.tensor([3, 1])
    assert torch.equal(loaded.score_all(items, lengths), reference.score_all(items, lengths))
    assert torch.equal(loaded.topk(items, lengths, 5)[1], reference.topk(items, lengths, 5)[1])


def test_writing_into_a_loaded_model_leaves_its_file_unchanged(tmp_path: Path) -> None:
    """The mapping is private: training a warm-started model must never edit the champion's file."""
    save_model(SessionModel(20, ModelConfig(hidden_size=4, n_negatives=2)), tmp_path)
    before = (tmp_path / "model.pt").read_bytes()
    loaded = load_model(tmp_path)
    with torch.no_grad():
        loaded.embedding.weight.add_(1.0)
    assert (tmp_path / "model.pt").read_bytes() == before
    assert not torch.equal(load_model(tmp_path).embedding.weight, loaded.embedding.weight)


def test_a_model_with_a_weight_the_file_does_not_hold_is_refused(tmp_path: Path, monkeypatch) -> None:
    save_model(SessionModel(5, ModelConfig(hidden_size=4, n_negatives=2)), tmp_path)
    built = SessionModel.__init__

    def with_unsaved_matrix(self, *args, **kwargs):
        built(self, *args, **kwargs)
        self.register_buffer("cache", torch.zeros(3, 3), persistent=False)

    monkeypatch.setattr(SessionModel, "__init__", with_unsaved_matrix)
    with pytest.raises(ValueError, match="no saved values for cache"):
        load_model(tmp_path)


# Run in a fresh interpreter: its peak resident memory while loading a model and reading every
# weight, over the size of the file. A small model is loaded first, so the libraries that loading
# imports and the first torch calls are paid before the measurement starts.
_PEAK_SCRIPT = """
import sys
from pathlib import Path
from nextplay.model.io import load_model

def status(key):
    line = next(l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith(key + ':'))
    return int(line.split()[1]) * 1024

def read_every_weight(model):
    return sum(float(t.sum()) for t in model.state_dict().values() if t.is_floating_point())

read_every_weight(load_model(sys.argv[1]))
Path('/proc/self/clear_refs').write_text('5')  # restart the peak (VmHWM) from here
before = status('VmRSS')
read_every_weight(load_model(sys.argv[2]))
print((status('VmHWM') - before) / (Path(sys.argv[2]) / 'model.pt').stat().st_size)
"""


@linux_only
@pytest.mark.slow
def test_loading_a_model_holds_it_about_once(tmp_path: Path) -> None:
    """Reading all of a 100 MB model costs about its size once: not a random model plus a read copy."""
    import os
    import subprocess
    import sys

    cfg = ModelConfig(hidden_size=128, n_negatives=4, tie_embeddings=False)
    save_model(SessionModel(100, cfg), tmp_path / "small")
    save_model(SessionModel(100_000, cfg), tmp_path / "big")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "lib"),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path / "small"), str(tmp_path / "big")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1.3


def test_a_loaded_model_builds_its_sampling_state_only_to_train(tmp_path: Path) -> None:
    """Scoring never needs the sampled head's negative distributions (buffers over the catalog): a
    loaded model builds them on its first training step, the same as the model that was saved."""
    counts = np.arange(51) % 7
    saved = SessionModel(50, ModelConfig(head="sampled", hidden_size=8, n_negatives=4), counts)
    save_model(saved, tmp_path)
    loaded = load_model(tmp_path)
    items, lengths = torch.tensor([[1, 2, 3], [7, 8, 0]]), torch.tensor([3, 2])
    loaded.topk(items, lengths, 5)
    assert loaded.head._sampler is None
    loaded.train()
    assert torch.isfinite(loaded.loss(items, lengths)[0])
    assert loaded.head._sampler is not None
    for name in ("neg_probs", "pop_probs"):
        assert torch.equal(getattr(loaded.head.sampler, name), getattr(saved.head.sampler, name)), name
