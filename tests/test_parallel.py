"""The data-parallel strategies on two real gloo processes (torch.distributed over loopback, no Ray): the exact
gradient sum, local steps whose changes are summed, shared tables in memory both workers map and the steps
they share out, users' rows owned by their worker and gathered for a checkpoint, and validation split between
the workers."""
from __future__ import annotations

import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port, process_group
from torch import nn

from lrml import parallel as parallel_module
from lrml.baselines import BPRMF, BPRConfig
from lrml.data import Shard, load_dataset
from lrml.evaluate import Evaluator
from lrml.model import LRML, LRMLConfig
from lrml.optim import Optimizer
from lrml.parallel import ChangeSum, Collective, GradientSync
from lrml.train import TrainConfig, Trainer

WORLD = 2


def run_workers(check, port: int, *args) -> None:
    """Run ``check(rank, *args)`` in two gloo processes; an assertion failing in either fails the test."""
    mp.spawn(_worker, args=(check, port, args), nprocs=WORLD)


def _worker(rank: int, check, port: int, args) -> None:
    with process_group(rank, WORLD, port):
        check(rank, *args)


def sparse_grad(rows: dict[int, list[float]], shape: tuple[int, int]) -> torch.Tensor:
    indices = torch.tensor([list(rows)], dtype=torch.long).reshape(1, -1)
    values = torch.tensor(list(rows.values()), dtype=torch.float32).reshape(-1, shape[1])
    return torch.sparse_coo_tensor(indices, values, shape)


class Tables(nn.Module):
    def __init__(self):
        super().__init__()
        self.items = nn.Embedding(5, 2, sparse=True)
        self.unused = nn.Embedding(3, 2, sparse=True)
        self.memory = nn.Parameter(torch.zeros(2, 3))


def check_hand_computed_sums(rank: int) -> None:
    tables = Tables()
    if rank == 0:
        tables.items.weight.grad = sparse_grad({1: [1.0, 1.0], 3: [2.0, 2.0]}, (5, 2))
    else:
        tables.items.weight.grad = sparse_grad({3: [10.0, 10.0], 1: [0.0, 1.0], 0: [4.0, 4.0]}, (5, 2))
    # a table only rank 0 touched this step: its rows must arrive, and rank 1's padding must not become a row 0
    tables.unused.weight.grad = sparse_grad({2: [0.5, -0.5]}, (3, 2)) if rank == 0 else None
    tables.memory.grad = torch.full((2, 3), float(rank + 1))

    GradientSync([tables.items.weight, tables.unused.weight], [tables.memory])()

    items = tables.items.weight.grad
    assert items.is_sparse and items.is_coalesced()
    assert items.indices().tolist() == [[0, 1, 3]]
    assert items.values().tolist() == [[4.0, 4.0], [1.0, 2.0], [12.0, 12.0]]
    unused = tables.unused.weight.grad
    assert unused.indices().tolist() == [[2]] and unused.values().tolist() == [[0.5, -0.5]]
    assert torch.equal(tables.memory.grad, torch.full((2, 3), 3.0))


def test_sparse_and_dense_gradients_are_summed_over_workers():
    run_workers(check_hand_computed_sums, free_port())


def check_changes_are_summed(rank: int) -> None:
    """Local steps: each worker moves the shared table its own way; the others' changes arrive a round late, and an
    exchange leaves every worker on the start plus every change."""
    table = nn.Parameter(torch.zeros(3, 2))
    changes = ChangeSum([table], every=1)
    with torch.no_grad():
        table[rank] += 1.0 + rank  # rank 0 moves row 0 by 1, rank 1 row 1 by 2
    changes.step()  # sent; the other's change is on its way
    assert table[1 - rank].abs().sum() == 0 and table[rank].tolist() == [1.0 + rank] * 2
    with torch.no_grad():
        table[2] += 0.5  # both move row 2
    changes.step()  # the first round's changes arrive; the second's are on their way
    assert table.tolist() == [[1.0, 1.0], [2.0, 2.0], [0.5, 0.5]]
    with torch.no_grad():
        table[0] -= 1.0 if rank == 1 else 0.0
    changes.exchange()  # what is left, at the end of an epoch: everything arrives
    assert table.tolist() == [[0.0, 0.0], [2.0, 2.0], [1.0, 1.0]]


