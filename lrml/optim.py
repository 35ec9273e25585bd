"""Optimizers for models with sparse embedding tables: row-wise Adam and Adagrad, and the trainer's optimizer.

``RowWiseAdam`` is lazy Adam on the rows a batch touches, with ``torch.optim.SparseAdam``'s
semantics exactly: one step counter per table, and a row's moments decay only on the steps that
touch it. SparseAdam builds five sparse tensors and masks the dense state twice per step; here
one pass over the touched rows reads each row's weights and both moments once and updates them
in place (compiled with numba on a CPU, three indexed PyTorch operations elsewhere), as the fused
row-wise optimizers of large-embedding libraries do. ``RowWiseAdagrad`` does the same for
``torch.optim.Adagrad``'s sparse update. A dense gradient (LRML's memory and keys) touches every
row: the same update, on all of them.
"""
from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import nn

from lrml.prefetch import AHEAD, prefetch_row


class RowWiseAdam(torch.optim.Optimizer):
    """Adam on the rows present in each sparse gradient; untouched rows and their moments stay as they are.

    State and hyperparameters are SparseAdam's (``step``, ``exp_avg``, ``exp_avg_sq``; ``lr``,
    ``betas``, ``eps``), so either can load the other's ``state_dict``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if lr <= 0 or eps <= 0 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"lr={lr}, betas={betas}, eps={eps}: need lr > 0, eps > 0, 0 <= beta < 1")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "maximize": False})
        self.steps_per_step = 1  # steps of one process that each step stands for (see Optimizer)

    @staticmethod
    def new_state(param: torch.Tensor) -> dict:
        """A parameter's state before its first step."""
        return {"step": 0, "exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param)}

    @torch.no_grad()
    def step(self, closure=None):
        for group, param, state, rows, grad_rows in _row_steps(self):
            beta1, beta2 = group["betas"]
            step = state["step"]
            step_size = group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
            _adam_rows(param, state["exp_avg"], state["exp_avg_sq"], rows, grad_rows,
                       beta1, beta2, group["eps"], step_size)


def _row_steps(optimizer: RowWiseAdam | RowWiseAdagrad):
    """Each parameter with a gradient, as rows (a 1-D one a column), its state so viewed (begun by the
    optimizer's ``new_state``, its step counted), and the distinct rows its gradient touches: a sparse gradient's,
    or every row of a dense one. A parameter whose gradient touches no row is left out."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param.grad is None:
                continue
            state = optimizer.state[param]
            if not state:
                state.update(optimizer.new_state(param))
            state["step"] += optimizer.steps_per_step
            if param.grad.is_sparse:
                rows, grad_rows = _distinct_rows(param.grad)
            else:
                rows, grad_rows = torch.arange(len(param), device=param.device), param.grad.reshape(len(param), -1)
            as_rows = {key: value.view(len(param), -1) if torch.is_tensor(value) and value.shape == param.shape
                       else value for key, value in state.items()}
            if len(rows):
                yield group, param.data.view(len(param), -1), as_rows, rows, grad_rows


def _distinct_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The row indices of a sparse gradient and their values, each row once (repeated rows summed).

    Rows already strictly increasing (``lrml.model.lookup_distinct`` and ``lrml.fused`` give them so;
    autograd does not keep the flag that says it) skip the sort that coalescing costs. Reading an
    uncoalesced tensor's rows needs torch's ``_indices`` and ``_values``, which torch has no public
    name for: pyproject.toml pins the torch versions checked, and tests/test_optim.py fails, naming
    them, if a torch release changes them.
    """
    rows = grad._indices()[0]
    if not (grad.is_coalesced() or bool((rows[1:] > rows[:-1]).all())):
        grad = grad.coalesce()
        rows = grad._indices()[0]
    return rows, grad._values()


def _adam_rows(param: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, rows: torch.Tensor,
               grad_rows: torch.Tensor, beta1: float, beta2: float, eps: float, step_size: float) -> None:
    """The Adam update of ``rows`` (distinct) in place: one compiled pass over the rows on a CPU, else one
    gather and one write-back per table."""
    if param.device.type == "cpu" and param.dtype == torch.float32 and \
            all(t.is_contiguous() for t in (param, exp_avg, exp_avg_sq)):
        _adam_rows_compiled(param.detach().numpy(), exp_avg.numpy(), exp_avg_sq.numpy(), rows.numpy(),
                            grad_rows.contiguous().numpy(), *np.float32([beta1, beta2, eps, step_size]))
        return
    first = exp_avg.index_select(0, rows).lerp_(grad_rows, 1 - beta1)
    second = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(grad_rows, grad_rows, value=1 - beta2)
    exp_avg.index_copy_(0, rows, first)
    exp_avg_sq.index_copy_(0, rows, second)
    param.index_add_(0, rows, first.div_(second.sqrt_().add_(eps)), alpha=-step_size)


@numba.njit(parallel=True, cache=True, nogil=True)
def _adam_rows_compiled(param, exp_avg, exp_avg_sq, rows, grad_rows, beta1, beta2, eps, step_size):
    """``_adam_rows`` for CPU arrays: each touched row's weights and moments read and written once."""
    for k in numba.prange(len(rows)):
        if k + AHEAD < len(rows):
            for table in (param, exp_avg, exp_avg_sq):
                prefetch_row(table, rows[k + AHEAD])
        weight, first, second, grad = param[rows[k]], exp_avg[rows[k]], exp_avg_sq[rows[k]], grad_rows[k]
        for d in range(len(weight)):
            first[d] += (1 - beta1) * (grad[d] - first[d])
            second[d] = beta2 * second[d] + (1 - beta2) * grad[d] * grad[d]
            weight[d] -= step_size * first[d] / (np.sqrt(second[d]) + eps)


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad on the rows present in each sparse gradient, as ``torch.optim.Adagrad`` updates them (no
    learning-rate decay, no initial accumulator): each touched row's squared-gradient sum grows, and the row
    moves by ``lr g / (sqrt(sum) + eps)``. State and hyperparameters are Adagrad's (``step``, ``sum``; ``lr``,
    ``eps``), so either can load the other's ``state_dict``."""

    def __init__(self, params, lr: float = 1e-2, eps: float = 1e-10):
        if lr <= 0 or eps <= 0:
            raise ValueError(f"lr={lr}, eps={eps}: need lr > 0, eps > 0")
        super().__init__(params, {"lr": lr, "eps": eps, "lr_decay": 0.0, "weight_decay": 0.0,
                                  "initial_accumulator_value": 0.0})
        self.steps_per_step = 1  # steps of one process that each step stands for (see Optimizer)

    @staticmethod
    def new_state(param: torch.Tensor) -> dict:
        """A parameter's state before its first step."""
        return {"step": torch.tensor(0.0), "sum": torch.zeros_like(param)}

    @torch.no_grad()
    def step(self, closure=None):
        for group, param, state, rows, grad_rows in _row_steps(self):
            _adagrad_rows(param, state["sum"], rows, grad_rows, group["lr"], group["eps"])


