"""The training loss of LRML, CML and BPR-MF and all its gradients, compiled for CPU tensors: one pass over the
pairs, one over the items.

Autograd spends an LRML step on some 40 elementwise passes over (batch, d) tensors, each a
round trip through memory (``bench/floor.py``). Here numba computes each positive pair's forward
and backward, with its k negatives, while their rows are in cache. The pairs are visited user by
user, so each user's gradient is summed and finished in place; the items' gradients are summed onto
each thread's rows of the batch's distinct items as they are made (``_item_layout``), and those onto
the items in a second pass. Rows are prefetched a few pairs ahead
(``lrml.prefetch``). Every loss of ``lrml.losses``, both distances and the dot product, and the item
bias are here; the loss and gradients equal autograd's to float rounding (``tests/test_fused.py``).
A model offers this path through ``Recommender.fused_options`` and takes it where ``supports`` holds.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numba
import numpy as np
import torch
from numba import prange

from lrml.prefetch import AHEAD, prefetch_row

# Reassociation lets the d-long dot products vectorise; NaN and inf keep their meaning, so a diverged
# model still shows a NaN loss.
FAST = {"reassoc", "contract"}
EPS = 1e-3  # the authors' l2 score: -sqrt(d^2 + 1e-3)
KERNEL = {"cache": True, "fastmath": FAST, "nogil": True}
LOSS_CODES = {"hinge": 0, "warp": 1, "softmax": 2, "bpr": 3}
HINGE, WARP, SOFTMAX, BPR = LOSS_CODES.values()
SCORE_CODES = {"l2": 0, "squared": 1, "product": 2}  # LRML's distances (``LRMLConfig.distance``), BPR-MF's p . q
L2, SQUARED, PRODUCT = SCORE_CODES.values()


def compiled_threads() -> int:
    """The threads the compiled passes run on: torch's, at most the pool numba started with."""
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def use_torch_threads() -> None:
    """Run numba's parallel loops on as many threads as torch's (at most the pool numba started with). The first
    call starts numba's OpenMP pool, which sets OpenMP's thread count, torch's with it, to the pool's size: torch's
    is put back."""
    wanted = torch.get_num_threads()
    numba.set_num_threads(compiled_threads())
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


@numba.njit(**KERNEL)
def _squared_norm(x):
    """``||x||^2`` in float32, as torch's norm of a float32 row."""
    total = np.float32(0.0)
    for d in range(len(x)):
        total += x[d] * x[d]
    return total


@numba.njit(**KERNEL)
def _project(x, rows, out):
    """``out[n] = rows[n] . x`` for every row, four rows a pass over ``x``: four independent sums keep
    the vector units busy where one sum waits on its own additions."""
    n = 0
    while n + 4 <= len(rows):
        r0, r1, r2, r3 = rows[n], rows[n + 1], rows[n + 2], rows[n + 3]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for d in range(len(x)):
            a0 += x[d] * r0[d]
            a1 += x[d] * r1[d]
            a2 += x[d] * r2[d]
            a3 += x[d] * r3[d]
        out[n], out[n + 1], out[n + 2], out[n + 3] = a0, a1, a2, a3
        n += 4
    for m in range(n, len(rows)):
        row, total = rows[m], np.float32(0.0)
        for d in range(len(x)):
            total += x[d] * row[d]
        out[m] = total


@numba.njit(**KERNEL)
def _combine(weights, rows, out):
    """``out += sum_n weights[n] rows[n]``, four rows a pass over ``out`` (a quarter of its loads and stores)."""
    n = 0
    while n + 4 <= len(rows):
        r0, r1, r2, r3 = rows[n], rows[n + 1], rows[n + 2], rows[n + 3]
        w0, w1, w2, w3 = weights[n], weights[n + 1], weights[n + 2], weights[n + 3]
        for d in range(len(out)):
            out[d] += w0 * r0[d] + w1 * r1[d] + w2 * r2[d] + w3 * r3[d]
        n += 4
    for m in range(n, len(rows)):
        row, weight = rows[m], weights[m]
        for d in range(len(out)):
            out[d] += weight * row[d]