def test_local_steps_sum_every_workers_changes():
    run_workers(check_changes_are_summed, free_port())


def block_of(users: torch.Tensor, rank: int, num_users: int) -> torch.Tensor:
    first, end = Shard(rank, WORLD).user_range(num_users)
    return (users >= first) & (users < end)


def check_two_workers_get_the_global_batch_gradient(rank: int) -> None:
    """Exact mode: the shared tables' gradients are the global batch's; the user table's rows are those of this
    worker's users, exactly the global batch's rows for them, and no other worker's."""
    generator = torch.Generator().manual_seed(7)
    users = torch.randint(0, 30, (64,), generator=generator)
    pos, neg = torch.randint(0, 40, (64,), generator=generator), torch.randint(0, 40, (64,), generator=generator)
    models = {
        # with the regulariser on the memory, which every worker holds whole: it must still count once per step
        "lrml": lambda: LRML(LRMLConfig(30, 40, 8, 5, margin=0.5, reg_weight=0.1)),
        "bpr": lambda: BPRMF(BPRConfig(30, 40, 8, reg_weight=0.1)),
    }
    mine = block_of(users, rank, 30)
    for name, build in models.items():
        torch.manual_seed(0)
        whole, half = build(), build()
        half.load_state_dict(whole.state_dict())
        whole.loss(users, pos, neg).backward()
        parallel = Collective(sync_every=1)
        parallel.attach(half, batch_size=64)
        half.loss(users[mine], pos[mine], neg[mine]).backward()
        parallel.after_backward()
        for (param_name, expected), got in zip(whole.named_parameters(), half.parameters()):
            expected_grad = expected.grad.to_dense() if expected.grad.is_sparse else expected.grad
            got_grad = got.grad.to_dense() if got.grad.is_sparse else got.grad
            assert expected_grad.abs().sum() > 0, (name, param_name)
            if param_name == "user_embedding.weight":
                first, end = Shard(rank, WORLD).user_range(30)
                expected_grad = torch.zeros_like(expected_grad).index_copy_(
                    0, torch.arange(first, end), expected_grad[first:end])
            assert torch.allclose(got_grad, expected_grad, atol=1e-5), (name, param_name)


def test_two_workers_on_their_users_get_the_global_batch_gradient():
    run_workers(check_two_workers_get_the_global_batch_gradient, free_port())


def check_owned_rows_are_gathered(rank: int) -> None:
    """Each worker's users' rows, and their Adam moments, reach every worker; other tables are left alone."""
    torch.manual_seed(rank)  # the workers start apart; attach makes them rank 0's
    model = LRML(LRMLConfig(7, 4, 3, 2))
    parallel = Collective(sync_every=1)
    parallel.attach(model, batch_size=len(range(*Shard(rank, WORLD).user_range(7))))
    optimizer = Optimizer(model, "adam", 0.1)
    first, end = Shard(rank, WORLD).user_range(7)
    users = torch.arange(first, end)
    model.loss(users, torch.zeros_like(users), torch.ones_like(users)).backward()
    optimizer.step()  # only this worker's users move, and only their moments fill
    table = model.user_embedding.weight
    moments = optimizer.parts[0].state[table]["exp_avg"]
    moved = table.detach().clone()
    parallel.gather_owned(optimizer)
    blocks = [torch.empty_like(moved) for _ in range(WORLD)]
    dist.all_gather(blocks, moved)
    expected = torch.cat([blocks[worker][slice(*Shard(worker, WORLD).user_range(7))] for worker in range(WORLD)])
    assert torch.equal(table.detach(), expected)
    assert bool((moments.abs().sum(1) > 0).all())  # every user's moments, its own worker's


