"""The compiled full ranking of ``lrml/scoring.py``, and the sampled protocol's scores, against the same scores from
PyTorch in float64."""
import copy

import pytest
import torch

from lrml import scoring
from lrml.model import LRML, LRMLConfig

UNIT_ROUNDOFF = 2.0 ** -24  # float32's
# Users and items that leave a partial user block and a partial item chunk, so every edge is covered.
USERS, ITEMS = scoring.USER_BLOCK * 2 + 3, scoring.ITEM_CHUNK * 2 + 41


def trained_looking(dim: int, slots: int, **options) -> LRML:
    """An LRML whose rows reach the clip radius and whose attention is peaked, so every term matters."""
    torch.manual_seed(0)
    model = LRML(LRMLConfig(USERS, ITEMS, dim, slots, **options)).eval()
    with torch.no_grad():
        for table in (model.user_embedding.weight, model.item_embedding.weight):
            table.normal_(0.0, 0.5)
        model.keys.normal_(0.0, 3.0)
        model.memory.normal_(0.0, 0.5)
        if model.config.item_bias:
            model.item_bias.weight.normal_(0.0, 1.0)
    return model


def squared_distance_error_bound(model: LRML) -> float:
    """A bound on float32's error in ``||p + r - q||^2``. With rows clipped to norm 1 and ``m`` the longest
    memory row, the terms ``||p - q||^2``, ``a G a^T`` and ``2 a M (p - q)`` sum to at most ``S = (2 + m)^2`` in
    absolute value, and each is a chain of at most ``d + N^2`` roundings, plus a few for the softmax and the
    clipping: at most ``(d + N^2 + 10) u S``. A logit, at most ``L`` (the longest key column) in size, is off
    by ``d u L`` at most, which moves the attention's terms, at most ``m^2 + 4m``, by that fraction."""
    d, n = model.config.embedding_dim, model.config.memory_size
    m = model.memory.norm(dim=1).max().item()
    longest_key = model.keys.norm(dim=0).max().item()
    return UNIT_ROUNDOFF * ((d + n * n + 10) * (2 + m) ** 2 + d * longest_key * (m * m + 4 * m))


PROBABLE = 7.0  # lambda of the probabilistic bound below: an inner product exceeds it with odds under 2K exp(-24.5)


