"""Evaluation speed in users per second: full ranking (every item, training items excluded) and the
sampled validation that runs after every epoch (100 candidates), at ml-1m and ml-20m shape; and full ranking
by the PyTorch formulation other devices use, which ``lrml/scoring.py``'s compiled pass replaced on the CPU.

The model is an LRML of the shape with random weights (speed does not depend on what it learnt);
the training pairs to exclude are synthetic, with MovieLens-like skew, so each user excludes as
many items as in the real release. Full ranking at ml-20m shape is timed on a subset of users and
the whole pass extrapolated from it. One batch runs untimed first: compiling and indexing are paid once a
run, not once a user.

    python bench/evaluation.py [--shapes ml-1m ml-20m] [--full-users 8192]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lrml.data import Dataset
from lrml.data.synthetic import SHAPES, generate
from lrml.evaluate import EVAL_BATCH_USERS, Evaluator
from lrml.model import LRML, LRMLConfig


def synthetic_dataset(num_users: int, num_items: int, num_interactions: int) -> Dataset:
    """Training pairs of the shape, and per user one held-out item and 100 candidates, in memory."""
    frame = generate(num_users, num_items, num_interactions, seed=0)
    users, items = frame["user"].to_numpy() - 1, frame["item"].to_numpy() - 1
    rng = np.random.default_rng(0)
    eval_users = np.arange(num_users)
    held_out = rng.integers(0, num_items, num_users)
    candidates = rng.integers(0, num_items, (num_users, 100))
    counts = {"users": num_users, "items": num_items, "train": len(users)}
    return Dataset(Path("."), {"counts": counts, "fingerprint": "bench"}, users, items, eval_users, held_out,
                   eval_users, held_out, candidates, candidates)


def first_users(dataset: Dataset, users: int) -> Dataset:
    """The same dataset with only its first ``users`` evaluation users."""
    return Dataset(dataset.path, dataset.manifest, dataset.train_users, dataset.train_items,
                   dataset.valid_users[:users], dataset.valid_items[:users], dataset.test_users[:users],
                   dataset.test_items[:users], dataset.valid_candidates[:users], dataset.test_candidates[:users])


def users_per_second(evaluator: Evaluator, model: LRML, protocol: str) -> float:
    """Users ranked per second, after one batch that pays what a run pays once (compiling the kernels,
    indexing the training items), so that an extrapolation does not multiply it."""
    evaluator.ranks(model, "valid", (protocol,), last=EVAL_BATCH_USERS)
    started = time.perf_counter()
    ranks = evaluator.ranks(model, "valid", (protocol,))[protocol]
    return len(ranks) / (time.perf_counter() - started)


class PyTorchRanking(LRML):
    """The same model, ranking every item with ``LRML``'s PyTorch formulation even on the CPU."""

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        bias = self.item_bias.weight if self.config.item_bias else None
        return self._score_all_torch(self._clip(self.user_embedding(users)), self._clip(self.item_embedding.weight), bias)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["ml-1m", "ml-20m"], choices=list(SHAPES))
    parser.add_argument("--full-users", type=int, default=8192, help="users timed for full ranking at most")
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--memory", type=int, default=20)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, d={args.dim}, N={args.memory}")
    print("| shape | protocol | users timed | users/s | seconds for all users |\n|---|---|---:|---:|---:|")
    for shape in args.shapes:
        num_users, num_items, num_interactions = SHAPES[shape]
        dataset = synthetic_dataset(num_users, num_items, num_interactions)
        torch.manual_seed(0)
        model = LRML(LRMLConfig(num_users, num_items, args.dim, args.memory)).eval()
        with torch.no_grad():
            for table in (model.user_embedding.weight, model.item_embedding.weight):
                table.normal_(0.0, 0.1)
        reference = PyTorchRanking(model.config).eval()
        reference.load_state_dict(model.state_dict())
        compiled = None
        for label, ranked, protocol, timed in (("sampled", model, "sampled", num_users),
                                               ("full", model, "full", min(num_users, args.full_users)),
                                               ("full, PyTorch", reference, "full", min(num_users, args.full_users))):
            rate = users_per_second(Evaluator(first_users(dataset, timed)), ranked, protocol)
            compiled = rate if label == "full" else compiled
            versus = f" (compiled {compiled / rate:.1f}x)" if ranked is reference else ""
            print(f"| {shape} | {label}{versus} | {timed:,} | {rate:,.0f} | {num_users / rate:,.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
