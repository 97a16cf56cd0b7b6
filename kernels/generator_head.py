"""Fused ELECTRA generator head: MLM cross-entropy and Gumbel-max sampling in one pass over the vocabulary.

At the masked positions only (ELECTRA paper, section 2; official code ``pretrain_helpers``),
the generator computes ``logits = h @ W.T + b`` (W: the tied word embeddings), the MLM loss
``cross_entropy(logits, targets)`` and a replacement token sampled from ``softmax(logits / T)``
with Gumbel-max: ``argmax(logits / T + g)``, ``g = -log(-log(u))``, in fp32, with no gradient
through the sample. Unfused this is ~8 passes over an [M, V] tensor; here the forward streams
over vocabulary tiles keeping only per-row running state (online log-sum-exp, target logit,
running Gumbel argmax), and the backward recomputes the tiles (one pass over vocab tiles per
row block for dL/dh, one pass over row blocks per vocab tile for dL/dW and dL/db:
deterministic, no atomics, never an [M, V] tensor).

The noise is keyed by (seed, row, vocab index) through Triton's counter-based Philox
(``tl.rand(seed, row * V + v)``), never by program id or tile, so samples do not depend on the
block sizes or the grid.

Layout of this file: Triton kernels, host launcher (input checks, block sizes), PyTorch
reference (the CPU path and the test oracle), autograd wrapper (torch custom ops, so
torch.compile(fullgraph=True) traces the Triton path) and dispatch. Which variants a training step
launches (dtypes, block sizes) is recorded by ``kernels/launches.py``, and ``tools/compile_kernels.py``
compiles exactly those.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .dispatch import autocast_operands, interpreting, is_fake, select_backend, values_readable
from .launches import KernelPlan, hbm_bytes, record_reference, recording

# u from tl.rand / torch.rand is clamped into [U_EPS, 1 - U_EPS] so both logs stay finite.
U_EPS = 1e-7
_U_EPS_TL = tl.constexpr(U_EPS)  # the same value, readable inside @triton.jit functions

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


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
def _generator_head_fwd_kernel(
    H, W, B, TARGETS, SEED,  # [M, E], [V, E], [V], [M] int64, [1] int64
    LSE, ROW_LOSS, SAMPLES, ARGMAX,  # [M] fp32, [M] fp32, [M] int64, [M] int64
    M, V, inv_temperature, ignore_index,
    E: tl.constexpr, HAS_BIAS: tl.constexpr, RETURN_ARGMAX: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_E: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    tgt = tl.load(TARGETS + rows, mask=row_ok, other=ignore_index)
    valid = row_ok & (tgt != ignore_index)
    seed = tl.load(SEED)
    noise_row = rows.to(tl.int64) * V

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of the logits
    s_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp(logit - m_i)
    tgt_logit = tl.zeros((BLOCK_M,), tl.float32)
    best = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of logits / T + g
    best_idx = tl.zeros((BLOCK_M,), tl.int32)
    amax_idx = tl.zeros((BLOCK_M,), tl.int32)

    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        acc = tl.zeros((BLOCK_M, BLOCK_V), tl.float32)
        for e0 in range(0, E, BLOCK_E):
            ks = e0 + tl.arange(0, BLOCK_E)
            h = _load_tile(H, rows, row_ok, ks, E, DOT_F32)  # (BLOCK_M, BLOCK_E)
            w = _load_tile(W, cols, col_ok, ks, E, DOT_F32)  # (BLOCK_V, BLOCK_E)
            acc = _dot(h, tl.trans(w), acc, DOT_F32)
        if HAS_BIAS:
            acc += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        logits = tl.where(col_ok[None, :], acc, float("-inf"))  # (BLOCK_M, BLOCK_V)

        # Online log-sum-exp; every tile has at least one real column, so m_new is finite.
        if RETURN_ARGMAX:
            tile_max, tile_amax = tl.max(logits, 1, return_indices=True)
            # Strict '>' keeps the first index on ties across tiles, like torch.argmax.
            amax_idx = tl.where(tile_max > m_i, tile_amax + v0, amax_idx)
        else:
            tile_max = tl.max(logits, 1)
        m_new = tl.maximum(m_i, tile_max)
        s_i = s_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), 1)
        m_i = m_new
        tgt_logit += tl.sum(tl.where(cols[None, :] == tgt[:, None], logits, 0.0), 1)

        # Gumbel-max: argmax over the vocabulary of logits / T + g, g = -log(-log(u)).
        u = tl.rand(seed, noise_row[:, None] + cols[None, :])
        u = tl.minimum(tl.maximum(u, _U_EPS_TL), 1.0 - _U_EPS_TL)
        score = tl.where(col_ok[None, :], logits * inv_temperature - tl.log(-tl.log(u)), float("-inf"))
        tile_best, tile_idx = tl.max(score, 1, return_indices=True)
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, tile_idx + v0, best_idx)

    lse = m_i + tl.log(s_i)
    tl.store(LSE + rows, lse, mask=row_ok)
    tl.store(ROW_LOSS + rows, tl.where(valid, lse - tgt_logit, 0.0), mask=row_ok)
    tl.store(SAMPLES + rows, tl.where(valid, best_idx.to(tl.int64), tgt), mask=row_ok)
    if RETURN_ARGMAX:
        tl.store(ARGMAX + rows, amax_idx.to(tl.int64), mask=row_ok)


@triton.jit
def _softmax_minus_onehot(h, w, B, cols, col_ok, tgt, valid, lse,
                          HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr):
    """Recomputed (softmax(logits) - onehot(target)) for one (row block, vocab tile); 0 where ignored."""
    logits = _dot(h, tl.trans(w), tl.zeros((BLOCK_M, BLOCK_V), tl.float32), DOT_F32)
    if HAS_BIAS:
        logits += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    p = tl.exp(logits - lse[:, None])
    p = p - tl.where(cols[None, :] == tgt[:, None], 1.0, 0.0)
    return tl.where(valid[:, None] & col_ok[None, :], p, 0.0)


@triton.jit
def _generator_head_bwd_dh_kernel(
    H, W, B, TARGETS, LSE, SCALE,  # [M, E], [V, E], [V], [M] int64, [M] fp32, [1] fp32
    DH,  # [M, E]
    M, V, ignore_index,
    E: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """dL/dh for one row block: sum over vocab tiles of (softmax - onehot) @ W_tile, times SCALE."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    ks = tl.arange(0, BLOCK_E)  # BLOCK_E >= E: the whole embedding in one tile
    tgt = tl.load(TARGETS + rows, mask=row_ok, other=ignore_index)
    valid = row_ok & (tgt != ignore_index)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    h = _load_tile(H, rows, row_ok, ks, E, DOT_F32)  # (BLOCK_M, BLOCK_E)

    acc = tl.zeros((BLOCK_M, BLOCK_E), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        w = _load_tile(W, cols, col_ok, ks, E, DOT_F32)  # (BLOCK_V, BLOCK_E)
        dlogits = _softmax_minus_onehot(h, w, B, cols, col_ok, tgt, valid, lse, HAS_BIAS, DOT_F32,
                                        BLOCK_M, BLOCK_V)
        # Unscaled (values in [-1, 1]) so the cast to fp16 cannot underflow; scaled once below.
        acc = _dot(dlogits.to(w.dtype), w, acc, DOT_F32)

    acc = acc * tl.load(SCALE)
    tl.store(DH + rows.to(tl.int64)[:, None] * E + ks[None, :], acc.to(DH.dtype.element_ty),
             mask=row_ok[:, None] & (ks < E)[None, :])


@triton.jit
def _generator_head_bwd_dw_kernel(
    H, W, B, TARGETS, LSE, SCALE,  # [M, E], [V, E], [V], [M] int64, [M] fp32, [1] fp32
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

    scale = tl.load(SCALE)
    tl.store(DW + cols.to(tl.int64)[:, None] * E + ks[None, :], (acc * scale).to(DW.dtype.element_ty),
             mask=col_ok[:, None] & (ks < E)[None, :])
    if HAS_BIAS:
        tl.store(DB + cols, (db * scale).to(DB.dtype.element_ty), mask=col_ok)


# --------------------------------------------------------------------------------------------
# Host launcher
# --------------------------------------------------------------------------------------------


def _describe(x) -> str:
    return f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _check_inputs(hidden, weight, bias, targets, temperature, seed, ignore_index, debug) -> None:
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        raise ValueError(f"hidden must be a 2-D tensor [M, E] (the masked positions); "
                         f"got {_describe(hidden)}")
    M, E = hidden.shape
    if (not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != E
            or weight.shape[0] == 0):
        raise ValueError(f"weight must be a 2-D tensor [V, E] with V > 0 and E = hidden.shape[1] = {E}; "
                         f"got {_describe(weight)}")
    V = weight.shape[0]
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (V,)):
        raise ValueError(f"bias must be None or a tensor [V] with V = weight.shape[0] = {V}; "
                         f"got {_describe(bias)}")
    if (not isinstance(targets, torch.Tensor) or tuple(targets.shape) != (M,)
            or targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool):
        raise ValueError(f"targets must be an integer tensor [M] with M = hidden.shape[0] = {M}; "
                         f"got {_describe(targets)}")
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be float16, bfloat16 or float32; got {t.dtype}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}; cast one")
    for name, t in (("weight", weight), ("bias", bias), ("targets", targets)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}; use one device")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0; got {temperature!r}")
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.dtype.is_floating_point or seed.dtype == torch.bool:
            raise ValueError(f"seed must be an int or a one-element integer tensor; got {_describe(seed)}")
        if seed.device != hidden.device:
            raise ValueError(f"seed is on {seed.device} but hidden is on {hidden.device}")
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63) or a one-element integer tensor; got {seed!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or abs(ignore_index) >= 2**31:
        raise ValueError(f"ignore_index must be an int32 value; got {ignore_index!r}")
    # The range check reads the targets back to the host: free on the CPU, a sync on CUDA; a traced
    # graph cannot branch on values, so never while torch.compile traces (nor on fake tensors).
    if (debug or targets.device.type == "cpu") and M > 0 and values_readable(targets):
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
    fwd_m = 64 if M >= 64 * 256 else 32 if M >= 32 * 128 else 16
    blocks = {
        # The Philox noise keeps ~4 words per logit live: 16 logits per thread stays unspilled.
        "fwd": dict(BLOCK_M=fwd_m, BLOCK_V=64 if fwd_m == 64 else 128, BLOCK_E=min(e_pad, 128),
                    num_warps=8 if fwd_m == 64 else 4, num_stages=2),
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


def _check_block(name: str, value: int | None) -> None:
    # tl.dot needs every tile dimension >= 16 on the GPU (the interpreter would accept less).
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 16
                              or value & (value - 1)):
        raise ValueError(f"{name} must be a power of two >= 16; got {value!r}")


def _seed_tensor(seed, device) -> torch.Tensor:
    if isinstance(seed, torch.Tensor):
        return seed.reshape(1).to(torch.int64)
    # torch.full is a fill kernel with the seed as its argument: no host-to-device copy, no sync.
    return torch.full((1,), seed, dtype=torch.int64, device=device)


def _dot_f32(hidden: torch.Tensor) -> bool:
    """fp32 products (CUDA cores) for fp32 inputs; tensor cores for fp16/bf16. The interpreter always
    computes in fp32 (its bf16 arithmetic and bf16 tl.dot are wrong); fake tensors, which launch
    nothing, record the GPU's choice."""
    return hidden.dtype == torch.float32 or (interpreting() and not is_fake(hidden))


def _kernel_plan(op, fn, grid, args, cfg, cost=None, **constexprs) -> KernelPlan:
    return KernelPlan(op, fn, grid, args, dict(constexprs, BLOCK_M=cfg["BLOCK_M"], BLOCK_V=cfg["BLOCK_V"],
                                               BLOCK_E=cfg["BLOCK_E"]), cfg["num_warps"], cfg["num_stages"], cost)


def _cost(kind: str, M: int, V: int, E: int, elt: int, belt: int, cfg: dict) -> tuple[float, float]:
    """(FLOPs, HBM bytes) one launch of kernel ``kind`` implies by its grid and tiles: dot FLOPs over the
    padded tiles, and for each operand what every program loads (``hbm_bytes``: once if L2-resident)."""
    bm, bv, be = cfg["BLOCK_M"], cfg["BLOCK_V"], cfg["BLOCK_E"]
    nm, nv, ne = triton.cdiv(M, bm), triton.cdiv(V, bv), triton.cdiv(E, be)
    h_unique, w_unique, b_unique = M * E * elt, V * E * elt, V * belt
    if kind == "fwd":
        flops = nm * nv * ne * 2 * bm * bv * be
        loads = (hbm_bytes(h_unique, nm * nv * bm * E * elt) + hbm_bytes(w_unique, nm * V * E * elt)
                 + hbm_bytes(b_unique, nm * V * belt))
        return flops, loads + M * (8 + 4 + 4 + 8 + 8)
    if kind == "bwd_dh":  # recompute + dlogits @ W per (row block, vocab tile); h loaded once per program
        flops = nm * nv * 2 * (2 * bm * bv * be)
        loads = h_unique + hbm_bytes(w_unique, nm * V * E * elt) + hbm_bytes(b_unique, nm * V * belt)
        return flops, loads + M * (8 + 4) + M * E * elt
    if kind == "bwd_dw":  # recompute + dlogits.T @ h per (vocab tile, row block); W loaded once per program
        flops = nv * nm * 2 * (2 * bm * bv * be)
        loads = w_unique + b_unique + hbm_bytes(h_unique, nv * M * E * elt) + nv * M * (8 + 4)
        return flops, loads + V * E * elt + b_unique
    raise ValueError(kind)


def _belt(bias, weight) -> int:
    return bias.element_size() if bias is not None else 0


def _launch_forward(hidden, weight, bias, targets, temperature, seed, ignore_index, return_argmax,
                    block_m, block_v, launch=True):
    """Runs the forward kernel (``launch=False``: only records it, for the fake implementation).
    Returns (loss, samples, argmax or None, lse, n_valid)."""
    M, E = hidden.shape
    V = weight.shape[0]
    device = hidden.device
    n_valid = (targets != ignore_index).sum()
    lse = torch.empty(M, dtype=torch.float32, device=device)
    row_loss = torch.empty(M, dtype=torch.float32, device=device)
    samples = torch.empty(M, dtype=torch.int64, device=device)
    argmax = torch.empty(M, dtype=torch.int64, device=device) if return_argmax else None
    if M > 0:
        dot_f32 = _dot_f32(hidden)
        cfg = _block_sizes(M, E, hidden.dtype == torch.float32, block_m, block_v)["fwd"]
        _kernel_plan(
            "generator_head.fwd", _generator_head_fwd_kernel, (triton.cdiv(M, cfg["BLOCK_M"]),),
            (hidden, weight, bias if bias is not None else weight, targets, _seed_tensor(seed, device),
             lse, row_loss, samples, argmax if return_argmax else samples, M, V, 1.0 / temperature, ignore_index),
            cfg, _cost("fwd", M, V, E, hidden.element_size(), _belt(bias, weight), cfg),
            E=E, HAS_BIAS=bias is not None, RETURN_ARGMAX=return_argmax, DOT_F32=dot_f32,
        ).run(launch)
    # Mean over the non-ignored rows; 0.0 (not NaN) when every row is ignored.
    loss = row_loss.sum() / n_valid.clamp(min=1).to(torch.float32)
    return loss, samples, argmax, lse, n_valid


def _launch_backward(grad_loss, hidden, weight, bias, targets, lse, n_valid, ignore_index,
                     block_m, block_v, need_dh, need_dw, launch=True):
    """Runs the backward kernels that are needed (``launch=False``: records them only).
    Returns (dh, dW, db); None where not needed."""
    M, E = hidden.shape
    V = weight.shape[0]
    scale = (grad_loss.to(torch.float32) / n_valid.clamp(min=1).to(torch.float32)).reshape(1)
    dot_f32 = _dot_f32(hidden)
    blocks = _block_sizes(M, E, hidden.dtype == torch.float32, block_m, block_v)
    b = bias if bias is not None else weight
    consts = dict(E=E, HAS_BIAS=bias is not None, DOT_F32=dot_f32)
    dh = dw = db = None
    if need_dh:
        dh = torch.empty_like(hidden)
        if M > 0:
            cfg = blocks["bwd_dh"]
            _kernel_plan("generator_head.bwd_dh", _generator_head_bwd_dh_kernel, (triton.cdiv(M, cfg["BLOCK_M"]),),
                         (hidden, weight, b, targets, lse, scale, dh, M, V, ignore_index), cfg,
                         _cost("bwd_dh", M, V, E, hidden.element_size(), _belt(bias, weight), cfg), **consts).run(launch)
    if need_dw:
        dw = torch.empty_like(weight)
        db = torch.empty_like(bias) if bias is not None else None
        cfg = blocks["bwd_dw"]
        _kernel_plan("generator_head.bwd_dw", _generator_head_bwd_dw_kernel, (triton.cdiv(V, cfg["BLOCK_V"]),),
                     (hidden, weight, b, targets, lse, scale, dw, db if db is not None else dw, M, V, ignore_index),
                     cfg, _cost("bwd_dw", M, V, E, hidden.element_size(), _belt(bias, weight), cfg), **consts).run(launch)
    return dh, dw, db


def generator_loss_and_sample_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    seed: int | torch.Tensor,
    ignore_index: int = -100,
    return_argmax: bool = False,
    block_m: int | None = None,
    block_v: int | None = None,
    debug: bool = False,
):
    """Fused generator head on the Triton kernels (CUDA tensors, or CPU under TRITON_INTERPRET=1).

    hidden [M, E] (the masked positions), weight [V, E] (tied word embeddings), bias [V] or
    None, targets [M] with ``ignore_index`` at rows to skip. Returns ``(loss, samples)`` or
    ``(loss, samples, argmax)``: loss is the 0-dim fp32 mean cross-entropy over the non-ignored
    rows (0.0 if none), differentiable w.r.t. hidden, weight and bias; samples [M] int64 are
    Gumbel-max draws from softmax(logits / temperature), equal to the target at ignored rows;
    argmax [M] int64 is the argmax of the logits (for MLM accuracy). ``seed`` may be a
    one-element integer device tensor, so a captured CUDA graph can draw fresh samples per
    replay. ``block_m``/``block_v`` override the block sizes (tests); ``debug`` enables the
    target range check on CUDA tensors (it syncs).

    Under autocast (``torch.autocast("cuda" | "cpu", dtype=torch.bfloat16)``) hidden and weight are
    cast to the autocast dtype at this boundary, so the tensor-core variant runs with fp32
    accumulation; the loss is fp32 and the gradients come back in the inputs' own dtypes.
    """
    hidden, weight = _autocast_operands(hidden, weight)
    _check_inputs(hidden, weight, bias, targets, temperature, seed, ignore_index, debug)
    _check_block("block_m", block_m)
    _check_block("block_v", block_v)
    if hidden.device.type != "cuda" and not interpreting() and not is_fake(hidden):
        raise ValueError(f"the triton backend needs CUDA tensors (got {hidden.device}); on the CPU set "
                         "TRITON_INTERPRET=1 before importing triton, or use the reference backend")
    seed = _seed_tensor(seed, hidden.device)
    if _HAS_CUSTOM_OP:
        loss, samples, argmax, _, _ = _generator_head_fwd_op(
            hidden, weight, bias, targets, seed, float(temperature), ignore_index, bool(return_argmax),
            block_m, block_v)
    else:
        loss, samples, argmax = GeneratorLossAndSample.apply(
            hidden, weight, bias, targets, float(temperature), seed, ignore_index, bool(return_argmax),
            block_m, block_v)
    return (loss, samples, argmax) if return_argmax else (loss, samples)


