"""Leave-one-out split by time and the fixed evaluation candidates (the NCF / LRML protocol)."""
from __future__ import annotations

import numpy as np

from lrml.data.errors import SplitError

TRAIN, VALID, TEST = 0, 1, 2
MIN_INTERACTIONS = 3  # a user needs one train, one validation and one test interaction


def leave_one_out(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Split label per interaction: each user's latest is TEST, second latest VALID, the rest TRAIN.

    Ties in time (common: MovieLens users rate many films in the same second) are broken by a
    fixed hash of (user, item), so the split is deterministic without favouring low or high item
    ids, which MovieLens assigns in release order. Users with fewer than MIN_INTERACTIONS
    interactions stay wholly in TRAIN.
    """
    order = np.lexsort((tie_break_hash(users, items), timestamps, users))
    sorted_users = users[order]
    counts = np.bincount(sorted_users, minlength=int(users.max()) + 1)
    ends = np.cumsum(counts)  # one past each user's last position in sorted order
    rank_from_end = ends[sorted_users] - 1 - np.arange(len(order))
    eligible = counts[sorted_users] >= MIN_INTERACTIONS
    labels_sorted = np.full(len(order), TRAIN, dtype=np.int8)
    labels_sorted[eligible & (rank_from_end == 0)] = TEST
    labels_sorted[eligible & (rank_from_end == 1)] = VALID
    labels = np.empty_like(labels_sorted)
    labels[order] = labels_sorted
    return labels


def tie_break_hash(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random uint64 per (user, item) pair: the splitmix64 finaliser of the pair."""
    z = ((users.astype(np.uint64) << np.uint64(32)) | items.astype(np.uint64)) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def interaction_keys(users: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """Sorted int64 keys ``user * num_items + item``: a compact set for vectorised membership tests."""
    return np.sort(users.astype(np.int64) * num_items + items.astype(np.int64))


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each key is in ``sorted_keys``."""
    positions = np.searchsorted(sorted_keys, keys)
    positions = np.minimum(positions, len(sorted_keys) - 1)
    return sorted_keys[positions] == keys


def sample_candidates(eval_users: np.ndarray, seen_keys: np.ndarray, num_items: int,
                      num_candidates: int, rng: np.random.Generator) -> np.ndarray:
    """For each user, ``num_candidates`` distinct items drawn uniformly from items they never interacted with.

    Vectorised rejection sampling: draw more items than needed, drop seen ones and repeats,
    keep the first ``num_candidates`` in draw order (a uniform sample without replacement),
    and redraw only the rows that came up short.
    """
    seen_per_user = np.diff(np.searchsorted(seen_keys, np.arange(int(eval_users.max()) + 2,
                                                                   dtype=np.int64) * num_items))
    unseen = num_items - seen_per_user[eval_users]
    if unseen.min() < num_candidates:
        user = int(eval_users[unseen.argmin()])
        raise SplitError(f"user index {user} has only {int(unseen.min())} items they never interacted with; "
                         f"{num_candidates} evaluation candidates are needed (use fewer candidates or a larger dataset)")
    result = np.empty((len(eval_users), num_candidates), dtype=np.int32)
    pending = np.arange(len(eval_users))
    draws = 2 * num_candidates
    while len(pending):
        users = eval_users[pending].astype(np.int64)
        drawn = rng.integers(0, num_items, size=(len(pending), draws), dtype=np.int64)
        usable = ~contains(seen_keys, users[:, None] * num_items + drawn)
        usable &= _first_occurrence(drawn)
        enough = usable.sum(axis=1) >= num_candidates
        rows = np.flatnonzero(enough)
        # the positions of the first num_candidates usable draws in each complete row
        ranks = np.cumsum(usable[rows], axis=1)
        picked = usable[rows] & (ranks <= num_candidates)
        result[pending[rows]] = drawn[rows][picked].reshape(len(rows), num_candidates)
        pending = pending[~enough]
        draws *= 2
    return result


def _first_occurrence(drawn: np.ndarray) -> np.ndarray:
    """Mask that is True at the first occurrence of each value within its row."""
    order = np.argsort(drawn, axis=1, kind="stable")
    sorted_values = np.take_along_axis(drawn, order, axis=1)
    first_sorted = np.ones_like(sorted_values, dtype=bool)
    first_sorted[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    mask = np.empty_like(first_sorted)
    np.put_along_axis(mask, order, first_sorted, axis=1)
    return mask
