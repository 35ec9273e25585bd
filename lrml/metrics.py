"""Ranking metrics for leave-one-out evaluation: HR@K, nDCG@K and MRR from the held-out item's rank.

Ties count against the held-out item: its rank is the number of other items scored at least
as high, so a model that scores everything equally gets no credit.
"""
from __future__ import annotations

import numpy as np
import torch


def rank_against(target_scores: torch.Tensor, other_scores: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target among ``other_scores`` (ties count against the target).

    Entries of ``other_scores`` set to -inf (excluded items) never outrank a finite target.
    """
    return (other_scores >= target_scores.unsqueeze(1)).sum(dim=1)


def ranking_metrics(ranks: np.ndarray | torch.Tensor, ks: tuple[int, ...] = (10,)) -> dict[str, float]:
    """Mean HR@K, nDCG@K (one relevant item: ``1 / log2(rank + 2)`` inside the top K) and MRR over users."""
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    metrics = {}
    for k in ks:
        hit = ranks < k
        metrics[f"hr@{k}"] = hit.double().mean().item()
        metrics[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0).mean().item()
    metrics["mrr"] = (1.0 / (ranks + 1.0)).mean().item()
    return metrics


def sampled_ranks(target_scores: torch.Tensor, candidate_scores: torch.Tensor) -> torch.Tensor:
    """Rank of the held-out item against its fixed sampled candidates (the paper's protocol)."""
    return rank_against(target_scores, candidate_scores)


def full_ranks(all_scores: torch.Tensor, targets: torch.Tensor, exclude_rows: torch.Tensor,
               exclude_cols: torch.Tensor) -> torch.Tensor:
    """Rank of the held-out item among all items, skipping the (row, item) pairs given as excluded.

    ``all_scores`` is (users, items) and is modified in place.
    """
    target_scores = all_scores.gather(1, targets.unsqueeze(1)).squeeze(1)
    all_scores[exclude_rows, exclude_cols] = float("-inf")
    all_scores.scatter_(1, targets.unsqueeze(1), float("-inf"))  # the target does not outrank itself
    return rank_against(target_scores, all_scores)
