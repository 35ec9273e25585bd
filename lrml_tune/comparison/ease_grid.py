"""EASE's one hyperparameter, its L2 weight, tuned on validation with the metric every search selects on.

One number needs no sampler: half-decades from 1 to 10^5, then the points a quarter and an eighth of a
decade either side of the best so far. ``X^T X`` is computed once; each weight costs one Cholesky solve.
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
from lrml.train import MONITOR

GRID = tuple(10.0 ** (step / 2) for step in range(11))  # 1, 3.16, 10, ..., 10^5
REFINEMENTS = (0.25, 0.125)  # decades either side of the best so far, in turn
METRIC = MONITOR.rsplit("/", 1)[-1]


@dataclass
class EASESearch:
    """Every weight tried and its validation metric; the best weight."""

    tried: dict[float, float]
    best: float
    seconds: float

    def edge(self) -> str | None:
        """"lowest" or "highest" when the best weight is the smallest or largest tried: the grid may be too narrow."""
        return "lowest" if self.best == min(self.tried) else "highest" if self.best == max(self.tried) else None


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


def tune_ease(dataset: Dataset, evaluator: Evaluator) -> tuple[EASE, EASESearch]:
    """The EASE of the best weight on validation, and the search that found it."""
    started = time.perf_counter()
    users, items = (torch.as_tensor(ids, dtype=torch.long) for ids in (dataset.train_users, dataset.train_items))
    seen = torch.zeros(dataset.num_users, dataset.num_items, dtype=torch.bool)
    seen[users, items] = True
    gram = _model(dataset, seen, GRID[0]).gram()
    tried: dict[float, float] = {}
    kept: list[EASE] = []  # the best model so far: each holds an items x items matrix

    def value(log_weight: float) -> float:
        weight = round(10.0 ** log_weight, 6)
        if weight not in tried:
            model = _model(dataset, seen, weight)
            model.solve(gram)
            tried[weight] = evaluator.evaluate(model, "valid", ("sampled",))["sampled"][METRIC]
            if tried[weight] >= max(tried.values()):
                kept[:] = [model]
            print(f"  EASE reg_weight {weight:10.3f}: valid nDCG@10 {tried[weight]:.4f}", flush=True)
        return tried[weight]

    for weight in GRID:
        value(math.log10(weight))
    for step in REFINEMENTS:
        best = math.log10(max(tried, key=tried.get))
        for offset in (-step, step):
            value(best + offset)
    (model,) = kept
    return model, EASESearch(dict(sorted(tried.items())), model.config.reg_weight, time.perf_counter() - started)


def _model(dataset: Dataset, seen: torch.Tensor, weight: float) -> EASE:
    """An EASE of ``weight`` on the training matrix ``seen``, not yet solved."""
    model = EASE(EASEConfig(dataset.num_users, dataset.num_items, weight))
    model.seen.copy_(seen)
    return model.eval()
