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
    from nextplay.train.distributed import TorchCollective

    comm = TorchCollective()
    torch.manual_seed(0)
    emb = torch.nn.Embedding(N_ITEMS + 1, DIM, sparse=True)
    dense = torch.nn.Linear(DIM, 1)
    opt = comm.wrap_optimizer(torch.optim.SGD([*emb.parameters(), *dense.parameters()], lr=0.0),
                              [*emb.named_parameters(), *dense.named_parameters()])
    # Each rank touches other rows (and one in common, twice on rank 1).
    rows = torch.tensor([[1, 2, 3], [5, 900, 5]][rank])
    dense(emb(rows)).sum().backward()
    mine = emb.weight.grad.to_dense().clone()
    opt.step()
    out[rank] = {"grad": emb.weight.grad.to_dense(), "sparse": emb.weight.grad.is_sparse, "mine": mine,
                 "nnz": int((emb.weight.grad.to_dense() != 0).any(dim=1).sum())}
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_sparse_item_gradients_are_averaged_sparsely() -> None:
    """Both ranks end with the mean of the two gradients, still sparse: only the touched rows went
    over the wire, never the V x H dense matrix."""
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
