"""Replaced-token corruption: write the generator's samples into the original ids, one pass.

ELECTRA step 4 (docs/ARCHITECTURE.md, section 1): the discriminator reads the original ids with the sampled
tokens written at the masked positions; its label is 1 where the token differs from the
original, so a sample that happens to equal the original is labelled *original*.

    corrupted, is_replaced = replace_tokens(input_ids, positions, samples, weights)

input_ids (B, T) integer, the ORIGINAL ids; positions / samples / weights (B, P) in the masking
format (``electra_fast.masking``): real slots have weight > 0, padding slots weight 0 and
position 0, real positions are distinct. Returns corrupted (B, T) with input_ids' dtype and
is_replaced (B, T) bool. Integer op: no gradients.

This file holds the pieces of the op: the Triton kernel, its input checks and host launcher (a
torch custom op; no autograd wrapper is needed for an integer op), the PyTorch reference (the CPU
path and the test oracle) and the dispatch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .checks import reads_values, require_integer, require_same_device
from .custom_ops import triton_op
from .dispatch import implementation, select_backend
from .launches import KernelPlan, record_reference

__all__ = ["replace_tokens", "replace_tokens_reference", "replace_tokens_triton", "select_backend"]


# ----------------------------------------------------------------------------- Triton kernel
@triton.jit
def _replace_tokens_kernel(
    ids_ptr, pos_ptr, samples_ptr, weights_ptr,  # (B, T), (B, P) x 3, contiguous
    out_ptr, flag_ptr,  # (B, T) ids dtype, (B, T) uint8 viewed as bool
    T, P,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # One program per row. Instead of "copy the row, then scatter the samples" (which needs a
    # barrier between two writers of the same address), every output tile is gathered: each
    # column looks for a real slot pointing at it in a (BLOCK_T, BLOCK_P) match matrix and is
    # written exactly once.
    row = tl.program_id(0).to(tl.int64)
    p = tl.arange(0, BLOCK_P)
    in_p = p < P
    w = tl.load(weights_ptr + row * P + p, mask=in_p, other=0).to(tl.float32)
    real = in_p & (w > 0)  # padding slots (weight 0) are ignored, whatever their position
    pos = tl.load(pos_ptr + row * P + p, mask=real, other=-1).to(tl.int32)
    pos = tl.where(real, pos, -1)  # -1 matches no column
    smp = tl.load(samples_ptr + row * P + p, mask=real, other=0).to(tl.int32)  # token ids < 2**31

    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        in_t = t < T
        orig = tl.load(ids_ptr + row * T + t, mask=in_t, other=0)
        hit = pos[None, :] == t[:, None]  # (BLOCK_T, BLOCK_P)
        has = tl.max(hit.to(tl.int32), axis=1) > 0
        # real positions are distinct (masking format), so at most one slot hits a column
        new = tl.sum(tl.where(hit, smp[None, :], 0), axis=1)
        replaced = has & (new != orig.to(tl.int32))
        tl.store(out_ptr + row * T + t, tl.where(has, new.to(orig.dtype), orig), mask=in_t)
        tl.store(flag_ptr + row * T + t, replaced.to(tl.uint8), mask=in_t)


_NUM_STAGES = 3  # Triton's default for CUDA: what these kernels always launched with


def _blocks(P: int) -> tuple[int, int]:
    # keep the (BLOCK_T, BLOCK_P) match matrix at <= 4096 elements: 32 per thread at 4 warps
    block_p = max(16, triton.next_power_of_2(P))
    block_t = max(16, 4096 // block_p)
    return block_t, block_p


# ----------------------------------------------------------------------------- input checks
def _check_inputs(input_ids, positions, samples, weights, debug: bool) -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T); got shape {tuple(input_ids.shape)}")
    require_integer("input_ids", input_ids)
    B, T = input_ids.shape
    for name, t in (("positions", positions), ("samples", samples), ("weights", weights)):
        if t.dim() != 2 or t.shape[0] != B:
            raise ValueError(f"{name} must be (B, P) with B={B} (input_ids is {tuple(input_ids.shape)}); "
                             f"got shape {tuple(t.shape)}")
    require_same_device("input_ids", input_ids.device, positions=positions, samples=samples, weights=weights)
    if samples.shape != positions.shape or weights.shape != positions.shape:
        raise ValueError(f"positions, samples and weights must have the same shape (B, P); got "
                         f"{tuple(positions.shape)}, {tuple(samples.shape)}, {tuple(weights.shape)}")
    require_integer("positions", positions)
    require_integer("samples", samples, "token ids")
    if weights.dtype.is_complex:
        raise ValueError(f"weights must be float, integer or bool; got {weights.dtype}")
    if reads_values(positions, debug):
        lo, hi = int(positions.min()), int(positions.max())
        if lo < 0 or hi >= T:
            raise ValueError(f"positions must lie in [0, T={T}); got values in [{lo}, {hi}]")


# ----------------------------------------------------------------------------- host launcher
def _replace_tokens_launch(input_ids, positions, samples, weights, launch=True):
    """Runs the kernel (``launch=False``: only records it, for the fake implementation)."""
    input_ids, positions = input_ids.contiguous(), positions.contiguous()
    samples, weights = samples.contiguous(), weights.contiguous()
    B, T = input_ids.shape
    P = positions.shape[1]
    out = torch.empty_like(input_ids)
    flag = torch.empty((B, T), dtype=torch.uint8, device=input_ids.device)
    if B * T:
        block_t, block_p = _blocks(P)
        KernelPlan("replace_tokens", _replace_tokens_kernel, (B,),
                   (input_ids, positions, samples, weights, out, flag, T, P),
                   dict(BLOCK_T=block_t, BLOCK_P=block_p), 4, _NUM_STAGES).run(launch)
    return out, flag.view(torch.bool)


def _replace_tokens_fake(input_ids, positions, samples, weights):
    out = torch.empty_like(input_ids, memory_format=torch.contiguous_format)
    return out, torch.empty(input_ids.shape, dtype=torch.bool, device=input_ids.device)


# The Triton path as a torch custom op (kernels/custom_ops.py). An integer op needs no autograd
# wrapper: its outputs are integer and bool, which autograd never tracks, and ``weights`` is
# detached on the way in (a float weight may require grad).
_replace_tokens_op = triton_op(
    "replace_tokens", "(Tensor input_ids, Tensor positions, Tensor samples, Tensor weights) -> (Tensor, Tensor)",
    _replace_tokens_launch, _replace_tokens_fake)


def replace_tokens_triton(input_ids: torch.Tensor, positions: torch.Tensor, samples: torch.Tensor,
                          weights: torch.Tensor, *, debug: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton path (CUDA, or the CPU under TRITON_INTERPRET=1). Same contract as replace_tokens."""
    _check_inputs(input_ids, positions, samples, weights, debug)
    return _replace_tokens_op(input_ids, positions, samples, weights.detach())


