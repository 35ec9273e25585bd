"""How far training and evaluation are from this machine's limits, in one run.

Measures the machine's float32 matrix-multiply rate and memory bandwidth, then lrml's training
step and evaluation, and shows each as the FLOP and byte rates it reaches against those limits.
FLOPs and bytes per pair are counted from the model's arithmetic (d = embedding size, N = memory
slots); the counts are lower bounds (what any implementation must do), not what PyTorch executes.

    python bench/floor.py [--seconds 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
from evaluation import synthetic_dataset, users_per_second
from throughput import lrml_step, pairs_per_second

from lrml.data.synthetic import SHAPES
from lrml.evaluate import Evaluator
from lrml.model import LRML, LRMLConfig

FLOAT = 4  # bytes


def calls_per_second(work, seconds: float) -> float:
    """How often ``work()`` runs per second, over about ``seconds`` after one call to warm up."""
    work()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        work()
        done += 1
    return done / (time.perf_counter() - start)


def matmul_flops(size: int = 2048, seconds: float = 3.0) -> float:
    """float32 FLOP/s of a square matrix product, the better of torch's BLAS and numpy's (full ranking uses
    numpy's), the best this machine does."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a_np, b_np = a.numpy(), b.numpy()
    return 2 * size ** 3 * max(calls_per_second(lambda: a @ b, seconds), calls_per_second(lambda: a_np @ b_np, seconds))


def memory_bandwidth(megabytes: int = 512, seconds: float = 3.0) -> float:
    """Bytes per second moved by a copy far larger than the caches (each byte read once, written once)."""
    source = torch.randn(megabytes * 2 ** 20 // FLOAT)
    target = torch.empty_like(source)
    return 2 * source.numel() * FLOAT * calls_per_second(lambda: target.copy_(source), seconds)


def forward_flops(d: int, n: int) -> float:
    """FLOPs of LRML's score of one pair: attention logits and the memory read (2dN each), the
    distance and the sum p + r (about 8d)."""
    return 4 * d * n + 8 * d


def training_pair_cost(d: int, n: int) -> tuple[float, float]:
    """FLOPs and bytes per training triple (user, positive, negative).

    The forward of one pair (the second distance reuses the attention), backward about twice that.
    Bytes: the three looked-up rows, and the optimizer reading and writing each row's weights and two
    Adam moments (at most three distinct rows a pair).
    """
    return 3 * forward_flops(d, n), 3 * d * FLOAT * (1 + 6)


def full_ranking_pair_cost(d: int, n: int) -> tuple[float, float]:
    """FLOPs and bytes per (user, item) scored against all items, in memory-slot space (lrml/scoring.py):
    the attention logits and ``p . q`` 2d(N + 1), the relation's norm over the Gram matrix's upper triangle
    N(N + 1), the linear term and the softmax's sum 4N. The item rows stay in cache across a block of users;
    the bytes are the score written and read back for ranking."""
    return 2 * d * (n + 1) + n * (n + 1) + 4 * n, 2 * FLOAT


def sampled_pair_cost(d: int, n: int) -> tuple[float, float]:
    """FLOPs and bytes per (user, candidate) of sampled evaluation: LRML.score on looked-up rows and
    the candidate's row read from the item table."""
    return forward_flops(d, n), d * FLOAT


def row(name: str, pairs_per_second: float, cost: tuple[float, float], peak_flops: float, bandwidth: float) -> str:
    flops, nbytes = cost
    flop_rate, byte_rate = pairs_per_second * flops, pairs_per_second * nbytes
    limit = min(peak_flops / flops, bandwidth / nbytes)
    bound = "memory" if bandwidth / nbytes < peak_flops / flops else "compute"
    return (f"| {name} | {flops:,.0f} | {nbytes:,.0f} | {pairs_per_second:,.0f} | "
            f"{flop_rate / 1e9:,.1f} ({flop_rate / peak_flops:.0%}) | {byte_rate / 1e9:,.2f} ({byte_rate / bandwidth:.0%}) | "
            f"{limit:,.0f} ({bound}) | {pairs_per_second / limit:.0%} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per training measurement")
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--memory", type=int, default=20)
    args = parser.parse_args()
    d, n = args.dim, args.memory
    peak_flops, bandwidth = matmul_flops(), memory_bandwidth()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, d={d}, N={n}")
    print(f"machine: float32 matrix multiply {peak_flops / 1e9:,.0f} GFLOP/s, memory copy {bandwidth / 1e9:,.1f} GB/s\n")
    print("| workload | FLOP per pair | bytes per pair | pairs/s measured | GFLOP/s (of peak) | GB/s (of bandwidth) "
          "| pairs/s at the limit | measured / limit |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for shape in ("ml-1m", "ml-20m"):
        users, items, _ = SHAPES[shape]
        for batch in (1024, 8192):
            rate = pairs_per_second(lrml_step(users, items, d, n), users, items, batch, args.seconds)
            print(row(f"training step, {shape}, batch {batch:,}", rate, training_pair_cost(d, n), peak_flops, bandwidth),
                  flush=True)
    users, items, interactions = SHAPES["ml-1m"]
    dataset = synthetic_dataset(users, items, interactions)
    torch.manual_seed(0)
    model = LRML(LRMLConfig(users, items, d, n)).eval()
    evaluator = Evaluator(dataset)
    for protocol, per_user, cost in (("full ranking", items, full_ranking_pair_cost(d, n)),
                                     ("sampled", dataset.valid_candidates.shape[1] + 1, sampled_pair_cost(d, n))):
        rate = users_per_second(evaluator, model, protocol.split()[0]) * per_user
        print(row(f"{protocol} evaluation, ml-1m", rate, cost, peak_flops, bandwidth), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
