"""Evaluate a model on a prepared dataset's validation or test users, in both protocols.

Sampled: the held-out item against its 100 fixed candidates. Full: against every item, with
the user's training items excluded (and the validation item too when testing).
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from lrml.data import Dataset
from lrml.metrics import full_ranks, per_user_metrics, ranking_metrics, sampled_ranks
from lrml.model import Recommender

PROTOCOLS = ("sampled", "full")
EVAL_BATCH_USERS = 64  # a batch's sampled candidates, users x 101 x d floats a tensor, stay in cache (2.6 MB at d=100)


class Evaluator:
    """Scores a model against a dataset's held-out items; the exclusions of full ranking are built once, when first used."""

    def __init__(self, dataset: Dataset, ks: tuple[int, ...] = (10,)):
        self.dataset = dataset
        self.ks = ks

    @cached_property
    def _train_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Each user's training items as one CSR pair (row starts, items), built when full ranking first needs it."""
        dataset = self.dataset
        if dataset.shard is not None:
            raise ValueError(f"full ranking needs every user's training items; this dataset holds shard "
                             f"{dataset.shard} of them")
        users, items = dataset.train_users, dataset.train_items
        if np.any(users[1:] < users[:-1]):  # a prepared dataset is already sorted by user
            items = items[np.argsort(users, kind="stable")]
        starts = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=dataset.num_users))])
        return starts, items.astype(np.int64)

    @cached_property
    def _valid_item_of(self) -> np.ndarray:
        """Each user's validation item (-1 for none), excluded when ranking for the test."""
        found = np.full(self.dataset.num_users, -1, dtype=np.int64)
        found[self.dataset.valid_users] = self.dataset.valid_items
        return found

    @property
    def metric_names(self) -> list[str]:
        """The names ``evaluate`` gives each protocol's metrics."""
        return list(ranking_metrics(np.zeros(1), self.ks))

    def evaluate(self, model: Recommender, part: str,
                 protocols: tuple[str, ...] = PROTOCOLS) -> dict[str, dict[str, float]]:
        """``{"sampled": {"hr@10": ..., "ndcg@10": ..., "mrr": ...}, "full": {...}}`` for ``part``."""
        return {protocol: ranking_metrics(found, self.ks) for protocol, found in self.ranks(model, part, protocols).items()}

    def per_user(self, model: Recommender, part: str,
                 protocols: tuple[str, ...] = PROTOCOLS) -> dict[str, dict[str, np.ndarray]]:
        """Each user's metrics (aligned with the split's users), for confidence intervals and paired tests."""
        return {protocol: per_user_metrics(found, self.ks)
                for protocol, found in self.ranks(model, part, protocols).items()}

    def metric_sums(self, model: Recommender, part: str, protocols: tuple[str, ...],
                    users: tuple[int, int]) -> tuple[dict[str, dict[str, float]], int]:
        """Each metric summed over the split's users with ids from ``users[0]`` to before ``users[1]``, and how
        many they are: what data-parallel workers, each evaluating the users it owns, add up into means."""
        first, last = np.searchsorted(self.dataset.split_arrays(part)[0], users)  # a split's users are sorted
        found = self.ranks(model, part, protocols, int(first), int(last))
        return ({protocol: {name: float(values.sum()) for name, values in per_user_metrics(ranks, self.ks).items()}
                 for protocol, ranks in found.items()}, int(last - first))

    @torch.no_grad()
    def ranks(self, model: Recommender, part: str, protocols: tuple[str, ...] = PROTOCOLS, first: int = 0,
              last: int | None = None) -> dict[str, torch.Tensor]:
        """The 0-based rank of each user's held-out item, per protocol: of the split's users at positions
        ``first`` to ``last`` (all by default). Users are scored in the same batches whatever the range, as long
        as ``first`` is a multiple of ``EVAL_BATCH_USERS``, so ranges give the ranks of the whole, bit for bit."""
        eval_users, targets, candidates = self.dataset.split_arrays(part)
        last = len(eval_users) if last is None else min(last, len(eval_users))
        was_training = model.training
        model.eval()
        device = next(iter(model.state_dict().values())).device
        ranks = {protocol: [torch.zeros(0, dtype=torch.long)] for protocol in protocols}
        for start in range(first, last, EVAL_BATCH_USERS):
            batch = slice(start, min(start + EVAL_BATCH_USERS, last))
            u = torch.as_tensor(eval_users[batch], dtype=torch.long, device=device)
            t = torch.as_tensor(targets[batch], dtype=torch.long, device=device)
            if "sampled" in protocols:
                cands = torch.as_tensor(candidates[batch], dtype=torch.long, device=device)
                scores = model.score(u.unsqueeze(1), torch.cat([t.unsqueeze(1), cands], dim=1))
                ranks["sampled"].append(sampled_ranks(scores[:, 0], scores[:, 1:]).cpu())
            if "full" in protocols:
                rows, cols = (x.to(device) for x in self._excluded(eval_users[batch], part))
                ranks["full"].append(full_ranks(model.score_all(u), t, rows, cols).cpu())
        model.train(was_training)
        return {protocol: torch.cat(found) for protocol, found in ranks.items()}

    def _excluded(self, users: np.ndarray, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, item) pairs to skip in full ranking: training items, plus the validation item on test."""
        train_starts, train_items = self._train_index
        starts, ends = train_starts[users], train_starts[users + 1]
        lengths = ends - starts
        rows = np.repeat(np.arange(len(users)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        cols = train_items[np.repeat(starts, lengths) + offsets]
        if part == "test":
            valid_items = self._valid_item_of[users]
            has_valid = np.flatnonzero(valid_items >= 0)
            rows, cols = np.concatenate([rows, has_valid]), np.concatenate([cols, valid_items[has_valid]])
        return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
