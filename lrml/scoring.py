"""LRML's scores against every item for a batch of users (full ranking), compiled for CPU tensors.

With the attention ``a`` of a pair, ``||p + r - q||^2 = ||p - q||^2 + a (M M^T) a^T + 2 a M (p - q)``, so a pair
costs work over the N memory slots, not the d dimensions. The attention logits of a block of users against
a chunk of items, and the products ``p . q``, are one BLAS matrix multiply; everything after it (the softmax
over the slots, the two terms, the distance and the item bias) is one numba pass over the logits while they
are in cache. As a dozen elementwise torch operations, that part took longer than the multiply. Its
exponential is a polynomial that vectorises (``_exp_parts``): the math library's is a scalar call per element.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from lrml.fused import EPS, KERNEL

USER_BLOCK, ITEM_CHUNK = 64, 256  # a block's logits (64 x (N + 1) x 256 floats) stay in a core's L2 cache
LOG2E = np.float32(1.4426950408889634)
LN2_HIGH, LN2_LOW = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2 split so n * LN2_HIGH is exact
EXP_FLOOR = np.float32(-87.0)  # exp below it is under float32's smallest normal number
EXP_BIAS, MANTISSA_BITS = np.int32(127), 23


@numba.njit(inline="always", **KERNEL)
def _exp_parts(x):
    """``exp(x) = y * 2^n`` for ``x <= 0``: Cephes' ``expf`` polynomial (within 2 float32 ulps). A NaN ``x``
    stays NaN, so a diverged model's scores do too."""
    x = x if not x < EXP_FLOOR else EXP_FLOOR
    n = np.floor(x * LOG2E + np.float32(0.5))
    r = x - n * LN2_HIGH - n * LN2_LOW
    y = np.float32(1.9875691500e-4)
    y = y * r + np.float32(1.3981999507e-3)
    y = y * r + np.float32(8.3334519073e-3)
    y = y * r + np.float32(4.1665795894e-2)
    y = y * r + np.float32(1.6666665459e-1)
    y = y * r + np.float32(5.0000001201e-1)
    return y * r * r + r + np.float32(1.0), n


@numba.njit(inline="always", **KERNEL)
def _at_least_zero(x):
    """``max(x, 0)`` that keeps a NaN (numba's ``max`` returns its second argument when the first is NaN)."""
    return x if not x < np.float32(0.0) else np.float32(0.0)


@numba.njit(**KERNEL)
def _scores(logits, upper_gram, memory_p, memory_q, user_norms, item_norms, item_bias, root, scores, start):
    """``scores[b, start + i]``: ``-sqrt(x + EPS)`` if ``root`` else ``-x``, plus the item's bias, where
    ``x = ||p_b - q_i||^2 + a G a^T + a (memory_p[b] - memory_q[:, start + i])`` (each sum floored at 0),
    ``a`` is the softmax of ``logits[b, :N, i]`` over the N slots and ``logits[b, N, i]`` is ``p_b . q_i``.
    ``G = M M^T`` comes as ``upper_gram``: its upper triangle, off-diagonal doubled, so
    ``a G a^T = sum_j a_j sum_{k >= j} upper_gram[j, k] a_k``. The loops over items are innermost, so each
    vectorises; ``e`` is the softmax before its division, done once at the end."""
    users, rows_per_user, items = logits.shape
    slots = rows_per_user - 1
    e = np.empty((slots, items), np.float32)
    scale_bits = np.empty(items, np.int32)
    scale = scale_bits.view(np.float32)  # 2^n, written as its float32 bits
    peak, total = np.empty(items, np.float32), np.empty(items, np.float32)
    quad, weighted = np.empty(items, np.float32), np.empty(items, np.float32)
    for b in range(users):
        rows = logits[b]
        peak[:] = rows[0]
        for j in range(1, slots):
            row = rows[j]
            for i in range(items):
                peak[i] = max(peak[i], row[i])  # a NaN logit is skipped here and turns its pair NaN below
        total[:] = 0.0
        for j in range(slots):
            row, ej = rows[j], e[j]
            for i in range(items):
                y, n = _exp_parts(row[i] - peak[i])
                ej[i] = y
                scale_bits[i] = (np.int32(n) + EXP_BIAS) << MANTISSA_BITS
            for i in range(items):
                ej[i] *= scale[i]
                total[i] += ej[i]
        quad[:] = 0.0
        for j in range(slots):
            weighted[:] = 0.0
            k = j
            while k + 4 <= slots:  # four slots a pass: a quarter of the loads and stores of ``weighted``
                g0, g1, g2, g3 = upper_gram[j, k], upper_gram[j, k + 1], upper_gram[j, k + 2], upper_gram[j, k + 3]
                e0, e1, e2, e3 = e[k], e[k + 1], e[k + 2], e[k + 3]
                for i in range(items):
                    weighted[i] += g0 * e0[i] + g1 * e1[i] + g2 * e2[i] + g3 * e3[i]
                k += 4
            while k < slots:
                g, ek = upper_gram[j, k], e[k]
                for i in range(items):
                    weighted[i] += g * ek[i]
                k += 1
            ej, linear_p, linear_q = e[j], memory_p[b, j], memory_q[j]
            for i in range(items):
                quad[i] += ej[i] * (weighted[i] + total[i] * (linear_p - linear_q[start + i]))
        dots, out, user_norm = rows[slots], scores[b], user_norms[b]
        for i in range(items):
            apart_pq = _at_least_zero(user_norm + item_norms[start + i] - np.float32(2.0) * dots[i])
            apart = _at_least_zero(apart_pq + quad[i] / (total[i] * total[i]))
            out[start + i] = (-np.sqrt(apart + np.float32(EPS)) if root else -apart) + item_bias[start + i]


