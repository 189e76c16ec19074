"""torch.distributed gradient averaging (the TorchDistributor launcher), on two real Gloo processes."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

N_ITEMS, DIM = 1000, 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0")
    from nextplay.model.heads import gather_rows
    from nextplay.train.distributed import TorchCollective

    comm = TorchCollective()
    torch.manual_seed(0)
    emb = torch.nn.Embedding(N_ITEMS + 1, DIM, sparse=True)
    bias = torch.nn.Parameter(torch.zeros(N_ITEMS + 1))  # an output bias, gathered as the sampled head does
    dense = torch.nn.Linear(DIM, 1)
    opt = comm.wrap_optimizer(torch.optim.SGD([*emb.parameters(), bias, *dense.parameters()], lr=0.0),
                              [*emb.named_parameters(), ("bias", bias), *dense.named_parameters()])
    # Each rank touches other rows (and one in common, twice on rank 1).
    rows = torch.tensor([[1, 2, 3], [5, 900, 5]][rank])
    (dense(emb(rows)).sum() + (gather_rows(bias, rows, sparse=True) * (rank + 1)).sum()).backward()
    mine = emb.weight.grad.to_dense().clone()
    mine_bias = bias.grad.to_dense().clone()
    opt.step()
    out[rank] = {"grad": emb.weight.grad.to_dense(), "sparse": emb.weight.grad.is_sparse, "mine": mine,
                 "nnz": int((emb.weight.grad.to_dense() != 0).any(dim=1).sum()),
                 "bias_grad": bias.grad.to_dense(), "bias_sparse": bias.grad.is_sparse, "mine_bias": mine_bias}
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_sparse_item_gradients_are_averaged_sparsely() -> None:
    """Both ranks end with the mean of the two gradients, still sparse: only the touched rows went
    over the wire, never the V x H dense matrix nor the V output biases."""
    port = _free_port()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_rank, args=(port, out), nprocs=2, join=True, start_method="spawn")
        got = dict(out)
    expected = (got[0]["mine"] + got[1]["mine"]) / 2
    for rank in (0, 1):
        assert got[rank]["sparse"], "the item gradient was made dense before the reduction"
        assert torch.allclose(got[rank]["grad"], expected)
        assert got[rank]["nnz"] == 5  # rows 1, 2, 3, 5, 900
        assert got[rank]["bias_sparse"], "the bias gradient was made dense before the reduction"
        assert torch.allclose(got[rank]["bias_grad"], (got[0]["mine_bias"] + got[1]["mine_bias"]) / 2)
    assert got[0]["bias_grad"][5] == 2.0 and got[0]["bias_grad"][1] == 0.5  # rank 1: 2 x 2 / 2; rank 0: 1 / 2