def test_each_workers_user_rows_are_gathered_for_a_checkpoint():
    run_workers(check_owned_rows_are_gathered, free_port())


def check_split_validation(rank: int, dataset_path: str) -> None:
    """Each worker validating its own users gives the metrics one process gets over all of them."""
    dataset = load_dataset(dataset_path, Shard(rank, WORLD))
    trainer = Trainer(TrainConfig(embedding_dim=16, memory_size=4), dataset, Collective())
    found = trainer.validate()
    whole = Evaluator(load_dataset(dataset_path)).evaluate(trainer.model, "valid", ("sampled",))["sampled"]
    assert found.keys() == {f"valid/sampled/{name}" for name in whole}
    for name, value in whole.items():
        assert abs(found[f"valid/sampled/{name}"] - value) < 1e-12, name  # float64 sums of 610 terms: ~1e-13
    assert 0 < whole["ndcg@10"] < 1


def test_workers_validate_their_own_users_and_agree_on_the_whole(small_dataset):
    run_workers(check_split_validation, free_port(), str(small_dataset.path))


def check_local_steps_train(rank: int, dataset_path: str, results) -> None:
    dataset = load_dataset(dataset_path, Shard(rank, WORLD))
    config = TrainConfig(embedding_dim=16, memory_size=4, max_epochs=3, patience=3, batch_size=256)
    trainer = Trainer(config, dataset, Collective(sync_every=4))
    history = trainer.fit(final_eval=False).history
    state = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    states = [torch.empty_like(state) for _ in range(WORLD)]
    dist.all_gather(states, state)
    assert torch.equal(states[0], states[1]), "after the last exchange and the gather, the workers hold one model"
    if rank == 0:
        results["history"] = history


def test_local_steps_keep_one_model_and_learn(small_dataset):
    with mp.Manager() as manager:
        results = manager.dict()
        run_workers(check_local_steps_train, free_port(), str(small_dataset.path), results)
        history = results["history"]
    values = np.array([epoch["valid/sampled/ndcg@10"] for epoch in history])
    assert len(values) == 3 and values[-1] > values[0]  # it learns


def check_tables_are_shared(rank: int) -> None:
    """On one node (the default), a write to a shared table or its Adam moments is every worker's at once; the
    user table stays each worker's own."""
    torch.manual_seed(rank)  # the workers start apart; attach makes them rank 0's
    model = LRML(LRMLConfig(7, 4, 3, 2))
    parallel = Collective()
    parallel.attach(model, batch_size=4)
    optimizer = Optimizer(model, "adam", 0.1, parallel.steps_per_step)
    parallel.share_state(optimizer)
    assert parallel.exchange == "shared memory" and parallel.steps_per_step == WORLD
    items, users, memory = model.item_embedding.weight, model.user_embedding.weight, model.memory
    moments = optimizer.parts[0].state[items]["exp_avg"]
    before = users.detach().clone()
    if rank == 1:
        with torch.no_grad():
            items[1] = 5.0
            memory[0] = -2.0
            users[1] = 5.0
            moments[2] = 3.0
    dist.barrier()
    assert torch.equal(items[1], torch.full((3,), 5.0)) and torch.equal(memory[0], torch.full((3,), -2.0))
    assert torch.equal(moments[2], torch.full((3,), 3.0))
    assert torch.equal(users[1], torch.full((3,), 5.0) if rank == 1 else before[1])


def test_shared_tables_are_one_table_on_every_worker():
    run_workers(check_tables_are_shared, free_port())


def check_workers_apart_take_rounds(rank: int, folders: list[str]) -> None:
    """Workers whose shared-memory folders differ (as on two machines) exchange in rounds; the probe file goes."""
    parallel_module.SHARED_MEMORY = folders[rank]
    parallel = Collective()
    parallel.attach(LRML(LRMLConfig(7, 4, 3, 2)), batch_size=4)
    assert parallel.sync_every >= 2 and parallel.exchange == f"every {parallel.sync_every} steps"
    dist.barrier()
    assert os.listdir(folders[rank]) == []


