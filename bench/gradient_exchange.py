"""Data-parallel step rate of lrml's GradientSync against DistributedDataParallel, in one run.

Two gloo processes on this machine each train LRML on half of every global batch and exchange
sparse embedding gradients, first with DDP (which lrml left: on gloo its sparse path corrupted
the heap now and then) and then with ``lrml.parallel.GradientSync``. One process
on the whole batch gives the single-worker rate for context. Prints pairs per second.

    python bench/gradient_exchange.py [--shape ml-1m] [--batch-size 1024] [--steps 300]
"""
from __future__ import annotations

import argparse
import platform
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lrml.data.synthetic import SHAPES
from lrml.model import LRML, LRMLConfig
from lrml.optim import Optimizer
from lrml.parallel import GradientSync

WORLD = 2


def seconds_for_steps(model: LRML, forward, after_backward, rank: int, world: int, batch_size: int,
                      steps: int) -> float:
    """Wall time of ``steps`` Adam steps on this worker's share of random global batches (after warm-up);
    the loss runs through ``forward`` and ``after_backward`` (if any) runs before each step."""
    generator = torch.Generator().manual_seed(rank)
    share = batch_size // world
    num_users, num_items = model.config.num_users, model.config.num_items
    batches = [(torch.randint(0, num_users, (share,), generator=generator),
                torch.randint(0, num_items, (share,), generator=generator),
                torch.randint(0, num_items, (share,), generator=generator)) for _ in range(8)]
    optimizer = Optimizer(model, "adam", 1e-3)

    def step(users, pos, neg):
        optimizer.zero_grad()
        forward(users, pos, neg).backward()
        if after_backward:
            after_backward()
        optimizer.step()

    for batch in batches[:3]:
        step(*batch)
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    for index in range(steps):
        step(*batches[index % len(batches)])
    return time.perf_counter() - start


def worker(rank: int, port: int, shape: str, batch_size: int, steps: int, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    for name in ("DDP (gloo sparse all-reduce)", "GradientSync (all-gather)"):
        torch.manual_seed(0)
        model = LRML(LRMLConfig(*SHAPES[shape][:2], embedding_dim=100, memory_size=20))
        if name.startswith("DDP"):
            forward, after_backward = torch.nn.parallel.DistributedDataParallel(model), None
        else:
            forward, after_backward = model, GradientSync(model)
        seconds = seconds_for_steps(model, forward, after_backward, rank, WORLD, batch_size, steps)
        if rank == 0:
            results[name] = seconds
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["ml-1m", "ml-20m"], default="ml-1m")
    parser.add_argument("--batch-size", type=int, default=1024, help="the global batch, split over the workers")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    single = LRML(LRMLConfig(*SHAPES[args.shape][:2], embedding_dim=100, memory_size=20))
    results = {"one worker, whole batch": seconds_for_steps(single, single, None, 0, 1, args.batch_size, args.steps)}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        shared = manager.dict()
        mp.spawn(worker, args=(port, args.shape, args.batch_size, args.steps, shared), nprocs=WORLD)
        results.update(shared)

    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.shape} shape, "
          f"global batch {args.batch_size}, {args.steps} steps, 1 thread per process")
    ddp = results["DDP (gloo sparse all-reduce)"]
    for name, seconds in results.items():
        print(f"{name:30s} {args.steps * args.batch_size / seconds:10,.0f} pairs/s   "
              f"{ddp / seconds:4.2f}x DDP's rate")


if __name__ == "__main__":
    main()