@numba.njit(**KERNEL)
def _clip_scale(x, radius):
    """The factor ``clip_by_norm`` scales row ``x`` by: 1 inside the ball of ``radius``."""
    return min(np.float32(1.0), np.float32(radius / (math.sqrt(_squared_norm(x)) + 1e-6)))


@numba.njit(**KERNEL)
def _finish_row(x, g, radius, regularizer):
    """Turn ``g``, the summed gradient at the clipped row, into the gradient at the raw row ``x``: back
    through the clip, plus the regulariser's ``regularizer x``. Returns ``||x||^2``."""
    squared_norm = _squared_norm(x)
    norm = math.sqrt(squared_norm)
    ratio = radius / (norm + 1e-6)
    scale, along = 1.0, 0.0
    if ratio <= 1.0:  # clipped: y = x r / (|x| + 1e-6), so dy/dx = ratio I - r x x^T / (|x| (|x| + 1e-6)^2)
        scale = ratio
        for d in range(len(x)):
            along += x[d] * g[d]
        along *= ratio / (norm * (norm + 1e-6))
    for d in range(len(x)):
        g[d] = scale * g[d] + (regularizer - along) * x[d]
    return squared_norm


@numba.njit(**KERNEL)
def _score(t, row, scale, kind):
    """The score of the clipped item ``q = row * scale`` for the translated user ``t``, and for a distance the
    factor ``g`` with d score / d t = -g (t - q): ``-||t - q||^2`` (g = 2), the authors'
    ``-sqrt(||t - q||^2 + 1e-3)``, or BPR-MF's ``t . q`` (no factor: d score / d t = q)."""
    if kind == PRODUCT:
        total = np.float32(0.0)
        for d in range(len(t)):
            total += t[d] * row[d]
        return total * scale, np.float32(1.0)
    apart = np.float32(0.0)
    for d in range(len(t)):
        gap = t[d] - row[d] * scale
        apart += gap * gap
    if kind == SQUARED:
        return -apart, np.float32(2.0)
    root = np.sqrt(apart + np.float32(EPS))
    return -root, np.float32(1.0) / root


@numba.njit(**KERNEL)
def _score_gradients(pos, neg, kind, margin, temperature, num_items, grads):
    """One positive pair's loss (``lrml.losses``) from its scores, and its gradient with respect to each score
    in ``grads``: the positive's first, then each negative's. A score that is not a number gives a NaN loss."""
    k = len(neg)
    for n in range(k + 1):
        grads[n] = 0.0
    if not math.isfinite(pos + neg.sum()):
        return math.nan
    if kind == SOFTMAX:
        top = pos / temperature
        for n in range(k):
            top = max(top, neg[n] / temperature)
        total = math.exp(pos / temperature - top)
        for n in range(k):
            total += math.exp(neg[n] / temperature - top)
        grads[0] = (math.exp(pos / temperature - top) / total - 1.0) / temperature
        for n in range(k):
            grads[1 + n] = math.exp(neg[n] / temperature - top) / total / temperature
        return top + math.log(total) - pos / temperature
    if kind == BPR:  # sum_n softplus(s-_n - s+); its gradient at s-_n is sigmoid(s-_n - s+)
        loss = 0.0
        for n in range(k):
            gap = neg[n] - pos
            loss += max(gap, 0.0) + math.log1p(math.exp(-abs(gap)))
            grads[1 + n] = 1.0 / (1.0 + math.exp(-gap)) if gap >= 0 else math.exp(gap) / (1.0 + math.exp(gap))
            grads[0] -= grads[1 + n]
        return loss
    if kind == WARP:
        closest, violators = 0, 0
        for n in range(k):
            if neg[n] > neg[closest]:
                closest = n
            if margin - pos + neg[n] > 0:
                violators += 1
        hinge = margin - pos + neg[closest]
        if hinge <= 0:
            return 0.0
        weight = math.log1p(num_items * violators / k)
        grads[0], grads[1 + closest] = -weight, weight
        return weight * hinge
    loss = 0.0
    for n in range(k):
        hinge = margin - pos + neg[n]
        if hinge > 0:
            loss += hinge
            grads[1 + n] = 1.0
            grads[0] -= 1.0
    return loss