def _adagrad_rows(param: torch.Tensor, sums: torch.Tensor, rows: torch.Tensor, grad_rows: torch.Tensor, lr: float,
                  eps: float) -> None:
    """The Adagrad update of ``rows`` (distinct) in place: compiled on a CPU, else indexed PyTorch operations."""
    if param.device.type == "cpu" and param.dtype == torch.float32 and param.is_contiguous() and sums.is_contiguous():
        _adagrad_rows_compiled(param.detach().numpy(), sums.numpy(), rows.numpy(), grad_rows.contiguous().numpy(),
                               *np.float32([lr, eps]))
        return
    total = sums.index_select(0, rows).addcmul_(grad_rows, grad_rows)
    sums.index_copy_(0, rows, total)
    param.index_add_(0, rows, grad_rows / total.sqrt_().add_(eps), alpha=-lr)


@numba.njit(parallel=True, cache=True, nogil=True)
def _adagrad_rows_compiled(param, sums, rows, grad_rows, lr, eps):
    """``_adagrad_rows`` for CPU arrays: each touched row's weights and sums read and written once."""
    for k in numba.prange(len(rows)):
        if k + AHEAD < len(rows):
            prefetch_row(param, rows[k + AHEAD])
            prefetch_row(sums, rows[k + AHEAD])
        weight, total, grad = param[rows[k]], sums[rows[k]], grad_rows[k]
        for d in range(len(weight)):
            total[d] += grad[d] * grad[d]
            weight[d] -= lr * grad[d] / (np.sqrt(total[d]) + eps)


class Optimizer:
    """Row-wise Adam or Adagrad over every parameter of a model: its embedding tables' sparse gradients and the
    dense ones alike.

    ``steps_per_step``: how many steps of one process each step stands for. Data-parallel workers taking
    local steps side by side (``lrml.parallel``) stand for as many as there are workers, so that Adam's bias
    correction, which follows a table's step count, warms up over the pairs trained as one process's would.
    """

    def __init__(self, model: nn.Module, name: str, lr: float, steps_per_step: int = 1):
        row_wise, params = RowWiseAdagrad if name == "adagrad" else RowWiseAdam, list(model.parameters())
        self.parts = [row_wise(params, lr=lr)] if params else []  # a closed-form model has none
        for part in self.parts:
            part.steps_per_step = steps_per_step

    def zero_grad(self) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=True)

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_dict(self) -> list[dict]:
        return [part.state_dict() for part in self.parts]

    def load_state_dict(self, states: list[dict]) -> None:
        for part, state in zip(self.parts, states, strict=True):
            part.load_state_dict(state)
