"""Metrics against values computed by hand, and the evaluator's ranks of blocks of users."""
import math

import numpy as np
import pytest
import torch

from lrml.evaluate import EVAL_BATCH_USERS, Evaluator
from lrml.metrics import full_ranks, ranking_metrics, sampled_ranks
from lrml.model import LRML, LRMLConfig


def test_metrics_of_known_ranks():
    ranks = np.array([0, 1, 9, 10, 50])
    found = ranking_metrics(ranks, ks=(1, 10))
    assert found["hr@1"] == pytest.approx(1 / 5)
    assert found["hr@10"] == pytest.approx(3 / 5)
    assert found["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5)
    assert found["ndcg@1"] == pytest.approx(1 / 5)
    assert found["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 51) / 5)


def test_sampled_rank_counts_ties_against_the_target():
    target = torch.tensor([0.5, 0.5, 0.9])
    candidates = torch.tensor([[0.1, 0.5, 0.7], [0.1, 0.2, 0.3], [0.9, 0.9, 0.9]])
    assert sampled_ranks(target, candidates).tolist() == [2, 0, 3]
    # a constant scorer never gets credit
    assert ranking_metrics(sampled_ranks(torch.zeros(4), torch.zeros(4, 100)))["hr@10"] == 0.0


def test_full_rank_skips_excluded_items_and_the_target_itself():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5],
                           [0.1, 0.2, 0.3, 0.4, 0.5]])
    targets = torch.tensor([3, 0])
    # user 0 trained on items 0 and 1: only item 2 outranks its target; user 1 trained on item 4
    rows, cols = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 4])
    assert full_ranks(scores.clone(), targets, rows, cols).tolist() == [1, 3]


def test_scores_that_are_not_finite_count_as_the_worst():
    nan, inf = float("nan"), float("inf")
    # a diverged model (every score NaN) ranks every held-out item last: no hits, in both protocols
    diverged = sampled_ranks(torch.full((3,), nan), torch.full((3, 100), nan))
    assert diverged.tolist() == [100, 100, 100]
    assert ranking_metrics(diverged) == {"hr@10": 0.0, "ndcg@10": 0.0, "mrr": 1 / 101}
    everything_nan = torch.full((2, 5), nan)
    ranks = full_ranks(everything_nan, torch.tensor([3, 0]), torch.tensor([0]), torch.tensor([1]))
    assert ranks.tolist() == [3, 4]  # every item neither excluded nor the target itself
    # partly: a NaN or infinite target is below every candidate; NaN or +inf candidates never outrank a finite one
    target = torch.tensor([nan, inf, 0.5, 0.5])
    candidates = torch.tensor([[0.1, 0.2, 0.3], [0.1, nan, -inf], [nan, inf, 0.7], [nan, nan, nan]])
    assert sampled_ranks(target, candidates).tolist() == [3, 3, 1, 0]
    scores = torch.tensor([[0.9, nan, 0.7, 0.6, inf]])
    # target item 3 (0.6): item 0 and 2 outrank it; NaN and +inf items do not; item 0 is excluded
    assert full_ranks(scores.clone(), torch.tensor([3]), torch.tensor([0]), torch.tensor([0])).tolist() == [1]


def test_an_evaluator_ranks_blocks_of_users_as_it_ranks_them_all(ml100k_dataset):
    """What Ray Data's actors rely on (``lrml_tune.comparison.ray_data_ranking``): blocks that start at multiples of the
    evaluator's batch give, end to end, the ranks of the whole split, bit for bit."""
    torch.manual_seed(0)
    model = LRML(LRMLConfig(ml100k_dataset.num_users, ml100k_dataset.num_items, embedding_dim=16, memory_size=5))
    evaluator = Evaluator(ml100k_dataset)
    whole = evaluator.ranks(model, "test")
    edges = [0, EVAL_BATCH_USERS, 3 * EVAL_BATCH_USERS, len(whole["full"])]
    blocks = [evaluator.ranks(model, "test", first=first, last=last) for first, last in zip(edges, edges[1:])]
    for protocol in ("sampled", "full"):
        assert torch.equal(torch.cat([block[protocol] for block in blocks]), whole[protocol])
