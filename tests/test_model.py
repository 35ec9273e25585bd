"""LRML's mechanics (attention, clipping, gradients, the sketch variant) and one contract every model obeys."""
import importlib.util

import numpy as np
import pytest
import torch
from conftest import SEED_SKETCH, require

from lrml import checkpoint
from lrml.baselines import BPRMF, EASE, BPRConfig, ClosedForm, EASEConfig, Popularity, PopularityConfig
from lrml.losses import pair_losses
from lrml.model import LRML, LRMLConfig, clip_by_norm

USERS, ITEMS = 30, 40


def batch(size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, USERS, (size,), generator=g), torch.randint(0, ITEMS, (size,), generator=g),
            torch.randint(0, ITEMS, (size,), generator=g))


def spread(model):
    """Give the embeddings a scale where clipping and distances matter."""
    with torch.no_grad():
        for module in (model.user_embedding, model.item_embedding):
            module.weight.normal_(0.0, 0.5)
        for name in ("keys", "memory"):
            if hasattr(model, name):
                getattr(model, name).normal_(0.0, 1.0)
    return model


def test_attention_is_a_distribution_and_relation_is_its_memory_mix():
    model = spread(LRML(LRMLConfig(USERS, ITEMS, embedding_dim=8, memory_size=5)))
    users, items, _ = batch()
    p, q = model.user_embedding(users), model.item_embedding(items)
    attention = model.attention(p, q)
    assert attention.shape == (16, 5) and (attention >= 0).all()
    assert torch.allclose(attention.sum(-1), torch.ones(16))
    assert attention.std() > 0.01  # not uniform: the keys address the memory
    assert torch.allclose(model.relation(p, q), attention @ model.memory)


def test_gradients_reach_keys_memory_and_only_batch_rows():
    model = spread(LRML(LRMLConfig(USERS, ITEMS, embedding_dim=8, memory_size=5, reg_weight=0.1)))
    users, pos, neg = batch()
    model.loss(users, pos, neg).backward()
    assert model.keys.grad.abs().sum() > 0 and model.memory.grad.abs().sum() > 0
    grad = model.item_embedding.weight.grad
    assert grad.is_sparse
    touched = set(grad.coalesce().indices()[0].tolist())
    assert touched == set(pos.tolist()) | set(neg.tolist())


def test_loss_by_hand_counts_a_repeated_row_as_often_as_it_occurs():
    model = spread(LRML(LRMLConfig(USERS, ITEMS, embedding_dim=8, memory_size=5, margin=0.5, reg_weight=0.1)))
    users, pos, neg = torch.tensor([3, 3, 3, 7]), torch.tensor([1, 2, 1, 5]), torch.tensor([2, 9, 9, 1])
    with torch.no_grad():
        rows = [model.user_embedding.weight[users], model.item_embedding.weight[pos], model.item_embedding.weight[neg]]
        p, q, q_neg = (clip_by_norm(r, 1.0) for r in rows)
        relation = torch.softmax((p * q) @ model.keys, dim=-1) @ model.memory
        pos_score = -torch.sqrt((p + relation - q).pow(2).sum(1) + 1e-3)
        neg_score = -torch.sqrt((p + relation - q_neg).pow(2).sum(1) + 1e-3)
        squares = sum(r.pow(2).sum() for r in rows) + model.keys.pow(2).sum() + model.memory.pow(2).sum()
        expected = torch.relu(0.5 - pos_score + neg_score).sum() + 0.05 * squares
    assert torch.allclose(model.loss(users, pos, neg), expected, rtol=1e-6)


def test_clipped_norms_hold():
    model = spread(LRML(LRMLConfig(USERS, ITEMS, embedding_dim=8, memory_size=5, clip_radius=1.0)))
    with torch.no_grad():
        model.user_embedding.weight[:5] *= 100.0
    clipped = model._clip(model.user_embedding.weight)
    assert clipped.norm(dim=1).max() <= 1.0 + 1e-5
    small = model.user_embedding.weight.norm(dim=1) < 1.0
    assert torch.equal(clipped[small], model.user_embedding.weight[small])  # short vectors are untouched
    assert torch.allclose(clip_by_norm(torch.tensor([[3.0, 4.0]]), 1.0), torch.tensor([[0.6, 0.8]]), atol=1e-6)


