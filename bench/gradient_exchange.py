"""What a data-parallel exchange costs beside a training step, in one run: the numbers ``lrml.parallel`` sizes its
rounds of local steps by, and two workers' step rates for each way of exchanging.

Two gloo processes on this machine, one thread each:

- an exchange of the shared tables (``lrml.parallel.ChangeSum.exchange``: the change since the last one,
  all-reduced, taken in) of one float, and of a table of ml-1m's and ml-20m's items: its fixed cost and its
  cost a float;
- a training step of one process (LRML's defaults, the row-wise Adam), its cost a pair;
- steps on random batches of the shape: one process on the whole batch, then two workers each on its block
  of users, exchanging every step as DistributedDataParallel does (the user table included), exactly
  (``Collective(sync_every=1)``: the global batch's gradient), in rounds of local steps (the default), or
  never: the most two processes gain on this machine.

    python bench/gradient_exchange.py [--shape ml-1m] [--batch-size 1024] [--steps 1000]
"""
from __future__ import annotations

import os

# One thread a process, as Ray gives a worker of one CPU: set before torch and numba start their pools
# (lrml/__init__.py), or the idle threads of two processes' pools slow both down.
os.environ["OMP_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from lrml.data.synthetic import SHAPES  # noqa: E402
from lrml.model import LRML, LRMLConfig  # noqa: E402
from lrml.optim import Optimizer  # noqa: E402
from lrml.parallel import ChangeSum, Collective  # noqa: E402

WORLD = 2
REPEATS = 50
NEVER = 10**9  # steps between exchanges that no run reaches: two independent processes, this machine's ceiling


def batches(rank: int, world: int, shape: str, size: int, count: int) -> list[tuple[torch.Tensor, ...]]:
    """``count`` random batches of this worker's block of users (all users for one worker): a step each, no batch
    twice, so the tables' rows are read from memory as an epoch reads them, not from a cache a few batches warm."""
    num_users, num_items = SHAPES[shape][:2]
    generator = torch.Generator().manual_seed(rank)
    first, end = rank * num_users // world, (rank + 1) * num_users // world
    return [(torch.randint(first, end, (size,), generator=generator),
             torch.randint(0, num_items, (size,), generator=generator),
             torch.randint(0, num_items, (size,), generator=generator)) for _ in range(count)]


def model_of(shape: str, sparse: bool = True) -> LRML:
    """LRML's defaults at ``shape``; DDP's row takes dense gradients: with sparse ones on gloo it corrupted a
    worker's heap in about one run in three here (``lrml/parallel.py``)."""
    torch.manual_seed(0)
    return LRML(LRMLConfig(*SHAPES[shape][:2], embedding_dim=100, memory_size=20, sparse=sparse))


def seconds_for_steps(model, forward, parallel, data, steps: int, batch_size: int) -> float:
    """Wall time of ``steps`` steps (after three to warm up); ``parallel`` exchanges as the trainer has it do."""
    optimizer = Optimizer(model, "adam", 1e-3, parallel.steps_per_step if parallel else 1)

    def step(users, pos, neg):
        optimizer.zero_grad()
        forward(users, pos, neg).backward()
        if parallel:
            parallel.after_backward()
        optimizer.step()
        if parallel:
            parallel.after_step()

    for batch in data[:3]:
        step(*batch)
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    for batch in data[3:3 + steps]:
        step(*batch)
    if parallel:
        parallel.end_epoch()
    return time.perf_counter() - start


def exchange_seconds(floats: int) -> float:
    """Seconds of one synchronous exchange of a table of ``floats`` floats, each worker having changed it."""
    table = torch.nn.Parameter(torch.zeros(floats))
    changes = ChangeSum([table], every=1)
    for repeat in range(REPEATS + 5):
        if repeat == 5:
            dist.barrier()
            start = time.perf_counter()
        with torch.no_grad():
            table += 1.0
        changes.exchange()
    return (time.perf_counter() - start) / REPEATS


def worker(rank: int, port: int, args, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    items = {shape: SHAPES[shape][1] * 100 for shape in ("ml-1m", "ml-20m")}  # their item tables' floats
    costs = {"one float": exchange_seconds(1), **{f"{shape} items": exchange_seconds(n) for shape, n in items.items()}}
    rates = {}
    for name, sync_every in (("DDP (dense gradients), every step", None), ("exact gradient, every step", 1),
                             ("local steps", None),
                             ("never exchanging (the ceiling)", NEVER)):
        ddp = name.startswith("DDP")
        model = model_of(args.shape, sparse=not ddp)
        if ddp:
            forward, parallel = torch.nn.parallel.DistributedDataParallel(model), None
            size = args.batch_size // WORLD
        else:
            parallel, forward = Collective(sync_every), model
            parallel.attach(model, args.batch_size)
            size = parallel.batch_share(args.batch_size)
            name = f"{name}, every {parallel.sync_every}" if sync_every is None else name
        data = batches(rank, WORLD, args.shape, size, args.steps + 3)
        seconds = seconds_for_steps(model, forward, parallel, data, args.steps, args.batch_size)
        rates[name] = WORLD * size * args.steps / seconds
    if rank == 0:
        results.update(costs=costs, rates=rates, items=items)
    dist.barrier()  # both done before either tears gloo down (tests/test_parallel.py's workers do the same)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["ml-1m", "ml-20m"], default="ml-1m")
    parser.add_argument("--batch-size", type=int, default=1024, help="the global batch, or each worker's local one")
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()

    torch.set_num_threads(1)
    single = model_of(args.shape)
    one = seconds_for_steps(single, single, None, batches(0, 1, args.shape, args.batch_size, args.steps + 3),
                            args.steps,
                            args.batch_size)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        shared = manager.dict()
        mp.spawn(worker, args=(port, args, shared), nprocs=WORLD)
        costs, rates, items = shared["costs"], shared["rates"], shared["items"]

    fixed = costs["one float"]
    per_float = (costs["ml-20m items"] - fixed) / items["ml-20m"]
    per_pair = one / (args.steps * args.batch_size)
    print(f"torch {torch.__version__}, {args.shape} shape, batch {args.batch_size}, {args.steps} steps, one thread "
          "per process, gloo over loopback")
    print(f"an exchange: {fixed * 1e3:.2f} ms of one float, {costs['ml-1m items'] * 1e3:.2f} ms of ml-1m's item table, "
          f"{costs['ml-20m items'] * 1e3:.2f} ms of ml-20m's: {fixed * 1e3:.2f} ms and {per_float * 1e9:.1f} ns a float")
    print(f"a training step of one process: {one / args.steps * 1e3:.2f} ms, {per_pair * 1e6:.2f} us a pair")
    print(f"{'one worker, whole batch':46s} {args.steps * args.batch_size / one:10,.0f} pairs/s  1.00x")
    for name, rate in rates.items():
        print(f"{'2 workers, ' + name:46s} {rate:10,.0f} pairs/s  {rate * one / (args.steps * args.batch_size):4.2f}x")


if __name__ == "__main__":
    main()
