"""GradientSync on two real gloo processes (torch.distributed over loopback, no Ray)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port
from torch import nn

from lrml.baselines import BPRMF, BPRConfig
from lrml.model import LRML, LRMLConfig
from lrml.parallel import Collective, GradientSync

WORLD = 2


def run_workers(check, port: int) -> None:
    """Run ``check(rank)`` in two gloo processes; an assertion failing in either fails the test."""
    mp.spawn(_worker, args=(check, port), nprocs=WORLD)


def _worker(rank: int, check, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        check(rank)
    finally:
        dist.destroy_process_group()


def sparse_grad(rows: dict[int, list[float]], shape: tuple[int, int]) -> torch.Tensor:
    indices = torch.tensor([list(rows)], dtype=torch.long).reshape(1, -1)
    values = torch.tensor(list(rows.values()), dtype=torch.float32).reshape(-1, shape[1])
    return torch.sparse_coo_tensor(indices, values, shape)


class Tables(nn.Module):
    def __init__(self):
        super().__init__()
        self.users = nn.Embedding(4, 2, sparse=True)
        self.items = nn.Embedding(5, 2, sparse=True)
        self.unused = nn.Embedding(3, 2, sparse=True)
        self.memory = nn.Parameter(torch.zeros(2, 3))


def check_hand_computed_sums(rank: int) -> None:
    tables = Tables()
    if rank == 0:
        tables.users.weight.grad = sparse_grad({1: [1.0, 1.0], 3: [2.0, 2.0]}, (4, 2))
        tables.items.weight.grad = sparse_grad({2: [0.5, -0.5]}, (5, 2))
    else:
        tables.users.weight.grad = sparse_grad({3: [10.0, 10.0], 1: [0.0, 1.0], 0: [4.0, 4.0]}, (4, 2))
        # rank 1 has no item gradient this step; rank 0's rows must still arrive
    tables.memory.grad = torch.full((2, 3), float(rank + 1))
    with torch.no_grad():
        tables.memory.fill_(rank + 1.0)

    GradientSync(tables)()

    assert torch.equal(tables.memory.detach(), torch.ones(2, 3)), "every worker starts from rank 0's weights"

    users = tables.users.weight.grad
    assert users.is_sparse and users.is_coalesced()
    assert users.indices().tolist() == [[0, 1, 3]]
    assert users.values().tolist() == [[4.0, 4.0], [1.0, 2.0], [12.0, 12.0]]
    items = tables.items.weight.grad
    # rank 1 sends nothing, padded to rank 0's one row: the padding must not become a row 0
    assert items.indices().tolist() == [[2]] and items.values().tolist() == [[0.5, -0.5]]
    assert tables.unused.weight.grad is None
    assert torch.equal(tables.memory.grad, torch.full((2, 3), 3.0))


def test_sparse_and_dense_gradients_are_summed_over_workers():
    run_workers(check_hand_computed_sums, free_port())


def check_two_halves_give_the_full_batch_gradient(rank: int) -> None:
    generator = torch.Generator().manual_seed(7)
    users = torch.randint(0, 30, (64,), generator=generator)
    pos, neg = torch.randint(0, 40, (64,), generator=generator), torch.randint(0, 40, (64,), generator=generator)
    models = {
        # with the regulariser on the memory, which every worker holds whole: it must still count once per step
        "lrml": lambda: LRML(LRMLConfig(30, 40, 8, 5, margin=0.5, reg_weight=0.1)),
        "bpr": lambda: BPRMF(BPRConfig(30, 40, 8, reg_weight=0.1)),
    }
    for name, build in models.items():
        torch.manual_seed(0)
        whole, half = build(), build()
        half.load_state_dict(whole.state_dict())
        whole.loss(users, pos, neg).backward()
        mine = slice(rank, None, WORLD)
        parallel = Collective()
        parallel.attach(half)
        half.loss(users[mine], pos[mine], neg[mine]).backward()
        parallel.sum_gradients()
        for (param_name, expected), got in zip(whole.named_parameters(), half.parameters()):
            expected_grad = expected.grad.to_dense() if expected.grad.is_sparse else expected.grad
            got_grad = got.grad.to_dense() if got.grad.is_sparse else got.grad
            assert expected_grad.abs().sum() > 0, (name, param_name)
            assert torch.allclose(got_grad, expected_grad, atol=1e-5), (name, param_name)


def test_two_workers_on_half_batches_get_the_full_batch_gradient():
    run_workers(check_two_halves_give_the_full_batch_gradient, free_port())
