"""The fused CPU loss (lrml.fused) against autograd on the same weights: loss, every gradient, and the edges."""
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lrml import fused
from lrml.baselines import BPRMF, BPRConfig
from lrml.model import LRML, LRMLConfig
from lrml.train import TrainConfig, build_model, defaults

USERS, ITEMS, DIM, SLOTS = 12, 9, 6, 5


def model_with(**options) -> LRML:
    """A small model whose rows repeat within a batch and whose vectors reach past the clip radius."""
    torch.manual_seed(0)
    model = LRML(LRMLConfig(USERS, ITEMS, DIM, SLOTS, **{"margin": 0.5, "reg_weight": 0.1, **options}))
    with torch.no_grad():
        for table in (model.user_embedding.weight, model.item_embedding.weight):
            table.normal_(0.0, 0.6)
        if model.config.use_memory:
            model.keys.normal_(0.0, 1.0)
            model.memory.normal_(0.0, 0.5)
        if model.config.item_bias:
            model.item_bias.weight.normal_(0.0, 0.3)
    return model


def bpr_with(**options) -> BPRMF:
    """A small BPR-MF whose scores spread widely enough that the logistic loss is not flat."""
    torch.manual_seed(0)
    model = BPRMF(BPRConfig(USERS, ITEMS, DIM, **{"reg_weight": 0.1, **options}))
    with torch.no_grad():
        for table in (model.user_embedding.weight, model.item_embedding.weight):
            table.normal_(0.0, 0.6)
        model.item_bias.weight.normal_(0.0, 0.3)
    return model


def batch(size=40, seed=1, negatives=1):
    """Users, positives and negatives: (size,) for one negative per positive, (size, k) for more."""
    g = torch.Generator().manual_seed(seed)
    shape = (size,) if negatives == 1 else (size, negatives)
    return (torch.randint(0, USERS, (size,), generator=g), torch.randint(0, ITEMS, (size,), generator=g),
            torch.randint(0, ITEMS, shape, generator=g))


def loss_and_gradients(model, loss_fn, *triples):
    for param in model.parameters():
        param.grad = None
    loss = loss_fn(*triples)
    loss.backward()
    return loss.detach(), {name: p.grad.to_dense() for name, p in model.named_parameters()}


def assert_fused_equals_autograd(model, *triples):
    """The fused loss and every gradient equal autograd's on the same weights, to float rounding."""
    expected_loss, expected = loss_and_gradients(model, model.autograd_loss, *triples)
    found_loss, found = loss_and_gradients(model, model.loss, *triples)
    assert found_loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)
    for name, grad in expected.items():
        assert torch.allclose(found[name], grad, atol=1e-5, rtol=1e-4), name


VARIANTS = [dict(use_memory=memory, distance=distance, clip_radius=radius, regularizer=regularizer)
            for memory, distance, radius, regularizer in
            itertools.product([True, False], ["l2", "squared"], [1.0, 0.3, None], ["batch", "none"])]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_loss_and_every_gradient_equal_autograd(options):
    model = model_with(**options)
    model.shared_term_weight = 0.5  # as a worker of two counts the keys' and memory's regulariser
    triples = batch()
    assert fused.supports(model, triples[0])
    assert_fused_equals_autograd(model, *triples)
    rows = model.item_embedding.weight.grad._indices()[0]
    assert (rows[1:] > rows[:-1]).all()  # each row once, in order: the optimizer sorts nothing


# every loss with one and several negatives, with and without the item bias, for LRML and CML; the softmax's
# temperature small enough that its gradients are not all alike
LOSS_VARIANTS = [dict(loss=loss, negatives=negatives, item_bias=bias, use_memory=memory, temperature=0.3)
                 for loss, negatives, bias, memory in
                 itertools.product(["hinge", "warp", "softmax"], [1, 4], [False, True], [True, False])]


