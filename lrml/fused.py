"""LRML's training loss and all its gradients, compiled for CPU tensors: one pass over the pairs, one over the items.

Autograd spends an LRML step on some 40 elementwise passes over (batch, d) tensors, each a
round trip through memory (``bench/floor.py``). Here numba computes each pair's forward and
backward while its three rows are in cache. The pairs are visited user by user, so each user's
gradient is summed and finished in place; the items' per-pair gradients are summed onto the
batch's distinct items in a second pass. Rows are prefetched a few pairs ahead (``lrml.prefetch``).
The loss and gradients equal autograd's to float rounding (``tests/test_fused.py``);
``LRML.loss`` takes this path when ``supports`` holds.
"""
from __future__ import annotations

import math
import sys
import threading

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
    the vector units busy where one sum waits on its own additions (1.45x on its own here)."""
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


@numba.njit(parallel=True, **KERNEL)
def _pair_gradients(users_w, items_w, keys_t, memory, user_rows, user_starts, user_counts, pos, neg,
                    radius, reg_weight, margin, squared, use_memory,
                    user_grads, grad_items, products, attentions, towards, logit_grads, sums):
    """Each pair's hinge and gradients, visited user by user (``_distinct``'s runs): each distinct user's
    full gradient (``user_grads[k]``, through the clip, with the regulariser), each pair's gradients
    with respect to the clipped q and q_neg (``grad_items`` holds the positives' then the negatives'),
    and what the keys' and memory's gradients are summed from: per pair ``p * q``, the attention, the
    loss's gradient at ``p + r`` and at the attention logits (zero for pairs past the margin). Per
    chunk of users, one chunk per thread, ``sums`` holds the hinge and the users' ``count ||x||^2``.

    Plain loops over the d dimensions with scratch rows allocated once per chunk: numba vectorises
    them, where array expressions would allocate a temporary per pair."""
    chunks, batch, n_users = len(sums), len(pos), len(user_rows)
    n_slots, dim = memory.shape[0], users_w.shape[1]
    zero, margin, eps = np.float32(0.0), np.float32(margin), np.float32(EPS)
    for c in prange(chunks):
        p, q, qn = np.empty(dim, np.float32), np.empty(dim, np.float32), np.empty(dim, np.float32)
        t, tn, d_pq = np.empty(dim, np.float32), np.empty(dim, np.float32), np.empty(dim, np.float32)
        for k in range(c * n_users // chunks, (c + 1) * n_users // chunks):
            if k + AHEAD < n_users:
                prefetch_row(users_w, user_rows[k + AHEAD])
            row_u, g_user = users_w[user_rows[k]], user_grads[k]
            su = _clip_scale(row_u, radius)
            for d in range(dim):
                p[d] = row_u[d] * su
                g_user[d] = zero
            for j in range(user_starts[k], user_starts[k] + user_counts[k]):
                if j + AHEAD < batch:
                    prefetch_row(items_w, pos[j + AHEAD])
                    prefetch_row(items_w, neg[j + AHEAD])
                pq, attention, toward, d_logits = products[j], attentions[j], towards[j], logit_grads[j]
                row_q, row_n = items_w[pos[j]], items_w[neg[j]]
                sq, sn = _clip_scale(row_q, radius), _clip_scale(row_n, radius)
                for d in range(dim):
                    q[d] = row_q[d] * sq
                    qn[d] = row_n[d] * sn
                    pq[d] = p[d] * q[d]
                    t[d] = p[d]
                if use_memory:  # attention = softmax(pq K), t = p + attention M
                    _project(pq, keys_t, attention)
                    top = attention.max()
                    total = zero
                    for n in range(n_slots):
                        attention[n] = np.exp(attention[n] - top)
                        total += attention[n]
                    for n in range(n_slots):
                        attention[n] /= total
                    _combine(attention, memory, t)
                d_pos = d_neg = zero
                for d in range(dim):
                    tn[d] = t[d] - qn[d]
                    t[d] -= q[d]
                    d_pos += t[d] * t[d]
                    d_neg += tn[d] * tn[d]
                if squared:
                    h = margin + d_pos - d_neg
                    g_pos, g_neg = np.float32(2.0), np.float32(-2.0)
                else:
                    root_pos, root_neg = np.sqrt(d_pos + eps), np.sqrt(d_neg + eps)
                    h = margin + root_pos - root_neg
                    g_pos, g_neg = np.float32(1.0) / root_pos, np.float32(-1.0) / root_neg
                if not h <= zero:  # a NaN hinge is summed, so divergence shows in the loss
                    sums[c, 0] += h
                out_q, out_qn = grad_items[j], grad_items[batch + j]
                if not h > zero:  # explicit loops: numba's parfor pass dropped slice assignments to these row views
                    for d in range(dim):
                        out_q[d] = out_qn[d] = toward[d] = zero
                    for n in range(n_slots):
                        d_logits[n] = zero
                    continue
                for d in range(dim):
                    toward[d] = g_pos * t[d] + g_neg * tn[d]  # d loss / d (p + r)
                    out_qn[d] = -g_neg * tn[d]
                    d_pq[d] = zero
                if use_memory:  # back through the attention: d_logits = attention * (M toward - mean), d_pq = K d_logits
                    _project(toward, memory, d_logits)
                    weighted = zero
                    for n in range(n_slots):
                        weighted += attention[n] * d_logits[n]
                    for n in range(n_slots):
                        d_logits[n] = attention[n] * (d_logits[n] - weighted)
                    _combine(d_logits, keys_t, d_pq)
                for d in range(dim):
                    g_user[d] += toward[d] + d_pq[d] * q[d]
                    out_q[d] = d_pq[d] * p[d] - g_pos * t[d]
            squared_norm = _finish_row(row_u, g_user, radius, reg_weight * user_counts[k])
            sums[c, 1] += user_counts[k] * squared_norm


@numba.njit(parallel=True, **KERNEL)
def _row_gradients(table, rows, starts, counts, order, pair_grads, radius, reg_weight, row_grads):
    """Each distinct row's gradient: the sum of its pairs' (``order[starts[k]:][:counts[k]]``), carried back
    through the clip to the raw row, plus the regulariser's ``reg count x``. Returns the regulariser's
    sum of ``count ||x||^2``."""
    total = 0.0
    for k in prange(len(rows)):
        if k + AHEAD < len(rows):
            prefetch_row(table, rows[k + AHEAD])
            prefetch_row(pair_grads, order[starts[k + AHEAD]])
        g = row_grads[k]
        for d in range(len(g)):
            g[d] = 0.0
        for j in range(starts[k], starts[k] + counts[k]):
            pair = pair_grads[order[j]]
            for d in range(len(g)):
                g[d] += pair[d]
        total += counts[k] * _finish_row(table[rows[k]], g, radius, reg_weight * counts[k])
    return total


def _distinct(ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """The sorted distinct ids; where each one's positions start in ``order`` and how many there are; and
    ``order``, the positions of ``ids`` sorted by id. Sorts each id with its position packed below it
    (ids are below 2^31): numpy's vectorised sort of int64 runs 2x its argsort here."""
    return _runs(np.sort((ids << 32) | np.arange(len(ids))))


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


