"""The CUDA paths against their CPU references: the loss and its gradients, the row-wise optimizers, full ranking,
and the data-parallel exchange over NCCL. Marked ``gpu`` and skipped without a CUDA device (`pytest -m gpu` runs
only these); docs/speed.md, "GPUs", says how to run them and that no GPU has yet."""
from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port, process_group
from test_scoring import USERS, squared_distance_error_bound, trained_looking

from lrml.baselines import BPRMF, BPRConfig
from lrml.model import LRML, LRMLConfig
from lrml.optim import Optimizer
from lrml.parallel import ChangeSum, Collective

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")
# float32 sums of up to a batch's 1,024 terms, added in another order on the GPU: each off by at most 1,024
# unit roundoffs (2^-24) of the sum's magnitude
SUM_RTOL = 1024 * 2.0 ** -24


def batch(num_users: int, num_items: int, size: int = 1024, negatives: int = 3):
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(0, num_users, (size,), generator=generator),
            torch.randint(0, num_items, (size,), generator=generator),
            torch.randint(0, num_items, (size, negatives), generator=generator))


@pytest.mark.parametrize("build", [lambda: LRML(LRMLConfig(300, 400, 32, 8, loss="warp")),
                                   lambda: LRML(LRMLConfig(300, 400, 32, 8, use_memory=False, item_bias=True)),
                                   lambda: BPRMF(BPRConfig(300, 400, 32))], ids=["lrml", "cml", "bpr"])
def test_the_loss_and_its_gradients_on_cuda_are_the_cpus(build):
    torch.manual_seed(0)
    cpu, gpu = build(), build()
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(CUDA)
    users, pos, neg = batch(300, 400)
    expected = cpu.autograd_loss(users, pos, neg)  # the CPU reference of the compiled pass, run on the same math
    found = gpu.loss(users.to(CUDA), pos.to(CUDA), neg.to(CUDA))  # on CUDA, loss() is autograd_loss
    expected.backward()
    found.backward()
    assert found.item() == pytest.approx(expected.item(), rel=SUM_RTOL)
    for (name, theirs), ours in zip(cpu.named_parameters(), gpu.parameters()):
        want = theirs.grad.to_dense() if theirs.grad.is_sparse else theirs.grad
        got = (ours.grad.to_dense() if ours.grad.is_sparse else ours.grad).cpu()
        assert torch.allclose(got, want, rtol=SUM_RTOL, atol=SUM_RTOL * want.abs().max().item()), name


@pytest.mark.parametrize("name", ["adam", "adagrad"])
def test_the_row_wise_optimizers_step_cuda_tables_as_the_compiled_cpu_pass_does(name):
    """On CUDA the row updates are indexed PyTorch operations; on a CPU, the compiled pass: the same arithmetic,
    a few roundings apart."""
    torch.manual_seed(0)
    cpu = LRML(LRMLConfig(300, 400, 32, 8))
    gpu = LRML(LRMLConfig(300, 400, 32, 8))
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(CUDA)
    optimizers = [Optimizer(model, name, 0.01) for model in (cpu, gpu)]
    for step in range(3):
        users, pos, neg = batch(300, 400, size=256)
        for model, optimizer, device in zip((cpu, gpu), optimizers, ("cpu", CUDA)):
            optimizer.zero_grad()
            model.autograd_loss(users.to(device), pos.to(device), neg.to(device)).backward()
            optimizer.step()
    for (table, theirs), ours in zip(cpu.named_parameters(), gpu.parameters()):
        assert torch.allclose(ours.detach().cpu(), theirs.detach(), atol=1e-5), table  # 3 steps of lr 0.01: 3e-2


def test_full_ranking_on_cuda_is_the_compiled_cpu_ranking():
    """On CUDA full ranking is LRML's PyTorch formulation in float32; on a CPU, lrml/scoring.py: both within the
    float32 error bound of the exact scores (tests/test_scoring.py derives it), so within twice it of each other."""
    model = trained_looking(100, 20, distance="squared")
    users = torch.arange(USERS)
    on_cpu = model.score_all(users)
    on_gpu = model.to(CUDA).score_all(users.to(CUDA)).cpu()
    assert (on_gpu - on_cpu).abs().max().item() <= 2 * squared_distance_error_bound(model)


def _nccl_exchange(rank: int, world: int, port: int) -> None:
    torch.cuda.set_device(rank)
    with process_group(rank, world, port, backend="nccl"):
        table = torch.nn.Parameter(torch.zeros(4, 3, device=CUDA))
        changes = ChangeSum([table], every=1)
        with torch.no_grad():
            table[rank] += 1.0
        changes.exchange()
        expected = torch.zeros(4, 3)
        expected[:world] = 1.0
        assert torch.equal(table.detach().cpu(), expected)
        model = LRML(LRMLConfig(8, 6, 4, 2)).to(CUDA)
        parallel = Collective(sync_every=1)
        parallel.attach(model, batch_size=4)
        users = torch.arange(rank * 8 // world, (rank + 1) * 8 // world, device=CUDA)
        model.loss(users, torch.zeros_like(users), torch.ones_like(users)).backward()
        parallel.after_backward()  # the items' sparse gradient travels as its rows over NCCL's dense collectives
        assert model.item_embedding.weight.grad.is_sparse
        parallel.gather_owned(Optimizer(model, "adam", 0.1))


def test_the_exchange_runs_over_nccl():
    """One process (a group of one still runs every collective); two where there are two devices."""
    world = min(2, torch.cuda.device_count())
    mp.spawn(_nccl_exchange, args=(world, free_port()), nprocs=world)
