"""Ranking losses over a positive item's score and the scores of its k sampled negatives.

- ``hinge``: ``sum_j relu(margin - s+ + s-_j)``, the pairwise hinge of LRML's and CML's authors,
  summed over the k negatives;
- ``warp``: CML's rank-weighted hinge on the closest negative, ``w * relu(margin - s+ + max_j s-_j)``
  with ``w = log(1 + num_items * violators / k)``: the share of sampled negatives inside the margin
  estimates the positive's rank among all items (Hsieh et al., WWW 2017, after Weston et al.'s WARP);
- ``softmax``: the sampled softmax cross-entropy of the positive against its negatives, with logits
  ``score / temperature``;
- ``bpr``: ``sum_j -log sigmoid(s+ - s-_j)``, BPR's logistic loss summed over the k negatives.

Every loss is per positive pair; models sum it over the batch. A score that is not a number makes
the pair's loss not a number, so a diverged model shows in its loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lrml.errors import UserError

DISTANCE_LOSSES = ("hinge", "warp", "softmax")  # LRML and CML
PRODUCT_LOSSES = ("bpr", "softmax")  # BPR-MF


def check(kind: str, allowed: tuple[str, ...], temperature: float, model: str) -> None:
    """Refuse a loss the model does not offer, or a temperature that is not positive."""
    if kind not in allowed:
        raise UserError(f"loss={kind!r} is not offered for {model}; expected one of {allowed}")
    if not temperature > 0:
        raise UserError(f"temperature={temperature!r}; it must be above 0")


def as_negatives(neg_items: torch.Tensor) -> torch.Tensor:
    """Negatives as (batch, k): a flat batch of negatives is one per positive."""
    return neg_items.unsqueeze(1) if neg_items.dim() == 1 else neg_items


def pair_losses(pos: torch.Tensor, neg: torch.Tensor, kind: str, margin: float, temperature: float,
                num_items: int) -> torch.Tensor:
    """Each positive pair's loss, shape (batch,), from its score ``pos`` (batch,) and its negatives' ``neg`` (batch, k)."""
    if kind == "hinge":
        return F.relu(margin - pos.unsqueeze(1) + neg).sum(1)
    if kind == "warp":
        violators = (margin - pos.unsqueeze(1) + neg > 0).sum(1)
        weight = torch.log1p(num_items * violators / neg.shape[1])
        return weight * F.relu(margin - pos + neg.max(1).values)
    if kind == "softmax":
        logits = torch.cat([pos.unsqueeze(1), neg], dim=1) / temperature
        return torch.logsumexp(logits, dim=1) - logits[:, 0]
    if kind == "bpr":
        return -F.logsigmoid(pos.unsqueeze(1) - neg).sum(1)
    raise UserError(f"loss={kind!r}; expected one of {DISTANCE_LOSSES + PRODUCT_LOSSES[:1]}")
