"""Baselines trained and evaluated in the same protocol as LRML, so no LRML number stands alone.

CML is ``LRML`` with ``use_memory=False`` (see model.py); here are BPR matrix factorisation
(Rendle et al., UAI 2009) and item popularity.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lrml.model import Recommender


@dataclass(frozen=True)
class BPRConfig:
    """BPR-MF: score ``p . q + b_item``, loss ``-log sigmoid(s_pos - s_neg)`` plus L2 on batch rows."""

    num_users: int
    num_items: int
    embedding_dim: int = 64
    reg_weight: float = 1e-4
    init_scale: float = 0.01
    sparse: bool = True


class BPRMF(Recommender):
    """Bayesian personalised ranking over a matrix factorisation with item biases."""

    def __init__(self, config: BPRConfig):
        super().__init__()
        self.config = config
        self.user_embedding = nn.Embedding(config.num_users, config.embedding_dim, sparse=config.sparse)
        self.item_embedding = nn.Embedding(config.num_items, config.embedding_dim, sparse=config.sparse)
        self.item_bias = nn.Embedding(config.num_items, 1, sparse=config.sparse)
        with torch.no_grad():
            self.user_embedding.weight.normal_(0.0, config.init_scale)
            self.item_embedding.weight.normal_(0.0, config.init_scale)
            self.item_bias.weight.zero_()

    def loss(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
        p = self.user_embedding(users)
        q, q_neg = self.item_embedding(pos_items), self.item_embedding(neg_items)
        b, b_neg = self.item_bias(pos_items).squeeze(-1), self.item_bias(neg_items).squeeze(-1)
        difference = (p * q).sum(-1) + b - (p * q_neg).sum(-1) - b_neg
        l2 = sum(t.pow(2).sum() for t in (p, q, q_neg, b, b_neg))
        return -F.logsigmoid(difference).sum() + 0.5 * self.config.reg_weight * l2

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        users, items = torch.broadcast_tensors(users, items)
        p, q = self.user_embedding(users), self.item_embedding(items)
        return (p * q).sum(-1) + self.item_bias(items).squeeze(-1)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_embedding(users) @ self.item_embedding.weight.T + self.item_bias.weight.T


@dataclass(frozen=True)
class PopularityConfig:
    """Item popularity: the score is how often the item occurs in training."""

    num_users: int
    num_items: int


class Popularity(Recommender):
    """Ranks items by training frequency; it has no trainable parameters, only counts."""

    def __init__(self, config: PopularityConfig):
        super().__init__()
        self.config = config
        self.register_buffer("counts", torch.zeros(config.num_items))

    def fit_counts(self, items: torch.Tensor) -> None:
        self.counts.copy_(torch.bincount(items, minlength=self.config.num_items).float())

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        users, items = torch.broadcast_tensors(users, items)
        return self.counts[items]

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(len(users), -1).clone()