@pytest.mark.parametrize("options", LOSS_VARIANTS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_every_loss_negatives_and_bias_equal_autograd(options):
    negatives = options.pop("negatives")
    model = model_with(**options)
    triples = batch(negatives=negatives)
    assert fused.supports(model, triples[0])
    assert_fused_equals_autograd(model, *triples)


@pytest.mark.parametrize("loss", ["bpr", "softmax"])
@pytest.mark.parametrize("negatives", [1, 4])
def test_bpr_mf_losses_equal_autograd(loss, negatives):
    model = bpr_with(loss=loss, temperature=0.3)
    triples = batch(negatives=negatives)
    assert fused.supports(model, triples[0])
    assert_fused_equals_autograd(model, *triples)


def test_bpr_loss_by_hand():
    """One pair, two negatives: sum_n log(1 + exp(s-_n - s+)), with scores p . q + b; nothing regularised."""
    model = bpr_with(reg_weight=0.0)
    with torch.no_grad():
        model.user_embedding.weight[0] = torch.tensor([1.0, 2.0, 0, 0, 0, 0])
        for item, (vector, bias) in enumerate((([0.5, 0.5], 0.1), ([1.0, -1.0], 0.0), ([0.0, 3.0], -0.4))):
            model.item_embedding.weight[item] = torch.tensor([*vector, 0, 0, 0, 0])
            model.item_bias.weight[item] = bias
    pos, negatives = 1.5 + 0.1, (-1.0, 6.0 - 0.4)  # p . q + b for the positive and each negative
    expected = sum(math.log1p(math.exp(neg - pos)) for neg in negatives)
    loss = model.loss(torch.tensor([0]), torch.tensor([0]), torch.tensor([[1, 2]]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_warp_weights_the_closest_negative_by_the_violators():
    """By hand: one pair, three negatives, two of them inside the margin; only the closest one has a gradient."""
    model = model_with(loss="warp", use_memory=False, clip_radius=None, regularizer="none", margin=1.0)
    with torch.no_grad():
        model.user_embedding.weight[0] = torch.zeros(DIM)
        for item, distance in ((0, 1.0), (1, 1.5), (2, 0.8), (3, 5.0)):  # the positive, then three negatives
            model.item_embedding.weight[item] = torch.zeros(DIM)
            model.item_embedding.weight[item, 0] = distance
    users, pos, neg = torch.tensor([0]), torch.tensor([0]), torch.tensor([[1, 2, 3]])
    score = lambda d: -(d * d + 1e-3) ** 0.5  # noqa: E731
    weight = math.log1p(ITEMS * 2 / 3)  # items 1 and 2 violate: margin - s+ + s- > 0
    expected = weight * (1.0 - score(1.0) + score(0.8))  # the closest negative: item 2
    loss, grads = loss_and_gradients(model, model.loss, users, pos, neg)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    touched = grads["item_embedding.weight"].abs().sum(1)
    assert touched[2] > 0 and touched[1] == 0 and touched[3] == 0


def test_a_nan_score_gives_a_nan_loss_for_every_loss():
    for loss, model in [*((loss, model_with(loss=loss)) for loss in ("hinge", "warp", "softmax")),
                        ("bpr", bpr_with())]:
        with torch.no_grad():
            model.item_embedding.weight[3] = float("nan")
        users, pos, neg = batch(negatives=3)
        neg[0, 1] = 3
        assert torch.isnan(model.loss(users, pos, neg)), loss


@pytest.mark.parametrize("shape", ["one user", "one pair"])
def test_fewer_users_than_threads_equal_autograd(shape):
    """The pair pass splits the batch's distinct users between threads: a thread may get none."""
    model = model_with()
    users, pos, neg = batch()
    if shape == "one user":
        users = torch.full_like(users, 7)
    else:
        users, pos, neg = users[:1], pos[:1], neg[:1]
    assert_fused_equals_autograd(model, users, pos, neg)


def test_items_gradients_sum_per_thread_where_items_repeat_and_per_score_where_they_do_not():
    """``_item_layout``: one row per thread and distinct item where that is fewer rows than scores, else one per
    score in item order; both sum to autograd's gradients."""
    order = np.array([1, 4, 0, 2, 3])  # items [7, 5, 7, 9, 5]: 5 at scores 1 and 4, 7 at 0 and 2, 9 at 3
    starts, counts = np.array([0, 2, 4]), np.array([2, 2, 1])
    slot_rows, stride, parts, part_rows = fused._item_layout(starts, counts, order, chunks=1)
    assert (slot_rows.tolist(), stride, parts.tolist(), part_rows.tolist()) == ([1, 0, 1, 2, 0], 3, [0, 1, 2, 3],
                                                                               [0, 1, 2])
    slot_rows, stride, parts, part_rows = fused._item_layout(starts, counts, order, chunks=2)
    assert (slot_rows.tolist(), stride, parts.tolist(), part_rows.tolist()) == ([2, 0, 3, 4, 1], 0, [0, 2, 4, 5],
                                                                               [0, 1, 2, 3, 4])
    slot_rows, stride, parts, part_rows = fused._item_layout(np.array([0, 3, 6]), np.array([3, 3, 2]), np.arange(8),
                                                             chunks=2)  # 3 items, 8 scores, 2 threads
    assert (slot_rows.tolist(), stride, parts.tolist(), part_rows.tolist()) == (
        [0, 0, 0, 1, 1, 1, 2, 2], 3, [0, 2, 4, 6], [0, 3, 1, 4, 2, 5])

    torch.manual_seed(0)
    model = LRML(LRMLConfig(USERS, 200, DIM, SLOTS, margin=0.5, reg_weight=0.1))
    with torch.no_grad():
        model.item_embedding.weight.normal_(0.0, 0.6)
    items = torch.randperm(200)[:80]  # every score's item distinct: a row per score, whatever the threads
    users = torch.arange(40) % USERS
    assert_fused_equals_autograd(model, users, items[:40], items[40:])


def test_clipping_matters_here():
    """The variants above are only a test of the clip if some rows lie outside the ball."""
    model = model_with()
    assert (model.user_embedding.weight.norm(dim=1) > 1.0).any()
    assert (model.item_embedding.weight.norm(dim=1) < 1.0).any()


def test_pairs_past_the_margin_add_nothing():
    model = model_with(margin=-100.0)  # every hinge is zero: only the regulariser is left
    loss, grads = loss_and_gradients(model, model.loss, *batch())
    reg_loss, reg_grads = loss_and_gradients(model, lambda *t: model._regularization(
        (model.user_embedding.weight[t[0].unique()], t[0].unique(return_counts=True)[1]),
        (model.item_embedding.weight[torch.cat(t[1:]).unique()], torch.cat(t[1:]).unique(return_counts=True)[1])),
        *batch())
    assert loss.item() == pytest.approx(reg_loss.item(), rel=1e-6)
    for name, grad in reg_grads.items():
        assert torch.allclose(grads[name], grad, atol=1e-6), name


def test_a_diverged_model_has_a_nan_loss():
    model = model_with()
    with torch.no_grad():
        model.item_embedding.weight[3] = float("nan")
    users, pos, neg = batch()
    pos[0] = 3
    assert torch.isnan(model.loss(users, pos, neg))


def test_gradients_accumulate_across_backward_calls():
    """A gradient still held (no zero_grad between two backward calls) is never the buffer the next step writes."""
    model = model_with()
    first, second = batch(seed=1), batch(seed=2)
    _, alone_first = loss_and_gradients(model, model.loss, *first)
    _, alone_second = loss_and_gradients(model, model.loss, *second)
    for param in model.parameters():
        param.grad = None
    model.loss(*first).backward()
    model.loss(*second).backward()
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad.to_dense(), alone_first[name] + alone_second[name], atol=1e-6), name


def test_backward_scales_with_the_outer_gradient():
    model = model_with()
    _, once = loss_and_gradients(model, model.loss, *batch())
    _, twice = loss_and_gradients(model, lambda *t: 2.0 * model.loss(*t), *batch())
    for name, grad in once.items():
        assert torch.allclose(twice[name], 2 * grad, atol=1e-6), name


def test_out_of_range_ids_are_an_error_not_a_read_past_the_table():
    model = model_with()
    users, pos, neg = batch()
    neg[5] = ITEMS
    with pytest.raises(IndexError, match=f"item id {ITEMS} out of range: the table has {ITEMS} rows"):
        model.loss(users, pos, neg)


def test_the_trainer_default_takes_the_fused_path_and_variants_it_lacks_do_not():
    users = batch()[0]
    assert fused.supports(build_model(TrainConfig(), USERS, ITEMS), users)
    assert fused.supports(build_model(TrainConfig(model="cml"), USERS, ITEMS), users)
    assert fused.supports(build_model(defaults("bpr"), USERS, ITEMS), users)
    assert not fused.supports(model_with(negative_relation="own"), users)
    assert not fused.supports(model_with(regularizer="seed", sparse=False), users)
    with torch.no_grad():
        assert not fused.supports(model_with(), users)


def test_numba_starts_no_more_threads_than_openmp_is_given():
    """Ray gives each worker OMP_NUM_THREADS; a larger numba pool made two one-CPU trials on two cores 5x slower."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NUMBA_NUM_THREADS", None)
    env.pop("OMP_WAIT_POLICY", None)
    found = subprocess.run([sys.executable, "-c", "import lrml.optim, numba; print(numba.config.NUMBA_NUM_THREADS)"],
                           env=env, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "1"


IDLE_POOL = """
import json, os, sys
import torch
from dataclasses import replace
from lrml.data import load_dataset, prepare
from lrml.train import Trainer, defaults
import numba
torch.set_num_threads(1)
Trainer(replace(defaults("lrml"), max_epochs=2), load_dataset(prepare(out_dir=sys.argv[1], progress=False))).fit(
    final_eval=False)
ticks = {}
for tid in os.listdir("/proc/self/task"):
    fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
    ticks[int(tid)] = int(fields[11]) + int(fields[12])  # utime, stime
main = ticks.pop(os.getpid())
print(json.dumps({"pool": numba.config.NUMBA_NUM_THREADS, "main": main, "others": sum(ticks.values())}))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2,
                    reason="per-thread CPU times from Linux's /proc, on a machine of several cores")
def test_with_passive_openmp_the_pool_has_a_thread_per_core_and_a_one_thread_run_leaves_the_rest_asleep(tmp_path):
    """What lending a search's idle cores to its last trials rests on (lrml_tune.sweep.cores): in a trial process
    (OMP_NUM_THREADS=1 from Ray, OMP_WAIT_POLICY=passive from the search), numba's pool holds a thread per core,
    and while the process trains on one thread the other pool threads sleep. Spinning, as OpenMP's idle threads do
    by default, they took 60% of the training thread's CPU time here; a tenth of that is the bound."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}
    env.pop("NUMBA_NUM_THREADS", None)
    found = subprocess.run([sys.executable, "-c", IDLE_POOL, str(tmp_path / "small")], env=env, capture_output=True,
                           text=True, check=True)
    threads = json.loads(found.stdout.splitlines()[-1])
    assert threads["pool"] == os.cpu_count()
    assert threads["others"] < 0.06 * threads["main"], threads
