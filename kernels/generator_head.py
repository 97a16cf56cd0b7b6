"""Fused ELECTRA generator head: MLM cross-entropy and Gumbel-max sampling in one pass over the vocabulary.

At the masked positions only (ELECTRA paper, section 2; official code ``pretrain_helpers``),
the generator computes ``logits = h @ W.T + b`` (W: the tied word embeddings), the MLM loss
``cross_entropy(logits, targets)`` and a replacement token sampled from ``softmax(logits / T)``
with Gumbel-max: ``argmax(logits / T + g)``, ``g = -log(-log(u))``, in fp32, with no gradient
through the sample. Unfused this is ~8 passes over an [M, V] tensor; here the forward streams
over vocabulary tiles keeping only per-row running state (online log-sum-exp, target logit,
running Gumbel argmax). The vocabulary is split across programs (grid: row blocks x splits) so
that even ELECTRA-Small's 2,432 rows fill the card, and a small second kernel combines the
splits' partial states. The backward recomputes the tiles (one pass over vocab tiles per
row block for dL/dh, one pass over row blocks per vocab tile for dL/dW and dL/db:
deterministic, no atomics, never an [M, V] tensor).

Wide embeddings (Base, Large: E > 256) make the logits compute bound, and there a chunked formulation
is closer to the roofline (``_launch_chunked``): per chunk of rows, cuBLAS logits in fp32, one Triton
pass for loss, samples and softmax - onehot, and two cuBLAS matmuls for the gradients, all in the
forward; three sweeps of the logit space instead of five.

The noise is keyed by (seed, row, vocab index) through Triton's counter-based Philox: one call
``tl.philox(seed, v // 4, row, 0, 0)`` gives four 32-bit words, word ``v % 4`` being vocabulary
index v's (a tile holds four interleaved words, so each 10-round call serves four logits), never
keyed by program id, tile or split, so samples do not depend on the block sizes, the splits or the
grid. Ties go to the lowest vocabulary index, like torch.argmax, in every split and in the combine.
The reference ports the same generator to int64 torch ops (``_reference_uniform``): its uniforms are
the kernel's bit for bit, so from equal fp32 logits it draws the kernel's samples.

The cost of each launch (FLOPs and HBM bytes its grid and tiles imply, ``_cost``) is attached to
its plan; ``python -m electra_fast.bench --proxies`` reports it (``electra_fast.proxies``).

Layout of this file: Triton kernels, host launcher (input checks, block sizes), PyTorch
reference (the CPU path and the test oracle), autograd wrapper (torch custom ops, so
torch.compile(fullgraph=True) traces the Triton path) and dispatch. Which variants a training step
launches (dtypes, block sizes) is recorded by ``kernels/launches.py``, and ``tools/compile_kernels.py``
compiles exactly those.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .checks import (
    describe,
    is_integer,
    loss_denominator,
    reads_values,
    require_eps,
    require_float,
    require_same_device,
)
from .custom_ops import triton_op
from .dispatch import autocast_projection, implementation, interpreter_fp32_variant, interpreting, is_fake
from .launches import L2_RESIDENT_BYTES, KernelPlan, hbm_bytes, record_extern, record_reference
from .loss_mean import loss_mean

# Philox uniforms (kernel and reference) are clamped into [U_EPS, 1 - U_EPS] so both logs stay finite.
U_EPS = 1e-7
_U_EPS_TL = tl.constexpr(U_EPS)  # the same value, readable inside @triton.jit functions

NUM_SMS = 132  # an H100 SXM's SMs: the grids are sized to fill it (and an A100's 108)


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _load_tile(PTR, idx, idx_ok, ks, E: tl.constexpr, DOT_F32: tl.constexpr):
    """Rows ``idx`` of a contiguous [*, E] matrix, columns ``ks``; zero outside the masks."""
    x = tl.load(PTR + idx.to(tl.int64)[:, None] * E + ks[None, :],
                mask=idx_ok[:, None] & (ks < E)[None, :], other=0.0)
    if DOT_F32:
        # fp32 inputs, or the interpreter (whose bf16 arithmetic and bf16 tl.dot are wrong).
        x = x.to(tl.float32)
    return x


@triton.jit
def _dot(a, b, acc, DOT_F32: tl.constexpr):
    if DOT_F32:
        # Exact fp32 products; the default for fp32 inputs would be TF32 on the GPU.
        return tl.dot(a, b, acc=acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc=acc)


@triton.jit
def _philox_uniforms(seed, g, rows):
    """Uniforms in [U_EPS, 1 - U_EPS] of vocabulary indices 4 g + j (j = 0, 1, 2, 3) at ``rows``: the four
    words of ``tl.philox(seed, g, row, 0, 0)``, each through ``tl.uint_to_uniform_float`` and clamped.
    ``g`` and ``rows`` are uint32 tensors of one shape. The reference's ``_reference_uniform`` is the same
    function in plain torch, bit for bit."""
    zero = g * 0
    r0, r1, r2, r3 = tl.philox(seed, g, rows, zero, zero)
    return _clamped_uniform(r0), _clamped_uniform(r1), _clamped_uniform(r2), _clamped_uniform(r3)


@triton.jit
def _clamped_uniform(bits):
    u = tl.uint_to_uniform_float(bits)
    return tl.minimum(tl.maximum(u, _U_EPS_TL), 1.0 - _U_EPS_TL)


@triton.jit
def _word_update(acc, cols, V, tgt, u, inv_temperature, m_new, s_i, tgt_logit, best, best_idx, amax_idx,
                 RETURN_ARGMAX: tl.constexpr, SAMPLE: tl.constexpr):
    """Fold one word's columns (``cols``: every fourth vocabulary index) into a row block's running state:
    sum of exp(logit - m_new), target logit, Gumbel-max (when SAMPLE) and argmax (first index on ties, like
    torch)."""
    col_ok = cols < V
    logits = tl.where(col_ok[None, :], acc, float("-inf"))
    s_i += tl.sum(tl.exp(logits - m_new[:, None]), 1)
    tgt_logit += tl.sum(tl.where(cols[None, :] == tgt[:, None], logits, 0.0), 1)
    if SAMPLE:
        score = tl.where(col_ok[None, :], logits * inv_temperature - tl.log(-tl.log(u)), float("-inf"))
        tile_best, tile_pos = tl.max(score, 1, return_indices=True)
        tile_idx = tile_pos * 4 + tl.min(cols, 0)  # cols = 4 g + word: position -> vocabulary index
        better = (tile_best > best) | ((tile_best == best) & (tile_idx < best_idx))
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, tile_idx, best_idx)
    if RETURN_ARGMAX:
        tile_max, tile_amax = tl.max(logits, 1, return_indices=True)
        amax_idx = tl.where(tile_max == m_new, tl.minimum(amax_idx, tile_amax * 4 + tl.min(cols, 0)), amax_idx)
    return s_i, tgt_logit, best, best_idx, amax_idx


@triton.jit
def _fold_tile(a0, a1, a2, a3, g, V, tgt, seed, row_ctr, inv_temperature, m_i, s_i, tgt_logit, best, best_idx,
               amax_idx, RETURN_ARGMAX: tl.constexpr, SAMPLE: tl.constexpr):
    """Fold one vocabulary tile into a row block's running state. The tile is four words: ``a<j>`` holds
    the fp32 logits of columns 4 g + j (Philox counters ``g``; bias added). Returns the new state
    (max logit, sum of exp(logit - max), target logit, best Gumbel score and index, argmax). Without
    SAMPLE (the MLM objective) no Philox call is made and the Gumbel state passes through unchanged."""
    c0 = g * 4
    # Online log-sum-exp over the whole tile; column 4 g[0] < V is real, so m_new is finite.
    t0 = tl.max(tl.where((c0 < V)[None, :], a0, float("-inf")), 1)
    t1 = tl.max(tl.where((c0 + 1 < V)[None, :], a1, float("-inf")), 1)
    t2 = tl.max(tl.where((c0 + 2 < V)[None, :], a2, float("-inf")), 1)
    t3 = tl.max(tl.where((c0 + 3 < V)[None, :], a3, float("-inf")), 1)
    m_new = tl.maximum(tl.maximum(m_i, tl.maximum(t0, t1)), tl.maximum(t2, t3))
    if RETURN_ARGMAX:
        amax_idx = tl.where(m_new > m_i, 2**31 - 1, amax_idx)  # a new maximum: its index comes below
    s_i = s_i * tl.exp(m_i - m_new)
    if SAMPLE:
        r0, r1, r2, r3 = _philox_uniforms(seed, row_ctr * 0 + g.to(tl.uint32)[None, :], row_ctr)
    else:  # unused: _word_update reads u only when sampling
        r0, r1, r2, r3 = a0, a1, a2, a3
    s_i, tgt_logit, best, best_idx, amax_idx = _word_update(
        a0, c0, V, tgt, r0, inv_temperature, m_new, s_i, tgt_logit, best, best_idx, amax_idx, RETURN_ARGMAX,
        SAMPLE)
    s_i, tgt_logit, best, best_idx, amax_idx = _word_update(
        a1, c0 + 1, V, tgt, r1, inv_temperature, m_new, s_i, tgt_logit, best, best_idx, amax_idx, RETURN_ARGMAX,
        SAMPLE)
    s_i, tgt_logit, best, best_idx, amax_idx = _word_update(
        a2, c0 + 2, V, tgt, r2, inv_temperature, m_new, s_i, tgt_logit, best, best_idx, amax_idx, RETURN_ARGMAX,
        SAMPLE)
    s_i, tgt_logit, best, best_idx, amax_idx = _word_update(
        a3, c0 + 3, V, tgt, r3, inv_temperature, m_new, s_i, tgt_logit, best, best_idx, amax_idx, RETURN_ARGMAX,
        SAMPLE)
    return m_new, s_i, tgt_logit, best, best_idx, amax_idx


@triton.jit
def _logits_tile(acc, h, W, cols, ks, E: tl.constexpr, V, DOT_F32: tl.constexpr):
    w = _load_tile(W, cols, cols < V, ks, E, DOT_F32)  # (BLOCK_V // 4, BLOCK_E)
    return _dot(h, tl.trans(w), acc, DOT_F32)


@triton.jit
def _generator_head_fwd_kernel(
    H, W, B, TARGETS, SEED,  # [M, E], [V, E], [V], [M] int64, [1] int64
    PART_M, PART_S, PART_T, PART_BEST, PART_IDX, PART_AMAX,  # [SPLITS, M] each: fp32 x 4, int32 x 2
    M, V, cols_per_split, inv_temperature, ignore_index,
    E: tl.constexpr, HAS_BIAS: tl.constexpr, RETURN_ARGMAX: tl.constexpr, SAMPLE: tl.constexpr,
    DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """Partial state of one row block over one vocabulary split (``cols_per_split`` columns, a multiple of
    BLOCK_V): max logit, sum of exp(logit - max), target logit, best Gumbel score and its index (SAMPLE),
    argmax (RETURN_ARGMAX).

    A vocabulary tile is four interleaved words of BLOCK_V / 4 columns (column 4 g + j is word j of
    Philox counter (g, row)): one Philox call gives the uniforms of four logits, keyed by (seed, row,
    vocabulary index) only, so the draws do not depend on BLOCK_V, the splits or the grid."""
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    Q: tl.constexpr = BLOCK_V // 4
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    tgt = tl.load(TARGETS + rows, mask=row_ok, other=ignore_index)
    seed = tl.load(SEED)
    zero = tl.zeros((BLOCK_M, Q), tl.uint32)
    row_ctr = zero + rows.to(tl.uint32)[:, None]  # Philox counter word 1: the row

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of the logits
    s_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp(logit - m_i)
    tgt_logit = tl.zeros((BLOCK_M,), tl.float32)
    best = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of logits / T + g
    best_idx = tl.full((BLOCK_M,), 2**31 - 1, tl.int32)
    amax_idx = tl.full((BLOCK_M,), 2**31 - 1, tl.int32)

    v_begin = split * cols_per_split
    v_end = tl.minimum(V, v_begin + cols_per_split)
    for v0 in range(v_begin, v_end, BLOCK_V):
        g = v0 // 4 + tl.arange(0, Q)  # Philox counters of this tile
        c0 = g * 4
        a0 = tl.zeros((BLOCK_M, Q), tl.float32)
        a1 = tl.zeros((BLOCK_M, Q), tl.float32)
        a2 = tl.zeros((BLOCK_M, Q), tl.float32)
        a3 = tl.zeros((BLOCK_M, Q), tl.float32)
        for e0 in range(0, E, BLOCK_E):
            ks = e0 + tl.arange(0, BLOCK_E)
            h = _load_tile(H, rows, row_ok, ks, E, DOT_F32)  # (BLOCK_M, BLOCK_E)
            a0 = _logits_tile(a0, h, W, c0, ks, E, V, DOT_F32)
            a1 = _logits_tile(a1, h, W, c0 + 1, ks, E, V, DOT_F32)
            a2 = _logits_tile(a2, h, W, c0 + 2, ks, E, V, DOT_F32)
            a3 = _logits_tile(a3, h, W, c0 + 3, ks, E, V, DOT_F32)
        if HAS_BIAS:
            a0 += tl.load(B + c0, mask=c0 < V, other=0.0).to(tl.float32)[None, :]
            a1 += tl.load(B + c0 + 1, mask=c0 + 1 < V, other=0.0).to(tl.float32)[None, :]
            a2 += tl.load(B + c0 + 2, mask=c0 + 2 < V, other=0.0).to(tl.float32)[None, :]
            a3 += tl.load(B + c0 + 3, mask=c0 + 3 < V, other=0.0).to(tl.float32)[None, :]
        m_i, s_i, tgt_logit, best, best_idx, amax_idx = _fold_tile(
            a0, a1, a2, a3, g, V, tgt, seed, row_ctr, inv_temperature, m_i, s_i, tgt_logit, best, best_idx,
            amax_idx, RETURN_ARGMAX, SAMPLE)

    out = split.to(tl.int64) * M + rows
    tl.store(PART_M + out, m_i, mask=row_ok)
    tl.store(PART_S + out, s_i, mask=row_ok)
    tl.store(PART_T + out, tgt_logit, mask=row_ok)
    if SAMPLE:
        tl.store(PART_BEST + out, best, mask=row_ok)
        tl.store(PART_IDX + out, best_idx, mask=row_ok)
    if RETURN_ARGMAX:
        tl.store(PART_AMAX + out, amax_idx, mask=row_ok)


@triton.jit
def _generator_head_combine_kernel(
    PART_M, PART_S, PART_T, PART_BEST, PART_IDX, PART_AMAX, TARGETS,  # [SPLITS, M] partials, [M] int64
    LSE, ROW_LOSS, SAMPLES, ARGMAX,  # [M] fp32, [M] fp32, [M] int64, [M] int64
    M, ignore_index,
    SPLITS: tl.constexpr, RETURN_ARGMAX: tl.constexpr, SAMPLE: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Combine the splits' partial states per row: log-sum-exp, loss, Gumbel-max sample (SAMPLE), argmax."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    sp = tl.arange(0, BLOCK_S)
    ok = row_ok[:, None] & (sp < SPLITS)[None, :]
    at = sp.to(tl.int64)[None, :] * M + rows[:, None]
    pm = tl.load(PART_M + at, mask=ok, other=float("-inf"))
    m = tl.max(pm, 1)
    m_safe = tl.where(row_ok, m, 0.0)
    s = tl.sum(tl.load(PART_S + at, mask=ok, other=0.0) * tl.exp(pm - m_safe[:, None]), 1)
    lse = m_safe + tl.log(tl.where(row_ok, s, 1.0))
    tgt_logit = tl.sum(tl.load(PART_T + at, mask=ok, other=0.0), 1)
    tgt = tl.load(TARGETS + rows, mask=row_ok, other=ignore_index)
    valid = row_ok & (tgt != ignore_index)
    big = 2**31 - 1
    tl.store(LSE + rows, lse, mask=row_ok)
    tl.store(ROW_LOSS + rows, tl.where(valid, lse - tgt_logit, 0.0), mask=row_ok)
    if SAMPLE:
        pb = tl.load(PART_BEST + at, mask=ok, other=float("-inf"))
        top = tl.max(pb, 1)
        idx = tl.min(tl.where(pb == top[:, None], tl.load(PART_IDX + at, mask=ok, other=big), big), 1)
        tl.store(SAMPLES + rows, tl.where(valid, idx.to(tl.int64), tgt), mask=row_ok)
    if RETURN_ARGMAX:
        amax = tl.min(tl.where(pm == m[:, None], tl.load(PART_AMAX + at, mask=ok, other=big), big), 1)
        tl.store(ARGMAX + rows, amax.to(tl.int64), mask=row_ok)


@triton.jit
def _load_word(ROW, B, cols, row_ok, V, HAS_BIAS: tl.constexpr):
    """fp32 logits (+ bias) at columns ``cols`` of the rows that start at pointers ``ROW``; -inf past V."""
    ok = cols < V
    x = tl.load(ROW[:, None] + cols[None, :], mask=row_ok[:, None] & ok[None, :], other=float("-inf"))
    if HAS_BIAS:
        x += tl.load(B + cols, mask=ok, other=0.0).to(tl.float32)[None, :]
    return x


@triton.jit
def _generator_head_rows_kernel(
    LOGITS, B, TARGETS, SEED,  # [C, V] fp32 logits of rows r0 .. r0 + C (no bias), [V], [M] int64, [1] int64
    LSE, ROW_LOSS, SAMPLES, ARGMAX, DLOG,  # [M] fp32, [M] fp32, [M] int64, [M] int64, [C, ld] (ld >= V)
    r0, C, V, ld, inv_temperature, ignore_index,
    HAS_BIAS: tl.constexpr, RETURN_ARGMAX: tl.constexpr, SAMPLE: tl.constexpr, WRITE_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """The chunked head's pass over materialised logits (Base, Large: see ``_launch_chunked``).

    A persistent grid: program p takes row blocks p, p + nprog, ... of the chunk. For each row block, pass 1
    reads its logits in four-word tiles (the fused kernel's layout: the same Philox words, so the same
    samples from equal logits) for log-sum-exp, loss, Gumbel-max sample (SAMPLE) and argmax; pass 2 (WRITE_GRAD)
    re-reads them, while still in L2, and writes softmax - onehot (unscaled, 0 at ignored rows and in the
    padding columns V .. ld) in DLOG's dtype for the two gradient matmuls."""
    Q: tl.constexpr = BLOCK_V // 4
    seed = tl.load(SEED)
    for blk in range(tl.program_id(0), tl.cdiv(C, BLOCK_R), tl.num_programs(0)):
        local = blk * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = local < C
        rows = r0 + local
        row_ptr = LOGITS + local.to(tl.int64) * V
        tgt = tl.load(TARGETS + rows, mask=row_ok, other=ignore_index)
        valid = row_ok & (tgt != ignore_index)
        row_ctr = tl.zeros((BLOCK_R, Q), tl.uint32) + rows.to(tl.uint32)[:, None]
        m_i = tl.full((BLOCK_R,), float("-inf"), tl.float32)
        s_i = tl.zeros((BLOCK_R,), tl.float32)
        tgt_logit = tl.zeros((BLOCK_R,), tl.float32)
        best = tl.full((BLOCK_R,), float("-inf"), tl.float32)
        best_idx = tl.full((BLOCK_R,), 2**31 - 1, tl.int32)
        amax_idx = tl.full((BLOCK_R,), 2**31 - 1, tl.int32)
        for v0 in range(0, V, BLOCK_V):
            g = v0 // 4 + tl.arange(0, Q)
            c0 = g * 4
            m_i, s_i, tgt_logit, best, best_idx, amax_idx = _fold_tile(
                _load_word(row_ptr, B, c0, row_ok, V, HAS_BIAS), _load_word(row_ptr, B, c0 + 1, row_ok, V, HAS_BIAS),
                _load_word(row_ptr, B, c0 + 2, row_ok, V, HAS_BIAS), _load_word(row_ptr, B, c0 + 3, row_ok, V, HAS_BIAS),
                g, V, tgt, seed, row_ctr, inv_temperature, m_i, s_i, tgt_logit, best, best_idx, amax_idx,
                RETURN_ARGMAX, SAMPLE)
        m_safe = tl.where(row_ok, m_i, 0.0)
        lse = m_safe + tl.log(tl.where(row_ok, s_i, 1.0))
        tl.store(LSE + rows, lse, mask=row_ok)
        tl.store(ROW_LOSS + rows, tl.where(valid, lse - tgt_logit, 0.0), mask=row_ok)
        if SAMPLE:
            tl.store(SAMPLES + rows, tl.where(valid, best_idx.to(tl.int64), tgt), mask=row_ok)
        if RETURN_ARGMAX:
            tl.store(ARGMAX + rows, amax_idx.to(tl.int64), mask=row_ok)
        if WRITE_GRAD:
            for v0 in range(0, ld, BLOCK_V):
                cols = v0 + tl.arange(0, BLOCK_V)
                col_ok = cols < V
                x = tl.load(row_ptr[:, None] + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
                p = _dlogits(x, B, cols, col_ok, tgt, valid, lse, HAS_BIAS)
                tl.store(DLOG + local.to(tl.int64)[:, None] * ld + cols[None, :], p.to(DLOG.dtype.element_ty),
                         mask=row_ok[:, None] & (cols < ld)[None, :])


@triton.jit
def _softmax_minus_onehot(h, w, B, cols, col_ok, tgt, valid, lse,
                          HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr):
    """Recomputed (softmax(logits) - onehot(target)) for one (row block, vocab tile); 0 where ignored."""
    logits = _dot(h, tl.trans(w), tl.zeros((BLOCK_M, BLOCK_V), tl.float32), DOT_F32)
    return _dlogits(logits, B, cols, col_ok, tgt, valid, lse, HAS_BIAS)


@triton.jit
def _dlogits(logits, B, cols, col_ok, tgt, valid, lse, HAS_BIAS: tl.constexpr):
    """softmax(logits + b) - onehot(target) of fp32 logits [rows, cols] (bias not yet added); 0 where
    ignored or past V."""
    if HAS_BIAS:
        logits += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    p = tl.exp(logits - lse[:, None])
    p = p - tl.where(cols[None, :] == tgt[:, None], 1.0, 0.0)
    return tl.where(valid[:, None] & col_ok[None, :], p, 0.0)


@triton.jit
def _generator_head_bwd_dh_kernel(
    H, W, B, TARGETS, LSE, GRAD, DEN,  # [M, E], [V, E], [V], [M] int64, [M] fp32, the loss's gradient and denominator
    DH,  # [M, E], or [splits, M, E] fp32 partial sums when the vocabulary is split
    M, V, cols_per_split, ignore_index,
    E: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """dL/dh for one row block over one vocabulary split: sum over its vocab tiles of
    (softmax - onehot) @ W_tile, times GRAD / DEN."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    ks = tl.arange(0, BLOCK_E)  # BLOCK_E >= E: the whole embedding in one tile
    tgt = tl.load(TARGETS + rows, mask=row_ok, other=ignore_index)
    valid = row_ok & (tgt != ignore_index)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    h = _load_tile(H, rows, row_ok, ks, E, DOT_F32)  # (BLOCK_M, BLOCK_E)

    acc = tl.zeros((BLOCK_M, BLOCK_E), tl.float32)
    v_begin = split * cols_per_split
    for v0 in range(v_begin, tl.minimum(V, v_begin + cols_per_split), BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        w = _load_tile(W, cols, col_ok, ks, E, DOT_F32)  # (BLOCK_V, BLOCK_E)
        dlogits = _softmax_minus_onehot(h, w, B, cols, col_ok, tgt, valid, lse, HAS_BIAS, DOT_F32,
                                        BLOCK_M, BLOCK_V)
        # Unscaled (values in [-1, 1]) so the cast to fp16 cannot underflow; scaled once below.
        acc = _dot(dlogits.to(w.dtype), w, acc, DOT_F32)

    acc = acc * (tl.load(GRAD).to(tl.float32) / tl.load(DEN))
    tl.store(DH + (split.to(tl.int64) * M + rows)[:, None] * E + ks[None, :], acc.to(DH.dtype.element_ty),
             mask=row_ok[:, None] & (ks < E)[None, :])


@triton.jit
def _generator_head_bwd_dw_kernel(
    H, W, B, TARGETS, LSE, GRAD, DEN,  # [M, E], [V, E], [V], [M] int64, [M] fp32, the loss's gradient and denominator
    DW, DB,  # [V, E], [V]
    M, V, ignore_index,
    E: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """dL/dW and dL/db for one vocab tile: sum over row blocks of (softmax - onehot).T @ h."""
    pid = tl.program_id(0)
    cols = pid * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = cols < V
    ks = tl.arange(0, BLOCK_E)  # BLOCK_E >= E
    w = _load_tile(W, cols, col_ok, ks, E, DOT_F32)  # (BLOCK_V, BLOCK_E)

    acc = tl.zeros((BLOCK_V, BLOCK_E), tl.float32)
    db = tl.zeros((BLOCK_V,), tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        tgt = tl.load(TARGETS + rows, mask=row_ok, other=ignore_index)
        valid = row_ok & (tgt != ignore_index)
        lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
        h = _load_tile(H, rows, row_ok, ks, E, DOT_F32)  # (BLOCK_M, BLOCK_E)
        dlogits = _softmax_minus_onehot(h, w, B, cols, col_ok, tgt, valid, lse, HAS_BIAS, DOT_F32,
                                        BLOCK_M, BLOCK_V)
        acc = _dot(tl.trans(dlogits.to(h.dtype)), h, acc, DOT_F32)
        db += tl.sum(dlogits, 0)

    scale = tl.load(GRAD).to(tl.float32) / tl.load(DEN)
    tl.store(DW + cols.to(tl.int64)[:, None] * E + ks[None, :], (acc * scale).to(DW.dtype.element_ty),
             mask=col_ok[:, None] & (ks < E)[None, :])
    if HAS_BIAS:
        tl.store(DB + cols, (db * scale).to(DB.dtype.element_ty), mask=col_ok)


# --------------------------------------------------------------------------------------------
# Host launcher
# --------------------------------------------------------------------------------------------


def _check_inputs(hidden, weight, bias, targets, temperature, seed, ignore_index, eps, debug, sample) -> None:
    require_eps(eps)
    if not isinstance(sample, bool):
        raise ValueError(f"sample must be True or False; got {sample!r}")
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        raise ValueError(f"hidden must be a 2-D tensor [M, E] (the masked positions); "
                         f"got {describe(hidden)}")
    M, E = hidden.shape
    if (not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != E
            or weight.shape[0] == 0):
        raise ValueError(f"weight must be a 2-D tensor [V, E] with V > 0 and E = hidden.shape[1] = {E}; "
                         f"got {describe(weight)}")
    V = weight.shape[0]
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (V,)):
        raise ValueError(f"bias must be None or a tensor [V] with V = weight.shape[0] = {V}; "
                         f"got {describe(bias)}")
    if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != (M,) or not is_integer(targets):
        raise ValueError(f"targets must be an integer tensor [M] with M = hidden.shape[0] = {M}; "
                         f"got {describe(targets)}")
    require_float(hidden=hidden, weight=weight, bias=bias)
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}; cast one")
    require_same_device("hidden", hidden.device, weight=weight, bias=bias, targets=targets)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0; got {temperature!r}")
    if seed is None:
        if sample:
            raise ValueError("seed is required to draw samples (an int or a one-element integer tensor); "
                             "for the loss alone use generator_loss or sample=False")
    elif isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.dtype.is_floating_point or seed.dtype == torch.bool:
            raise ValueError(f"seed must be an int or a one-element integer tensor; got {describe(seed)}")
        require_same_device("hidden", hidden.device, seed=seed)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63) or a one-element integer tensor; got {seed!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or abs(ignore_index) >= 2**31:
        raise ValueError(f"ignore_index must be an int32 value; got {ignore_index!r}")
    if reads_values(targets, debug):
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
        if bool(bad.any()):
            raise ValueError(f"targets must lie in [0, V={V}) or equal ignore_index={ignore_index}; "
                             f"found {targets[bad][0].item()}")


def _block_sizes(M: int, E: int, fp32_inputs: bool, block_m: int | None = None,
                 block_v: int | None = None) -> dict[str, dict]:
    """Block sizes, warps and stages per kernel ("fwd", "bwd_dh", "bwd_dw"), per input precision.

    ELECTRA-Small has few masked rows (128 x 19 = 2432): small row blocks keep the forward grid
    above the SM count. The backward kernels hold a whole [rows, E] or [vocab, E] fp32
    accumulator, padded to a power of two, so wide embeddings (Base, 768 -> 1024) get narrow
    tiles and 8 warps to stay within registers. fp32 inputs (``fp32_inputs``) take twice the shared
    memory of bf16 for the same tiles: at Base and Large the 16-row x 32-vocab backward tiles need
    ~198 KB, over an A100's 163 KB per block, so fp32 uses 16 x 16 there (~132 KB, no spills, as
    ``tools/compile_kernels.py`` reports); bf16 keeps the wider tensor-core tiles.
    """
    e_pad = max(16, triton.next_power_of_2(E))
    wide = e_pad > 256
    narrow_f32 = wide and fp32_inputs
    if fp32_inputs:  # exact fp32 dots on CUDA cores: small tiles
        fwd = dict(BLOCK_M=32, BLOCK_V=64, BLOCK_E=min(e_pad, 64), num_warps=4, num_stages=2)
    elif M >= 128 * NUM_SMS:  # Base, Large: 128-row tiles halve the W traffic of 64
        fwd = dict(BLOCK_M=128, BLOCK_V=128, BLOCK_E=min(e_pad, 64), num_warps=8, num_stages=2)
    else:  # Small: 64-row tiles (Hopper's wgmma), the vocabulary split to fill the card
        fwd = dict(BLOCK_M=64, BLOCK_V=128, BLOCK_E=min(e_pad, 128), num_warps=4, num_stages=2)
    blocks = {
        "fwd": fwd,
        "bwd_dh": dict(BLOCK_M=16, BLOCK_V=16 if narrow_f32 else 32 if wide else 64, BLOCK_E=e_pad,
                       num_warps=8 if wide else 4, num_stages=2),
        "bwd_dw": dict(BLOCK_M=16 if narrow_f32 else 32 if wide else 64, BLOCK_V=16 if wide else 64,
                       BLOCK_E=e_pad, num_warps=8, num_stages=2),
    }
    for cfg in blocks.values():
        if block_m is not None:
            cfg["BLOCK_M"] = block_m
        if block_v is not None:
            cfg["BLOCK_V"] = block_v
    return blocks


def _check_block(name: str, value: int | None, least: int = 16) -> None:
    # tl.dot needs every tile dimension >= 16 on the GPU (the interpreter would accept less); the
    # forward's vocabulary tile is four words of BLOCK_V / 4 columns, so block_v >= 64.
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least
                              or value & (value - 1)):
        raise ValueError(f"{name} must be a power of two >= {least}; got {value!r}")


def _vocab_splits(M: int, V: int, cfg: dict, splits: int | None = None) -> tuple[int, int]:
    """(splits, columns per split): enough vocabulary splits that the forward grid has at least
    2 x NUM_SMS programs (one row block walking all of V serially leaves SMs idle), every split a whole
    number of BLOCK_V tiles and none empty."""
    tiles, row_blocks = triton.cdiv(V, cfg["BLOCK_V"]), triton.cdiv(M, cfg["BLOCK_M"])
    if splits is None:  # the least splits from the first that fill 2 x NUM_SMS whose last wave is fullest
        least = triton.cdiv(2 * NUM_SMS, row_blocks)
        wave_use = lambda s: row_blocks * s / (triton.cdiv(row_blocks * s, NUM_SMS) * NUM_SMS)
        splits = max(range(least, 2 * least + 1), key=lambda s: (round(wave_use(s), 2), -s))
    per_split = triton.cdiv(tiles, max(1, min(splits, tiles)))
    return triton.cdiv(tiles, per_split), per_split * cfg["BLOCK_V"]


def _seed_tensor(seed, device) -> torch.Tensor:
    if isinstance(seed, torch.Tensor):
        return seed.reshape(1).to(torch.int64)
    # torch.full is a fill kernel with the seed as its argument: no host-to-device copy, no sync.
    return torch.full((1,), seed, dtype=torch.int64, device=device)


def _dot_f32(hidden: torch.Tensor) -> bool:
    """The DOT_F32 variant: fp32 products (CUDA cores) for fp32 inputs, tensor cores for fp16/bf16 on a
    GPU; under the interpreter always fp32 (``interpreter_fp32_variant``, kernels/dispatch.py)."""
    return hidden.dtype == torch.float32 or interpreter_fp32_variant(hidden)


def _kernel_plan(op, fn, grid, args, cfg, cost=None, **constexprs) -> KernelPlan:
    return KernelPlan(op, fn, grid, args, dict(constexprs, BLOCK_M=cfg["BLOCK_M"], BLOCK_V=cfg["BLOCK_V"],
                                               BLOCK_E=cfg["BLOCK_E"]), cfg["num_warps"], cfg["num_stages"], cost)


def _cost(kind: str, M: int, V: int, E: int, elt: int, belt: int, cfg: dict, splits: int = 1,
          state_words: int = 6) -> tuple[float, float]:
    """(FLOPs, HBM bytes) one launch of kernel ``kind`` implies by its grid and tiles: dot FLOPs over the
    padded tiles, and for each operand what every program loads (``hbm_bytes``: once if L2-resident)."""
    bm, bv, be = cfg["BLOCK_M"], cfg["BLOCK_V"], cfg["BLOCK_E"]
    nm, nv, ne = triton.cdiv(M, bm), triton.cdiv(V, bv), triton.cdiv(E, be)
    h_unique, w_unique, b_unique = M * E * elt, V * E * elt, V * belt
    if kind == "fwd":
        flops = nm * nv * ne * 2 * bm * bv * be
        loads = (hbm_bytes(h_unique, nm * nv * bm * E * elt) + hbm_bytes(w_unique, nm * V * E * elt)
                 + hbm_bytes(b_unique, nm * V * belt))
        return flops, loads + M * 8 + splits * M * 4 * state_words  # targets; partial states per row
    if kind == "bwd_dh":  # recompute + dlogits @ W per (row block, vocab tile); h loaded once per program
        flops = nm * nv * 2 * (2 * bm * bv * be)
        loads = (hbm_bytes(h_unique, splits * h_unique) + hbm_bytes(w_unique, nm * V * E * elt)
                 + hbm_bytes(b_unique, nm * V * belt))
        return flops, loads + splits * M * (8 + 4) + M * E * (elt if splits == 1 else 4 * splits)
    if kind == "bwd_dw":  # recompute + dlogits.T @ h per (vocab tile, row block); W loaded once per program
        flops = nv * nm * 2 * (2 * bm * bv * be)
        loads = w_unique + b_unique + hbm_bytes(h_unique, nv * M * E * elt) + nv * M * (8 + 4)
        return flops, loads + V * E * elt + b_unique
    raise ValueError(kind)


def _belt(bias, weight) -> int:
    return bias.element_size() if bias is not None else 0


def _row_outputs(M, device, return_argmax, sample=True):
    """The per-row outputs both formulations fill: lse and row loss (fp32), samples and argmax (int64; samples
    empty unless ``sample``, argmax None unless asked)."""
    lse = torch.empty(M, dtype=torch.float32, device=device)
    row_loss = torch.empty(M, dtype=torch.float32, device=device)
    samples = torch.empty(M if sample else 0, dtype=torch.int64, device=device)
    argmax = torch.empty(M, dtype=torch.int64, device=device) if return_argmax else None
    return lse, row_loss, samples, argmax


def _launch_forward(hidden, weight, bias, targets, temperature, seed, ignore_index, return_argmax,
                    block_m, block_v, launch=True, splits=None, eps=0.0, sample=True):
    """Runs the forward kernel (``launch=False``: only records it, for the fake implementation).
    Returns (loss, samples, argmax or None, lse, denominator): the loss and its denominator (non-ignored
    rows + eps, see ``loss_mean``) from one more small launch. Without ``sample`` (the MLM objective) the
    kernels draw no noise and ``samples`` is empty."""
    M, E = hidden.shape
    V = weight.shape[0]
    device = hidden.device
    lse, row_loss, samples, argmax = _row_outputs(M, device, return_argmax, sample)
    if M > 0:
        dot_f32 = _dot_f32(hidden)
        cfg = _block_sizes(M, E, hidden.dtype == torch.float32, block_m, block_v)["fwd"]
        n_splits, cols_per_split = _vocab_splits(M, V, cfg, splits)
        parts = [torch.empty(n_splits, M, dtype=dt, device=device) for dt in (torch.float32,) * 4 + (torch.int32,) * 2]
        elt, belt = hidden.element_size(), _belt(bias, weight)
        words = 3 + 2 * sample + return_argmax  # partial state per row and split: m, s, target (+ best, index, argmax)
        _kernel_plan(
            "generator_head.fwd", _generator_head_fwd_kernel, (triton.cdiv(M, cfg["BLOCK_M"]), n_splits),
            (hidden, weight, bias if bias is not None else weight, targets, seed, *parts,
             M, V, cols_per_split, 1.0 / temperature, ignore_index),
            cfg, _cost("fwd", M, V, E, elt, belt, cfg, n_splits, words),
            E=E, HAS_BIAS=bias is not None, RETURN_ARGMAX=return_argmax, SAMPLE=sample, DOT_F32=dot_f32,
        ).run(launch)
        comb = dict(BLOCK_M=64, num_warps=4, num_stages=1)
        row_out = samples if sample else targets  # an int64 pointer the kernel never writes without sampling
        KernelPlan(
            "generator_head.fwd_combine", _generator_head_combine_kernel, (triton.cdiv(M, comb["BLOCK_M"]),),
            (*parts, targets, lse, row_loss, row_out, argmax if return_argmax else row_out, M, ignore_index),
            dict(SPLITS=n_splits, RETURN_ARGMAX=return_argmax, SAMPLE=sample, BLOCK_M=comb["BLOCK_M"],
                 BLOCK_S=max(2, triton.next_power_of_2(n_splits))),
            comb["num_warps"], comb["num_stages"], (0.0, M * (n_splits * 4 * words + 8 + 8 + 8 * sample
                                                              + 8 * return_argmax)),
        ).run(launch)
    loss, denominator, _ = loss_mean("generator_head.fwd_mean", row_loss, eps, targets, ignore_index, launch)
    return loss, samples, argmax, lse, denominator


# The chunked formulation (Base, Large): wide embeddings make the logits compute-bound, where cuBLAS
# matmuls beat a kernel that streams W once per row block. Per chunk of rows: logits = h @ W.T in fp32
# (cuBLAS), one pass for loss, samples and softmax - onehot (the rows kernel), then dL/dh = dlogits @ W and
# dL/dW += dlogits.T @ h (cuBLAS, fp32 accumulation): three sweeps of the logit space per step, all in the
# forward. The gradients are kept unscaled ([M, E] and [V, E (+8)] fp32) and scaled in the backward.
_CHUNK_BYTES = 1 << 30  # fp32 logits and dlogits of one chunk
ROWS_KERNEL = dict(BLOCK_R=1, BLOCK_V=1024, num_warps=8, num_stages=1)


def _use_chunked(E: int, chunk_rows: int | None) -> bool:
    """The chunked formulation when asked (``chunk_rows`` > 0), never when ``chunk_rows`` == 0, and by
    default for embeddings wider than 256 (Base, Large), where the cost model puts it within 1.5x of the
    ideal and the fused kernels at 6-12x."""
    return chunk_rows > 0 if chunk_rows is not None else E > 256


def _chunk_size(M: int, V: int, chunk_rows: int | None) -> int:
    if chunk_rows:
        return chunk_rows
    return max(128, min(M, _CHUNK_BYTES // (V * 6)) // 128 * 128)


def _grad_columns(E: int, has_bias: bool) -> int:
    """Columns of the unscaled dL/dW accumulator: dL/db rides along as column E (h gets a column of ones,
    padded to a multiple of 8 columns for the tensor cores)."""
    return E + 8 if has_bias else E


def _mm_f32(a: torch.Tensor, b: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b (+ acc) in fp32 from operands in their own dtype: cuBLAS with fp32 output (``out_dtype``) for
    CUDA half types, an fp32 matmul of the upcast operands elsewhere (the interpreter's CPU tensors)."""
    if a.is_cuda and a.dtype in (torch.float16, torch.bfloat16):
        if acc is None:
            return torch.mm(a, b, out_dtype=torch.float32)
        return torch.addmm(acc, a, b, out_dtype=torch.float32)
    if acc is None:
        return torch.mm(a.float(), b.float())
    return torch.addmm(acc, a.float(), b.float())


def _mm_cost(m: int, n: int, k: int, elt: int, out_elt: int = 4, acc: bool = False) -> tuple[float, float]:
    return 2.0 * m * n * k, (m * k + k * n) * elt + m * n * out_elt * (2 if acc else 1)


def _launch_chunked(hidden, weight, bias, targets, temperature, seed, ignore_index, return_argmax, need_grads,
                    chunk_rows, launch=True, eps=0.0, sample=True):
    """The chunked head (see ``_use_chunked``). Returns (loss, samples, argmax or None, lse, denominator, dh, dwb):
    dh [M, E] and dwb [V, E (+8)] the unscaled fp32 gradients (empty unless ``need_grads``); samples empty
    without ``sample``."""
    M, E = hidden.shape
    V = weight.shape[0]
    device, dtype, elt = hidden.device, hidden.dtype, hidden.element_size()
    f32 = dict(dtype=torch.float32, device=device)
    lse, row_loss, samples, argmax = _row_outputs(M, device, return_argmax, sample)
    ea = _grad_columns(E, bias is not None)
    dh = torch.empty((M, E) if need_grads else (0,), **f32)
    # dL/dW is written by the first chunk's matmul; zeros only where no chunk will write it
    chunks_write_dw = need_grads and M > 0 and launch
    dwb = None if chunks_write_dw else torch.zeros((V, ea) if need_grads else (0,), **f32)
    C = _chunk_size(M, V, chunk_rows)
    ld = triton.cdiv(V, 8) * 8  # dlogits rows 16-byte aligned for cuBLAS
    dlog = torch.empty(min(C, M) if need_grads else 0, ld, dtype=dtype, device=device)
    if need_grads and bias is not None:  # [h | 1 | 0 ...]: dL/db is column E of dlogits.T @ h_aug
        h_aug = torch.zeros(min(C, M), ea, dtype=dtype, device=device)
        h_aug[:, E] = 1
    row_out = samples if sample else targets  # an int64 pointer the kernel never writes without sampling
    cfg = ROWS_KERNEL
    for r0 in range(0, M, C):
        c = min(C, M - r0)
        hc = hidden[r0:r0 + c]
        record_extern("generator_head.logits", "cublas.mm", *_mm_cost(c, V, E, elt), hidden=hc, weight=weight)
        logits = _mm_f32(hc, weight.T) if launch else torch.empty(c, V, **f32)
        programs = min(NUM_SMS, triton.cdiv(c, cfg["BLOCK_R"]))
        # Pass 2 re-reads a row block right after pass 1: from L2 while every program's rows fit there.
        reread = 0 if programs * cfg["BLOCK_R"] * V * 4 <= L2_RESIDENT_BYTES else c * V * 4
        rows_bytes = (c * V * 4 + reread + (c * ld * elt if need_grads else 0) + c * (16 + 8 * sample + 8 * return_argmax)
                      + V * _belt(bias, weight))
        KernelPlan(
            "generator_head.rows", _generator_head_rows_kernel, (programs,),
            (logits, bias if bias is not None else weight, targets, seed, lse, row_loss, row_out,
             argmax if return_argmax else row_out, dlog if need_grads else logits, r0, c, V, ld,
             1.0 / temperature, ignore_index),
            dict(HAS_BIAS=bias is not None, RETURN_ARGMAX=return_argmax, SAMPLE=sample, WRITE_GRAD=need_grads,
                 BLOCK_R=cfg["BLOCK_R"], BLOCK_V=cfg["BLOCK_V"]),
            cfg["num_warps"], cfg["num_stages"], (0.0, rows_bytes),
        ).run(launch)
        if need_grads:
            d = dlog[:c, :V]
            record_extern("generator_head.grad_h", "cublas.mm", *_mm_cost(c, E, V, elt), dlogits=d, weight=weight)
            ha = hc
            if bias is not None:
                ha = h_aug[:c]
                if launch:
                    ha[:, :E].copy_(hc)
            record_extern("generator_head.grad_w", "cublas.addmm" if r0 else "cublas.mm",
                          *_mm_cost(V, ea, c, elt, acc=r0 > 0), dlogits=d, hidden=ha)
            if launch:
                dh[r0:r0 + c] = _mm_f32(d, weight)
                dwb = _mm_f32(d.T, ha, dwb if r0 else None)
    loss, denominator, _ = loss_mean("generator_head.fwd_mean", row_loss, eps, targets, ignore_index, launch)
    return loss, samples, argmax, lse, denominator, dh, dwb


def _scale_chunked_grads(grad_loss, denominator, dh, dwb, hidden, weight, bias, need_dh, need_dw):
    """The chunked head's backward: its unscaled gradients times grad_loss / denominator, in the inputs' dtypes."""
    scale = grad_loss / denominator
    E = hidden.shape[1]
    return ((dh * scale).to(hidden.dtype) if need_dh else None,
            (dwb[:, :E] * scale).to(weight.dtype) if need_dw else None,
            (dwb[:, E] * scale).to(bias.dtype) if need_dw and bias is not None else None)


def _launch_backward(grad_loss, hidden, weight, bias, targets, lse, denominator, ignore_index,
                     block_m, block_v, need_dh, need_dw, launch=True):
    """Runs the backward kernels that are needed (``launch=False``: records them only).
    Returns (dh, dW, db); None where not needed."""
    M, E = hidden.shape
    V = weight.shape[0]
    dot_f32 = _dot_f32(hidden)
    blocks = _block_sizes(M, E, hidden.dtype == torch.float32, block_m, block_v)
    b = bias if bias is not None else weight
    consts = dict(E=E, HAS_BIAS=bias is not None, DOT_F32=dot_f32)
    dh = dw = db = None
    if need_dh:
        dh = torch.empty_like(hidden)
        if M > 0:
            cfg = blocks["bwd_dh"]
            # Split the vocabulary too when the row blocks alone leave SMs idle; the fp32 partial sums
            # ([splits, M, E]: a few MB where this applies) are added by one reduction.
            few_rows = triton.cdiv(M, cfg["BLOCK_M"]) < 2 * NUM_SMS
            n_splits, cols_per_split = _vocab_splits(M, V, cfg, None if few_rows else 1)
            out = dh if n_splits == 1 else torch.empty(n_splits, M, E, dtype=torch.float32, device=hidden.device)
            _kernel_plan("generator_head.bwd_dh", _generator_head_bwd_dh_kernel,
                         (triton.cdiv(M, cfg["BLOCK_M"]), n_splits),
                         (hidden, weight, b, targets, lse, grad_loss, denominator, out, M, V, cols_per_split,
                          ignore_index), cfg,
                         _cost("bwd_dh", M, V, E, hidden.element_size(), _belt(bias, weight), cfg, n_splits),
                         **consts).run(launch)
            if n_splits > 1:
                record_extern("generator_head.bwd_dh_sum", "torch.sum", 0.0,
                              out.numel() * 4 + dh.numel() * dh.element_size(), partial=out, dh=dh)
                if launch:
                    torch.sum(out, 0, out=dh) if dh.dtype == torch.float32 else dh.copy_(out.sum(0))
    if need_dw:
        dw = torch.empty_like(weight)
        db = torch.empty_like(bias) if bias is not None else None
        cfg = blocks["bwd_dw"]
        _kernel_plan("generator_head.bwd_dw", _generator_head_bwd_dw_kernel, (triton.cdiv(V, cfg["BLOCK_V"]),),
                     (hidden, weight, b, targets, lse, grad_loss, denominator, dw, db if db is not None else dw, M, V,
                      ignore_index),
                     cfg, _cost("bwd_dw", M, V, E, hidden.element_size(), _belt(bias, weight), cfg), **consts).run(launch)
    return dh, dw, db


def generator_loss_and_sample_triton(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                     targets: torch.Tensor, *, temperature: float = 1.0,
                                     seed: int | torch.Tensor | None = None, ignore_index: int = -100,
                                     return_argmax: bool = False, block_m: int | None = None,
                                     block_v: int | None = None, vocab_splits: int | None = None,
                                     chunk_rows: int | None = None, eps: float = 0.0, debug: bool = False,
                                     sample: bool = True):
    """Fused generator head on the Triton kernels (CUDA tensors, or CPU under TRITON_INTERPRET=1).

    hidden [M, E] (the masked positions), weight [V, E] (tied word embeddings), bias [V] or
    None, targets [M] with ``ignore_index`` at rows to skip. Returns ``(loss, samples)`` or
    ``(loss, samples, argmax)``: loss is the 0-dim fp32 cross-entropy summed over the non-ignored
    rows and divided by their number + ``eps`` (the official ELECTRA code's 1e-6; with the default
    0, the mean; 0.0 if no row counts, for any eps), differentiable w.r.t. hidden, weight and bias; samples [M] int64 are
    Gumbel-max draws from softmax(logits / temperature), equal to the target at ignored rows;
    argmax [M] int64 is the argmax of the logits (for MLM accuracy). ``seed`` may be a
    one-element integer device tensor, so a captured CUDA graph can draw fresh samples per
    replay. ``block_m``/``block_v`` override the block sizes and ``vocab_splits`` the forward's
    vocabulary splits (tests: the samples do not depend on either); ``chunk_rows`` picks the
    formulation: 0 the fused kernels, n > 0 the chunked one (cuBLAS logits, n rows at a time), None
    (default) chunked for embeddings wider than 256 (Base, Large); ``debug`` enables the
    target range check on CUDA tensors (it syncs). ``sample=False`` (the MLM objective: :func:`generator_loss`)
    draws no noise, needs no ``seed`` and returns None for the samples, at the cost of loss and argmax alone.

    Under autocast (``torch.autocast("cuda" | "cpu", dtype=torch.bfloat16)``) hidden and weight are
    cast to the autocast dtype at this boundary, so the tensor-core variant runs with fp32
    accumulation; the loss is fp32 and the gradients come back in the inputs' own dtypes.
    """
    hidden, weight = autocast_projection(hidden, weight)
    _check_inputs(hidden, weight, bias, targets, temperature, seed, ignore_index, eps, debug, sample)
    _check_block("block_m", block_m)
    _check_block("block_v", block_v, least=64)
    if vocab_splits is not None and (isinstance(vocab_splits, bool) or not isinstance(vocab_splits, int)
                                     or vocab_splits < 1):
        raise ValueError(f"vocab_splits must be an int >= 1; got {vocab_splits!r}")
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int)
                                   or chunk_rows < 0):
        raise ValueError(f"chunk_rows must be None or an int >= 0; got {chunk_rows!r}")
    if hidden.device.type != "cuda" and not interpreting() and not is_fake(hidden):
        raise ValueError(f"the triton backend needs CUDA tensors (got {hidden.device}); on the CPU set "
                         "TRITON_INTERPRET=1 before importing triton, or use the reference backend")
    need_grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    seed_t = _seed_tensor(seed, hidden.device) if sample else targets.long()  # see the custom ops below
    loss, samples, argmax, *_ = _generator_head_fwd_op(
        hidden, weight, bias, targets, seed_t, float(temperature), ignore_index, bool(return_argmax), block_m, block_v,
        vocab_splits, chunk_rows, need_grads, float(eps), bool(sample))
    samples = samples if sample else None
    return (loss, samples, argmax) if return_argmax else (loss, samples)


