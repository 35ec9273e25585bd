"""The row-wise Adam: the lazy Adam step computed by hand, SparseAdam's results, and its state."""
import math

import numpy as np
import pytest
import torch

from lrml.model import LRML, LRMLConfig
from lrml.optim import Optimizer, RowWiseAdagrad, RowWiseAdam, _distinct_rows


def sparse_rows(rows: list[int], values: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """An uncoalesced sparse gradient: ``rows`` may repeat, as in an embedding's backward."""
    return torch.sparse_coo_tensor(torch.tensor([rows]), torch.tensor(values, dtype=torch.float32), shape,
                                   check_invariants=True)


def lazy_adam_by_hand(weights, gradients, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8):
    """Adam on the rows each gradient touches (duplicates summed); other rows and their moments untouched."""
    weights = weights.astype(np.float64).copy()
    first, second = np.zeros_like(weights), np.zeros_like(weights)
    for step, (rows, values) in enumerate(gradients, start=1):
        summed = {}
        for row, value in zip(rows, values):
            summed[row] = summed.get(row, 0.0) + value
        for row, grad in summed.items():
            first[row] = beta1 * first[row] + (1 - beta1) * grad
            second[row] = beta2 * second[row] + (1 - beta2) * grad * grad
            size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
            weights[row] -= size * first[row] / (np.sqrt(second[row]) + eps)
    return weights, first, second


GRADIENTS = [([0, 2, 0], np.array([[1.0, -2.0], [0.5, 0.5], [3.0, 1.0]])),  # row 0 twice: 4, -1
             ([2], np.array([[-1.0, 4.0]])),  # row 0 skipped: its moments must not decay
             ([0, 3], np.array([[0.25, 0.0], [2.0, -2.0]]))]


def run(optimizer_class, start, dtype=torch.float32):
    weight = torch.nn.Parameter(torch.tensor(start, dtype=dtype))
    optimizer = optimizer_class([weight], lr=0.1)
    for rows, values in GRADIENTS:
        weight.grad = sparse_rows(rows, values, tuple(weight.shape)).to(dtype)
        optimizer.step()
    return weight.detach().numpy(), optimizer.state[weight]


# float32 CPU tables take the compiled row update; float64 takes the PyTorch one, as GPU tensors do
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_wise_adam_is_lazy_adam_computed_by_hand(dtype):
    start = np.arange(10, dtype=np.float64).reshape(5, 2) / 10
    expected, first, second = lazy_adam_by_hand(start, GRADIENTS)
    found, state = run(RowWiseAdam, start, dtype)
    assert np.allclose(found, expected, atol=1e-6)
    assert np.allclose(state["exp_avg"].numpy(), first, atol=1e-6)
    assert np.allclose(state["exp_avg_sq"].numpy(), second, atol=1e-6)
    assert state["step"] == 3
    assert np.array_equal(found[[1, 4]], start[[1, 4]].astype(found.dtype))  # never touched


def test_row_wise_adam_matches_sparse_adam_and_reads_its_state():
    start = np.random.default_rng(0).normal(size=(5, 2))
    ours, our_state = run(RowWiseAdam, start)
    theirs, their_state = run(torch.optim.SparseAdam, start)
    assert np.allclose(ours, theirs, atol=1e-6)
    weight = torch.nn.Parameter(torch.zeros(5, 2))
    sparse_adam = torch.optim.SparseAdam([weight], lr=0.1)
    weight.grad = sparse_rows([1], np.array([[1.0, 1.0]]), (5, 2))
    sparse_adam.step()
    row_wise = RowWiseAdam([weight], lr=0.5)
    row_wise.load_state_dict(sparse_adam.state_dict())  # a checkpoint written before RowWiseAdam loads
    assert row_wise.state[weight]["step"] == 1 and row_wise.param_groups[0]["lr"] == 0.1


def test_a_dense_gradient_steps_every_row_as_torch_does():
    """A dense table (LRML's memory and keys) is one every step touches whole: Adagrad's update is torch's, Adam's
    SparseAdam's on all rows (torch's Adam adds eps after the bias correction: the same to within it)."""
    start = np.random.default_rng(1).normal(size=(4, 3))
    gradients = [np.random.default_rng(seed).normal(size=(4, 3)) for seed in range(3)]
    for ours, theirs in ((RowWiseAdagrad, torch.optim.Adagrad), (RowWiseAdam, torch.optim.Adam)):
        found = []
        for kind in (ours, theirs):
            weight = torch.nn.Parameter(torch.tensor(start, dtype=torch.float32))
            optimizer = kind([weight], lr=0.1)
            for gradient in gradients:
                weight.grad = torch.tensor(gradient, dtype=torch.float32)
                optimizer.step()
            found.append(weight.detach().numpy())
        assert np.allclose(found[0], found[1], atol=1e-6), ours.__name__  # float32 rounding of moves of 0.1


def test_a_training_step_moves_only_the_batch_rows():
    model = LRML(LRMLConfig(20, 30, embedding_dim=4, memory_size=3, reg_weight=0.1))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    optimizer = Optimizer(model, "adam", 0.01)
    users, pos, neg = torch.tensor([1, 1, 5]), torch.tensor([2, 7, 2]), torch.tensor([9, 3, 9])
    model(users, pos, neg).backward()
    optimizer.step()
    moved_users = (model.user_embedding.weight != before["user_embedding.weight"]).any(1).nonzero().flatten()
    moved_items = (model.item_embedding.weight != before["item_embedding.weight"]).any(1).nonzero().flatten()
    assert moved_users.tolist() == [1, 5] and moved_items.tolist() == [2, 3, 7, 9]
    assert not torch.equal(model.keys, before["keys"]) and not torch.equal(model.memory, before["memory"])


def test_row_wise_adagrad_is_torch_adagrad_on_the_rows_touched():
    """Adagrad's sparse update by torch itself, and by hand for one row: sum += g^2, w -= lr g / (sqrt(sum) + eps)."""
    start = np.arange(8, dtype=np.float64).reshape(4, 2) / 10
    ours = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    theirs = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizers = RowWiseAdagrad([ours], lr=0.1), torch.optim.Adagrad([theirs], lr=0.1)
    for rows, values in GRADIENTS:
        for param, optimizer in zip((ours, theirs), optimizers):
            param.grad = sparse_rows(rows, values, (4, 2)).double()
            optimizer.step()
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-15)
    # row 3 was touched once, by (2, -2): sum 4, so it moved by 0.1 * 2 / 2 = 0.1 against the gradient's sign
    assert torch.allclose(ours[3], torch.tensor([0.6 - 0.1, 0.7 + 0.1], dtype=torch.float64))
    assert torch.equal(ours[1], torch.tensor(start[1]))  # never touched
    torch.optim.Adagrad([theirs], lr=0.1).load_state_dict(optimizers[0].state_dict())  # the same state