# --------------------------------------------------------------------------------------------
# Reference (plain PyTorch: the CPU path and the oracle in tests)
# --------------------------------------------------------------------------------------------


def generator_loss_and_sample_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    seed: int | torch.Tensor,
    ignore_index: int = -100,
    return_argmax: bool = False,
    debug: bool = False,
):
    """Same contract as :func:`generator_loss_and_sample_triton`, materialising [M, V] fp32 logits.

    Differentiable by plain autograd. The Gumbel noise is a hash of (seed, row * V + v) in plain
    torch ops (:func:`_reference_uniform`), so samples follow the same distribution as the Triton
    path but not the same draws; a tensor seed is never read back to the host, and
    ``torch.compile(fullgraph=True)`` traces the whole function. Under autocast it rounds hidden and
    weight to the autocast dtype like the Triton path, then computes in fp32.
    """
    hidden, weight = _autocast_operands(hidden, weight)
    _check_inputs(hidden, weight, bias, targets, temperature, seed, ignore_index, debug)
    record_reference("generator_head", hidden=hidden, weight=weight, bias=bias, targets=targets)
    targets = targets.long()
    with torch.autocast(hidden.device.type, enabled=False):  # fp32 logits from the (rounded) operands
        logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    valid = targets != ignore_index
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    loss = loss / valid.sum().clamp(min=1).to(torch.float32)
    with torch.no_grad():
        M, V = logits.shape
        seed = _seed_tensor(seed, hidden.device)
        # Row chunks bound the int64 hash temporaries: cache-sized in eager; large when traced, where
        # the compiler fuses the hash and a Python loop would unroll into the graph.
        step = max(1, (1 << 24 if torch.compiler.is_compiling() else 1 << 16) // V)
        samples = [torch.argmax(logits[r0:r0 + step] / temperature
                                - torch.log(-torch.log(_reference_uniform(seed, r0, min(M, r0 + step), V))), dim=-1)
                   for r0 in range(0, M, step)]
        samples = torch.cat(samples) if samples else targets.new_empty(0)
        samples = torch.where(valid, samples, targets)
        argmax = torch.argmax(logits, dim=-1)
    return (loss, samples, argmax) if return_argmax else (loss, samples)


def _autocast_operands(hidden, weight):
    if isinstance(hidden, torch.Tensor):
        return autocast_operands(hidden.device.type, hidden, weight)
    return hidden, weight


_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """Integer hash of uint32 values held in int64, in place: xorshift-multiply rounds (the shape of
    lowbias32, C. Wellons' hash-prospector). Both multipliers are < 2**31, so no product overflows int64."""
    x ^= x >> 16
    x *= 0x7FEB352D
    x &= _M32
    x ^= x >> 15
    x *= 0x5BD1E995
    x &= _M32
    x ^= x >> 16
    return x


def _reference_uniform(seed: torch.Tensor, r0: int, r1: int, V: int) -> torch.Tensor:
    """Uniforms in [U_EPS, 1 - U_EPS], fp32 [r1 - r0, V], for rows r0..r1 of the reference's noise.

    Counter-based like tl.rand (a different function): element (row, v) is a hash of the seed
    (a (1,) int64 tensor) and the counter row * V + v, so the draws do not depend on the chunking
    and need neither a generator object nor a host read of the seed.
    """
    k1 = _mix32((seed & _M32) ^ 0x9E3779B9)  # (1,) keys from the seed's low and high words
    k2 = _mix32(((seed >> 32) & _M32) ^ k1)
    n = torch.arange(r0, r1, device=seed.device)[:, None] * V + torch.arange(V, device=seed.device)
    x = n
    if r1 * V > _M32:  # counters past 2**32 also hash their high word; _mix32(0) = 0 keeps the rest
        x = (n & _M32) ^ _mix32(n >> 32)
    x = _mix32(x ^ k1)
    x ^= k2
    x = _mix32(x)
    return ((x >> 8).to(torch.float32) * 2.0**-24).clamp_(U_EPS, 1.0 - U_EPS)  # top 24 bits: exact in fp32


# --------------------------------------------------------------------------------------------
# Autograd wrapper (torch custom ops) and dispatch
# --------------------------------------------------------------------------------------------

# The Triton path is a pair of torch custom ops (forward, backward) with fake (shape-only)
# implementations, so torch.compile(fullgraph=True) traces each as one opaque node and a CUDA
# graph can capture it; register_autograd ties the backward op to the forward op. The seed is a
# (1,) int64 tensor argument: a captured graph that refills it draws fresh samples each replay.
# Schemas are spelled out (``from __future__ import annotations`` defeats inference on older
# torch). Torch without torch.library.custom_op (< 2.4) falls back to GeneratorLossAndSample.
_HAS_CUSTOM_OP = hasattr(torch.library, "custom_op")


def _fwd_impl(hidden, weight, bias, targets, seed, temperature, ignore_index, return_argmax, block_m, block_v,
              launch=True):
    """(loss, samples, argmax, lse, n_valid); argmax is empty unless asked."""
    hidden = hidden.contiguous()
    weight = weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    loss, samples, argmax, lse, n_valid = _launch_forward(
        hidden, weight, bias, targets.contiguous().long(), temperature, seed, ignore_index, return_argmax,
        block_m, block_v, launch)
    return loss, samples, argmax if argmax is not None else samples.new_empty(0), lse, n_valid


def _fwd_fake(hidden, weight, bias, targets, seed, temperature, ignore_index, return_argmax, block_m, block_v):
    if recording():  # the same launcher as the real op, recording its plan without launching
        return _fwd_impl(hidden, weight, bias, targets, seed, temperature, ignore_index, return_argmax,
                         block_m, block_v, launch=False)
    M = hidden.shape[0]
    scalar = hidden.new_empty((), dtype=torch.float32)
    samples = hidden.new_empty(M, dtype=torch.int64)
    argmax = hidden.new_empty(M if return_argmax else 0, dtype=torch.int64)
    return scalar, samples, argmax, hidden.new_empty(M, dtype=torch.float32), hidden.new_empty((), dtype=torch.int64)


def _bwd_impl(grad_loss, hidden, weight, bias, targets, lse, n_valid, ignore_index, block_m, block_v,
              need_dh, need_dw, launch=True):
    """(dh, dW, db); an empty tensor where not needed (a custom op cannot return None)."""
    hidden = hidden.contiguous()
    weight = weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    dh, dw, db = _launch_backward(grad_loss, hidden, weight, bias, targets.contiguous().long(), lse, n_valid,
                                  ignore_index, block_m, block_v, need_dh, need_dw, launch)
    empty = lambda like: like.new_empty(0)
    return (dh if dh is not None else empty(hidden), dw if dw is not None else empty(weight),
            db if db is not None else empty(weight))


def _bwd_fake(grad_loss, hidden, weight, bias, targets, lse, n_valid, ignore_index, block_m, block_v,
              need_dh, need_dw):
    if recording():
        return _bwd_impl(grad_loss, hidden, weight, bias, targets, lse, n_valid, ignore_index, block_m, block_v,
                         need_dh, need_dw, launch=False)
    dh = hidden.new_empty(hidden.shape if need_dh else (0,))
    dw = weight.new_empty(weight.shape if need_dw else (0,))
    db = bias.new_empty(bias.shape) if need_dw and bias is not None else weight.new_empty(0)
    return dh, dw, db


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, _, _, ignore_index, _, block_m, block_v = inputs
    _, _, _, lse, n_valid = output
    ctx.save_for_backward(hidden, weight, bias, targets, lse, n_valid)
    ctx.ignore_index, ctx.block_m, ctx.block_v = ignore_index, block_m, block_v


def _backward_rule(ctx, grad_loss, *unused_grads):
    hidden, weight, bias, targets, lse, n_valid = ctx.saved_tensors
    need_dh = ctx.needs_input_grad[0]
    need_dw = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    dh, dw, db = _generator_head_bwd_op(grad_loss, hidden, weight, bias, targets, lse, n_valid,
                                        ctx.ignore_index, ctx.block_m, ctx.block_v, need_dh, need_dw)
    return (dh if need_dh else None, dw if ctx.needs_input_grad[1] else None,
            db if ctx.needs_input_grad[2] else None, None, None, None, None, None, None, None)


if _HAS_CUSTOM_OP:
    _generator_head_fwd_op = torch.library.custom_op(
        "electra_fast::generator_head_fwd", _fwd_impl, mutates_args=(), schema=(
            "(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, Tensor seed, float temperature, "
            "int ignore_index, bool return_argmax, int? block_m, int? block_v) "
            "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"))
    _generator_head_fwd_op.register_fake(_fwd_fake)
    _generator_head_bwd_op = torch.library.custom_op(
        "electra_fast::generator_head_bwd", _bwd_impl, mutates_args=(), schema=(
            "(Tensor grad_loss, Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, Tensor lse, "
            "Tensor n_valid, int ignore_index, int? block_m, int? block_v, bool need_dh, bool need_dw) "
            "-> (Tensor, Tensor, Tensor)"))
    _generator_head_bwd_op.register_fake(_bwd_fake)
    _generator_head_fwd_op.register_autograd(_backward_rule, setup_context=_setup_context)


class GeneratorLossAndSample(torch.autograd.Function):
    """Triton forward/backward without custom ops (torch < 2.4): eager only, torch.compile breaks the
    graph here. Outputs (loss, samples, argmax); argmax is empty unless asked."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, seed, ignore_index, return_argmax,
                block_m, block_v):
        hidden = hidden.contiguous()
        weight = weight.contiguous()
        bias = bias.contiguous() if bias is not None else None
        targets = targets.contiguous().long()
        loss, samples, argmax, lse, n_valid = _launch_forward(
            hidden, weight, bias, targets, temperature, seed, ignore_index, return_argmax, block_m, block_v)
        if argmax is None:
            argmax = samples.new_empty(0)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, n_valid)
        ctx.ignore_index, ctx.block_m, ctx.block_v = ignore_index, block_m, block_v
        ctx.mark_non_differentiable(samples, argmax)
        return loss, samples, argmax

    @staticmethod
    def backward(ctx, grad_loss, _grad_samples, _grad_argmax):
        hidden, weight, bias, targets, lse, n_valid = ctx.saved_tensors
        need_dh = ctx.needs_input_grad[0]
        need_dw = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        dh, dw, db = _launch_backward(grad_loss, hidden, weight, bias, targets, lse, n_valid,
                                      ctx.ignore_index, ctx.block_m, ctx.block_v, need_dh, need_dw)
        return (dh, dw if ctx.needs_input_grad[1] else None, db if ctx.needs_input_grad[2] else None,
                None, None, None, None, None, None, None)


def generator_loss_and_sample(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    seed: int | torch.Tensor,
    ignore_index: int = -100,
    return_argmax: bool = False,
    backend: str | None = None,
):
    """MLM loss and Gumbel-max samples of the ELECTRA generator head at the masked positions.

    ``backend``: "triton", "reference", or None: the environment variable ELECTRA_FAST_BACKEND
    if set ("triton" on CPU tensors needs TRITON_INTERPRET=1), else triton for CUDA tensors and
    the reference for CPU tensors. See :func:`generator_loss_and_sample_triton` for the contract.
    """
    kwargs = dict(temperature=temperature, seed=seed, ignore_index=ignore_index, return_argmax=return_argmax)
    if select_backend(hidden.device, backend, fake=is_fake(hidden)) == "triton":
        return generator_loss_and_sample_triton(hidden, weight, bias, targets, **kwargs)
    return generator_loss_and_sample_reference(hidden, weight, bias, targets, **kwargs)
