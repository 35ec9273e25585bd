"""Training throughput of lrml's LRML against the seed blog's sketch, in pairs per second, in one run.

Both take the same random (user, positive, negative) batches and an Adam step per batch; the
sketch regularises every parameter densely each step, lrml only the rows in the batch with
sparse gradients. The steps cycle through 8 batches, so their rows recur every 8 steps: at ml-20m's shape
those rows stay in cache, where an epoch's distinct batches would not, and the figures run above an epoch's.
``--options`` times the training options of LRML and BPR-MF (k negatives, the losses, the item bias, Adagrad)
through the compiled pass and through autograd, the path other devices and variants take.
Also times lrml's full epoch (negative sampling included) on synthetic data.

    python bench/throughput.py [--batch-sizes 1024 8192] [--seconds 10] [--options]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lrml.baselines import BPRMF, BPRConfig
from lrml.data.synthetic import SHAPES
from lrml.model import LRML, LRMLConfig
from lrml.optim import Optimizer

BENCH_SHAPES = {name: SHAPES[name] for name in ("ml-1m", "ml-20m")}
SKETCH = Path(os.environ.get("LRML_SEED_SKETCH", Path(__file__).resolve().parents[2] / "shared/reference/seed_lrml.py"))


def load_sketch():
    spec = importlib.util.spec_from_file_location("seed_lrml", SKETCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LRML


# (name, model, its config's options, negatives per positive, optimizer)
OPTIONS = (("LRML hinge, 1 negative (the default)", "lrml", {}, 1, "adam"),
           ("LRML hinge, 5 negatives", "lrml", {}, 5, "adam"),
           ("LRML warp, 5 negatives", "lrml", {"loss": "warp"}, 5, "adam"),
           ("LRML warp, 20 negatives", "lrml", {"loss": "warp"}, 20, "adam"),
           ("LRML softmax, 20 negatives, item bias", "lrml", {"loss": "softmax", "item_bias": True}, 20, "adam"),
           ("LRML hinge, 1 negative, Adagrad", "lrml", {}, 1, "adagrad"),
           ("BPR-MF bpr, 1 negative (the default)", "bpr", {}, 1, "adam"),
           ("BPR-MF bpr, 20 negatives", "bpr", {}, 20, "adam"),
           ("BPR-MF softmax, 20 negatives", "bpr", {"loss": "softmax"}, 20, "adam"))


def pairs_per_second(step, num_users: int, num_items: int, batch_size: int, seconds: float, negatives: int = 1) -> float:
    """Run ``step(users, pos, neg)`` on 8 random batches in turn for about ``seconds`` after warm-up: positive pairs
    per second."""
    g = torch.Generator().manual_seed(0)
    shape = (batch_size,) if negatives == 1 else (batch_size, negatives)
    batches = [(torch.randint(0, num_users, (batch_size,), generator=g),
                torch.randint(0, num_items, (batch_size,), generator=g),
                torch.randint(0, num_items, shape, generator=g)) for _ in range(8)]
    for b in batches[:3]:
        step(*b)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(*batches[done % len(batches)])
        done += 1
    return done * batch_size / (time.perf_counter() - start)


def sketch_step(num_users, num_items, dim, memory):
    model = load_sketch()(num_users, num_items, dim, memory)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(users, pos, neg):
        optimizer.zero_grad()
        model.training_step(users, pos, users, neg).backward()
        optimizer.step()
    return step


def lrml_step(num_users, num_items, dim, memory, options: dict | None = None, optimizer_name: str = "adam",
              autograd: bool = False, kind: str = "lrml"):
    """A training step of lrml's LRML (or BPR-MF, ``kind="bpr"``); ``autograd`` takes the model's
    ``autograd_loss`` instead of the compiled pass."""
    if kind == "bpr":
        model = BPRMF(BPRConfig(num_users, num_items, dim, reg_weight=1e-4, **(options or {})))
    else:
        model = LRML(LRMLConfig(num_users, num_items, dim, memory, reg_weight=1e-4, **(options or {})))
    optimizer = Optimizer(model, optimizer_name, 1e-3)
    loss = model.autograd_loss if autograd else model

    def step(users, pos, neg):
        optimizer.zero_grad()
        loss(users, pos, neg).backward()
        optimizer.step()
    return step


def epoch_pairs_per_second(num_users, num_items, num_interactions, dim, memory, batch_size) -> float:
    """lrml's Trainer.train_epoch on synthetic ratings of the given shape (sampling and shuffling included)."""
    from lrml.data.split import interaction_keys
    from lrml.data.synthetic import generate
    from lrml.sampling import NegativeSampler
    from lrml.train import TrainConfig, build_model

    frame = generate(num_users, num_items, num_interactions, seed=0)
    users, items = (frame["user"].to_numpy() - 1), (frame["item"].to_numpy() - 1)
    config = TrainConfig(embedding_dim=dim, memory_size=memory, batch_size=batch_size)
    model = build_model(config, num_users, num_items)
    optimizer = Optimizer(model, "adam", config.lr)
    sampler = NegativeSampler(interaction_keys(users, items, num_items), num_items, seed=0)
    start = time.perf_counter()
    order = np.random.default_rng(0).permutation(len(users))
    u, i = torch.as_tensor(users[order]), torch.as_tensor(items[order])
    n = torch.as_tensor(sampler.sample(users[order]))
    for s in range(0, len(u), batch_size):
        optimizer.zero_grad()
        model(u[s:s + batch_size], i[s:s + batch_size], n[s:s + batch_size]).backward()
        optimizer.step()
    return len(u) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--memory", type=int, default=20)
    parser.add_argument("--epoch", action="store_true", help="also time a full epoch at ml-1m shape")
    parser.add_argument("--options", action="store_true",
                        help="only the training options, compiled and through autograd, at ml-1m shape")
    args = parser.parse_args()
    if not SKETCH.exists():
        sys.exit(f"{SKETCH} not found; set LRML_SEED_SKETCH to the seed sketch")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"d={args.dim}, N={args.memory}")
    if args.options:
        time_options(args)
        return 0
    print("| shape | batch | seed sketch | lrml | lrml / sketch |\n|---|---:|---:|---:|---:|")
    for shape, (num_users, num_items, _) in BENCH_SHAPES.items():
        for batch_size in args.batch_sizes:
            theirs = pairs_per_second(sketch_step(num_users, num_items, args.dim, args.memory),
                                      num_users, num_items, batch_size, args.seconds)
            ours = pairs_per_second(lrml_step(num_users, num_items, args.dim, args.memory),
                                    num_users, num_items, batch_size, args.seconds)
            print(f"| {shape} ({num_users:,} x {num_items:,}) | {batch_size:,} | {theirs:,.0f} | {ours:,.0f} | "
                  f"{ours / theirs:.1f}x |", flush=True)
    if args.epoch:
        for batch_size in args.batch_sizes:
            rate = epoch_pairs_per_second(*SHAPES["ml-1m"], args.dim, args.memory, batch_size)
            print(f"lrml full epoch at ml-1m shape (1,000,209 synthetic pairs, sampling included), batch {batch_size}: "
                  f"{rate:,.0f} pairs/s")
    return 0


def time_options(args) -> None:
    """Positive pairs per second of each training option at ml-1m shape, compiled and through autograd."""
    num_users, num_items, _ = SHAPES["ml-1m"]
    print("| option | batch | compiled | autograd | compiled / autograd |\n|---|---:|---:|---:|---:|")
    for batch_size in args.batch_sizes:
        for name, kind, options, negatives, optimizer in OPTIONS:
            found = [pairs_per_second(lrml_step(num_users, num_items, args.dim, args.memory, options, optimizer, autograd,
                                                kind),
                                      num_users, num_items, batch_size, args.seconds, negatives)
                     for autograd in (False, True)]
            print(f"| {name} | {batch_size:,} | {found[0]:,.0f} | {found[1]:,.0f} | {found[0] / found[1]:.1f}x |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