@torch.no_grad()
def lrml_scores(p: torch.Tensor, q: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, root: bool,
                item_bias: torch.Tensor | None) -> torch.Tensor:
    """LRML's scores (users x items) of every user row ``p`` against every item row ``q`` (float32, CPU):
    ``-sqrt(||p + r - q||^2 + EPS)`` if ``root`` else ``-||p + r - q||^2``, plus ``item_bias`` if given, with
    the relation ``r = softmax((p * q) K) M``.

    Items are taken in chunks by a pool of as many threads as torch's. Each thread multiplies its chunk
    with a single-threaded BLAS call and runs the kernel on it, so no core waits on, or spins against,
    another pool's threads.
    """
    users, slots = len(p), memory.shape[0]
    gram = memory @ memory.T
    upper_gram = (torch.triu(gram, diagonal=1) * 2 + torch.diag(torch.diag(gram))).contiguous().numpy()
    memory_p = (2 * p @ memory.T).contiguous().numpy()  # (users, slots)
    memory_q = (2 * memory @ q.T).contiguous().numpy()  # (slots, items)
    user_norms, item_norms = p.pow(2).sum(1).numpy(), q.pow(2).sum(1).numpy()
    # rows (b, j) for j < N: p_b * K[:, j], whose products with q_i are the attention logits; row (b, N): p_b
    user_rows = torch.cat([p.unsqueeze(1) * keys.T.unsqueeze(0), p.unsqueeze(1)], dim=1)
    rows_per_user = slots + 1
    user_rows = user_rows.reshape(users * rows_per_user, -1).numpy()
    items_np = q.contiguous().numpy()
    bias = np.zeros(len(q), np.float32) if item_bias is None else item_bias.reshape(-1).contiguous().numpy()
    scores = torch.empty(users, len(q))
    scores_np = scores.numpy()
    threads = max(1, torch.get_num_threads())

    def score_chunks(first: int) -> None:
        buffer = np.empty(USER_BLOCK * rows_per_user * ITEM_CHUNK, np.float32)
        for start in range(first * ITEM_CHUNK, len(q), threads * ITEM_CHUNK):
            items = items_np[start:start + ITEM_CHUNK]
            for top in range(0, users, USER_BLOCK):
                block = slice(top, min(top + USER_BLOCK, users))
                block_rows = user_rows[block.start * rows_per_user:block.stop * rows_per_user]
                out = buffer[:len(block_rows) * len(items)].reshape(len(block_rows), -1)
                logits = np.matmul(block_rows, items.T, out=out)
                _scores(logits.reshape(-1, rows_per_user, len(items)), upper_gram, memory_p[block], memory_q,
                        user_norms[block], item_norms, bias, root, scores_np[block], start)

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        list(pool.map(score_chunks, range(threads)))
    return scores