def test_score_by_hand():
    model = LRML(LRMLConfig(1, 2, embedding_dim=2, memory_size=1, clip_radius=None))
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.tensor([[1.0, 0.0]]))
        model.item_embedding.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
        model.keys.zero_()
        model.memory.copy_(torch.tensor([[0.0, 1.0]]))  # one slot: the relation is always (0, 1)
    # p + r - q = (1, 1) - (1, 2) = (0, -1) and (1, 1) - (0, 0) = (1, 1)
    expected = -torch.sqrt(torch.tensor([1.0, 2.0]) + 1e-3)
    assert torch.allclose(model.score(torch.tensor([0, 0]), torch.tensor([0, 1])), expected)
    assert torch.allclose(model.score_all(torch.tensor([0])), expected.unsqueeze(0))


def test_negative_relation_variants_differ_only_in_the_negative_relation():
    config = LRMLConfig(USERS, ITEMS, embedding_dim=8, memory_size=5, margin=10.0, reg_weight=0.0)
    shared, own = spread(LRML(config)), LRML(LRMLConfig(**{**config.__dict__, "negative_relation": "own"}))
    own.load_state_dict(shared.state_dict())
    users, pos, neg = batch()
    with torch.no_grad():
        model_p, model_q = shared.user_embedding(users), shared.item_embedding(pos)
        r = shared.relation(shared._clip(model_p), shared._clip(shared.item_embedding(pos)))
        expected = (10.0 - shared._score_vectors(shared._clip(model_p), shared._clip(model_q), r)
                    + shared._score_vectors(shared._clip(model_p), shared._clip(shared.item_embedding(neg)), r)).sum()
    assert torch.allclose(shared.loss(users, pos, neg), expected)
    assert not torch.allclose(own.loss(users, pos, neg), expected)


def test_each_loss_by_hand():
    """Two positive pairs with two negatives each; the numbers worked out on paper."""
    pos, neg = torch.tensor([-1.0, -0.5]), torch.tensor([[-1.2, -0.3], [-2.0, -3.0]])
    # hinge, margin 0.5: pair 1: relu(0.5 + 1 - 1.2) + relu(0.5 + 1 - 0.3) = 0.3 + 1.2; pair 2: both 0
    assert torch.allclose(pair_losses(pos, neg, "hinge", 0.5, 1.0, 100), torch.tensor([1.5, 0.0]))
    # warp: pair 1 has both negatives inside the margin: log(1 + 100 * 2 / 2) * relu(0.5 + 1 - 0.3)
    warp = pair_losses(pos, neg, "warp", 0.5, 1.0, 100)
    assert torch.allclose(warp, torch.tensor([np.log(101.0) * 1.2, 0.0], dtype=torch.float32))
    # softmax, temperature 0.5: -log(e^-2 / (e^-2 + e^-2.4 + e^-0.6))
    softmax = pair_losses(pos, neg, "softmax", 0.5, 0.5, 100)
    assert softmax[0].item() == pytest.approx(-np.log(np.exp(-2) / (np.exp(-2) + np.exp(-2.4) + np.exp(-0.6))), rel=1e-6)
    # bpr: -log sigmoid(-1 + 1.2) - log sigmoid(-1 + 0.3)
    bpr = pair_losses(pos, neg, "bpr", 0.0, 1.0, 100)
    assert bpr[0].item() == pytest.approx(np.log1p(np.exp(-0.2)) + np.log1p(np.exp(0.7)), rel=1e-6)


def test_item_bias_adds_to_every_score():
    plain = spread(LRML(LRMLConfig(USERS, ITEMS, embedding_dim=8, memory_size=5)))
    biased = LRML(LRMLConfig(USERS, ITEMS, embedding_dim=8, memory_size=5, item_bias=True))
    biased.load_state_dict({**plain.state_dict(), "item_bias.weight": torch.arange(ITEMS, dtype=torch.float32)[:, None]},
                           strict=True)
    users, items = torch.tensor([0, 1]), torch.tensor([3, 7])
    assert torch.allclose(biased.score(users, items), plain.score(users, items) + torch.tensor([3.0, 7.0]))
    assert torch.allclose(biased.score_all(users), plain.score_all(users) + torch.arange(ITEMS, dtype=torch.float32))


def test_bpr_with_several_negatives_sums_their_losses():
    model = spread(BPRMF(BPRConfig(USERS, ITEMS, embedding_dim=8, reg_weight=0.0)))
    users, pos, _ = batch()
    neg = torch.randint(0, ITEMS, (16, 3), generator=torch.Generator().manual_seed(5))
    one_at_a_time = sum(model.loss(users, pos, neg[:, j]) for j in range(3))
    assert torch.allclose(model.loss(users, pos, neg), one_at_a_time, rtol=1e-6)