@numba.njit(**KERNEL)
def _relation(pq, keys_t, memory, attention, t):
    """The pair's attention over the memory slots, ``softmax(pq K)``, and its relation added to ``t``:
    ``t += attention M``."""
    _project(pq, keys_t, attention)
    top, total = attention.max(), np.float32(0.0)
    for n in range(len(attention)):
        attention[n] = np.exp(attention[n] - top)
        total += attention[n]
    for n in range(len(attention)):
        attention[n] /= total
    _combine(attention, memory, t)


@numba.njit(**KERNEL)
def _relation_backward(toward, attention, keys_t, memory, d_logits, d_pq):
    """Back through the relation, from ``toward`` (the gradient at ``t``): the gradient at the attention logits,
    ``attention * (M toward - mean)``, and at ``p * q``, ``K d_logits``."""
    _project(toward, memory, d_logits)
    weighted = np.float32(0.0)
    for n in range(len(attention)):
        weighted += attention[n] * d_logits[n]
    for n in range(len(attention)):
        d_logits[n] = attention[n] * (d_logits[n] - weighted)
    for d in range(len(d_pq)):
        d_pq[d] = 0.0
    _combine(d_logits, keys_t, d_pq)


@numba.njit(**KERNEL)
def _negative_scores(t, items_w, negatives, radius, score, bias, use_bias, scales, scores, factors):
    """Each negative's clip scale, score (with its bias) and factor ``g`` (``_score``)."""
    for n in range(len(negatives)):
        row = items_w[negatives[n]]
        scales[n] = _clip_scale(row, radius)
        scores[n], factors[n] = _score(t, row, scales[n], score)
        if use_bias:
            scores[n] += bias[negatives[n], 0]


@numba.njit(**KERNEL)
def _item_gradients(t, q, pos_factor, items_w, negatives, scales, factors, grads, product, out_q, item_grads,
                    negative_rows, toward):
    """The gradients at the clipped items, added to ``out_q`` (the positive's) and to ``item_grads``'s
    ``negative_rows`` (each negative's), and at ``t`` (into ``toward``): for a distance ``grads[x] g_x (t - q_x)``
    and their negated sum, for the dot product ``grads[x] t`` and ``sum_x grads[x] q_x``."""
    weight = grads[0] * pos_factor
    if product:
        for d in range(len(t)):
            out_q[d] += weight * t[d]
            toward[d] = weight * q[d]
    else:
        for d in range(len(t)):
            change = weight * (t[d] - q[d])
            out_q[d] += change
            toward[d] = -change
    for n in range(len(negatives)):
        if grads[1 + n] == 0.0:
            continue  # no gradient: nothing to add (WARP's k - 1 other negatives, hinge's outside the margin)
        row, out = items_w[negatives[n]], item_grads[negative_rows[n]]
        weight = grads[1 + n] * factors[n]
        if product:
            for d in range(len(t)):
                out[d] += weight * t[d]
                toward[d] += weight * row[d] * scales[n]
        else:
            for d in range(len(t)):
                change = weight * (t[d] - row[d] * scales[n])
                out[d] += change
                toward[d] -= change


@dataclass(frozen=True)
class Options:
    """What the fused pass needs of a model (``Recommender.fused_options``)."""

    radius: float  # the clip radius of looked-up rows; math.inf for none
    reg_weight: float  # 0.5 reg ||w||^2 on the batch's rows, each as often as looked up (and keys and memory once)
    margin: float
    temperature: float
    loss: str  # LOSS_CODES
    score: str  # SCORE_CODES
    use_memory: bool  # LRML's relation; False for CML and BPR-MF
    use_bias: bool
    num_items: int

    def as_tuple(self) -> tuple:
        """Plain numbers for the kernel."""
        return (float(self.radius), float(self.reg_weight), float(self.margin), float(self.temperature),
                LOSS_CODES[self.loss], SCORE_CODES[self.score], self.use_memory, self.use_bias, self.num_items)


