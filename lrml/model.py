"""LRML (Tay, Luu, Hui, WWW 2018): metric learning where each user-item pair gets a relation
vector read from a memory by attention, and a user likes items close to ``user + relation``.

Defaults follow the authors' released TensorFlow code: looked-up vectors clipped to norm 1,
score ``-sqrt(||p + r - q||^2 + 1e-3)``, pairwise hinge loss summed over the batch, and the
negative pair scored with the positive pair's relation. Options cover the published variants,
k negatives per positive with the losses of ``lrml.losses``, and an item bias;
``LRMLConfig.seed_sketch`` reproduces the seed blog's sketch exactly, for comparison.
CML (Hsieh et al., WWW 2017) is the same model with the relation fixed to zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lrml import fused, losses, scoring
from lrml.errors import UserError

DISTANCES = ("l2", "squared")
NEGATIVE_RELATIONS = ("positive", "own")
REGULARIZERS = ("batch", "none", "seed")
INITS = ("authors", "seed")
# Elements per (users, items, memory slots) chunk when PyTorch scores against all items (devices other than the
# CPU, whose path is lrml/scoring.py): 4 MB of float32.
SCORE_CHUNK_ELEMENTS = 1 << 20


class Recommender(nn.Module):
    """What every model here offers the trainer and the evaluators."""

    config: object
    # Weight of the loss terms that do not depend on the batch (LRML's regulariser on its keys and
    # memory). Data-parallel workers each add 1/workers of them, so their summed gradient counts them once.
    shared_term_weight: float = 1.0

    def forward(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
        """The training loss (``model(...)`` is ``model.loss(...)`` with the module hooks PyTorch runs)."""
        return self.loss(users, pos_items, neg_items)

    def loss(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch of users (batch,), their positive items (batch,) and negative items:
        (batch,) for one per positive, or (batch, k). The compiled CPU pass computes it where it can
        (``lrml.fused.supports``), ``autograd_loss`` everywhere else."""
        neg_items = losses.as_negatives(neg_items)
        if fused.supports(self, users):
            return fused.loss(self, users, pos_items, neg_items)
        return self.autograd_loss(users, pos_items, neg_items)

    def autograd_loss(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
        """The loss as PyTorch operations, on every device: the reference the compiled pass is tested against."""
        raise NotImplementedError

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Score of each (user, item) pair (broadcast); higher means more likely to be liked."""
        raise NotImplementedError

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of the given users against every item, shape (len(users), num_items)."""
        raise NotImplementedError

    def fused_options(self) -> fused.Options | None:
        """The compiled CPU loss's description of this model, or None where ``lrml.fused`` lacks its variant."""
        return None

    def user_tables(self) -> list[nn.Parameter]:
        """The parameters with a row per user: a data-parallel worker owns its users' rows of them."""
        table = getattr(self, "user_embedding", None)
        return [table.weight] if isinstance(table, nn.Embedding) else []

    @torch.no_grad()
    def recommend(self, users: torch.Tensor, k: int = 10, exclude: list | None = None) -> torch.Tensor:
        """Top-``k`` item indices per user, never any item listed for that user in ``exclude``."""
        scores = self.score_all(users)
        if exclude is not None:
            rows = torch.cat([torch.full((len(seen),), row, dtype=torch.long) for row, seen in enumerate(exclude)])
            cols = torch.cat([torch.as_tensor(seen, dtype=torch.long) for seen in exclude])
            scores[rows, cols] = float("-inf")
        return scores.topk(k, dim=1).indices


@dataclass(frozen=True)
class LRMLConfig:
    """LRML's shape, loss and the variant switches. The structure and the switches' defaults are the authors'
    code; margin and reg_weight are this project's best of a small grid on ml-100k (docs/model.md). The
    trainer's defaults (``lrml.train.TrainConfig``) are these."""

    num_users: int
    num_items: int
    embedding_dim: int = 100
    memory_size: int = 20
    margin: float = 0.2
    reg_weight: float = 0.01
    loss: str = "hinge"  # lrml.losses.DISTANCE_LOSSES: "hinge" (the authors'), "warp" or "softmax"
    temperature: float = 0.1  # the softmax loss's logits are scores / temperature
    item_bias: bool = False  # add a learned bias per item to the score, as BPR-MF has
    use_memory: bool = True  # False gives CML: the relation is fixed to zero
    clip_radius: float | None = 1.0  # max norm of looked-up vectors; None disables clipping
    distance: str = "l2"  # "l2": -sqrt(d^2 + 1e-3) as the authors; "squared": -d^2 as the paper's formula
    negative_relation: str = "positive"  # "positive": reuse the positive pair's relation; "own": the negative's
    regularizer: str = "batch"  # "batch": 0.5*reg*||w||^2 on batch rows + memory; "none"; "seed": the sketch's
    init: str = "authors"  # "authors": U(-s, s) embeddings, N(0, s) memory; "seed": N(0, 0.01) everywhere
    init_scale: float = 0.01
    sparse: bool = True  # sparse embedding gradients: each step costs O(batch), not O(table)

    def __post_init__(self):
        for name, value, allowed in (("distance", self.distance, DISTANCES),
                                     ("negative_relation", self.negative_relation, NEGATIVE_RELATIONS),
                                     ("regularizer", self.regularizer, REGULARIZERS), ("init", self.init, INITS)):
            if value not in allowed:
                raise UserError(f"{name}={value!r}; expected one of {allowed}")
        losses.check(self.loss, losses.DISTANCE_LOSSES, self.temperature, "LRML" if self.use_memory else "CML")
        if self.regularizer == "seed" and self.sparse:
            raise UserError("regularizer='seed' touches every embedding row each step; it needs sparse=False")
        if min(self.num_users, self.num_items, self.embedding_dim) < 1 or (self.use_memory and self.memory_size < 1):
            raise UserError(f"sizes must be positive: {self}")

    @classmethod
    def seed_sketch(cls, num_users: int, num_items: int, embedding_dim: int, memory_size: int,
                    margin: float = 0.2, reg_weight: float = 0.1) -> "LRMLConfig":
        """The seed blog's sketch: clip radius 2, reg_weight * sum of every parameter's norm, N(0, 0.01) init."""
        return cls(num_users, num_items, embedding_dim, memory_size, margin, reg_weight, clip_radius=2.0,
                   regularizer="seed", init="seed", sparse=False)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The parameters that take sparse gradients (embeddings built with ``sparse=True``), and the rest."""
    sparse = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse for p in m.parameters()}
    params = list(model.parameters())
    return [p for p in params if id(p) in sparse], [p for p in params if id(p) not in sparse]


class DistinctRows(torch.autograd.Function):
    """``weight[distinct]`` for sorted, distinct indices; the gradient reaching ``weight`` is those rows as a
    sparse tensor already marked coalesced, so neither autograd nor the optimizer sorts or sums it again."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, distinct: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(distinct)
        ctx.table_shape = weight.shape
        return weight.index_select(0, distinct)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (distinct,) = ctx.saved_tensors
        return torch.sparse_coo_tensor(distinct.unsqueeze(0), grad, ctx.table_shape, is_coalesced=True,
                                       check_invariants=False), None


def lookup_distinct(ids: torch.Tensor, *tables: nn.Embedding) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Each table's row of each distinct id, looked up once; the position of each id's row; how often each
    row occurs.

    Per-row work (clipping, the regulariser) then costs O(distinct ids), and a sparse table's
    gradient holds each row once, so the optimizer has no duplicates to sum.
    """
    distinct, position, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    rows = [DistinctRows.apply(table.weight, distinct) if table.sparse else table(distinct) for table in tables]
    return rows, position, counts


def clip_by_norm(vectors: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale rows whose L2 norm exceeds ``max_norm`` back onto the ball (differentiable, as tf.clip_by_norm)."""
    norm = vectors.norm(dim=-1, keepdim=True)
    return vectors * torch.clamp(max_norm / (norm + 1e-6), max=1.0)


class LRML(Recommender):
    """LRML, or CML when ``config.use_memory`` is False."""

    def __init__(self, config: LRMLConfig):
        super().__init__()
        self.config = config
        d, n = config.embedding_dim, config.memory_size
        self.user_embedding = nn.Embedding(config.num_users, d, sparse=config.sparse)
        self.item_embedding = nn.Embedding(config.num_items, d, sparse=config.sparse)
        if config.use_memory:
            self.keys = nn.Parameter(torch.empty(d, n))  # K: d x N, addresses the memory
            self.memory = nn.Parameter(torch.empty(n, d))  # M: N x d, the latent relations
        if config.item_bias:
            self.item_bias = nn.Embedding(config.num_items, 1, sparse=config.sparse)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        s = self.config.init_scale
        with torch.no_grad():
            for table in (self.user_embedding.weight, self.item_embedding.weight):
                if self.config.init == "authors":
                    table.uniform_(-s, s)
                else:
                    table.normal_(0.0, 0.01)
            if self.config.use_memory:
                std = s if self.config.init == "authors" else 0.01
                self.keys.normal_(0.0, std)
                self.memory.normal_(0.0, std)
            if self.config.item_bias:
                self.item_bias.weight.zero_()

    def _clip(self, vectors: torch.Tensor) -> torch.Tensor:
        radius = self.config.clip_radius
        return vectors if radius is None else clip_by_norm(vectors, radius)

    def attention(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Attention over the N memory slots for each pair: ``softmax((p * q) K)``."""
        return torch.softmax((p * q) @ self.keys, dim=-1)

    def relation(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor | None:
        """The latent relation ``r = softmax((p * q) K) M`` of each pair, or None for CML."""
        if not self.config.use_memory:
            return None
        return self.attention(p, q) @ self.memory

    def _distance_score(self, squared: torch.Tensor) -> torch.Tensor:
        """The score of a squared distance: ``-d^2``, or the authors' ``-sqrt(d^2 + 1e-3)``."""
        return -squared if self.config.distance == "squared" else -torch.sqrt(squared + fused.EPS)

    def _score_translated(self, translated: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """The score of item vectors ``q`` for users already moved by their relation, ``p + r``."""
        return self._distance_score((translated - q).pow(2).sum(dim=-1))

    def _score_vectors(self, p: torch.Tensor, q: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
        return self._score_translated(p if r is None else p + r, q)

    def _item_tables(self) -> tuple[nn.Embedding, ...]:
        """The tables looked up per item: the embeddings, and the bias when the model has one."""
        return (self.item_embedding, self.item_bias) if self.config.item_bias else (self.item_embedding,)

    def fused_options(self) -> fused.Options | None:
        """The negatives scored with the positive pair's relation, no dense regulariser."""
        config = self.config
        if config.negative_relation != "positive" or config.regularizer not in ("batch", "none"):
            return None
        return fused.Options(math.inf if config.clip_radius is None else config.clip_radius,
                             config.reg_weight if config.regularizer == "batch" else 0.0, config.margin,
                             config.temperature, config.loss, config.distance, config.use_memory, config.item_bias,
                             config.num_items)

    def autograd_loss(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
        """The loss as PyTorch operations: every device and variant, and the reference for ``lrml.fused``."""
        neg_items = losses.as_negatives(neg_items)
        batch, k = neg_items.shape
        (user_rows,), user_of, user_counts = lookup_distinct(users, self.user_embedding)
        item_rows, item_of, item_counts = lookup_distinct(torch.cat([pos_items, neg_items.reshape(-1)]),
                                                          *self._item_tables())
        p = self._clip(user_rows).index_select(0, user_of)
        vectors = self._clip(item_rows[0]).index_select(0, item_of)
        q, q_neg = vectors[:batch], vectors[batch:].view(batch, k, -1)
        r = self.relation(p, q)
        translated = p if r is None else p + r  # shared by every pair unless the negatives have their own relation
        pos = self._score_translated(translated, q)
        if self.config.negative_relation == "own":
            p_each = p.unsqueeze(1).expand_as(q_neg)
            neg = self._score_vectors(p_each, q_neg, self.relation(p_each, q_neg))
        else:
            neg = self._score_translated(translated.unsqueeze(1), q_neg)
        if self.config.item_bias:
            bias = item_rows[1].index_select(0, item_of).squeeze(1)
            pos, neg = pos + bias[:batch], neg + bias[batch:].view(batch, k)
        config = self.config
        ranking = losses.pair_losses(pos, neg, config.loss, config.margin, config.temperature, config.num_items).sum()
        return ranking + self._regularization((user_rows, user_counts),
                                              *((rows, item_counts) for rows in item_rows))

    def _regularization(self, *rows_and_counts: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor | float:
        """``0.5 * reg_weight * ||w||^2`` over the batch's looked-up rows (embeddings and item biases), each
        counted as often as it was looked up (the authors' L2 on the batch's embeddings), plus the keys and
        memory once."""
        weight, kind = self.config.reg_weight, self.config.regularizer
        if kind == "none" or weight == 0.0:
            return 0.0
        if kind == "seed":
            return weight * sum(torch.norm(param, p=2) for param in self.parameters())
        batch_rows = sum((rows.pow(2).sum(1) * counts).sum() for rows, counts in rows_and_counts)
        if not self.config.use_memory:
            return 0.5 * weight * batch_rows
        shared = self.keys.pow(2).sum() + self.memory.pow(2).sum()
        return 0.5 * weight * (batch_rows + self.shared_term_weight * shared)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of (user, item) pairs, broadcast. A user's row is looked up once for all its items (users
        ``(B, 1)`` against items ``(B, C)`` in the sampled protocol), and the distance is taken as ``score_all``
        takes it, over the N memory slots: ``||p - q||^2 + a (M M^T) a^T + 2 a M (p - q)``, with no relation
        vector per pair, so a batch holds two tensors of pairs x d, not ten."""
        p, q = self._clip(self.user_embedding(users)), self._clip(self.item_embedding(items))
        both = p * q
        norms = [torch.einsum("...d,...d->...", x, x) for x in (p, q)]  # no pairs x d tensor, unlike pow(2).sum
        apart = (norms[0] + norms[1] - 2 * both.sum(-1)).clamp(min=0)  # ||p - q||^2
        if self.config.use_memory:
            memory = self.memory
            attention = torch.softmax(both @ self.keys, dim=-1)
            shifted = attention @ (memory @ memory.T) + 2 * (p @ memory.T) - 2 * (q @ memory.T)
            apart = (apart + (shifted * attention).sum(-1)).clamp(min=0)
        scores = self._distance_score(apart)
        return scores + self.item_bias(items).squeeze(-1) if self.config.item_bias else scores

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Scores against every item without ever holding users x items x d: with the attention ``a``
        of a pair, ``r = a M`` and ``||p + r - q||^2 = ||p - q||^2 + a (M M^T) a^T + 2 a M (p - q)``,
        so each (user, item) pair costs work over the N memory slots, not the d dimensions."""
        p = self._clip(self.user_embedding(users))
        q = self._clip(self.item_embedding.weight)
        bias = self.item_bias.weight if self.config.item_bias else None
        if self.config.use_memory and p.device.type == "cpu" and p.dtype == torch.float32:
            return scoring.lrml_scores(p, q, self.keys, self.memory, self.config.distance == "l2", bias)
        return self._score_all_torch(p, q, bias)

    def _score_all_torch(self, p: torch.Tensor, q: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``score_all`` as torch operations: on devices other than the CPU, and for CML."""
        apart = (p.pow(2).sum(1, keepdim=True) + q.pow(2).sum(1) - 2 * p @ q.T).clamp_(min=0)  # ||p - q||^2
        if self.config.use_memory:
            self._add_relation_terms(apart, p, q)
            apart.clamp_(min=0)
        scores = self._distance_score(apart)
        return scores if bias is None else scores + bias.T

    def _add_relation_terms(self, apart: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> None:
        """Adds ``a (M M^T) a^T + 2 a M (p - q)`` to ``apart``, ``||p - q||^2``: ``lrml.scoring`` as torch operations,
        for devices other than the CPU."""
        memory = self.memory
        gram, memory_p, memory_q = memory @ memory.T, 2 * p @ memory.T, 2 * q @ memory.T  # (N, N), (B, N), (I, N)
        user_keys = p.unsqueeze(2) * self.keys  # (B, d, N): the attention logits of user b and item i are q_i K_b
        item_chunk = max(1, min(len(q), SCORE_CHUNK_ELEMENTS // max(1, len(p) * self.config.memory_size)))
        for start in range(0, len(q), item_chunk):
            chunk = slice(start, start + item_chunk)
            attention = torch.matmul(q[chunk], user_keys).softmax(dim=-1)  # (B, I, N)
            # a (M M^T) a^T + 2 a M (p - q) = a . (a M M^T + 2 M p - 2 M q), one product over the slots
            shifted = (attention @ gram).add_(memory_p.unsqueeze(1)).sub_(memory_q[chunk])
            apart[:, chunk] += shifted.mul_(attention).sum(-1)