def test_ease_solves_its_constrained_least_squares():
    """EASE's B is the minimiser of ||X - XB||^2 + reg ||B||^2 with a zero diagonal: the objective's gradient is zero
    off the diagonal. In float32, B's entries carry a relative error of about 2^-24 (the solve is float64), so the
    gradient's entries stay within 2 (||X^T X|| + reg) 2^-24 max|B|, the bound checked here."""
    g = torch.Generator().manual_seed(0)
    users, items = torch.randint(0, USERS, (300,), generator=g), torch.randint(0, ITEMS, (300,), generator=g)
    model = EASE(EASEConfig(USERS, ITEMS, reg_weight=3.0))
    model.fit(users, items)
    x = torch.zeros(USERS, ITEMS, dtype=torch.float64)
    x[users, items] = 1.0
    weights = model.weights.double()
    assert torch.all(weights.diagonal() == 0)
    gradient = -x.T @ (x - x @ weights) + 3.0 * weights
    gradient.fill_diagonal_(0.0)
    bound = 2 * (torch.linalg.matrix_norm(x.T @ x, ord=2) + 3.0) * 2.0 ** -24 * weights.abs().max()
    assert gradient.abs().max() <= bound


def load_sketch():
    spec = importlib.util.spec_from_file_location("seed_lrml", require(SEED_SKETCH))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LRML


def test_seed_variant_matches_the_sketch_on_the_same_weights():
    sketch = load_sketch()(USERS, ITEMS, 8, 5, margin=0.2, reg_weight=0.1)
    with torch.no_grad():
        sketch.user_embedding.weight.normal_(0, 1.0)  # large enough that the radius-2 clip is active
    ours = LRML(LRMLConfig.seed_sketch(USERS, ITEMS, 8, 5, margin=0.2, reg_weight=0.1))
    ours.user_embedding.weight.data.copy_(sketch.user_embedding.weight)
    ours.item_embedding.weight.data.copy_(sketch.item_embedding.weight)
    ours.keys.data.copy_(sketch.key_layer)
    ours.memory.data.copy_(sketch.memory)
    users, pos, neg = batch(64)
    expected = sketch.training_step(users, pos, users, neg)
    found = ours.loss(users, pos, neg)
    assert torch.allclose(found, expected, rtol=1e-5)
    expected.backward()
    found.backward()
    for theirs, mine in ((sketch.user_embedding.weight, ours.user_embedding.weight),
                         (sketch.item_embedding.weight, ours.item_embedding.weight),
                         (sketch.key_layer, ours.keys), (sketch.memory, ours.memory)):
        assert torch.allclose(theirs.grad, mine.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours.score(users, pos), sketch(users, pos), rtol=1e-5)
    # and the authors' defaults are a different model on the same weights
    authors = LRML(LRMLConfig(USERS, ITEMS, 8, 5, margin=0.2, reg_weight=0.1, sparse=False))
    authors.load_state_dict(ours.state_dict())
    assert not torch.allclose(authors.loss(users, pos, neg), expected)


