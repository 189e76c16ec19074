"""A reference for the RNN alone: GRU4Rec's published training loop on nextplay's validation split.

Why it exists: on diginetica it trains a better RNN than nextplay's trainer (stop 14,
docs/benchmarks.md), and bisecting it showed that the order of sessions is what matters. It
reproduces the loop the official GRU4Rec code describes, with that code's diginetica parameters,
in one file, outside the production path:

- session-parallel mini-batches: `bs` lanes, each holding one session at a time, one event per
  lane per step; a finished session hands its lane to the next one and its state is zeroed;
- sessions in the file's order (time order) every epoch; `order=shuffle` draws a new random
  order each epoch, `order=reverse` runs newest first, `order=local` shuffles inside blocks of
  1,024 consecutive sessions (about a day of diginetica) and keeps the blocks in time order;
- one-step truncated backpropagation (the carried state is a constant); the hidden dropout's output
  is also the state carried to the next step;
- item vectors tied between input and output, plus an output bias; uniform initialisation;
- BPR-max over ELU scores against the step's other targets and 2,048 items drawn from
  popularity^0.3, score regularisation 0.9, the loss summed over the lanes and divided by `bs`;
- Adagrad with momentum 0.15, step 0.05, epsilon inside the square root, row-wise on item rows.

Usage (one torch thread; about 2,500 events/s at dim 512, 5,000 at 256, on this machine):

    .venv/bin/python experiments/reference_loop.py dim=256 [order=shuffle] [epochs=5] [save=rnn.pt]

It prints one JSON line per epoch and the validation Recall@20 / MRR@20 of the RNN alone (every
prefix of the last 10% of sessions, ranked by the project's `evaluate_model` as
`tune_benchmark.py` ranks). `save=` writes the weights as a nextplay `SessionRNN` state_dict (GRU,
no repeat pointer) for
`tune_benchmark.py --load ... --set model.hidden_size=<dim> --set model.repeat=false --blend ...`.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nextplay.config import load_config
from nextplay.evaluate.metrics import evaluate_model
from nextplay.model.rnn import SessionRNN

sys.path.insert(0, str(Path(__file__).parent))
from tune_benchmark import ItemIndex, prefix_lines, read_sessions  # noqa: E402

ARGS = dict(a.split("=", 1) for a in sys.argv[1:])
DIM, EPOCHS, LANES = int(ARGS.get("dim", 512)), int(ARGS.get("epochs", 5)), int(ARGS.get("bs", 128))
ORDER = ARGS.get("order", "time")
DATA = Path(ARGS.get("data", Path(__file__).resolve().parents[1].parent / "shared/data/diginetica"))
N_NEG, ALPHA, LR, MOMENTUM, EPS = 2048, 0.3, 0.05, 0.15, 1e-6
P_EMBED, P_HIDDEN, BPR_REG = 0.5, 0.3, 0.9


def uniform(shape: tuple[int, int], fan: int) -> torch.Tensor:
    bound = math.sqrt(6.0 / fan)
    return torch.empty(shape).uniform_(-bound, bound).requires_grad_()


class AdagradMomentum:
    """Adagrad with momentum; sparse gradients update (and decay the momentum of) their rows only."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self.acc = [torch.zeros_like(p) for p in params]
        self.vel = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        for p, acc, vel in zip(self.params, self.acc, self.vel):
            if p.grad.is_sparse:
                grad = p.grad.coalesce()
                rows, g = grad.indices()[0], grad.values()
                a = acc[rows] + g.pow(2)
                acc[rows] = a
                v = vel[rows] * MOMENTUM - LR * g / (a + EPS).sqrt()
                vel[rows] = v
                p.index_add_(0, rows, v)
            else:
                acc.add_(p.grad.pow(2))
                vel.mul_(MOMENTUM).addcdiv_(p.grad, (acc + EPS).sqrt(), value=-LR)
                p.add_(vel)
            p.grad = None


def bpr_max(scores: torch.Tensor) -> torch.Tensor:
    """Row r's target is column r; every other column is a negative."""
    r = F.elu(scores)
    not_target = 1.0 - torch.eye(*r.shape)
    e = torch.exp(r * not_target - (r * not_target).max(1, keepdim=True)[0]) * not_target
    weight = e / e.sum(1, keepdim=True)
    target = torch.diagonal(r)[:, None]
    return (-torch.log((torch.sigmoid(target - r) * weight).sum(1) + 1e-24)
            + BPR_REG * (r.pow(2) * weight).sum(1)).sum()


