"""Seeded synthetic ratings with MovieLens-like skew, for scale tests at any shape up to ml-20m and beyond.

Item popularity follows a Zipf law and user activity a Pareto law with a floor, the two skews
that make MovieLens hard for popularity-blind samplers and easy for popularity baselines.
``prepare("synthetic-ml-20m")`` generates the named release's shape once (seed 0) and prepares it.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from lrml.data.errors import UnknownDatasetError

RATING_LEVELS = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
RATING_SHARES = np.array([0.061, 0.114, 0.271, 0.342, 0.212])  # ml-100k's rating histogram
FIRST_TIMESTAMP, LAST_TIMESTAMP = 789_652_009, 1_427_784_002  # ml-20m's span
PREFIX = "synthetic-"
GENERATOR_VERSION = 1  # bump when generate() changes what a seed produces
# (users, items, interactions) of the MovieLens releases, the shapes a synthetic dataset can take
SHAPES = {"ml-100k": (943, 1_682, 100_000), "ml-1m": (6_040, 3_706, 1_000_209),
          "ml-10m": (69_878, 10_677, 10_000_054), "ml-20m": (138_493, 26_744, 20_000_263)}


def is_synthetic(name: str) -> bool:
    return name.startswith(PREFIX)


def synthetic_shape(name: str) -> tuple[int, int, int]:
    """The (users, items, interactions) of ``synthetic-<shape>``; an unknown shape names the known ones."""
    shape = SHAPES.get(name.removeprefix(PREFIX))
    if shape is None:
        raise UnknownDatasetError(f"unknown dataset {name!r}; synthetic shapes: "
                                  f"{', '.join(PREFIX + known for known in SHAPES)}")
    return shape


def synthetic_source(name: str) -> dict:
    """What a prepared folder records as its source: the generator, shape and seed, digested as its identity."""
    shape = synthetic_shape(name)
    recipe = f"lrml.data.synthetic v{GENERATOR_VERSION}: generate{shape}, seed 0"
    return {"origin": recipe, "ratings_sha256": hashlib.sha256(recipe.encode()).hexdigest(), "archive_verified": False}


def generate(num_users: int, num_items: int, num_interactions: int, seed: int = 0,
             item_exponent: float = 1.0, activity_shape: float = 1.2, min_per_user: int = 5) -> pd.DataFrame:
    """Exactly ``num_interactions`` distinct (user, item) ratings with raw ids starting at 1."""
    max_per_user = max(min_per_user, num_items // 4)
    if not (min_per_user * num_users <= num_interactions <= max_per_user * num_users):
        raise ValueError(f"num_interactions={num_interactions} does not fit {num_users} users with "
                         f"{min_per_user}..{max_per_user} interactions each")
    rng = np.random.default_rng(seed)
    degrees = _user_degrees(num_users, num_interactions, activity_shape, min_per_user, max_per_user, rng)
    popularity = 1.0 / np.arange(1, num_items + 1) ** item_exponent
    popularity = (popularity / popularity.sum())[rng.permutation(num_items)]  # popular ids spread out
    cumulative = np.cumsum(popularity)

    # one vectorised oversampled round, then the few users it left short draw without replacement
    users = np.repeat(np.arange(num_users, dtype=np.int64), degrees + degrees // 2 + 8)
    items = np.minimum(np.searchsorted(cumulative, rng.random(len(users))), num_items - 1)
    keys = _keep_random(_sorted_unique(users * num_items + items), num_items, degrees, rng)
    have = np.bincount(keys // num_items, minlength=num_users)
    extra = []
    for user in np.flatnonzero(have < degrees):
        taken = keys[np.searchsorted(keys, user * num_items):np.searchsorted(keys, (user + 1) * num_items)]
        weights = popularity.copy()
        weights[taken % num_items] = 0.0
        chosen = rng.choice(num_items, size=degrees[user] - have[user], replace=False, p=weights / weights.sum())
        extra.append(user * num_items + chosen)
    keys = np.sort(np.concatenate([keys, *extra]))
    users, items = keys // num_items, keys % num_items
    return pd.DataFrame({
        "user": users + 1,
        "item": items + 1,
        "rating": rng.choice(RATING_LEVELS, size=len(keys), p=RATING_SHARES),
        "timestamp": rng.integers(FIRST_TIMESTAMP, LAST_TIMESTAMP, size=len(keys)),
    })


def _user_degrees(num_users: int, total: int, shape: float, floor: int, cap: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Per-user interaction counts: Pareto-shaped, each in [floor, cap], summing to ``total``."""
    weights = rng.pareto(shape, num_users) + 1.0
    degrees = np.full(num_users, floor, dtype=np.int64)
    remaining = total - degrees.sum()
    while remaining > 0:
        room = cap - degrees
        share = np.where(room > 0, weights, 0.0)
        extra = np.minimum(rng.multinomial(remaining, share / share.sum()), room)
        degrees += extra
        remaining = total - degrees.sum()
    return degrees


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct keys (a sort beats numpy's hash-based unique at tens of millions)."""
    keys = np.sort(keys)
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])]


def _keep_random(keys: np.ndarray, num_items: int, degrees: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sorted keys with at most ``degrees[user]`` per user, the surplus dropped at random."""
    users = keys // num_items
    order = np.argsort((users << 31) | rng.integers(0, 1 << 31, len(keys)))
    starts = np.searchsorted(users, np.arange(len(degrees)))
    position = np.empty(len(keys), dtype=np.int64)
    position[order] = np.arange(len(keys)) - starts[users[order]]
    return keys[position < degrees[users]]