# ----------------------------------------------------------------------------- reference
def replace_tokens_reference(input_ids: torch.Tensor, positions: torch.Tensor, samples: torch.Tensor,
                             weights: torch.Tensor, *, debug: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch: scatter the samples of real slots, padding slots go to a spare column."""
    _check_inputs(input_ids, positions, samples, weights, debug)
    record_reference("replace_tokens", input_ids=input_ids, positions=positions, samples=samples, weights=weights)
    B, T = input_ids.shape
    # a padding slot may share position 0 with a real slot; send it to column T and drop it
    cols = torch.where(weights > 0, positions.long(), torch.full_like(positions, T, dtype=torch.long))
    out = torch.cat([input_ids, input_ids.new_zeros(B, 1)], dim=1)
    out.scatter_(1, cols, samples.to(input_ids.dtype))
    out = out[:, :T].contiguous()
    return out, out != input_ids


# ----------------------------------------------------------------------------- dispatch
def replace_tokens(input_ids: torch.Tensor, positions: torch.Tensor, samples: torch.Tensor,
                   weights: torch.Tensor, *, backend: str | None = None,
                   debug: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminator input and labels: ``input_ids`` with ``samples`` written where ``weights > 0``.

    input_ids (B, T) integer original ids; positions, samples (B, P) integer, weights (B, P)
    float/bool in the masking format (padding slots: weight 0). Returns ``(corrupted, is_replaced)``:
    corrupted (B, T) in input_ids' dtype, is_replaced (B, T) bool = corrupted != input_ids.
    ``backend``: "triton", "reference" or None (see ``select_backend``); ``debug`` also range-checks
    positions of CUDA tensors (a device sync).
    """
    fn = implementation(input_ids, backend, replace_tokens_triton, replace_tokens_reference)
    return fn(input_ids, positions, samples, weights, debug=debug)
