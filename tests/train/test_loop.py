"""The epoch loop: windows, step counts, optimisers, reproducibility, checkpoints and resume, with every encoder."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nextplay.config import ConfigError, ModelConfig, TrainConfig, load_config
from nextplay.model.session import SessionModel
from nextplay.train.checkpoint import check_resumable, load_latest_checkpoint, model_signature, save_checkpoint
from nextplay.train.lanes import LaneBatches, Lanes
from nextplay.train.loop import Buckets, IndexedAdagrad, RowAdam, build_optimizer, clip_grad_norm, cut_windows, fit

N_ITEMS = 20
ENCODERS = ["gru", "sasrec"]


def _sessions(n: int, seed: int) -> list[torch.Tensor]:
    """Cycles over the catalog from random starts, lengths 2..12."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(2, 13, (1,), generator=gen))
        start = int(torch.randint(0, N_ITEMS, (1,), generator=gen))
        out.append((start + torch.arange(length)) % N_ITEMS + 1)
    return out


def _batches(sessions: list[torch.Tensor], batch_size: int):
    def make(epoch: int) -> list[dict[str, torch.Tensor]]:
        gen = torch.Generator().manual_seed(epoch)
        order = torch.randperm(len(sessions), generator=gen).tolist()
        out = []
        for lo in range(0, len(order), batch_size):
            rows = [sessions[i] for i in order[lo: lo + batch_size]]
            items = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
            out.append({"items": items, "length": torch.tensor([len(r) for r in rows])})
        return out

    return make


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=16, max_len=5, lr=0.01, progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _model(**kw) -> SessionModel:
    torch.manual_seed(0)
    base = dict(hidden_size=16, n_negatives=6, dropout=0.1)
    base.update(kw)
    return SessionModel(N_ITEMS, ModelConfig(**base), torch.arange(N_ITEMS + 1).numpy())