class RecommenderContract:
    """Behaviour every model must share; subclasses say how to build one."""

    def make(self):
        raise NotImplementedError

    def fitted(self):
        model = self.make()
        if isinstance(model, ClosedForm):
            g = torch.Generator().manual_seed(1)
            model.fit(torch.randint(0, USERS, (500,), generator=g), torch.randint(0, ITEMS, (500,), generator=g))
        else:
            spread(model)
        return model

    def test_score_all_agrees_with_pair_scores(self):
        model = self.fitted()
        users = torch.arange(USERS)
        all_scores = model.score_all(users)
        assert all_scores.shape == (USERS, ITEMS)
        pairs = model.score(users.unsqueeze(1), torch.arange(ITEMS).unsqueeze(0))
        assert torch.allclose(all_scores, pairs, atol=1e-5)

    def test_recommend_excludes_seen_items(self):
        model = self.fitted()
        seen = [np.arange(0, 35), np.array([], dtype=np.int64)]
        top = model.recommend(torch.tensor([0, 1]), k=5, exclude=seen)
        assert set(top[0].tolist()) == {35, 36, 37, 38, 39}
        assert torch.equal(top[1], model.score_all(torch.tensor([1]))[0].topk(5).indices)

    def test_checkpoint_round_trip(self, tmp_path):
        model = self.fitted()
        path = checkpoint.save(checkpoint.checkpoint_dict(model, 3, {"valid/sampled/ndcg@10": 0.5}, "abc"),
                               tmp_path / "model.pt")
        loaded, meta = checkpoint.load(path, expected_fingerprint="abc")
        assert type(loaded) is type(model) and meta["epoch"] == 3
        assert torch.equal(loaded.score_all(torch.arange(3)), model.score_all(torch.arange(3)))
        with pytest.raises(ValueError, match="trained on dataset abc"):
            checkpoint.load(path, expected_fingerprint="other")

    personalised = True  # ranks each user's own kind of items first; popularity ranks everyone's alike

    def test_learning_ranks_each_users_held_out_items_first(self):
        """Trained on half of each user's items (or fitted to them), a model ranks the other half above items no
        one chose, and, if personalised, above the items only the other group chose. An untrained model, or one
        whose update misses the rows it should move, sits near 0.5 on both."""
        model = self.make()
        seen, held_out = planted_preferences()
        users, items = (torch.tensor(column) for column in zip(*seen))
        if isinstance(model, ClosedForm):
            model.fit(users, items)
        else:
            from lrml.optim import Optimizer
            optimizer = Optimizer(model, "adam", 0.01)
            g = torch.Generator().manual_seed(2)
            for _ in range(300):
                pick = torch.randint(0, len(users), (64,), generator=g)
                optimizer.zero_grad()
                model(users[pick], items[pick], torch.randint(0, ITEMS, (64,), generator=g)).backward()
                optimizer.step()
        with torch.no_grad():
            scores = model.score_all(torch.arange(USERS))
        assert held_out_auc(scores, held_out, lambda user: UNCHOSEN) > 0.9
        if self.personalised:
            assert held_out_auc(scores, held_out, lambda user: GROUP_ITEMS[1 - user % 2]) > 0.9


GROUP_ITEMS = (np.arange(0, 15), np.arange(15, 30))  # what users of even and of odd ids like
UNCHOSEN = np.arange(30, ITEMS)  # items no user chose


def planted_preferences() -> tuple[list[tuple[int, int]], dict[int, np.ndarray]]:
    """Each user likes the 15 items of its group (even or odd id) and has chosen a random 8 of them: the
    (user, item) pairs chosen, and each user's other 7 liked items, held out."""
    rng = np.random.default_rng(0)
    seen, held_out = [], {}
    for user in range(USERS):
        liked = rng.permutation(GROUP_ITEMS[user % 2])
        seen += [(user, int(item)) for item in liked[:8]]
        held_out[user] = liked[8:]
    return seen, held_out


def held_out_auc(scores: torch.Tensor, held_out: dict[int, np.ndarray], against) -> float:
    """The share of (user, held-out item, item from ``against(user)``) triples the model orders correctly."""
    wins = [float(scores[user, liked] > scores[user, other]) + 0.5 * float(scores[user, liked] == scores[user, other])
            for user, items in held_out.items() for liked in items for other in against(user)]
    return float(np.mean(wins))


class TestLRML(RecommenderContract):
    def make(self):
        return LRML(LRMLConfig(USERS, ITEMS, embedding_dim=8, memory_size=5))


class TestLRMLSquaredOwnRelation(RecommenderContract):
    def make(self):
        return LRML(LRMLConfig(USERS, ITEMS, embedding_dim=8, memory_size=5, distance="squared",
                               negative_relation="own", reg_weight=0.01))


class TestCML(RecommenderContract):
    def make(self):
        return LRML(LRMLConfig(USERS, ITEMS, embedding_dim=8, use_memory=False))


class TestBPR(RecommenderContract):
    def make(self):
        return BPRMF(BPRConfig(USERS, ITEMS, embedding_dim=8))


class TestLRMLWarpBias(RecommenderContract):
    def make(self):
        return LRML(LRMLConfig(USERS, ITEMS, embedding_dim=8, memory_size=5, loss="warp", item_bias=True))


class TestCMLSoftmax(RecommenderContract):
    def make(self):
        return LRML(LRMLConfig(USERS, ITEMS, embedding_dim=8, use_memory=False, loss="softmax"))


class TestBPRSoftmax(RecommenderContract):
    def make(self):
        return BPRMF(BPRConfig(USERS, ITEMS, embedding_dim=8, loss="softmax", temperature=0.5))


class TestEASE(RecommenderContract):
    def make(self):
        return EASE(EASEConfig(USERS, ITEMS, reg_weight=2.0))


class TestPopularity(RecommenderContract):
    personalised = False

    def make(self):
        return Popularity(PopularityConfig(USERS, ITEMS))