def test_the_torch_internals_the_optimizer_reads_are_there():
    """``lrml.optim._distinct_rows`` reads an uncoalesced sparse gradient's rows with ``Tensor._indices`` and
    ``Tensor._values`` (torch has no public name for them). If this fails, a torch release changed them: check
    ``_distinct_rows`` before widening torch's pinned range in pyproject.toml."""
    grad = sparse_rows([2, 0, 2], np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), (4, 2))
    assert not grad.is_coalesced()
    assert torch.equal(grad._indices(), torch.tensor([[2, 0, 2]]))  # as stored: neither sorted nor summed
    assert torch.equal(grad._values()[1], torch.tensor([2.0, 2.0]))
    rows, values = _distinct_rows(grad)
    assert torch.equal(rows, torch.tensor([0, 2])) and torch.equal(values, torch.tensor([[2.0, 2.0], [4.0, 4.0]]))


def test_a_step_standing_for_several_warms_adam_up_as_they_would():
    """Data-parallel workers taking local steps side by side count every worker's step (``steps_per_step``), so Adam's
    bias correction follows the pairs trained. One step of a constant gradient counted as 2, by hand: the moments
    have one update (0.1 g, 0.001 g^2), corrected as at step 2; both the row-wise and torch's dense Adam, whose step
    count is torch's own state (docs/design.md, "Internals")."""
    model = LRML(LRMLConfig(3, 4, 2, 2))
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    optimizer = Optimizer(model, "adam", 0.1, steps_per_step=2)
    optimizer.zero_grad()
    for param in model.parameters():
        dense = torch.ones_like(param)
        param.grad = dense.to_sparse(1) if param is model.item_embedding.weight or param is model.user_embedding.weight \
            else dense
    optimizer.step()
    expected = 0.1 * (0.1 / (1 - 0.9 ** 2)) / (math.sqrt(0.001 / (1 - 0.999 ** 2)) + 1e-8)
    for name, param in model.named_parameters():
        assert torch.allclose(before[name] - param.detach(), torch.full_like(param, expected), rtol=1e-5), name
    assert [state["step"] for part in optimizer.parts for state in part.state.values()] == [2, 2, 2, 2]