def test_windows_train_every_target_exactly_once_with_real_context() -> None:
    items = torch.tensor([list(range(1, 14)), [7, 8, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    lengths = torch.tensor([13, 3])
    w_items, w_len, first = cut_windows(items, lengths, max_len=5)
    assert w_items.shape[1] == 5 and (w_len <= 5).all()
    trained: list[int] = []
    for row, n, skip in zip(w_items.tolist(), w_len.tolist(), first.tolist()):
        trained += row[1 + skip: n]  # targets are items[1:], minus the leading context ones
    assert sorted(trained) == sorted(list(range(2, 14)) + [8, 9])
    # every window is a contiguous slice of its session, so each target sees its true predecessors
    for row, n in zip(w_items.tolist(), w_len.tolist()):
        assert all(b == a + 1 for a, b in zip(row[: n - 1], row[1:n]))


@pytest.mark.parametrize("steps", [3, 11])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_steps_per_epoch_is_exact(steps: int, encoder: str) -> None:
    sessions = _sessions(80, 0)  # 5 batches of 16
    drawn = []

    def make(epoch: int):
        for batch in _batches(sessions, 16)(epoch):
            drawn.append(epoch)
            yield batch

    cfg = _cfg(epochs=2)
    history = fit(_model(encoder=encoder), Buckets.of(make, cfg, steps), cfg)
    assert drawn.count(0) == steps and drawn.count(1) == steps
    assert [h["epoch"] for h in history] == [0, 1]
    assert all(h["events"] > 0 and h["events_per_second"] > 0 for h in history)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_same_seed_same_run(optimizer: str, encoder: str) -> None:
    make = _batches(_sessions(48, 1), 16)
    runs = []
    for _ in range(2):
        model = _model(head="sampled", encoder=encoder)
        cfg = _cfg(optimizer=optimizer)
        fit(model, Buckets.of(make, cfg), cfg)
        runs.append(_weights(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.parametrize("encoder", ENCODERS)
def test_resume_from_checkpoint_continues_the_same_trajectory(tmp_path: Path, encoder: str) -> None:
    cfg = _cfg(epochs=4)
    make = Buckets.of(_batches(_sessions(48, 2), 16), cfg)
    straight = _model(head="sampled", encoder=encoder)
    fit(straight, make, cfg)

    class Killed(Exception):
        pass

    def checkpoint_then_die(epoch: int, stats: dict) -> None:
        save_checkpoint(tmp_path, epoch, first, opt, {"loss": stats["loss"]})
        if epoch == 1:
            raise Killed

    first = _model(head="sampled", encoder=encoder)
    opt = build_optimizer(first, cfg)
    with pytest.raises(Killed):
        fit(first, make, cfg, optimizer=opt, on_epoch_end=checkpoint_then_die)

    resumed = _model(head="sampled", encoder=encoder)
    opt2 = build_optimizer(resumed, cfg)
    ckpt = load_latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt["epoch"] == 1
    resumed.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    fit(resumed, make, cfg, start_epoch=ckpt["epoch"] + 1, optimizer=opt2)
    want, got = _weights(straight), _weights(resumed)
    assert all(torch.allclose(want[k], got[k], atol=1e-6) for k in want)
    assert not torch.equal(want["embedding.weight"], _weights(_model(head="sampled", encoder=encoder))["embedding.weight"])


def test_checkpoints_skip_interrupted_writes_and_keep_the_newest(tmp_path: Path) -> None:
    model = _model()
    opt = build_optimizer(model, _cfg())
    for epoch in range(4):
        save_checkpoint(tmp_path, epoch, model, opt, {"epoch_seen": epoch})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000002.pt", "checkpoint-000003.pt"]
    (tmp_path / ".checkpoint-000004.pt.tmp-999").write_bytes(b"half a checkpoint")  # a killed writer
    assert load_latest_checkpoint(tmp_path)["extra"] == {"epoch_seen": 3}
    (tmp_path / "checkpoint-000003.pt").write_bytes(b"truncated")  # a broken newest file
    assert load_latest_checkpoint(tmp_path)["epoch"] == 2
    assert load_latest_checkpoint(tmp_path / "missing") is None


def test_resume_refuses_a_checkpoint_of_other_model_settings(tmp_path: Path) -> None:
    def signature(n_items: int = N_ITEMS, *overrides: str) -> dict:
        return model_signature(load_config(None, list(overrides)), n_items)

    model = _model()
    opt = build_optimizer(model, _cfg())
    check_resumable(tmp_path, signature())  # nothing to resume: nothing to refuse
    save_checkpoint(tmp_path, 0, model, opt, {})  # written before checkpoints had signatures
    check_resumable(tmp_path, signature())
    save_checkpoint(tmp_path, 1, model, opt, {"signature": signature(N_ITEMS, "model.readout=last")})
    check_resumable(tmp_path, signature(N_ITEMS, "model.readout=last", "train.lr=0.1"))  # train.* may change
    with pytest.raises(ConfigError, match=r"model\.readout='last' there, 'attention' now") as e:
        check_resumable(tmp_path, signature(N_ITEMS, "model.readout=attention"))
    assert "n_items" not in str(e.value) and "train.checkpoint_dir" in str(e.value)
    with pytest.raises(ConfigError, match="n_items=20 there, 21 now"):
        check_resumable(tmp_path, signature(N_ITEMS + 1, "model.readout=last"))
    with pytest.raises(ConfigError, match=r"model\.encoder='gru' there, 'sasrec' now"):
        check_resumable(tmp_path, signature(N_ITEMS, "model.readout=last", "model.encoder=sasrec"))
    with pytest.raises(ConfigError, match=r"model\.hybrid\.knn_weight=0\.1 there, 0\.2 now"):
        check_resumable(tmp_path, signature(N_ITEMS, "model.readout=last", "model.hybrid.knn_weight=0.2"))


def test_indexed_adagrad_touches_only_rows_in_the_batch() -> None:
    model = _model(head="bit_tree", dropout=0.0)
    cfg = _cfg(optimizer="adagrad", lr=0.1, weight_decay=0.01)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, IndexedAdagrad)
    before = model.embedding.weight.detach().clone()
    items, lengths = torch.tensor([[3, 4, 5]]), torch.tensor([3])
    loss, n = model.loss(items, lengths)
    (loss / n).backward()
    opt.step()
    changed = (model.embedding.weight != before).any(dim=1).nonzero().squeeze(1).tolist()
    assert changed == [3, 4]  # the inputs; 5 is only a target, read by the tree, not the embedding
    acc = opt.state[model.embedding.weight]["sum"]
    assert (acc[[3, 4]] > 0).all() and (acc.sum(1) > 0).sum() == 2


def test_adagrad_momentum_by_hand_on_touched_rows_only() -> None:
    """Two steps on a row-sparse matrix and a dense vector: v = m v + lr g / (sqrt(sum g^2) + eps)."""
    rows = torch.nn.Parameter(torch.zeros(4, 2))
    dense = torch.nn.Parameter(torch.zeros(3))
    opt = IndexedAdagrad([rows, dense], lr=0.1, momentum=0.5, eps=0.0)
    g1 = torch.tensor([[1.0, -2.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    g2 = torch.tensor([[3.0, 1.0], [0.0, 0.0], [2.0, 2.0], [0.0, 0.0]])
    d1, d2 = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([-1.0, 2.0, 0.5])
    for g, d in [(g1, d1), (g2, d2)]:
        rows.grad = g.to_sparse(sparse_dim=1)  # as nn.Embedding(sparse=True) gives it
        dense.grad = d.clone()
        opt.step()
    v1 = 0.1 * g1 / g1.abs().clamp_min(1e-30)  # first step: g / sqrt(g^2) = sign(g)
    acc = g1 ** 2 + g2 ** 2
    touched2 = torch.tensor([True, False, True, False])[:, None]
    v2 = torch.where(touched2, 0.5 * v1 + 0.1 * g2 / acc.sqrt().clamp_min(1e-30), v1)
    assert torch.allclose(rows.detach(), -(v1 + v2) * (g1 != 0) - v2 * ((g1 == 0) & touched2))
    assert (rows.detach()[[1, 3]] == 0).all()  # never touched: value and velocity stay put
    dv1 = 0.1 * torch.sign(d1)
    dv2 = 0.5 * dv1 + 0.1 * d2 / (d1 ** 2 + d2 ** 2).sqrt()
    assert torch.allclose(dense.detach(), -(dv1 + dv2))


def test_adagrad_with_momentum_learns_the_planted_sequence() -> None:
    model = _model(head="sampled", dropout=0.0)
    cfg = _cfg(optimizer="adagrad", lr=0.1, momentum=0.3, epochs=12, lr_schedule="constant")
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, IndexedAdagrad)
    fit(model, Buckets.of(_batches(_sessions(160, 4), 16), cfg), cfg, optimizer=opt)
    prefixes = torch.tensor([[i, i % N_ITEMS + 1] for i in range(1, N_ITEMS + 1)])
    _, top = model.topk(prefixes, torch.full((N_ITEMS,), 2), k=1)
    expected = (prefixes[:, 1] % N_ITEMS) + 1
    assert (top[:, 0] == expected).float().mean() > 0.9


def test_truncated_bptt_reaches_the_trainer_and_learns_the_planted_sequence() -> None:
    """train.bptt_steps reaches the gradients fit applies (same seed, same batches, other recurrent
    weights), and one-step truncation still learns an item -> next item rule."""
    make = _batches(_sessions(48, 1), 16)
    runs = {}
    for k in (0, 1):
        model = _model(head="sampled")
        cfg = _cfg(bptt_steps=k)
        fit(model, Buckets.of(make, cfg), cfg)
        runs[k] = _weights(model)
    key = "encoder.stack.rnn.weight_hh_l0"
    assert not torch.equal(runs[0][key], runs[1][key])
    model = _model(head="sampled", dropout=0.0)
    cfg = _cfg(bptt_steps=1, epochs=12, lr=0.05)
    fit(model, Buckets.of(_batches(_sessions(160, 4), 16), cfg), cfg)
    prefixes = torch.tensor([[i, i % N_ITEMS + 1] for i in range(1, N_ITEMS + 1)])
    _, top = model.topk(prefixes, torch.full((N_ITEMS,), 2), k=1)
    expected = (prefixes[:, 1] % N_ITEMS) + 1
    assert (top[:, 0] == expected).float().mean() > 0.9


@pytest.mark.parametrize("loss", ["cross_entropy", "bpr_max"])
def test_lane_steps_shortcut_gives_the_loss_of_the_whole_forward(loss: str) -> None:
    """One target per row (lane steps) with one-step truncation takes model/cells.py's `last_step`:
    the same loss, repeat pointer included, as the general path."""
    items = torch.tensor([[3, 4, 5, 6, 7], [9, 10, 0, 0, 0], [1, 2, 3, 0, 0]])
    lengths = torch.tensor([5, 2, 3])
    first = lengths - 2
    values = []
    for shortcut in (True, False):  # the general path: same values, gradients through every step
        model = _model(head="sampled", dropout=0.0, loss=loss, embedding_dropout=0.0)
        torch.manual_seed(5)
        total, n = model.last_target_loss(items, lengths, truncate=True) if shortcut else model.loss(items, lengths, first)
        values.append(float(total.detach()))
        assert n == 3
    assert values[0] == pytest.approx(values[1], rel=1e-5)


def test_lane_steps_learn_the_planted_sequence() -> None:
    """Session-parallel steps (one target per session per step, prefix recomputed) through fit."""
    sessions = [s.numpy() for s in _sessions(160, 4)]
    lanes = LaneBatches(lambda: sessions, 8, 5, sum(len(s) - 1 for s in sessions))
    model = _model(head="sampled", dropout=0.0)
    cfg = _cfg(optimizer="adagrad", lr=0.1, epochs=6, lr_schedule="constant", bptt_steps=1)
    history = fit(model, Lanes.of(lanes, cfg), cfg)
    assert history[0]["events"] == sum(len(s) - 1 for s in sessions)
    prefixes = torch.tensor([[i, i % N_ITEMS + 1] for i in range(1, N_ITEMS + 1)])
    _, top = model.topk(prefixes, torch.full((N_ITEMS,), 2), k=1)
    expected = (prefixes[:, 1] % N_ITEMS) + 1
    assert (top[:, 0] == expected).float().mean() > 0.9


class _SingleProcess:
    """The distributed hook as a one-process group: records what the loop asks of it."""

    rank, size = 0, 1

    def __init__(self) -> None:
        self.calls: list[str] = []

    def wrap_optimizer(self, optimizer, named_parameters):
        self.calls.append("wrap")
        assert {n for n, _ in named_parameters} >= {"embedding.weight"}
        return optimizer

    def broadcast(self, model, optimizer) -> None:
        self.calls.append("broadcast")

    def allreduce_mean(self, value: float) -> float:
        self.calls.append("allreduce")
        return value


def test_distributed_hook_is_used() -> None:
    hook = _SingleProcess()
    cfg = _cfg(epochs=1)
    history = fit(_model(), Buckets.of(_batches(_sessions(32, 5), 16), cfg, 2), cfg, distributed=hook)
    assert hook.calls[:2] == ["wrap", "broadcast"] and hook.calls.count("allreduce") == 3
    assert len(history) == 1


def test_row_adam_is_adam_on_dense_gradients_and_touches_only_sparse_rows() -> None:
    torch.manual_seed(0)
    init_dense, init_sparse = torch.randn(30, 4), torch.randn(30, 4)
    dense_ref, dense = torch.nn.Parameter(init_dense.clone()), torch.nn.Parameter(init_dense.clone())
    sparse_ref, sparse = torch.nn.Parameter(init_sparse.clone()), torch.nn.Parameter(init_sparse.clone())
    opts = [torch.optim.Adam([dense_ref, sparse_ref], lr=0.01), RowAdam([dense, sparse], lr=0.01)]
    rows = torch.tensor([3, 5, 5, 11])  # a repeated row sums, as an embedding lookup would
    for _ in range(4):
        g, w = torch.randn(30, 4), torch.randn(4, 4)
        for p in (dense_ref, dense, sparse_ref, sparse):
            p.grad = None
        dense_ref.grad, dense.grad = g.clone(), g.clone()
        (torch.nn.functional.embedding(rows, sparse_ref) * w).sum().backward()
        (torch.nn.functional.embedding(rows, sparse, sparse=True) * w).sum().backward()
        assert sparse.grad.is_sparse
        for opt in opts:
            opt.step()
    assert torch.allclose(dense, dense_ref, atol=1e-6)
    touched = torch.tensor([3, 5, 11])
    assert torch.allclose(sparse[touched], sparse_ref[touched], atol=1e-6)
    untouched = torch.ones(30, dtype=torch.bool)
    untouched[touched] = False
    assert torch.equal(sparse[untouched], init_sparse[untouched])  # lazy rows: no decay, no weight decay
    assert torch.equal(sparse_ref[untouched], init_sparse[untouched])  # dense Adam never moved them either


def test_sampled_head_steps_cost_the_batch_not_the_catalog() -> None:
    """Item gradients are row-sparse, and one step moves only the rows the batch and its negatives used."""
    model = _model(head="sampled", n_negatives=3, dropout=0.0)
    assert model.sparse_items and not _model(head="full").sparse_items
    opt = build_optimizer(model, _cfg())
    items = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    before = model.embedding.weight.detach().clone()
    loss, n = model.loss(items, torch.tensor([3, 4]))
    (loss / n).backward()
    grad = model.embedding.weight.grad
    assert grad.is_sparse
    used = set(grad.coalesce().indices()[0].tolist())
    assert {1, 2, 3, 4, 5, 6, 7} <= used and len(used) < N_ITEMS + 1
    clip_grad_norm(list(model.parameters()), 1.0)
    opt.step()
    moved = (model.embedding.weight.detach() != before).any(dim=1).nonzero().squeeze(1).tolist()
    assert set(moved) == used
