"""The few collective operations the training loop needs, for Horovod and for torch.distributed.

`fit` only ever talks to this small interface, so the same loop runs in one process, under
`horovod.run` / `horovod.spark.run` (Horovod over Gloo or NCCL), and under Spark's
`TorchDistributor` (torch.distributed over Gloo or NCCL).

Row-sparse gradients (the sampled and bit-tree heads' item vectors, output biases and tree nodes:
model/heads.py `gather_rows`) cross the wire as their rows alone on both paths, by all-gathering
indices and values, on Gloo and NCCL alike: a step sends world_size x the rows it touched, never a
[V, D] matrix or a [V] bias. NCCL has no sparse collectives (DDP cannot reduce a sparse gradient
over it) and Gloo's sparse all-reduce is itself a gather, hence the gather on both. With the full
softmax every gradient is dense and all-reduced whole, as its step touches every row anyway.
"""
from __future__ import annotations

import os
from typing import Iterable, Protocol

import torch
import torch.distributed as dist


class Collective(Protocol):
    rank: int
    size: int
    local_rank: int

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer,
                       named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> torch.optim.Optimizer: ...

    def broadcast(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None: ...

    def allreduce_mean(self, value: float) -> float: ...

    def barrier(self) -> None: ...


class HorovodCollective:
    """Horovod: gradients averaged by `hvd.DistributedOptimizer`, sparse ones by allgather
    (`sparse_as_dense=False`: densified, the output bias alone would be V floats a step).

    Horovod sends a dense zero tensor for a parameter that got no gradient on a rank, which cannot
    meet the other ranks' sparse gather: every step of the sampled and bit-tree heads touches their
    sparse parameters (targets are always gathered), so that never happens.
    """

    def __init__(self) -> None:
        import horovod.torch as hvd  # deferred: an optional extra, needed by the horovod launchers only

        hvd.init()
        self._hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        self.optimizer: torch.optim.Optimizer | None = None

    def wrap_optimizer(self, optimizer, named_parameters):
        # Horovod builds a new optimizer from the param groups: carry over resumed state, and keep
        # the wrapper reachable, since its state (not the original's) is what gets checkpointed.
        wrapped = self._hvd.DistributedOptimizer(optimizer, named_parameters=list(named_parameters),
                                                 sparse_as_dense=False)
        wrapped.load_state_dict(optimizer.state_dict())
        self.optimizer = wrapped
        return wrapped

    def broadcast(self, model, optimizer) -> None:
        self._hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self._hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def allreduce_mean(self, value: float) -> float:
        return float(self._hvd.allreduce(torch.tensor([value], dtype=torch.float64), op=self._hvd.Average)[0])

    def barrier(self) -> None:
        self._hvd.allreduce(torch.zeros(1), name="barrier")


class _AllreduceGradients(torch.optim.Optimizer):
    """Averages every gradient over the process group before the wrapped optimizer steps.

    Plain DDP wraps the module instead; wrapping the optimizer keeps the model object the same in
    every launcher, which the loop and the checkpoints rely on (and DDP cannot reduce sparse
    gradients over NCCL). Sparse gradients (the item vectors' and output biases' rows a batch touched)
    are averaged sparsely, as Horovod does: every rank gathers the others' rows, so a step sends
    world_size x touched rows rather than the whole V x H matrix and V biases.
    """

    def __init__(self, inner: torch.optim.Optimizer, size: int, device: torch.device) -> None:
        self.inner = inner
        self._size = size
        self._device = device
        self.param_groups = inner.param_groups
        self.defaults = inner.defaults
        self.state = inner.state

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.device != self._device:  # NCCL reduces CUDA tensors only
                    p.grad = p.grad.to(self._device)
                if p.grad.is_sparse:
                    p.grad = self._sparse_mean(p.grad)
                    continue
                dist.all_reduce(p.grad)
                p.grad.div_(self._size)
        return self.inner.step(closure)

    def _sparse_mean(self, grad: torch.Tensor) -> torch.Tensor:
        """The mean of every rank's sparse `grad`, by all-gathering indices and values (padded to
        the largest count, since Gloo and NCCL gather equal shapes)."""
        grad = grad.coalesce()
        indices, values = grad.indices(), grad.values()
        count = torch.tensor([indices.shape[1]], dtype=torch.int64, device=self._device)
        counts = [torch.zeros_like(count) for _ in range(self._size)]
        dist.all_gather(counts, count)
        sizes = [int(c.item()) for c in counts]
        most = max(sizes)
        padded_idx = indices.new_zeros((indices.shape[0], most))
        padded_idx[:, : indices.shape[1]] = indices
        padded_val = values.new_zeros((most, *values.shape[1:]))
        padded_val[: values.shape[0]] = values
        all_idx = [torch.empty_like(padded_idx) for _ in range(self._size)]
        all_val = [torch.empty_like(padded_val) for _ in range(self._size)]
        dist.all_gather(all_idx, padded_idx)
        dist.all_gather(all_val, padded_val)
        merged_idx = torch.cat([a[:, :n] for a, n in zip(all_idx, sizes)], dim=1)
        merged_val = torch.cat([v[:n] for v, n in zip(all_val, sizes)]) / self._size
        return torch.sparse_coo_tensor(merged_idx, merged_val, grad.shape).coalesce()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.inner.load_state_dict(state_dict)


class TorchCollective:
    """torch.distributed, as set up by Spark's TorchDistributor (env:// rendezvous)."""

    def __init__(self) -> None:
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            # Each rank on a machine takes its own GPU before NCCL starts: the current device is
            # otherwise GPU 0 for every rank, and their collectives would all run there.
            torch.cuda.set_device(self.local_rank % torch.cuda.device_count())
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
        self._dist = dist
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.optimizer: torch.optim.Optimizer | None = None
        # Collectives run on the backend's device: CUDA for NCCL, CPU for Gloo.
        self._device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")

    def wrap_optimizer(self, optimizer, named_parameters):
        self.optimizer = _AllreduceGradients(optimizer, self.size, self._device)
        return self.optimizer

    def broadcast(self, model, optimizer) -> None:
        for tensor in model.state_dict().values():
            self._dist.broadcast(tensor, src=0)

    def allreduce_mean(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self._device)
        self._dist.all_reduce(t)
        return float(t[0]) / self.size

    def barrier(self) -> None:
        self._dist.barrier()