# --------------------------------------------------------------------------------------------
# Reference (plain PyTorch: the CPU path and the oracle in tests)
# --------------------------------------------------------------------------------------------


def generator_loss_and_sample_reference(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                        targets: torch.Tensor, *, temperature: float = 1.0,
                                        seed: int | torch.Tensor | None = None, ignore_index: int = -100,
                                        return_argmax: bool = False, eps: float = 0.0, debug: bool = False,
                                        sample: bool = True):
    """Same contract as :func:`generator_loss_and_sample_triton`, materialising [M, V] fp32 logits.

    Differentiable by plain autograd. The Gumbel noise is the kernel's Philox noise ported to plain
    torch ops (:func:`_reference_uniform`): the uniforms equal the Triton path's bit for bit, so from
    equal fp32 logits both draw equal samples; a tensor seed is never read back to the host, and
    ``torch.compile(fullgraph=True)`` traces the whole function. Under autocast it rounds hidden and
    weight to the autocast dtype like the Triton path, then computes in fp32.
    """
    hidden, weight = autocast_projection(hidden, weight)
    _check_inputs(hidden, weight, bias, targets, temperature, seed, ignore_index, eps, debug, sample)
    record_reference("generator_head", hidden=hidden, weight=weight, bias=bias, targets=targets)
    targets = targets.long()
    with torch.autocast(hidden.device.type, enabled=False):  # fp32 logits from the (rounded) operands
        logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    valid = targets != ignore_index
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    loss = loss / loss_denominator(valid.sum(dtype=torch.float32), eps)
    argmax = None
    with torch.no_grad():
        if return_argmax:
            argmax = torch.argmax(logits, dim=-1)
        if not sample:
            return (loss, None, argmax) if return_argmax else (loss, None)
        M, V = logits.shape
        seed = _seed_tensor(seed, hidden.device)
        # Row chunks bound the noise temporaries: a memory budget in eager; large when traced, where the
        # compiler fuses the Philox rounds and a Python loop would unroll into the graph.
        budget = 1 << 24 if torch.compiler.is_compiling() else _EAGER_CHUNK_BYTES // _NOISE_BYTES_PER_LOGIT
        step = max(1, budget // V)
        inv_temperature = 1.0 / temperature  # the kernel's multiplier: same fp32 scores

        def chunk_samples(r0: int) -> torch.Tensor:  # argmax(logits / T - log(-log(u))), in place on u
            u = _reference_uniform(seed, r0, min(M, r0 + step), V)
            minus_g = u.log_().neg_().log_()
            scores = logits[r0:r0 + step]
            if inv_temperature != 1.0:  # x * 1.0 is x: skip a pass at the default temperature
                scores = scores * inv_temperature
            return torch.argmax(torch.sub(scores, minus_g, out=minus_g), dim=-1)

        samples = [chunk_samples(r0) for r0 in range(0, M, step)]
        samples = torch.cat(samples) if samples else targets.new_empty(0)
        samples = torch.where(valid, samples, targets)
    return (loss, samples, argmax) if return_argmax else (loss, samples)


_M32 = 0xFFFFFFFF
# Philox-4x32-10 as tl.philox runs it (triton/language/random.py, unchanged from Triton 3.6 through 3.9):
# Weyl key increments, round multipliers, 10 rounds; and tl.uint_to_uniform_float's scale for 32-bit words
# (the largest with (2**31 - 1) * scale < 1 in fp32), stored as its fp32 value so fp32 and fp64 products agree.
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_PHILOX_ROUNDS = 10
_UNIFORM_SCALE = float(torch.tensor(4.6566127342e-10, dtype=torch.float32))
_PHILOX_CONSTANTS = (_PHILOX_KEY_A, _PHILOX_KEY_B, _PHILOX_ROUND_A, _PHILOX_ROUND_B, _PHILOX_ROUNDS)
# Bytes of eager temporaries per logit while sampling: the Philox state and products (int64, four
# logits per counter), uniforms, noise and scores (fp32). Row chunks keep them near the budget.
_NOISE_BYTES_PER_LOGIT = 48
_EAGER_CHUNK_BYTES = 256 << 20


def _mul32(a: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * x for a uint32 constant ``a`` and uint32 values ``x`` held in int64:
    x is split in 16-bit halves so that no partial product overflows int64."""
    p_hi, p_lo = (x >> 16) * a, (x & 0xFFFF) * a  # < 2**48 each
    return (p_hi + (p_lo >> 16)) >> 16, (((p_hi & 0xFFFF) << 16) + p_lo) & _M32


def _philox(seed: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor) -> list[torch.Tensor]:
    """``tl.philox(seed, c0, c1, 0, 0)`` in int64 torch ops: the four 32-bit output words (as int64 in
    [0, 2**32)) for counters (c0, c1, 0, 0) and key (low, high 32 bits of the (1,) int64 seed). c0 and c1
    broadcast against each other."""
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    c2 = c3 = torch.zeros((), dtype=torch.int64, device=seed.device)
    for _ in range(_PHILOX_ROUNDS):
        hi_b, lo_b = _mul32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _PHILOX_KEY_A) & _M32, (k1 + _PHILOX_KEY_B) & _M32
    return [c0, c1, c2, c3]


def _reference_uniform(seed: torch.Tensor, r0: int, r1: int, V: int) -> torch.Tensor:
    """Uniforms in [U_EPS, 1 - U_EPS], fp32 [r1 - r0, V], for rows r0..r1: bit for bit the kernel's
    (``_philox_uniforms``). Vocabulary index v of row r is word v % 4 of Philox counter (v // 4, r) under
    the (1,) int64 seed, so the draws do not depend on the chunking and need no host read of the seed.
    Eager on the CPU (where reading the seed costs nothing) the C++ extension draws the same bits."""
    if seed.device.type == "cpu" and not torch.compiler.is_compiling() and _cpu_philox() is not None:
        u = _cpu_philox()(_cpu_seed(seed), r0, r1, V, _PHILOX_CONSTANTS, _UNIFORM_SCALE, U_EPS, 1.0 - U_EPS,
                          torch.get_num_threads())
        return torch.from_numpy(u)
    return _reference_uniform_torch(seed, r0, r1, V)


def _reference_uniform_torch(seed: torch.Tensor, r0: int, r1: int, V: int) -> torch.Tensor:
    """``_reference_uniform`` in torch ops: any device, traceable by torch.compile."""
    g = torch.arange((V + 3) // 4, device=seed.device)[None, :]
    rows = (torch.arange(r0, r1, device=seed.device) & _M32)[:, None]  # the kernel's uint32 row counter
    words = torch.stack(torch.broadcast_tensors(*_philox(seed, g, rows)), dim=-1)
    return _clamped_uniform_reference(words.reshape(r1 - r0, -1)[:, :V])


def _cpu_seed(seed: torch.Tensor) -> int:
    """The (1,) int64 seed of a CPU tensor as a Python int: the one host read of the eager CPU reference
    (a CPU tensor already lives on the host, so it syncs nothing; a GPU seed never comes here)."""
    return int(seed.reshape(-1)[0])


@functools.cache
def _cpu_philox():
    """``electra_fast._C.philox_uniforms`` (csrc/philox.cpp), or None where the extension is not built."""
    try:
        from electra_fast._C import philox_uniforms
    except ImportError:
        return None
    return philox_uniforms


def _clamped_uniform_reference(words: torch.Tensor) -> torch.Tensor:
    """The kernel's ``_clamped_uniform`` of 32-bit words held in int64: ``tl.uint_to_uniform_float`` (the
    word as int32, negatives folded by ~x, times the scale, in fp32), clamped into [U_EPS, 1 - U_EPS]."""
    words = torch.where(words > 0x7FFFFFFF, words ^ _M32, words)
    return (words.to(torch.float32) * _UNIFORM_SCALE).clamp_(U_EPS, 1.0 - U_EPS)


# --------------------------------------------------------------------------------------------
# Autograd wrapper (torch custom ops) and dispatch
# --------------------------------------------------------------------------------------------

# The Triton path as torch custom ops (kernels/custom_ops.py): a forward op whose registered gradient
# calls a backward op. The seed is a (1,) int64 tensor argument: a captured graph that refills it
# draws fresh samples each replay. Without sampling the kernels never use it, and the caller passes the
# (int64) targets in its place: no seed tensor to make, and the kernels' argument types stay the same.
def _fwd_impl(hidden, weight, bias, targets, seed, temperature, ignore_index, return_argmax, block_m, block_v,
              vocab_splits=None, chunk_rows=None, need_grads=False, eps=0.0, sample=True, launch=True):
    """(loss, samples, argmax, lse, denominator, dh, dwb); samples empty unless ``sample``, argmax empty unless
    asked, dh and dwb (the chunked head's unscaled gradients) empty on the fused path or without ``need_grads``."""
    hidden = hidden.contiguous()
    weight = weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    targets = targets.contiguous().long()
    if _use_chunked(hidden.shape[1], chunk_rows):
        loss, samples, argmax, lse, denominator, dh, dwb = _launch_chunked(
            hidden, weight, bias, targets, temperature, seed, ignore_index, return_argmax, need_grads, chunk_rows,
            launch, eps, sample)
    else:
        loss, samples, argmax, lse, denominator = _launch_forward(
            hidden, weight, bias, targets, temperature, seed, ignore_index, return_argmax, block_m, block_v,
            launch, vocab_splits, eps, sample)
        dh, dwb = hidden.new_empty(0, dtype=torch.float32), hidden.new_empty(0, dtype=torch.float32)
    return loss, samples, argmax if argmax is not None else samples.new_empty(0), lse, denominator, dh, dwb


def _fwd_fake(hidden, weight, bias, targets, seed, temperature, ignore_index, return_argmax, block_m, block_v,
              vocab_splits=None, chunk_rows=None, need_grads=False, eps=0.0, sample=True):
    M, E = hidden.shape
    scalar = hidden.new_empty((), dtype=torch.float32)
    samples = hidden.new_empty(M if sample else 0, dtype=torch.int64)
    argmax = hidden.new_empty(M if return_argmax else 0, dtype=torch.int64)
    grads = need_grads and _use_chunked(E, chunk_rows)
    dh = hidden.new_empty((M, E) if grads else (0,), dtype=torch.float32)
    dwb = hidden.new_empty((weight.shape[0], _grad_columns(E, bias is not None)) if grads else (0,),
                           dtype=torch.float32)
    return (scalar, samples, argmax, hidden.new_empty(M, dtype=torch.float32),
            hidden.new_empty((), dtype=torch.float32), dh, dwb)


def _bwd_impl(grad_loss, hidden, weight, bias, targets, lse, denominator, ignore_index, block_m, block_v,
              need_dh, need_dw, launch=True):
    """(dh, dW, db); an empty tensor where not needed (a custom op cannot return None)."""
    hidden = hidden.contiguous()
    weight = weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    dh, dw, db = _launch_backward(grad_loss, hidden, weight, bias, targets.contiguous().long(), lse, denominator,
                                  ignore_index, block_m, block_v, need_dh, need_dw, launch)
    empty = lambda like: like.new_empty(0)
    return (dh if dh is not None else empty(hidden), dw if dw is not None else empty(weight),
            db if db is not None else empty(weight))


def _bwd_fake(grad_loss, hidden, weight, bias, targets, lse, denominator, ignore_index, block_m, block_v,
              need_dh, need_dw):
    dh = hidden.new_empty(hidden.shape if need_dh else (0,))
    dw = weight.new_empty(weight.shape if need_dw else (0,))
    db = bias.new_empty(bias.shape) if need_dw and bias is not None else weight.new_empty(0)
    return dh, dw, db


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, _, _, ignore_index, _, block_m, block_v, _, chunk_rows, _, _, _ = inputs
    _, _, _, lse, denominator, dh, dwb = output
    ctx.chunked = _use_chunked(hidden.shape[1], chunk_rows)
    ctx.save_for_backward(hidden, weight, bias, targets, lse, denominator, dh, dwb)
    ctx.ignore_index, ctx.block_m, ctx.block_v = ignore_index, block_m, block_v


def _backward_rule(ctx, grad_loss, *unused_grads):
    hidden, weight, bias, targets, lse, denominator, dh_unscaled, dwb = ctx.saved_tensors
    need_dh = ctx.needs_input_grad[0]
    need_dw = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    if ctx.chunked and dwb.dim() == 2:  # the gradients were computed in the forward (need_grads): scale them
        dh, dw, db = _scale_chunked_grads(grad_loss, denominator, dh_unscaled, dwb, hidden, weight, bias, need_dh,
                                          need_dw)
    else:  # the fused backward kernels (also the chunked head's, had the forward no gradients to keep)
        dh, dw, db = _generator_head_bwd_op(grad_loss, hidden, weight, bias, targets, lse, denominator,
                                            ctx.ignore_index, ctx.block_m, ctx.block_v, need_dh, need_dw)
    return (dh if need_dh else None, dw if ctx.needs_input_grad[1] else None,
            db if ctx.needs_input_grad[2] else None) + (None,) * 12


_generator_head_bwd_op = triton_op(
    "generator_head_bwd",
    "(Tensor grad_loss, Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, Tensor lse, "
    "Tensor denominator, int ignore_index, int? block_m, int? block_v, bool need_dh, bool need_dw) "
    "-> (Tensor, Tensor, Tensor)",
    _bwd_impl, _bwd_fake)
_generator_head_fwd_op = triton_op(
    "generator_head_fwd",
    "(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, Tensor seed, float temperature, "
    "int ignore_index, bool return_argmax, int? block_m, int? block_v, int? vocab_splits=None, "
    "int? chunk_rows=None, bool need_grads=False, float eps=0.0, bool sample=True) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    _fwd_impl, _fwd_fake, backward=_backward_rule, setup_context=_setup_context)


def generator_loss_and_sample(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              targets: torch.Tensor, *, backend: str | None = None, **options):
    """MLM loss and Gumbel-max samples of the ELECTRA generator head at the masked positions.

    ``options`` are the keywords of :func:`generator_loss_and_sample_triton` (``seed``, required;
    ``temperature``, ``ignore_index``, ``return_argmax``, ``eps``, ``debug``), which also states the
    contract. ``backend``: "triton", "reference", or "auto" / None: triton for CUDA tensors, the
    reference for the rest ("triton" on CPU tensors needs TRITON_INTERPRET=1).
    """
    fn = implementation(hidden, backend, generator_loss_and_sample_triton, generator_loss_and_sample_reference)
    return fn(hidden, weight, bias, targets, **options)


def generator_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                   *, backend: str | None = None, return_argmax: bool = False, **options):
    """The MLM loss of a tied LM head at the masked positions, without the [M, V] logits and without
    sampling: what the BERT-style MLM objective needs (``Electra(objective="mlm")``).

    The fused head of :func:`generator_loss_and_sample` with its Gumbel noise switched off (no Philox
    draws, no seed): the same loss, gradients and argmax, bit for bit. Returns ``loss``, or
    ``(loss, argmax)`` with ``return_argmax=True``. ``options``: ``ignore_index``, ``eps``, ``debug`` and
    the Triton path's tuning keywords (``block_m``, ``block_v``, ``vocab_splits``, ``chunk_rows``).
    """
    for name in ("seed", "temperature", "sample"):
        if name in options:
            raise TypeError(f"generator_loss draws no samples and takes no {name!r}; "
                            "use generator_loss_and_sample to sample")
    out = generator_loss_and_sample(hidden, weight, bias, targets, backend=backend, return_argmax=return_argmax,
                                    sample=False, **options)
    return (out[0], out[2]) if return_argmax else out[0]
