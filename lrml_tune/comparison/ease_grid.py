"""EASE's one hyperparameter, its L2 weight, tuned on validation with the metric every search selects on.

One number needs no sampler: half-decades from 1 to 10^5, then the points a quarter and an eighth of a
decade either side of the best so far. ``X^T X`` is computed once; each weight costs one Cholesky solve,
here in turn (``LocalSolves``) or as Ray tasks on a cluster (``cluster_runs.RaySolves``), each round's
weights at once.
Why not a Tune search: each trial's checkpoint would hold an items x items matrix (378 MB at
ml-latest-small's 9,724 items), and the solve already uses every core.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import psutil
import torch

from lrml.baselines import EASE, EASEConfig
from lrml.data import Dataset
from lrml.evaluate import Evaluator

GRID = tuple(10.0 ** (step / 2) for step in range(11))  # 1, 3.16, 10, ..., 10^5
REFINEMENTS = (0.25, 0.125)  # decades either side of the best so far, in turn
METRIC = "ndcg@10"  # on validation, in the protocol the searches selected on


@dataclass
class EASESearch:
    """Every weight tried and its validation metric; the best weight."""

    tried: dict[float, float]
    best: float
    seconds: float

    def edge(self) -> str | None:
        """"lowest" or "highest" when the best weight is the smallest or largest tried: the grid may be too narrow."""
        return "lowest" if self.best == min(self.tried) else "highest" if self.best == max(self.tried) else None


def solve_memory(num_users: int, num_items: int) -> int:
    """Bytes one weight's solve and validation hold: the training matrix, a copy of X^T X and the model's weights
    in float32, and the solve's two float64 matrices."""
    return num_users * num_items + (2 * 4 + 2 * 8) * num_items ** 2


def memory_needed(num_users: int, num_items: int) -> int:
    """Bytes the search holds at its peak: the training matrix twice (one byte a cell), X^T X and two models'
    weights in float32, and a solve's two float64 matrices."""
    return 2 * num_users * num_items + (4 + 2 * 4 + 2 * 8) * num_items ** 2


def fits_in_memory(dataset: Dataset) -> str | None:
    """None when the search fits in the memory available now, else why not, in a line."""
    needed, available = memory_needed(dataset.num_users, dataset.num_items), psutil.virtual_memory().available
    if needed <= available:
        return None
    return (f"EASE at {dataset.num_items:,} items needs about {needed / 2**30:.1f} GB; "
            f"{available / 2**30:.1f} GB is available")


class LocalSolves:
    """Each weight solved on this machine in turn (a solve takes every core) and scored in ``protocol``; the best
    model so far is kept, so the chosen one is not solved again."""

    def __init__(self, dataset: Dataset, evaluator: Evaluator, protocol: str = "sampled"):
        self.dataset, self.evaluator, self.protocol = dataset, evaluator, protocol
        self.seen = training_matrix(dataset)
        self.gram = make_model(dataset, self.seen, GRID[0]).gram()
        self.kept: tuple[float, EASE] | None = None  # (validation metric, model): each holds items x items floats

    def scores(self, weights: list[float]) -> list[float]:
        found = []
        for weight in weights:
            model = make_model(self.dataset, self.seen, weight)
            model.solve(self.gram)
            found.append(self.evaluator.evaluate(model, "valid", (self.protocol,))[self.protocol][METRIC])
            if self.kept is None or found[-1] > self.kept[0]:  # the first of equal scores, as tune_ease picks
                self.kept = (found[-1], model)
        return found

    def model(self, weight: float) -> EASE:
        if self.kept is not None and self.kept[1].config.reg_weight == weight:
            return self.kept[1]
        model = make_model(self.dataset, self.seen, weight)
        model.solve(self.gram)
        return model


def tune_ease(dataset: Dataset, evaluator: Evaluator, solves=None, protocol: str = "sampled") -> tuple[EASE, EASESearch]:
    """The EASE of the best weight on validation nDCG@10 in ``protocol``, and the search that found it; ``solves``
    scores a round's weights (default: ``LocalSolves`` in ``protocol``)."""
    started = time.perf_counter()
    solves = solves or LocalSolves(dataset, evaluator, protocol)
    tried: dict[float, float] = {}

    def try_round(log_weights: list[float]) -> None:
        weights = [weight for weight in dict.fromkeys(round(10.0 ** value, 6) for value in log_weights)
                   if weight not in tried]
        for weight, value in zip(weights, solves.scores(weights)):
            tried[weight] = value
            print(f"  EASE reg_weight {weight:10.3f}: valid {protocol} nDCG@10 {value:.4f}", flush=True)

    try_round([math.log10(weight) for weight in GRID])
    for step in REFINEMENTS:
        best = math.log10(max(tried, key=tried.get))
        try_round([best - step, best + step])
    best = max(tried, key=tried.get)  # the first of equal scores, as the grid's order gives them
    model = solves.model(best)
    return model, EASESearch(dict(sorted(tried.items())), best, time.perf_counter() - started)


def training_matrix(dataset: Dataset) -> torch.Tensor:
    """Users x items, True where the user has a training pair."""
    users, items = (torch.as_tensor(ids, dtype=torch.long) for ids in (dataset.train_users, dataset.train_items))
    seen = torch.zeros(dataset.num_users, dataset.num_items, dtype=torch.bool)
    seen[users, items] = True
    return seen


def make_model(dataset: Dataset, seen: torch.Tensor, weight: float) -> EASE:
    """An EASE of ``weight`` on the training matrix ``seen``, not yet solved."""
    model = EASE(EASEConfig(dataset.num_users, dataset.num_items, weight))
    model.seen.copy_(seen)
    return model.eval()
