"""Ranking metrics for leave-one-out evaluation: HR@K, nDCG@K and MRR from the held-out item's rank.

Ties count against the held-out item: its rank is the number of other items scored at least
as high, so a model that scores everything equally gets no credit. A score that is not a finite
number (NaN, or infinite) counts as the worst possible score, so a diverged model ranks every
held-out item last and can never look good.
"""
from __future__ import annotations

import numpy as np
import torch


def worst_if_not_finite(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` with every NaN or infinite entry replaced by -inf, the lowest score there is."""
    return torch.where(torch.isfinite(scores), scores, float("-inf"))


def rank_against(target_scores: torch.Tensor, other_scores: torch.Tensor,
                 excluded: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each row's target among ``other_scores`` (ties count against the target).

    ``excluded`` (same shape as ``other_scores``, boolean) marks items that take no part in the ranking.
    """
    outranks = worst_if_not_finite(other_scores) >= worst_if_not_finite(target_scores).unsqueeze(1)
    if excluded is not None:
        outranks &= ~excluded
    return outranks.sum(dim=1)


def per_user_metrics(ranks: np.ndarray | torch.Tensor, ks: tuple[int, ...] = (10,)) -> dict[str, np.ndarray]:
    """HR@K, nDCG@K (one relevant item: ``1 / log2(rank + 2)`` inside the top K) and reciprocal rank, per user."""
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    metrics = {}
    for k in ks:
        hit = ranks < k
        metrics[f"hr@{k}"] = hit.double().numpy()
        metrics[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0).numpy()
    metrics["mrr"] = (1.0 / (ranks + 1.0)).numpy()
    return metrics


def ranking_metrics(ranks: np.ndarray | torch.Tensor, ks: tuple[int, ...] = (10,)) -> dict[str, float]:
    """Mean HR@K, nDCG@K and MRR over users."""
    return {name: float(values.mean()) for name, values in per_user_metrics(ranks, ks).items()}


def sampled_ranks(target_scores: torch.Tensor, candidate_scores: torch.Tensor) -> torch.Tensor:
    """Rank of the held-out item against its fixed sampled candidates (the paper's protocol)."""
    return rank_against(target_scores, candidate_scores)


def full_ranks(all_scores: torch.Tensor, targets: torch.Tensor, exclude_rows: torch.Tensor,
               exclude_cols: torch.Tensor) -> torch.Tensor:
    """Rank of the held-out item among all items, skipping the (row, item) pairs given as excluded."""
    rows = torch.arange(len(targets), device=targets.device)
    target_scores = all_scores[rows, targets]
    excluded = torch.zeros_like(all_scores, dtype=torch.bool)
    excluded[exclude_rows, exclude_cols] = True
    excluded[rows, targets] = True  # the target does not outrank itself
    return rank_against(target_scores, all_scores, excluded)
