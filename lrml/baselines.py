"""Baselines trained and evaluated in the same protocol as LRML, so no LRML number stands alone.

CML is ``LRML`` with ``use_memory=False`` (see model.py); here are BPR matrix factorisation
(Rendle et al., UAI 2009), EASE (Steck, WWW 2019) and item popularity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lrml import fused, losses
from lrml.model import Recommender, lookup_distinct


@dataclass(frozen=True)
class BPRConfig:
    """BPR-MF: score ``p . q + b_item``; BPR's logistic loss (or the sampled softmax) over k negatives, plus L2
    on the batch's rows."""

    num_users: int
    num_items: int
    embedding_dim: int = 100
    reg_weight: float = 1e-3  # with embedding_dim, this project's best of a small grid on ml-100k
    loss: str = "bpr"  # lrml.losses.PRODUCT_LOSSES: "bpr" or "softmax"
    temperature: float = 1.0  # the softmax loss's logits are scores / temperature
    init_scale: float = 0.01
    sparse: bool = True

    def __post_init__(self):
        losses.check(self.loss, losses.PRODUCT_LOSSES, self.temperature, "BPR-MF")


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

    def fused_options(self) -> fused.Options:
        config = self.config
        return fused.Options(math.inf, config.reg_weight, 0.0, config.temperature, config.loss, "product",
                             use_memory=False, use_bias=True, num_items=config.num_items)

    def autograd_loss(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
        """The loss as PyTorch operations, the reference for ``lrml.fused``: each distinct row looked up once
        (``lookup_distinct``), so its gradient needs no sorting or summing after."""
        neg_items = losses.as_negatives(neg_items)
        batch, k = neg_items.shape
        (user_rows,), user_of, user_counts = lookup_distinct(users, self.user_embedding)
        (item_rows, bias_rows), item_of, item_counts = lookup_distinct(torch.cat([pos_items, neg_items.reshape(-1)]),
                                                                       self.item_embedding, self.item_bias)
        p, vectors, bias = user_rows[user_of], item_rows[item_of], bias_rows[item_of].squeeze(1)
        q, q_neg = vectors[:batch], vectors[batch:].view(batch, k, -1)
        pos = (p * q).sum(-1) + bias[:batch]
        neg = torch.einsum("bd,bkd->bk", p, q_neg) + bias[batch:].view(batch, k)
        config = self.config
        ranking = losses.pair_losses(pos, neg, config.loss, 0.0, config.temperature, config.num_items).sum()
        l2 = sum((rows.pow(2).sum(1) * counts).sum() for rows, counts in
                 ((user_rows, user_counts), (item_rows, item_counts), (bias_rows, item_counts)))
        return ranking + 0.5 * config.reg_weight * l2

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        users, items = torch.broadcast_tensors(users, items)
        p, q = self.user_embedding(users), self.item_embedding(items)
        return (p * q).sum(-1) + self.item_bias(items).squeeze(-1)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_embedding(users) @ self.item_embedding.weight.T + self.item_bias.weight.T


class ClosedForm(Recommender):
    """A model fitted in one pass over the training pairs, with no gradient steps (the trainer calls ``fit``)."""

    def fit(self, users: torch.Tensor, items: torch.Tensor) -> None:
        raise NotImplementedError

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Pair scores from each distinct user's row of ``score_all``."""
        users, items = torch.broadcast_tensors(users, items)
        distinct, row = torch.unique(users, return_inverse=True)
        return self.score_all(distinct)[row, items]


@dataclass(frozen=True)
class PopularityConfig:
    """Item popularity: the score is how often the item occurs in training."""

    num_users: int
    num_items: int


class Popularity(ClosedForm):
    """Ranks items by training frequency; it has no trainable parameters, only counts."""

    def __init__(self, config: PopularityConfig):
        super().__init__()
        self.config = config
        self.register_buffer("counts", torch.zeros(config.num_items))

    def fit(self, users: torch.Tensor, items: torch.Tensor) -> None:
        self.counts.copy_(torch.bincount(items, minlength=self.config.num_items).float())

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(len(users), -1).clone()


@dataclass(frozen=True)
class EASEConfig:
    """EASE: an item-item weight matrix ``B`` with a zero diagonal, fitted in closed form; ``reg_weight`` is
    the L2 weight (Steck's lambda) on ``B``."""

    num_users: int
    num_items: int
    reg_weight: float = 500.0

    def __post_init__(self):
        if not self.reg_weight > 0:
            raise ValueError(f"EASE needs reg_weight > 0 (its matrix is singular without it); got {self.reg_weight!r}")


# Rows of the user-item matrix multiplied at a time when fitting: 64 MB of float32 at ml-1m's 3,706 items.
FIT_CHUNK_ELEMENTS = 1 << 24


class EASE(ClosedForm):
    """Embarrassingly shallow autoencoder (Steck, WWW 2019): ``score(u) = x_u B`` with
    ``B = argmin ||X - X B||^2 + reg ||B||^2`` subject to ``diag(B) = 0``, solved exactly:
    ``P = (X^T X + reg I)^-1`` and ``B_ij = -P_ij / P_jj``.

    The solve is a Cholesky factorisation in float64, whose memory peaks at about 2 x items^2 x 8
    bytes (1.0 GB at 8,000 items, 11.4 GB at ml-20m's 26,744); ``B`` is kept in float32 and the
    training matrix ``X`` as one byte per (user, item).
    """

    def __init__(self, config: EASEConfig):
        super().__init__()
        self.config = config
        self.register_buffer("weights", torch.zeros(config.num_items, config.num_items))
        self.register_buffer("seen", torch.zeros(config.num_users, config.num_items, dtype=torch.bool))  # X

    def fit(self, users: torch.Tensor, items: torch.Tensor) -> None:
        self.seen.zero_()
        self.seen[users, items] = True
        self.solve(self.gram())

    def solve(self, gram: torch.Tensor) -> None:
        """``B`` from ``X^T X`` (``gram``, left as it is), so a search over ``reg_weight`` computes it once."""
        regularized = gram.double()
        regularized.diagonal().add_(self.config.reg_weight)
        factor = torch.linalg.cholesky(regularized)
        del regularized  # at most two items x items float64 matrices at a time
        precision = torch.cholesky_inverse(factor)
        del factor
        precision.div_(-precision.diagonal()).fill_diagonal_(0.0)  # B_ij = -P_ij / P_jj
        self.weights.copy_(precision)

    def gram(self) -> torch.Tensor:
        """``X^T X`` of the training matrix, summed over blocks of users: co-occurrence counts, integers below
        2^24, so float32 matrix products give them exactly."""
        n, users = self.config.num_items, self.config.num_users
        gram = torch.zeros(n, n)
        step = max(1, FIT_CHUNK_ELEMENTS // n)
        for start in range(0, users, step):
            rows = self.seen[start:start + step].float()
            gram.addmm_(rows.T, rows)
        return gram

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.seen[users].float() @ self.weights
