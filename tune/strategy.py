"""The search strategies on offer: which sampler proposes configurations, which scheduler stops trials early.

Defaults are the fastest combination to a good result in ``bench/search_efficiency.py`` (see
``bench/README.md``).
"""
from __future__ import annotations

import optuna
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

SEARCHERS = ("tpe", "random")
SCHEDULERS = ("asha", "hyperband", "none")
DEFAULT_SEARCHER, DEFAULT_SCHEDULER = "tpe", "asha"
REDUCTION_FACTOR = 3
HYPERBAND_BRACKETS = 3


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, with a constant liar so concurrent trials spread out) or uniform random sampling."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"searcher {name!r}; expected one of {', '.join(SEARCHERS)}")


def make_scheduler(name: str, max_epochs: int, grace_period: int) -> TrialScheduler:
    """ASHA (one bracket), asynchronous Hyperband (several brackets of ASHA, from the ASHA paper) or none.

    All three go by the trial's own ``epoch``, so a trial resumed from a checkpoint is judged at the right rung.
    """
    if name == "none":
        return FIFOScheduler()
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    return AsyncHyperBandScheduler(time_attr="epoch", max_t=max_epochs, grace_period=grace_period,
                                   reduction_factor=REDUCTION_FACTOR,
                                   brackets=HYPERBAND_BRACKETS if name == "hyperband" else 1)
