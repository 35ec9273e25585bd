"""Uncertainty over test users: bootstrap confidence intervals and a paired randomisation test.

Both resample users, the unit the metrics average over; both are seeded, so a report is reproducible.
"""
from __future__ import annotations

import numpy as np

RESAMPLES = 10_000


def bootstrap_ci(per_user: np.ndarray, level: float = 0.95, resamples: int = RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``per_user`` (users drawn with replacement)."""
    per_user = np.asarray(per_user, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # bounded memory: 1000 resamples at a time
        draws = rng.integers(0, len(per_user), size=(min(1000, resamples - start), len(per_user)))
        means[start:start + len(draws)] = per_user[draws].mean(axis=1)
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
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, resamples, 1000):
        signs = rng.choice((-1.0, 1.0), size=(min(1000, resamples - start), len(differences)))
        extreme += int((np.abs((signs * differences).mean(axis=1)) >= observed - 1e-12).sum())
    return (extreme + 1) / (resamples + 1)