def test_workers_that_do_not_share_memory_take_rounds(tmp_path):
    folders = [tmp_path / "machine-0", tmp_path / "machine-1"]
    for folder in folders:
        folder.mkdir()
    run_workers(check_workers_apart_take_rounds, free_port(), [str(folder) for folder in folders])


def test_shared_memory_is_used_only_where_the_tables_fit_twice_over(tmp_path):
    stats = os.statvfs(tmp_path)
    free = stats.f_bavail * stats.f_frsize  # what other processes write or free meanwhile moves it little
    assert parallel_module.has_room(str(tmp_path), free // 4)
    assert not parallel_module.has_room(str(tmp_path), free)
    assert not parallel_module.has_room(str(tmp_path / "missing"), 1)


def check_steps_are_shared_out(rank: int, results) -> None:
    """Workers sharing memory take the epoch's steps between them: a slowed worker takes fewer, none waits, and
    together they take the total, or at most one more each but the last (a count read while another moves)."""
    model = LRML(LRMLConfig(7, 4, 3, 2))
    parallel = Collective()
    parallel.attach(model, batch_size=4)
    for epoch in range(2):  # the count starts again each epoch
        parallel.begin_epoch()
        taken = 0
        for _ in parallel.steps(pairs=4 * 20, batch_size=4):  # 20 steps a worker: 40 together
            taken += 1
            if rank == 1:
                time.sleep(0.05)
        parallel.end_epoch()
        results[rank, epoch] = taken


def test_workers_sharing_memory_share_out_the_steps():
    with mp.Manager() as manager:
        results = manager.dict()
        run_workers(check_steps_are_shared_out, free_port(), results)
        for epoch in range(2):
            fast, slow = results[0, epoch], results[1, epoch]
            assert 40 <= fast + slow <= 40 + WORLD - 1
            assert fast > 20 > slow


def check_shared_training(rank: int, dataset_path: str, results) -> None:
    """Two workers on shared tables train one model that learns, and a checkpoint restored puts the Adam moments
    back in shared memory."""
    dataset = load_dataset(dataset_path, Shard(rank, WORLD))
    config = TrainConfig(embedding_dim=16, memory_size=4, max_epochs=3, patience=3, batch_size=256)
    trainer = Trainer(config, dataset, Collective())
    untrained = trainer.validate()["valid/sampled/ndcg@10"]
    history = trainer.fit(final_eval=False).history
    trainer.parallel.gather_owned(trainer.optimizer)
    state = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    states = [torch.empty_like(state) for _ in range(WORLD)]
    dist.all_gather(states, state)
    assert torch.equal(states[0], states[1]), "after the gather, the workers hold one model"
    checkpoint = trainer.checkpoint(3, history[-1])
    restored = Trainer(config, dataset, Collective())
    restored._restore(checkpoint)
    items = restored.model.item_embedding.weight
    moments = restored.optimizer.parts[0].state[items]["exp_avg"]
    assert trainer.parallel.exchange == restored.parallel.exchange == "shared memory"
    assert torch.equal(moments, trainer.optimizer.parts[0].state[trainer.model.item_embedding.weight]["exp_avg"])
    dist.barrier()
    if rank == 1:
        moments[0] = 7.0
    dist.barrier()
    assert torch.equal(moments[0], torch.full((16,), 7.0))
    if rank == 0:
        results["history"], results["untrained"] = history, untrained


def test_shared_tables_keep_one_model_and_learn(small_dataset):
    with mp.Manager() as manager:
        results = manager.dict()
        run_workers(check_shared_training, free_port(), str(small_dataset.path), results)
        history, untrained = results["history"], results["untrained"]
    values = np.array([epoch["valid/sampled/ndcg@10"] for epoch in history])
    # it learns: every epoch above the model it started from (runs of shared memory do not repeat to the bit, so
    # the epochs' order among themselves, a few thousandths apart here, is not asserted)
    assert len(values) == 3 and values.min() > untrained
