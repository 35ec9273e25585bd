"""Uniform negative sampling: for each positive pair, an item the user has no training interaction with."""
from __future__ import annotations

import numpy as np

from lrml.data.split import contains


class NegativeSampler:
    """Vectorised rejection sampler over a sorted set of ``user * num_items + item`` keys."""

    def __init__(self, seen_keys: np.ndarray, num_items: int, seed: int):
        self.seen_keys = seen_keys
        self.num_items = num_items
        self.rng = np.random.default_rng(seed)

    def sample(self, users: np.ndarray) -> np.ndarray:
        """One negative item per entry of ``users``, uniform over that user's unseen items."""
        users = users.astype(np.int64)
        items = self.rng.integers(0, self.num_items, size=len(users))
        pending = np.flatnonzero(contains(self.seen_keys, users * self.num_items + items))
        while len(pending):
            items[pending] = self.rng.integers(0, self.num_items, size=len(pending))
            still_seen = contains(self.seen_keys, users[pending] * self.num_items + items[pending])
            pending = pending[still_seen]
        return items