def probable_error_bounds(model: LRML, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Each pair's bound on float32's error in ``||p + r - q||^2`` as ``LRML.score`` takes it, from the pair's own
    terms (in float64) rather than the norms' worst case ``squared_distance_error_bound`` assumes. Roundings of
    independent sign grow as ``sqrt(K) u``, not ``K u``: an inner product of length ``K`` is off by at most
    ``lambda sqrt(K) u`` times the sum of its products' magnitudes with probability at least
    ``1 - 2K exp(-lambda^2 / 2)`` (Higham and Mary, SIAM J. Sci. Comput. 41(5), 2019); with lambda = 7 and
    K = 510, a miss has odds of some 1e-4 over the 6,464 pairs. The chains: the distance's terms
    ``||p||^2 + ||q||^2 - 2 p.q``, ``a G a^T`` and ``2 a M p - 2 a M q`` (at most ``d + N^2 + 10`` roundings);
    the attention's logits (``d``), whose error moves each ``a_i`` by twice as much relatively; the clipping's
    norms (``d``), which scale ``p`` and ``q``."""
    model = copy.deepcopy(model).double()
    users, items = torch.broadcast_tensors(users, items)
    p, q = model._clip(model.user_embedding(users)), model._clip(model.item_embedding(items))
    memory, gram = model.memory, model.memory @ model.memory.T
    a = torch.softmax((p * q) @ model.keys, dim=-1)
    d, n = model.config.embedding_dim, model.config.memory_size
    grow = PROBABLE * UNIT_ROUNDOFF
    terms = (p.pow(2).sum(-1) + q.pow(2).sum(-1) + 2 * (p * q).abs().sum(-1) + ((a @ gram.abs()) * a).sum(-1)
             + 2 * (a * ((p.abs() + q.abs()) @ memory.abs().T)).sum(-1))
    logits = ((p * q).abs() @ model.keys.abs()).amax(-1)
    moved_by_attention = (a * (2 * (a @ gram) + 2 * (p - q) @ memory.T).abs()).sum(-1)
    translated = (p + a @ memory - q).norm(dim=-1)
    return grow * ((d + n * n + 10) ** 0.5 * terms + 2 * d ** 0.5 * logits * moved_by_attention
                   + 2 * d ** 0.5 * translated * (p.norm(dim=-1) + q.norm(dim=-1)))


@pytest.mark.parametrize("dim, slots, options", [
    (100, 20, {"distance": "squared"}),  # the defaults' shape
    (32, 100, {"distance": "squared"}),  # more slots than dimensions: M M^T is singular
    (16, 1, {"distance": "squared", "item_bias": True}),
    (24, 7, {"item_bias": True}),  # the authors' -sqrt(d^2 + 1e-3); 7 slots leave a remainder of the 4-slot passes
])
def test_full_ranking_equals_float64_pytorch(dim, slots, options):
    model = trained_looking(dim, slots, **options)
    users = torch.arange(USERS)
    compiled = model.score_all(users)
    exact = model.double().score_all(users)  # float64 takes the PyTorch path (double() converts the model in place)
    bound = squared_distance_error_bound(model)
    if model.config.distance == "l2":  # d sqrt(x + eps) / dx = 1 / (2 sqrt(x + eps)) <= 1 / (2 sqrt(eps))
        bound /= 2 * 1e-3 ** 0.5
    assert compiled.dtype == torch.float32 and compiled.shape == (USERS, ITEMS)
    assert (compiled.double() - exact).abs().max().item() <= bound
    with torch.no_grad():
        model.memory.zero_()  # the same (float64) model without its relation
    # the relation moves the scores by far more than the tolerance, so dropping or garbling it fails
    assert (model.score_all(users) - exact).abs().mean().item() > 5 * bound


def test_scores_do_not_depend_on_the_thread_count():
    """Each chunk is multiplied and scored by one thread whatever the pool's size, so a Ray actor with one
    CPU ranks exactly as a process with all of them."""
    model = trained_looking(32, 5)
    users = torch.arange(USERS)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = model.score_all(users)
        torch.set_num_threads(3)
        pooled = model.score_all(users)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, pooled)


def test_a_nan_weight_turns_the_scores_it_reaches_nan():
    model = trained_looking(16, 6)
    with torch.no_grad():
        model.user_embedding.weight[3, 0] = float("nan")
        model.item_embedding.weight[ITEMS - 1, 2] = float("nan")
    scores = model.score_all(torch.arange(USERS))
    assert scores[3].isnan().all() and scores[:, ITEMS - 1].isnan().all()
    assert scores[:3, :ITEMS - 1].isfinite().all()
    with torch.no_grad():
        model.keys[0, 4] = float("nan")
    assert model.score_all(torch.arange(4)).isnan().all()


def relation_directly(model: LRML, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """The paper's score of each pair in float64, the relation vector materialised: ``-||p + r - q||^2``."""
    model = model.double()
    users, items = torch.broadcast_tensors(users, items)
    p, q = model._clip(model.user_embedding(users)), model._clip(model.item_embedding(items))
    r = torch.softmax((p * q) @ model.keys, dim=-1) @ model.memory
    return -(p + r - q).pow(2).sum(-1)


def test_candidate_scores_equal_the_relation_taken_directly_in_float64():
    """The sampled protocol's scores (each user against its candidates, over the memory slots as full ranking
    takes them) are the paper's, within float32's bound."""
    model = trained_looking(100, 20, distance="squared")
    generator = torch.Generator().manual_seed(0)
    users = torch.randint(0, USERS, (64, 1), generator=generator)
    items = torch.randint(0, ITEMS, (64, 101), generator=generator)
    found = model.score(users, items)
    assert found.dtype == torch.float32 and found.shape == (64, 101)
    exact = relation_directly(copy.deepcopy(model), users, items)
    assert ((found.double() - exact).abs() <= probable_error_bounds(model, users, items)).all()
