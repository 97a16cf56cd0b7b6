"""Replaced-token-detection loss: the discriminator's H -> 1 projection fused with sigmoid BCE.

ELECTRA step 5 (docs/ARCHITECTURE.md, section 1): logit = hidden @ weight + bias per token, loss = sigmoid binary
cross-entropy against is_replaced, averaged over the real tokens.

    loss = rtd_loss(hidden, weight, bias, labels, mask)        # hidden (..., H)
    loss = rtd_loss_from_logits(logits, labels, mask)          # logits (...)

loss = sum(mask * bce(logit, label)) / (sum(mask) + eps), fp32: the mean with the default eps = 0
(0.0, not NaN, when the mask is empty); the model passes the official code's eps = 1e-6.

The forward kernel reads ``hidden`` once and also stores dlogit = (sigmoid(logit) - label) *
mask per token, so the backward is a cheap scale by grad / n: one kernel reads hidden once more,
writes dhidden = dlogit * weight and accumulates per-row-chunk partial sums of
dweight = sum_tokens dlogit * hidden (summed by torch afterwards: deterministic, no atomics).

This file holds the Triton kernels, their host launchers, the PyTorch reference (the CPU path
and the test oracle), the autograd wrappers (torch custom ops with register_autograd, so
torch.compile(fullgraph=True) traces them) and the dispatch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .checks import loss_denominator, reads_values, require_eps, require_float, require_same_device
from .custom_ops import triton_op
from .dispatch import autocast_projection, implementation, select_backend
from .launches import KernelPlan, record_reference
from .loss_mean import loss_mean

__all__ = [
    "rtd_loss", "rtd_loss_reference", "rtd_loss_triton",
    "rtd_loss_from_logits", "rtd_loss_from_logits_reference", "rtd_loss_from_logits_triton",
    "select_backend",
]


# ----------------------------------------------------------------------------- Triton kernels
@triton.jit
def _masked_bce(z, labels_ptr, mask_ptr, tokens, ok, dlogit_ptr, partial_ptr, pid, num_blocks):
    """The loss part both forward kernels share, for fp32 logits ``z`` of ``tokens`` (``ok``: in range):
    per-token masked BCE and dloss/dlogit; stores dlogit and this program's loss, mask and dlogit sums.
    No log1p/tanh: the interpreter lacks libdevice."""
    y = tl.load(labels_ptr + tokens, mask=ok, other=0).to(tl.float32)
    m = tl.load(mask_ptr + tokens, mask=ok, other=0).to(tl.float32)
    e = tl.exp(-tl.abs(z))  # in (0, 1]: no overflow for any z
    loss = (tl.maximum(z, 0.0) - z * y + tl.log(1.0 + e)) * m
    dlogit = (tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)) - y) * m
    tl.store(dlogit_ptr + tokens, dlogit, mask=ok)
    tl.store(partial_ptr + pid, tl.sum(loss, axis=0))
    tl.store(partial_ptr + num_blocks + pid, tl.sum(m, axis=0))
    tl.store(partial_ptr + 2 * num_blocks + pid, tl.sum(dlogit, axis=0))


@triton.jit
def _rtd_fwd_kernel(
    h_ptr, w_ptr, b_ptr, labels_ptr, mask_ptr,  # (N, H) rows at stride_h, (H,), (), (N,), (N,)
    dlogit_ptr, partial_ptr,  # (N,) fp32; (3, num_blocks) fp32: loss, mask and dlogit sums
    N, H, stride_h, num_blocks,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    in_m = rows < N
    row_off = rows.to(tl.int64) * stride_h
    acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        in_h = cols < H
        # loads, then fp32: bf16 arithmetic is wrong in the interpreter (docs/ARCHITECTURE.md, section 4)
        x = tl.load(h_ptr + row_off[:, None] + cols[None, :], mask=in_m[:, None] & in_h[None, :], other=0.0)
        w = tl.load(w_ptr + cols, mask=in_h, other=0.0)
        acc += tl.sum(x.to(tl.float32) * w.to(tl.float32)[None, :], axis=1)
    z = acc + tl.load(b_ptr).to(tl.float32)
    _masked_bce(z, labels_ptr, mask_ptr, rows, in_m, dlogit_ptr, partial_ptr, pid, num_blocks)


@triton.jit
def _rtd_bwd_kernel(
    h_ptr, w_ptr, dlogit_ptr,  # (N, H) at stride_h, (H,), (N,) fp32
    grad_ptr, den_ptr, dsum_ptr,  # () each: the loss's gradient, its denominator, the dlogit sum (fp32)
    dh_ptr, dw_partial_ptr, db_ptr,  # (N, H) contiguous; (num_chunks, H) fp32; () fp32
    N, H, stride_h, rows_per_prog,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):
    # grid (row chunks, H tiles); each program owns rows_per_prog rows (a multiple of BLOCK_M)
    # of one H tile and writes its own partial dweight row: the sum over chunks is done by torch
    pid_m = tl.program_id(0)
    pid_h = tl.program_id(1)
    cols = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    in_h = cols < H
    scale = tl.load(grad_ptr).to(tl.float32) / tl.load(den_ptr)
    if (pid_m == 0) & (pid_h == 0):
        tl.store(db_ptr, tl.load(dsum_ptr) * scale)
    w = tl.load(w_ptr + cols, mask=in_h, other=0.0).to(tl.float32) * scale
    dw = tl.zeros([BLOCK_H], dtype=tl.float32)
    row0 = pid_m * rows_per_prog
    for r0 in range(0, rows_per_prog, BLOCK_M):
        rows = row0 + r0 + tl.arange(0, BLOCK_M)
        in_m = rows < N
        tile = in_m[:, None] & in_h[None, :]
        rows64 = rows.to(tl.int64)
        dl = tl.load(dlogit_ptr + rows, mask=in_m, other=0.0)
        x = tl.load(h_ptr + rows64[:, None] * stride_h + cols[None, :], mask=tile, other=0.0).to(tl.float32)
        dh = dl[:, None] * w[None, :]
        tl.store(dh_ptr + rows64[:, None] * H + cols[None, :], dh.to(dh_ptr.dtype.element_ty), mask=tile)
        dw += tl.sum(dl[:, None] * x, axis=0)
    tl.store(dw_partial_ptr + pid_m.to(tl.int64) * H + cols, dw * scale, mask=in_h)


@triton.jit
def _rtd_logits_fwd_kernel(
    z_ptr, labels_ptr, mask_ptr,  # (N,) each
    dlogit_ptr, partial_ptr,  # (N,) fp32; (3, num_blocks) fp32
    N, num_blocks,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    z = tl.load(z_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    _masked_bce(z, labels_ptr, mask_ptr, offs, ok, dlogit_ptr, partial_ptr, pid, num_blocks)


# ----------------------------------------------------------------------------- block sizes
_LOGITS_BLOCK = 1024


_BWD_PROGRAMS = 512  # backward grid size to aim for: a few waves on any current GPU
_NUM_WARPS = 8  # with 2048-element tiles: ~60 registers, high occupancy for these memory-bound kernels
_NUM_STAGES = 3  # Triton's default for CUDA: what these kernels always launched with


def _fwd_blocks(H: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_H): 2048-element tiles, 8 per thread (tools/compile_kernels.py: no spills)."""
    block_h = min(128, max(16, triton.next_power_of_2(H)))
    return max(16, 2048 // block_h), block_h


def _bwd_blocks(N: int, H: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_H, rows_per_prog, num_chunks). About _BWD_PROGRAMS programs whatever the GPU, so the
    partial-dweight buffer stays small and the result does not depend on the device."""
    block_h = min(128, max(16, triton.next_power_of_2(H)))
    block_m = max(16, 2048 // block_h)
    h_tiles = triton.cdiv(H, block_h)
    chunks = max(1, min(triton.cdiv(_BWD_PROGRAMS, h_tiles), triton.cdiv(N, block_m)))
    rows_per_prog = max(1, triton.cdiv(triton.cdiv(N, chunks), block_m)) * block_m
    return block_m, block_h, rows_per_prog, max(1, triton.cdiv(N, rows_per_prog))


# ----------------------------------------------------------------------------- input checks
def _check_targets(labels, mask, lead: tuple, device, debug: bool) -> None:
    for name, t in (("labels", labels), ("mask", mask)):
        if tuple(t.shape) != lead:
            raise ValueError(f"{name} must have shape {lead} (the leading shape of hidden/logits); "
                             f"got {tuple(t.shape)}")
        if t.dtype.is_complex:
            raise ValueError(f"{name} must be bool, integer or float; got {t.dtype}")
    require_same_device("hidden/logits", device, labels=labels, mask=mask)
    # soft labels are fine, but outside [0, 1] the BCE is meaningless
    if labels.dtype != torch.bool and reads_values(labels, debug):
        lo, hi = float(labels.min()), float(labels.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"labels must lie in [0, 1]; got values in [{lo}, {hi}]")


def _check_rtd_inputs(hidden, weight, bias, labels, mask, eps, debug: bool) -> None:
    require_eps(eps)
    if hidden.dim() < 1:
        raise ValueError("hidden must be (..., H); got a 0-dim tensor")
    require_float(hidden=hidden)
    H = hidden.shape[-1]
    if weight.dim() != 1 or weight.shape[0] != H:
        raise ValueError(f"weight must be (H,) with H={H} (the last dim of hidden); got shape {tuple(weight.shape)}")
    if bias.dim() != 0:
        raise ValueError(f"bias must be a 0-dim tensor (use bias.view(())); got shape {tuple(bias.shape)}")
    require_float(weight=weight, bias=bias)
    require_same_device("hidden", hidden.device, weight=weight, bias=bias)
    _check_targets(labels, mask, tuple(hidden.shape[:-1]), hidden.device, debug)


def _check_logits_inputs(logits, labels, mask, eps, debug: bool) -> None:
    require_eps(eps)
    require_float(logits=logits)
    _check_targets(labels, mask, tuple(logits.shape), logits.device, debug)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).contiguous()


# ----------------------------------------------------------------------------- host launchers
def _rows(hidden: torch.Tensor) -> torch.Tensor:
    """hidden (..., H) as (N, H) rows with unit column stride (a copy only where needed)."""
    h2d = hidden.reshape(-1, hidden.shape[-1])
    return h2d if h2d.stride(-1) == 1 else h2d.contiguous()


def _partials(n_rows, *shape, device):
    """An fp32 buffer of per-program partial sums: every program writes its whole slice, so it needs no
    zero fill (a kernel per step) unless no program runs (no rows), when the sums must read as zeros."""
    return (torch.empty if n_rows else torch.zeros)(shape, dtype=torch.float32, device=device)


def _rtd_forward(hidden, weight, bias, labels, mask, eps=0.0, launch=True):
    """Launch the fused forward (``launch=False``: only record it, for the fake implementation).
    Returns (loss, denominator, dlogit (N,) fp32, dlogit sum): everything the backward needs besides
    inputs; the first two and the last from one more small launch (``loss_mean``)."""
    h2d = _rows(hidden)
    N, H = h2d.shape
    block_m, block_h = _fwd_blocks(H)
    num_blocks = max(1, triton.cdiv(N, block_m))
    dlogit = torch.empty(N, dtype=torch.float32, device=hidden.device)
    partial = _partials(N, 3, num_blocks, device=hidden.device)
    if N:
        KernelPlan("rtd_loss.fwd", _rtd_fwd_kernel, (num_blocks,),
                   (h2d, weight.contiguous(), bias, _flat(labels), _flat(mask), dlogit, partial,
                    N, H, h2d.stride(0), num_blocks), dict(BLOCK_M=block_m, BLOCK_H=block_h),
                   _NUM_WARPS, _NUM_STAGES).run(launch)
    loss, den, dsum = loss_mean("rtd_loss.fwd_mean", partial, eps, launch=launch)
    return loss, den, dlogit, dsum


def _rtd_backward(hidden, weight, dlogit, grad, den, dsum, launch=True):
    """(dhidden like hidden, dweight (H,) fp32, dbias () fp32) for dlogit scaled by grad / den (0-dim
    tensors); dbias = dsum * grad / den."""
    h2d = _rows(hidden)
    N, H = h2d.shape
    dh = torch.empty((N, H), dtype=hidden.dtype, device=h2d.device)
    block_m, block_h, rows_per_prog, chunks = _bwd_blocks(N, H)
    dw_partial = _partials(N, chunks, H, device=h2d.device)
    db = (torch.empty if N else torch.zeros)((), dtype=torch.float32, device=h2d.device)
    if N:
        KernelPlan("rtd_loss.bwd", _rtd_bwd_kernel, (chunks, triton.cdiv(H, block_h)),
                   (h2d, weight.contiguous(), dlogit, grad, den, dsum, dh, dw_partial, db, N, H, h2d.stride(0),
                    rows_per_prog),
                   dict(BLOCK_M=block_m, BLOCK_H=block_h), _NUM_WARPS, _NUM_STAGES).run(launch)
    return dh.view(hidden.shape), dw_partial.sum(dim=0), db


def _rtd_logits_forward(logits, labels, mask, eps=0.0, launch=True):
    """(loss, denominator, dlogit (N,) fp32) of rtd_loss_from_logits."""
    N = logits.numel()
    num_blocks = max(1, triton.cdiv(N, _LOGITS_BLOCK))
    dlogit = torch.empty(N, dtype=torch.float32, device=logits.device)
    partial = _partials(N, 3, num_blocks, device=logits.device)
    if N:
        KernelPlan("rtd_loss_from_logits.fwd", _rtd_logits_fwd_kernel, (num_blocks,),
                   (_flat(logits), _flat(labels), _flat(mask), dlogit, partial, N, num_blocks),
                   dict(BLOCK=_LOGITS_BLOCK), 4, _NUM_STAGES).run(launch)
    loss, den, _ = loss_mean("rtd_loss_from_logits.fwd_mean", partial[:2], eps, launch=launch)
    return loss, den, dlogit


def rtd_loss_triton(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor,
                    mask: torch.Tensor, *, eps: float = 0.0, debug: bool = False) -> torch.Tensor:
    """Triton path (CUDA, or the CPU under TRITON_INTERPRET=1), differentiable. See rtd_loss."""
    hidden, weight = autocast_projection(hidden, weight)
    _check_rtd_inputs(hidden, weight, bias, labels, mask, eps, debug)
    return _rtd_fwd_op(hidden, weight, bias, labels, mask, float(eps))[0]


def rtd_loss_from_logits_triton(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *,
                                eps: float = 0.0, debug: bool = False) -> torch.Tensor:
    """Triton path of rtd_loss_from_logits, differentiable."""
    _check_logits_inputs(logits, labels, mask, eps, debug)
    return _rtd_logits_fwd_op(logits, labels, mask, float(eps))[0]


# ----------------------------------------------------------------------------- references
def rtd_loss_reference(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor,
                       mask: torch.Tensor, *, eps: float = 0.0, debug: bool = False) -> torch.Tensor:
    """Plain PyTorch, fp32 logits; differentiable through torch autograd. Under autocast it rounds
    hidden and weight to the autocast dtype like the Triton path, then computes in fp32."""
    hidden, weight = autocast_projection(hidden, weight)
    _check_rtd_inputs(hidden, weight, bias, labels, mask, eps, debug)
    record_reference("rtd_loss", hidden=hidden, weight=weight, bias=bias, labels=labels, mask=mask)
    with torch.autocast(hidden.device.type, enabled=False):  # fp32 logits from the (rounded) operands
        logits = hidden.float() @ weight.float() + bias.float()
        return _masked_bce_mean(logits, labels, mask, eps)


def rtd_loss_from_logits_reference(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *,
                                   eps: float = 0.0, debug: bool = False) -> torch.Tensor:
    """Plain PyTorch reference of rtd_loss_from_logits."""
    _check_logits_inputs(logits, labels, mask, eps, debug)
    record_reference("rtd_loss_from_logits", logits=logits, labels=labels, mask=mask)
    return _masked_bce_mean(logits.float(), labels, mask, eps)


def _masked_bce_mean(logits, labels, mask, eps):
    m = mask.float()
    total = F.binary_cross_entropy_with_logits(logits, labels.float(), weight=m, reduction="sum")
    return total / loss_denominator(m.sum(), eps)


# ----------------------------------------------------------------------------- autograd
# The Triton path as torch custom ops (kernels/custom_ops.py): for each function a forward op whose
# registered gradient calls a backward op (rtd_loss) or is a plain scale of the stored dlogit
# (rtd_loss_from_logits).
def _rtd_fwd_fake(hidden, weight, bias, labels, mask, eps=0.0):
    scalar = lambda: hidden.new_empty((), dtype=torch.float32)
    return scalar(), scalar(), hidden.new_empty(labels.numel(), dtype=torch.float32), scalar()


def _rtd_bwd_fake(hidden, weight, dlogit, grad, den, dsum):
    return (torch.empty_like(hidden, memory_format=torch.contiguous_format),
            weight.new_empty(weight.shape, dtype=torch.float32), weight.new_empty((), dtype=torch.float32))


def _rtd_setup_context(ctx, inputs, output):
    hidden, weight, bias, _, _, _ = inputs
    _, den, dlogit, dsum = output
    ctx.save_for_backward(hidden, weight, dlogit, dsum, den)
    ctx.bias_dtype = bias.dtype


def _rtd_backward_rule(ctx, grad, *unused_grads):
    hidden, weight, dlogit, dsum, den = ctx.saved_tensors
    dhidden, dweight, dbias = _rtd_bwd_op(hidden, weight, dlogit, grad, den, dsum)  # scaled on the device: no sync
    return dhidden, dweight.to(weight.dtype), dbias.to(ctx.bias_dtype), None, None, None


def _rtd_logits_fwd_fake(logits, labels, mask, eps=0.0):
    scalar = lambda: logits.new_empty((), dtype=torch.float32)
    return scalar(), scalar(), logits.new_empty(logits.numel(), dtype=torch.float32)


def _rtd_logits_setup_context(ctx, inputs, output):
    logits = inputs[0]
    ctx.save_for_backward(output[2], output[1])
    ctx.logits_shape, ctx.logits_dtype = logits.shape, logits.dtype


def _rtd_logits_backward_rule(ctx, grad, *unused_grads):
    dlogit, den = ctx.saved_tensors
    return (dlogit * (grad.float() / den)).to(ctx.logits_dtype).view(ctx.logits_shape), None, None, None


_rtd_bwd_op = triton_op(
    "rtd_loss_bwd",
    "(Tensor hidden, Tensor weight, Tensor dlogit, Tensor grad, Tensor den, Tensor dsum) -> (Tensor, Tensor, Tensor)",
    _rtd_backward, _rtd_bwd_fake)
_rtd_fwd_op = triton_op(
    "rtd_loss_fwd",
    "(Tensor hidden, Tensor weight, Tensor bias, Tensor labels, Tensor mask, float eps=0.0) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    _rtd_forward, _rtd_fwd_fake, backward=_rtd_backward_rule, setup_context=_rtd_setup_context)
_rtd_logits_fwd_op = triton_op(
    "rtd_loss_from_logits_fwd", "(Tensor logits, Tensor labels, Tensor mask, float eps=0.0) -> (Tensor, Tensor, Tensor)",
    _rtd_logits_forward, _rtd_logits_fwd_fake, backward=_rtd_logits_backward_rule,
    setup_context=_rtd_logits_setup_context)


# ----------------------------------------------------------------------------- dispatch
def rtd_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor,
             mask: torch.Tensor, *, eps: float = 0.0, backend: str | None = None,
             debug: bool = False) -> torch.Tensor:
    """Mean sigmoid BCE of the discriminator's logits over the masked-in tokens.

    hidden (..., H) float32/float16/bfloat16, weight (H,), bias 0-dim; logits = hidden @ weight +
    bias in fp32. labels (...) bool/int/float in [0, 1] (1 = replaced); mask (...) bool/float.
    Returns the fp32 0-dim loss sum(mask * bce) / (sum(mask) + eps) (the official ELECTRA code's
    eps is 1e-6; with the default 0, the mean), 0.0 when the mask is empty.
    Differentiable w.r.t. hidden, weight and bias. ``backend``: "triton", "reference" or None
    (see ``select_backend``); ``debug`` also range-checks CUDA labels (a device sync).
    """
    fn = implementation(hidden, backend, rtd_loss_triton, rtd_loss_reference)
    return fn(hidden, weight, bias, labels, mask, eps=eps, debug=debug)


def rtd_loss_from_logits(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *, eps: float = 0.0,
                         backend: str | None = None, debug: bool = False) -> torch.Tensor:
    """rtd_loss for trainers that already have the logits (...): same labels, mask and result.
    Differentiable w.r.t. logits."""
    fn = implementation(logits, backend, rtd_loss_from_logits_triton, rtd_loss_from_logits_reference)
    return fn(logits, labels, mask, eps=eps, debug=debug)