def session_order(n: int, rng: np.random.Generator) -> np.ndarray:
    if ORDER == "shuffle":
        return rng.permutation(n)
    if ORDER == "reverse":
        return np.arange(n)[::-1]
    if ORDER == "local":
        return np.concatenate([lo + rng.permutation(min(n, lo + 1024) - lo) for lo in range(0, n, 1024)])
    if ORDER != "time":
        raise SystemExit(f"order must be time, shuffle, reverse or local, got {ORDER!r}")
    return np.arange(n)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    sessions = read_sessions(DATA / "train_sessions.txt")
    cut = int(len(sessions) * 0.9)
    index = ItemIndex(sessions[:cut])
    train, n_items = index.sessions(sessions[:cut]), index.n_items
    items = uniform((n_items + 1, DIM), n_items + DIM)
    bias = torch.zeros(n_items + 1, 1, requires_grad=True)
    w_ih, w_hh = uniform((3 * DIM, DIM), 2 * DIM), uniform((3 * DIM, DIM), 2 * DIM)
    b_ih, b_hh = torch.zeros(3 * DIM, requires_grad=True), torch.zeros(3 * DIM, requires_grad=True)
    opt = AdagradMomentum([items, bias, w_ih, w_hh, b_ih, b_hh])
    pop = index.counts.astype(np.float64) ** ALPHA
    pop[0] = 0.0
    cdf = torch.tensor(np.cumsum(pop) / pop.sum())

    def cell(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch._VF.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)

    for epoch in range(EPOCHS):
        order = [train[i] for i in session_order(len(train), rng)]
        offsets = np.cumsum([0] + [len(s) for s in order])
        flat = np.concatenate(order)
        started, total, events = time.time(), 0.0, 0
        lane_session = np.arange(LANES)
        pos, end = offsets[lane_session].copy(), offsets[lane_session + 1].copy()
        next_session, state = LANES, torch.zeros(LANES, DIM)
        while len(pos):
            inp, out = torch.from_numpy(flat[pos]), torch.from_numpy(flat[pos + 1])
            y = torch.cat([out, torch.searchsorted(cdf, torch.rand(N_NEG, dtype=torch.float64)).clamp(1, n_items)])
            x = F.dropout(F.embedding(inp, items, sparse=True), P_EMBED)
            h = F.dropout(cell(x, state), P_HIDDEN)
            scores = h @ F.embedding(y, items, sparse=True).t() + F.embedding(y, bias, sparse=True).t()
            loss = bpr_max(scores) / LANES
            loss.backward()
            opt.step()
            total, events = total + float(loss.detach()) * LANES, events + len(inp)
            state, pos = h.detach().clone(), pos + 1
            for lane in np.flatnonzero(pos + 1 >= end):
                if next_session < len(order):
                    pos[lane], end[lane] = offsets[next_session], offsets[next_session + 1]
                    state[lane] = 0.0
                    next_session += 1
                else:
                    pos[lane] = -1
            live = pos >= 0
            pos, end, state = pos[live], end[live], state[torch.from_numpy(live)]
        seconds = time.time() - started
        print(json.dumps({"epoch": epoch, "loss": total / events, "seconds": round(seconds, 1),
                          "events_per_second": round(events / seconds)}), flush=True)
    model = as_session_rnn(index, items, bias, (w_ih, w_hh, b_ih, b_hh))
    prefixes, labels, _ = index.lines(*prefix_lines(sessions[cut:]))
    result = evaluate_model(model, prefixes, labels, ks=(20,), batch_size=512)
    print(json.dumps({"dim": DIM, "order": ORDER, "lines": len(labels), **result}), flush=True)
    if "save" in ARGS:
        torch.save(model.state_dict(), ARGS["save"])


def as_session_rnn(index: ItemIndex, items: torch.Tensor, bias: torch.Tensor,
                   gru: tuple[torch.Tensor, ...]) -> SessionRNN:
    """The trained weights as a nextplay `SessionRNN` (GRU, no repeat pointer, empty memory), so the
    project's own evaluation ranks it and `tune_benchmark.py --load` can mix its hybrid."""
    cfg = load_config(os.devnull, [f"model.hidden_size={DIM}", "model.repeat=false"])
    model = SessionRNN(index.n_items, cfg.model, index.counts)
    state = model.state_dict()
    state["embedding.weight"], state["head.bias"] = items.detach().clone(), bias.detach()[:, 0].clone()
    for name, value in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), gru):
        state[f"rnn.rnn.{name}"] = value.detach().clone()
    model.load_state_dict(state)
    return model.eval()


if __name__ == "__main__":
    main()