@numba.njit(parallel=True, **KERNEL)
def _pair_pass(tables, pairs, options, out):
    """Each positive pair's loss and gradients, visited user by user (``_distinct``'s runs).

    ``tables``: users, items, keys (transposed), memory, item bias. ``pairs``: the distinct users, where
    each one's pairs start and how many, then the positive items and the (pairs, k) negatives in that
    order, and ``_item_layout``'s rows: each score's row of ``item_grads`` (positives first, then the
    negatives pair by pair) and how far apart the threads' rows are. ``out``: each distinct user's full
    gradient (through the clip, with the regulariser); the gradients at the clipped items, added up in
    ``item_grads`` (zeroed by the caller); each score's
    gradient (for the item bias); and what the keys' and memory's gradients are summed from: per pair
    ``p * q``, the attention, the loss's gradient at ``p + r`` and at the attention logits (zero for a pair
    that adds no loss). Per chunk of users, one chunk per thread, ``sums`` holds the loss and the users'
    ``count ||x||^2``.

    Plain loops over the d dimensions with scratch rows allocated once per chunk: numba vectorises
    them, where array expressions would allocate a temporary per pair.
    """
    users_w, items_w, keys_t, memory, bias = tables
    user_rows, user_starts, user_counts, pos, neg, slot_rows, chunk_stride = pairs
    radius, reg_weight, margin, temperature, kind, score, use_memory, use_bias, num_items = options
    user_grads, item_grads, score_grads, products, attentions, towards, logit_grads, sums = out
    chunks, batch, k, n_users, dim = len(sums), len(pos), neg.shape[1], len(user_rows), users_w.shape[1]
    for c in prange(chunks):
        p, q, t, d_pq = np.empty(dim, np.float32), np.empty(dim, np.float32), np.empty(dim, np.float32), \
            np.zeros(dim, np.float32)
        neg_scores, neg_factors, neg_scales = np.empty(k, np.float32), np.empty(k, np.float32), np.empty(k, np.float32)
        grads = np.empty(k + 1, np.float32)
        offset = c * chunk_stride  # this thread's rows of ``item_grads``
        for u in range(c * n_users // chunks, (c + 1) * n_users // chunks):
            if u + AHEAD < n_users:
                prefetch_row(users_w, user_rows[u + AHEAD])
            row_u, g_user = users_w[user_rows[u]], user_grads[u]
            su = _clip_scale(row_u, radius)
            for d in range(dim):
                p[d] = row_u[d] * su
                g_user[d] = 0.0
            for j in range(user_starts[u], user_starts[u] + user_counts[u]):
                if j + AHEAD < batch:
                    prefetch_row(items_w, pos[j + AHEAD])
                    for n in range(k):
                        prefetch_row(items_w, neg[j + AHEAD, n])
                pq, negatives, row_q = products[j], neg[j], items_w[pos[j]]
                sq = _clip_scale(row_q, radius)
                for d in range(dim):
                    q[d] = row_q[d] * sq
                    pq[d] = p[d] * q[d]
                    t[d] = p[d]
                if use_memory:
                    _relation(pq, keys_t, memory, attentions[j], t)
                pos_score, pos_factor = _score(t, row_q, sq, score)
                if use_bias:
                    pos_score += bias[pos[j], 0]
                _negative_scores(t, items_w, negatives, radius, score, bias, use_bias, neg_scales, neg_scores,
                                 neg_factors)
                sums[c, 0] += _score_gradients(pos_score, neg_scores, kind, margin, temperature, num_items, grads)
                out_q = item_grads[offset + slot_rows[j]]
                negative_rows = offset + slot_rows[batch + j * k:batch + (j + 1) * k]
                _item_gradients(t, q, pos_factor, items_w, negatives, neg_scales, neg_factors, grads, score == PRODUCT,
                                out_q, item_grads, negative_rows, towards[j])
                score_grads[j] = grads[0]
                for n in range(k):  # explicit loops: numba's parfor pass dropped slice assignments in this body
                    score_grads[batch + j * k + n] = grads[1 + n]
                if use_memory:
                    _relation_backward(towards[j], attentions[j], keys_t, memory, logit_grads[j], d_pq)
                toward = towards[j]
                for d in range(dim):
                    g_user[d] += toward[d] + d_pq[d] * q[d]
                    out_q[d] += d_pq[d] * p[d]
            squared_norm = _finish_row(row_u, g_user, radius, reg_weight * user_counts[u])
            sums[c, 1] += user_counts[u] * squared_norm


@numba.njit(parallel=True, **KERNEL)
def _row_gradients(table, rows, counts, parts, part_rows, item_grads, radius, reg_weight, row_grads):
    """Each distinct row's gradient: the sum of its rows of ``item_grads`` (``part_rows[parts[k]:parts[k + 1]]``,
    ``_item_layout``), carried back through the clip to the raw row, plus the regulariser's ``reg count x``,
    ``counts`` being how often the batch looks the row up. Returns the regulariser's sum of ``count ||x||^2``."""
    total = 0.0
    for k in prange(len(rows)):
        if k + AHEAD < len(rows):
            prefetch_row(table, rows[k + AHEAD])
        g = row_grads[k]
        for d in range(len(g)):
            g[d] = 0.0
        for part in range(parts[k], parts[k + 1]):
            summed = item_grads[part_rows[part]]
            for d in range(len(g)):
                g[d] += summed[d]
        total += counts[k] * _finish_row(table[rows[k]], g, radius, reg_weight * counts[k])
    return total


@numba.njit(parallel=True, **KERNEL)
def _bias_gradients(bias, rows, starts, counts, order, score_grads, reg_weight, bias_grads):
    """Each distinct item's bias gradient: the sum of its scores' gradients plus ``reg count b``. Returns the
    regulariser's sum of ``count b^2``."""
    total = 0.0
    for k in prange(len(rows)):
        b = bias[rows[k], 0]
        g = reg_weight * counts[k] * b
        for j in range(starts[k], starts[k] + counts[k]):
            g += score_grads[order[j]]
        bias_grads[k, 0] = g
        total += counts[k] * b * b
    return total


def _distinct(ids: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """The sorted distinct ids (each below ``size``); where each one's positions start in ``order`` and how many
    there are; and ``order``, the positions of ``ids`` sorted by id, stably. A counting sort where the ids are
    dense (a batch's items), else numpy's sort of each id with its position packed below it (ids are below
    2^31), which runs 2x its argsort."""
    if size <= 4 * len(ids):
        return _counting_runs(ids, size)
    return _runs(np.sort((ids << 32) | np.arange(len(ids))))


@numba.njit(cache=True, nogil=True)
def _counting_runs(ids, size):
    """``_distinct``'s arrays by counting: two passes over ``ids`` and one over the ``size`` counts."""
    first = np.zeros(size + 1, np.int64)
    for j in range(len(ids)):
        first[ids[j] + 1] += 1
    distinct = 0
    for row in range(size):
        distinct += first[row + 1] > 0
        first[row + 1] += first[row]
    rows, starts, counts = np.empty(distinct, np.int64), np.empty(distinct, np.int64), np.empty(distinct, np.int64)
    n = 0
    for row in range(size):
        if first[row + 1] > first[row]:
            rows[n], starts[n], counts[n] = row, first[row], first[row + 1] - first[row]
            n += 1
    order, next_slot = np.empty(len(ids), np.int64), first[:size].copy()
    for j in range(len(ids)):
        order[next_slot[ids[j]]] = j
        next_slot[ids[j]] += 1
    return rows, starts, counts, order


@numba.njit(cache=True, nogil=True)
def _runs(keys):
    """``_distinct``'s arrays from the sorted packed keys, in one pass."""
    order, rows, starts = np.empty(len(keys), np.int64), np.empty(len(keys), np.int64), np.empty(len(keys), np.int64)
    distinct = 0
    for j in range(len(keys)):
        row, order[j] = keys[j] >> 32, keys[j] & 0xFFFFFFFF
        if distinct == 0 or row != rows[distinct - 1]:
            rows[distinct], starts[distinct] = row, j
            distinct += 1
    counts = np.empty(distinct, np.int64)
    counts[:-1] = starts[1:distinct] - starts[:distinct - 1]
    counts[-1] = len(keys) - starts[distinct - 1]
    return rows[:distinct], starts[:distinct], counts, order


class _Scratch(threading.local):
    """Float32 arrays the pair pass writes and the same step reads back, kept from one step to the next (per
    thread): fresh pages for the some 20 MB a step writes cost milliseconds of page faults. Nothing made
    from them outlives the step; the gradients handed to autograd are new arrays each step."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def take(self, name: str, *shape: int) -> np.ndarray:
        size, kept = math.prod(shape), self.arrays.get(name)
        if kept is None or kept.size < size:
            kept = self.arrays[name] = np.empty(size, dtype=np.float32)
        return kept[:size].reshape(shape)


_scratch = _Scratch()


class _FusedLoss(torch.autograd.Function):
    """The loss of ``LRML.loss`` with its gradients computed in the forward pass (the loss is a scalar, so
    the backward only scales them): sparse, coalesced rows for the tables, dense for keys and memory."""

    @staticmethod
    def forward(ctx, user_weight, item_weight, keys, memory, bias, users, pos_items, neg_items, model, options):
        reg_weight = options.reg_weight
        tables = user_weight.detach().numpy(), item_weight.detach().numpy()
        dim = tables[0].shape[1]
        if options.use_memory:
            keys_t, memory_np = keys.detach().T.contiguous().numpy(), memory.detach().numpy()
        else:
            keys_t = memory_np = np.zeros((0, dim), dtype=np.float32)
        bias_np = bias.detach().numpy() if options.use_bias else np.zeros((1, 1), dtype=np.float32)
        users, pos_items, neg_items = (_ids(ids, len(table), name) for ids, table, name in
                                       ((users, tables[0], "user"), (pos_items, tables[1], "item"),
                                        (neg_items, tables[1], "item")))
        use_torch_threads()
        chunks, batch, k, slots = numba.get_num_threads(), len(users), neg_items.shape[1], len(memory_np)
        user_rows, user_starts, user_counts, user_order = _distinct(users, len(tables[0]))
        pos_items, neg_items = pos_items[user_order], neg_items[user_order]  # the pairs user by user
        item_rows, *item_csr = _distinct(np.concatenate([pos_items, neg_items.reshape(-1)]), len(tables[1]))
        item_counts = item_csr[1]
        slot_rows, chunk_stride, parts, part_rows = _item_layout(*item_csr, chunks)
        user_grads = np.empty((len(user_rows), dim), dtype=np.float32)
        item_grads = np.empty((len(item_rows), dim), dtype=np.float32)
        summed_item_grads = _scratch.take("item_grads", len(part_rows), dim)
        summed_item_grads.fill(0.0)
        out = (user_grads, summed_item_grads, _scratch.take("score_grads", (1 + k) * batch),
               _scratch.take("products", batch, dim), _scratch.take("attentions", batch, slots),
               _scratch.take("towards", batch, dim), _scratch.take("logit_grads", batch, slots), np.zeros((chunks, 2)))
        _pair_pass((*tables, keys_t, memory_np, bias_np),
                   (user_rows, user_starts, user_counts, pos_items, neg_items, slot_rows, chunk_stride),
                   options.as_tuple(), out)
        _, _, score_grads, products, attentions, towards, logit_grads, sums = out
        loss, user_norms = sums.sum(axis=0)
        row_norms = user_norms + _row_gradients(tables[1], item_rows, item_counts, parts, part_rows,
                                                summed_item_grads, options.radius, reg_weight, item_grads)
        grads = [_sparse_rows(user_rows, user_grads, user_weight.shape),
                 _sparse_rows(item_rows, item_grads, item_weight.shape), None, None, None]
        if options.use_bias:
            bias_grads = np.empty((len(item_rows), 1), dtype=np.float32)
            row_norms += _bias_gradients(bias_np, item_rows, *item_csr, score_grads, reg_weight, bias_grads)
            grads[4] = _sparse_rows(item_rows, bias_grads, bias.shape)
        if options.use_memory:
            grads[2] = torch.from_numpy(products).T @ torch.from_numpy(logit_grads)
            grads[3] = torch.from_numpy(attentions).T @ torch.from_numpy(towards)
        if reg_weight:
            loss += 0.5 * reg_weight * row_norms
            if options.use_memory:
                shared = model.shared_term_weight
                loss += 0.5 * reg_weight * shared * float(keys.detach().pow(2).sum() + memory.detach().pow(2).sum())
                grads[2] += reg_weight * shared * keys.detach()
                grads[3] += reg_weight * shared * memory.detach()
        ctx.grads = grads
        return torch.tensor(loss, dtype=user_weight.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        grads, ctx.grads = ctx.grads, None  # hand the gradients over: autograd copies a tensor still referenced
        if not bool(grad_loss == 1):
            grads = [g if g is None else g * grad_loss for g in grads]
        return (*grads, None, None, None, None, None)


def _item_layout(starts: np.ndarray, counts: np.ndarray, order: np.ndarray,
                 chunks: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Where the pair pass adds each score's gradient at its item (``_distinct``'s runs of a batch's items):
    each score's row (``slot_rows``, positives first, then the negatives pair by pair), how far apart the
    ``chunks`` threads' rows are, and each distinct item's rows, ``part_rows[parts[k]:parts[k + 1]]``.

    Where items repeat, each thread sums onto its own row of each distinct item (``chunks`` rows an item, far
    fewer than the scores: a step of LRML's softmax with 20 negatives at batch 8,192 and d = 512 wrote 350 MB
    of per-score rows, then read them back); where they hardly do, each score has its own row, shared by no
    thread, in item order, so that an item's rows are adjacent.
    """
    distinct, slots = len(starts), len(order)
    slot_rows = np.empty(slots, np.int64)
    if chunks * distinct < slots:
        slot_rows[order] = np.repeat(np.arange(distinct), counts)
        part_rows = (np.arange(distinct)[:, None] + distinct * np.arange(chunks)).reshape(-1)  # item k's: c d + k
        return slot_rows, distinct, np.arange(distinct + 1) * chunks, part_rows
    slot_rows[order] = np.arange(slots)
    return slot_rows, 0, np.append(starts, slots), np.arange(slots)


def _ids(ids: torch.Tensor, size: int, kind: str) -> np.ndarray:
    """``ids`` as contiguous int64 for the kernels, which do not check bounds: out of range is an error here."""
    ids = ids.to(torch.int64).contiguous()
    low, high = torch.aminmax(ids)
    if low < 0 or high >= size:
        raise IndexError(f"{kind} id {int(low) if low < 0 else int(high)} out of range: the table has {size} rows")
    return ids.numpy()


def _sparse_rows(rows: np.ndarray, values: np.ndarray, shape: torch.Size) -> torch.Tensor:
    return torch.sparse_coo_tensor(torch.from_numpy(rows).unsqueeze(0), torch.from_numpy(values), shape,
                                   is_coalesced=True, check_invariants=False)


def supports(model, users: torch.Tensor) -> bool:
    """Whether this fused pass computes ``model.loss`` here: a variant it implements (``fused_options``), CPU
    float32 sparse tables, gradients on."""
    options = model.fused_options()
    if options is None:
        return False
    tables = [model.user_embedding.weight, model.item_embedding.weight]
    if options.use_bias:
        tables.append(model.item_bias.weight)
    return (torch.is_grad_enabled() and len(users) > 0 and users.device.type == "cpu" and model.config.sparse
            and all(t.requires_grad and t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
                    for t in tables))


def loss(model, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
    """``model.loss`` of the batch through the fused pass, ``neg_items`` of shape (batch, k); call only where
    ``supports`` holds."""
    options = model.fused_options()
    keys = model.keys if options.use_memory else None
    memory = model.memory if options.use_memory else None
    bias = model.item_bias.weight if options.use_bias else None
    return _FusedLoss.apply(model.user_embedding.weight, model.item_embedding.weight, keys, memory, bias,
                            users, pos_items, neg_items, model, options)
