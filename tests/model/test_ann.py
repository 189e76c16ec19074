"""The item index finds a trained model's top items, is tied to the vectors it was built from, and
refuses a head that has no item vectors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nextplay.config import ModelConfig, TrainConfig
from nextplay.model.ann import ItemVectorIndex, fingerprint, item_vectors, model_fingerprint, query_vectors
from nextplay.model.session import SessionModel
from nextplay.train.loop import build_optimizer

N_ITEMS = 3000
GROUP = 10  # items per "artist": sessions stay within one, or move to the next


def _sessions(n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Sessions over artists of GROUP consecutive ids, popular artists first (a long tail), each
    step staying with the artist or moving to the next one: co-occurrence the vectors must learn."""
    n_artists = N_ITEMS // GROUP
    popularity = 1.0 / torch.arange(1, n_artists + 1).double()
    artist = torch.multinomial(popularity, n, replacement=True, generator=gen)
    steps = []
    for _ in range(length):
        steps.append(artist * GROUP + torch.randint(0, GROUP, (n,), generator=gen) + 1)
        move = torch.rand(n, generator=gen) < 0.2
        artist = torch.where(move, (artist + 1) % n_artists, artist)
    return torch.stack(steps, dim=1)


def _session_vectors(model: SessionModel, items: torch.Tensor) -> torch.Tensor:
    lengths = torch.full((items.shape[0],), items.shape[1])
    with torch.no_grad():
        return model.readout(model.forward(items, lengths), lengths, last_only=True).session[:, 0]


@pytest.fixture(scope="module")
def trained() -> tuple[SessionModel, torch.Generator]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = SessionModel(N_ITEMS, ModelConfig(head="sampled", hidden_size=32, n_negatives=128, repeat=False,
                                              init_std=0.1))
    opt = build_optimizer(model, TrainConfig(lr=0.01))
    lengths = torch.full((64,), 8)
    for _ in range(300):
        loss, n = model.loss(_sessions(64, 8, gen), lengths)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    return model.eval(), gen


def _exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return torch.from_numpy(q @ x.T).topk(k, dim=1).indices.numpy() + 1


def test_query_times_item_vector_is_the_heads_logit(trained) -> None:
    model, gen = trained
    s = _session_vectors(model, _sessions(5, 4, gen))
    scores = query_vectors(s) @ item_vectors(model).T
    logits = model.head.logits(s, model._output_weight(), 1, N_ITEMS + 1)
    np.testing.assert_allclose(scores, logits.detach().numpy(), rtol=1e-4, atol=1e-4)


def test_finds_the_exact_top_20_of_a_trained_model(trained) -> None:
    model, gen = trained
    x = item_vectors(model)
    q = query_vectors(_session_vectors(model, _sessions(300, 5, gen)))
    truth = _exact_top(x, q, 20)
    found = ItemVectorIndex.build(x, m=16, ef_construction=100, threads=1).search(q, 20, ef=128)
    assert found.dtype == np.int64 and found.min() >= 1 and found.max() <= N_ITEMS
    recall = np.mean([len(set(f) & set(t)) / 20 for f, t in zip(found.tolist(), truth.tolist())])
    assert recall >= 0.98, f"recall of the exact top-20 at ef=128: {recall:.3f}"


def test_save_and_load_answer_alike(trained, tmp_path: Path) -> None:
    model, gen = trained
    x = item_vectors(model)
    q = query_vectors(_session_vectors(model, _sessions(50, 5, gen)))
    built = ItemVectorIndex.build(x, m=8, ef_construction=50, threads=2)
    built.save(tmp_path / "index")
    meta = json.loads((tmp_path / "index" / ItemVectorIndex.META_FILE).read_text())
    assert (meta["library"], meta["n_items"], meta["dim"], meta["fingerprint"]) == ("faiss-cpu", N_ITEMS, 33,
                                                                                    fingerprint(x))
    loaded = ItemVectorIndex.load(tmp_path / "index", fingerprint(x))
    assert loaded.index.d == 48  # 33 coordinates stored padded with zeros to whole 16-float lanes
    np.testing.assert_array_equal(loaded.search(q, 20, ef=50), built.search(q, 20, ef=50))


def test_a_models_fingerprint_is_that_of_its_item_vectors(trained) -> None:
    """Streamed in blocks, so checking a loaded index never copies the item table."""
    model, _ = trained
    expected = fingerprint(item_vectors(model))
    assert model_fingerprint(model) == model_fingerprint(model, rows=7) == expected


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")
def test_a_loaded_index_is_the_mapped_file(trained, tmp_path: Path) -> None:
    """Every Python worker of an executor maps the one unpacked index instead of reading its own copy."""
    x = item_vectors(trained[0])
    ItemVectorIndex.build(x, m=8, ef_construction=50, threads=1).save(tmp_path)
    loaded = ItemVectorIndex.load(tmp_path, fingerprint(x))
    maps = Path("/proc/self/maps").read_text()
    assert str(tmp_path / ItemVectorIndex.INDEX_FILE) in maps
    assert loaded.search(query_vectors(x[:3, :-1]), 5, ef=50).shape == (3, 5)


def test_an_index_of_other_vectors_is_refused(trained, tmp_path: Path) -> None:
    model, _ = trained
    x = item_vectors(model)
    ItemVectorIndex.build(x, m=8, ef_construction=50, threads=1).save(tmp_path)
    retrained = x.copy()
    retrained[7, 3] += 1e-3  # one weight of another model version
    with pytest.raises(ValueError, match="other item vectors"):
        ItemVectorIndex.load(tmp_path, fingerprint(retrained))


def test_an_index_of_another_library_is_refused(trained, tmp_path: Path) -> None:
    x = item_vectors(trained[0])
    ItemVectorIndex.build(x, m=8, ef_construction=50, threads=1).save(tmp_path)
    meta_path = tmp_path / ItemVectorIndex.META_FILE
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "library": "voyager"}))
    with pytest.raises(ValueError, match="library 'voyager'"):
        ItemVectorIndex.load(tmp_path, fingerprint(x))
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "library": "faiss-cpu", "format": 1}))
    with pytest.raises(ValueError, match="format 1.*rebuild the index"):  # vectors stored unpadded
        ItemVectorIndex.load(tmp_path, fingerprint(x))
    with pytest.raises(ValueError, match="holds no item index"):
        ItemVectorIndex.load(tmp_path / "absent", fingerprint(x))


def test_fewer_items_than_k_pads_with_zero() -> None:
    x = np.eye(3, 4, dtype=np.float32)
    found = ItemVectorIndex.build(x, m=4, ef_construction=10, threads=1).search(np.eye(1, 4, dtype=np.float32), 5, 10)
    assert found[0, 0] == 1 and sorted(found[0, :3].tolist()) == [1, 2, 3] and found[0, 3:].tolist() == [0, 0]


def test_bit_tree_has_no_item_vectors() -> None:
    model = SessionModel(50, ModelConfig(head="bit_tree", hidden_size=8))
    with pytest.raises(ValueError, match="bit_tree.*score.candidates=exact"):
        item_vectors(model)


def test_queries_and_vectors_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[batch, dim\]"):
        query_vectors(np.ones(4, dtype=np.float32))
    index = ItemVectorIndex.build(np.eye(3, 4, dtype=np.float32), m=4, ef_construction=10, threads=1)
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        index.search(np.ones((2, 3), dtype=np.float32), 2, 10)
    with pytest.raises(ValueError, match="NaN"):
        ItemVectorIndex.build(np.full((2, 3), np.nan, dtype=np.float32), m=4, ef_construction=10, threads=1)
