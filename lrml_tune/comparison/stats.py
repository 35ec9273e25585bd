"""Uncertainty over test users: bootstrap confidence intervals and a paired randomisation test.

Both resample users, the unit the metrics average over; both are seeded, so a report is reproducible.
Per-user metrics take few distinct values (HR@10 two, nDCG@10 eleven), so both draw how many users
take each value, not which users: the same distributions, at a cost that does not grow with users.
"""
from __future__ import annotations

import numpy as np

RESAMPLES = 10_000


def bootstrap_ci(per_user: np.ndarray, level: float = 0.95, resamples: int = RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``per_user`` (users drawn with replacement)."""
    values, counts = np.unique(np.asarray(per_user, dtype=np.float64), return_counts=True)
    users = counts.sum()
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # bounded memory: 1000 resamples at a time
        # drawing users with replacement draws how often each value occurs: a multinomial over the values
        drawn = rng.multinomial(users, counts / users, size=min(1000, resamples - start))
        means[start:start + len(drawn)] = drawn @ values / users
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def paired_randomization_test(first: np.ndarray, second: np.ndarray, resamples: int = RESAMPLES,
                              seed: int = 0) -> float:
    """Two-sided p-value that two systems' per-user scores have equal means (Fisher's randomisation test).

    Under the null hypothesis each user's two scores are exchangeable, so the sign of each
    difference is a coin flip; the p-value is the share of sign flips whose mean difference is
    at least as far from zero as the observed one (counting the observed assignment itself).
    """
    differences = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    observed = abs(differences.mean())
    values, counts = np.unique(differences, return_counts=True)
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, resamples, 1000):
        # of the users sharing a difference, a Binomial(count, 1/2) keep its sign and the rest flip it
        kept = rng.binomial(counts, 0.5, size=(min(1000, resamples - start), len(counts)))
        means = (2 * kept - counts) @ values / len(differences)
        extreme += int((np.abs(means) >= observed - 1e-12).sum())
    return (extreme + 1) / (resamples + 1)
