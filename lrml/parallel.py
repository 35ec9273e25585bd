"""Data-parallel gradient exchange that handles sparse embedding gradients on any backend.

This stands in for DistributedDataParallel. With sparse gradients on gloo, DDP aborted a CPU worker
with a corrupted heap within 20,000 steps in each of two runs here (torch 2.13), and it needs a
sparse all-reduce, which NCCL does not have. A sparse gradient travels here as its rows: every
worker all-gathers the row indices and values of all workers with the plain dense collectives
that every backend has, and adds them up. Dense gradients go through one all-reduce.

Gradients are summed, not averaged. The loss is a sum over the batch, so the sum over workers
is the gradient of the global batch, the one a single worker would compute.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from lrml.model import split_parameters


class GradientSync:
    """Sum each parameter's gradient over the workers of the default process group; call it
    between ``backward`` and the optimizer step, on every worker, at every step.

    Constructing it copies rank 0's weights to every worker, as DDP does, so the workers start equal.
    """

    def __init__(self, model: torch.nn.Module):
        with torch.no_grad():
            for param in model.parameters():
                dist.broadcast(param, src=0)
        self.sparse, self.dense = split_parameters(model)
        self.world = dist.get_world_size()

    def __call__(self) -> None:
        if self.dense:
            self._sum_dense()
        if self.sparse:
            self._sum_sparse()

    def _sum_dense(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.dense]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        for param, summed in zip(self.dense, flat.split([g.numel() for g in grads])):
            param.grad = summed.view_as(param)

    def _sum_sparse(self) -> None:
        grads = [_rows(p) for p in self.sparse]
        counts = self._gather(torch.tensor([len(rows) for rows, _ in grads], device=self.sparse[0].device))
        counts = counts.view(self.world, len(grads)).tolist()  # counts[worker][parameter]
        for index, (param, (rows, values)) in enumerate(zip(self.sparse, grads)):
            per_worker = [worker_counts[index] for worker_counts in counts]
            longest = max(per_worker)
            if longest == 0:
                param.grad = None
                continue
            all_rows = _unpad(self._gather(_pad(rows, longest)), per_worker)
            all_values = _unpad(self._gather(_pad(values, longest)), per_worker)
            param.grad = torch.sparse_coo_tensor(all_rows.unsqueeze(0), all_values, param.shape,
                                                 check_invariants=True).coalesce()

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every worker's ``tensor`` (all the same shape), concatenated in rank order."""
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)


def _rows(param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The row indices and row values of ``param``'s sparse gradient (none when it has no gradient)."""
    if param.grad is None:
        return (torch.empty(0, dtype=torch.long, device=param.device),
                param.new_empty((0, *param.shape[1:])))
    grad = param.grad.coalesce()
    return grad.indices()[0], grad.values()


def _pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """``tensor`` with zero rows appended up to ``length`` rows (all_gather needs equal shapes)."""
    padded = tensor.new_zeros((length, *tensor.shape[1:]))
    padded[:len(tensor)] = tensor
    return padded


def _unpad(gathered: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """The real rows of each worker's padded block, concatenated."""
    longest = max(counts)
    return torch.cat([gathered[worker * longest: worker * longest + count] for worker, count in enumerate(counts)])
