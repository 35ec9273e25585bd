"""Data-parallel strategies for the trainer: one process (nothing to exchange) or a process group.

The trainer asks its strategy three things: which worker it is, to sum gradients over the workers
between ``backward`` and the optimizer step, and to agree on values every worker must share (the
step count of an epoch, rank 0's validation metrics). ``SingleProcess`` answers them trivially.

``Collective`` stands in for DistributedDataParallel. With sparse gradients on gloo, DDP aborted a
CPU worker with a corrupted heap within 20,000 steps in each of two runs here (torch 2.13), and it
needs a sparse all-reduce, which NCCL does not have. A sparse gradient travels here as its rows:
every worker all-gathers the row indices and values of all workers with the plain dense
collectives that every backend has, and adds them up. Dense gradients go through one all-reduce.

Gradients are summed, not averaged. The loss is a sum over the batch, so the sum over workers
is the gradient of the global batch, the one a single worker would compute.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from lrml.model import split_parameters


class SingleProcess:
    """One worker holds the whole batch: no exchange, every value is already agreed."""

    rank = 0
    world_size = 1

    def attach(self, model: torch.nn.Module) -> None:
        """Nothing to set up for one worker."""

    def sum_gradients(self) -> None:
        """One worker's gradient is the global batch's."""

    def agree_max(self, value: int) -> int:
        return value

    def agree_sum(self, values: list[float]) -> list[float]:
        return values

    def agree_from_rank_zero(self, values: dict[str, float]) -> dict[str, float]:
        return values


class Collective:
    """The workers of the default ``torch.distributed`` process group, training one model together.

    ``attach`` copies rank 0's weights to every worker, as DDP does, so the workers start equal.
    """

    def __init__(self):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self._sync: GradientSync | None = None

    def attach(self, model: torch.nn.Module) -> None:
        """Start from rank 0's weights; every worker adds its share of the loss terms that all of them hold."""
        self._sync = GradientSync(model)
        model.shared_term_weight = 1.0 / self.world_size

    def sum_gradients(self) -> None:
        self._sync()

    def agree_max(self, value: int) -> int:
        """The largest ``value`` over the workers (every worker must take the same number of steps)."""
        found = torch.tensor([value], dtype=torch.long, device=self._sync.device)
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
        return int(found.item())

    def agree_sum(self, values: list[float]) -> list[float]:
        """Each value summed over the workers."""
        found = torch.tensor(values, dtype=torch.float64, device=self._sync.device)
        dist.all_reduce(found)
        return found.tolist()

    def agree_from_rank_zero(self, values: dict[str, float]) -> dict[str, float]:
        """Rank 0's ``values`` on every worker, so all of them report and decide alike."""
        found = torch.tensor(list(values.values()), dtype=torch.float64, device=self._sync.device)
        dist.broadcast(found, src=0)
        return dict(zip(values, found.tolist()))


class GradientSync:
    """Sum each parameter's gradient over the workers of the default process group; call it
    between ``backward`` and the optimizer step, on every worker, at every step.

    Constructing it copies rank 0's weights to every worker.
    """

    def __init__(self, model: torch.nn.Module):
        with torch.no_grad():
            for param in model.parameters():
                dist.broadcast(param, src=0)
        self.sparse, self.dense = split_parameters(model)
        self.device = next(model.parameters()).device
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
        counts = self._gather(torch.tensor([len(rows) for rows, _ in grads], device=self.device))
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