_buffers = threading.local()


def _buffer(name: str, *shape: int) -> np.ndarray:
    """A float32 array of ``shape``, reusing last step's when nothing outside this cache still holds it (a
    gradient lives on until the optimizer lets go of it): fresh pages for the some 30 MB a step writes
    cost milliseconds of page faults here."""
    buffers = _buffers.__dict__.setdefault("arrays", {})
    size, kept = math.prod(shape), buffers.get(name)
    # three references: the dict's, ``kept`` and getrefcount's argument; a live view or tensor adds one
    if kept is None or kept.size < size or sys.getrefcount(kept) > 3:
        kept = buffers[name] = np.empty(size, dtype=np.float32)
    return kept[:size].reshape(shape)


class _FusedLoss(torch.autograd.Function):
    """The loss of ``LRML.loss`` with its gradients computed in the forward pass (the loss is a scalar, so
    the backward only scales them): sparse, coalesced rows for the tables, dense for keys and memory."""

    @staticmethod
    def forward(ctx, user_weight, item_weight, keys, memory, users, pos_items, neg_items, model):
        config = model.config
        radius = math.inf if config.clip_radius is None else float(config.clip_radius)
        reg_weight = config.reg_weight if config.regularizer == "batch" else 0.0
        tables = user_weight.detach().numpy(), item_weight.detach().numpy()
        dim = tables[0].shape[1]
        if config.use_memory:
            keys_t, memory_np = keys.detach().T.contiguous().numpy(), memory.detach().numpy()
        else:
            keys_t = memory_np = np.zeros((0, dim), dtype=np.float32)
        users, pos_items, neg_items = (_ids(ids, len(table), name) for ids, table, name in
                                       ((users, tables[0], "user"), (pos_items, tables[1], "item"),
                                        (neg_items, tables[1], "item")))
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        chunks, batch, slots = numba.get_num_threads(), len(users), len(memory_np)
        user_rows, user_starts, user_counts, user_order = _distinct(users)
        pos_items, neg_items = pos_items[user_order], neg_items[user_order]  # the pairs user by user
        item_rows, *item_csr = _distinct(np.concatenate([pos_items, neg_items]))
        # sized for the most distinct rows a batch can have, so a reused buffer always fits
        user_grads = _buffer("user_grads", batch, dim)[:len(user_rows)]
        item_grads = _buffer("item_grads", 2 * batch, dim)[:len(item_rows)]
        grad_items = _buffer("grad_items", 2 * batch, dim)
        products, towards = _buffer("products", batch, dim), _buffer("towards", batch, dim)
        attentions, logit_grads = _buffer("attentions", batch, slots), _buffer("logit_grads", batch, slots)
        sums = np.zeros((chunks, 2))
        _pair_gradients(*tables, keys_t, memory_np, user_rows, user_starts, user_counts, pos_items, neg_items,
                        radius, reg_weight, float(config.margin), config.distance == "squared", config.use_memory,
                        user_grads, grad_items, products, attentions, towards, logit_grads, sums)
        loss, user_norms = sums.sum(axis=0)
        row_norms = user_norms + _row_gradients(tables[1], item_rows, *item_csr, grad_items, radius, reg_weight,
                                                item_grads)
        grads = [_sparse_rows(user_rows, user_grads, user_weight.shape),
                 _sparse_rows(item_rows, item_grads, item_weight.shape), None, None]
        if config.use_memory:
            grads[2] = torch.from_numpy(products).T @ torch.from_numpy(logit_grads)
            grads[3] = torch.from_numpy(attentions).T @ torch.from_numpy(towards)
        if reg_weight:
            loss += 0.5 * reg_weight * row_norms
            if config.use_memory:
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
        return (*grads, None, None, None, None)


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
    """Whether this fused pass computes ``model.loss`` here: CPU float32 sparse tables, gradients on, and a
    variant it implements (the negative scored with the positive pair's relation, no dense regulariser)."""
    config, tables = model.config, (model.user_embedding.weight, model.item_embedding.weight)
    return (torch.is_grad_enabled() and len(users) > 0 and users.device.type == "cpu" and config.sparse
            and all(t.requires_grad and t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
                    for t in tables)
            and config.negative_relation == "positive" and config.regularizer in ("batch", "none"))


def loss(model, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
    """``model.loss`` of the batch through the fused pass; call only where ``supports`` holds."""
    keys = model.keys if model.config.use_memory else None
    memory = model.memory if model.config.use_memory else None
    return _FusedLoss.apply(model.user_embedding.weight, model.item_embedding.weight, keys, memory,
                            users, pos_items, neg_items, model)
