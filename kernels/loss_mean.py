"""The last step of both fused losses: sum / (count + eps), in one small launch.

The generator head's forward leaves one loss per row ([M] fp32, 0 at ignored rows) and the RTD
loss's forward one partial sum per program ([3, blocks]: loss, mask and dlogit sums). Turning those
into the mean took four or five tiny torch kernels per op (sums, the count, the denominator, the
division); in an eager step, where each launch costs host time, that adds up. ``loss_mean`` does
it in one program: it sums the values, counts the rows (targets != ignore_index, or the mask sums),
and writes the loss, its denominator (for the backward) and, for the RTD loss, the dlogit sum (for
the bias gradient). One program in a fixed order: deterministic. The denominator is
``checks.loss_denominator``'s: count + eps, or max(count, 1) for eps = 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launches import KernelPlan

BLOCK = 1024


@triton.jit
def _loss_mean_kernel(
    X, TARGETS,  # [ROWS, N] fp32 (row 0: values; 1: counts unless COUNT_TARGETS; 2: extra sums), [N] int64
    LOSS, DEN, EXTRA,  # 0-dim fp32 each
    N, ignore_index, eps,
    ROWS: tl.constexpr, COUNT_TARGETS: tl.constexpr, BLOCK: tl.constexpr,
):
    values = tl.zeros((BLOCK,), tl.float32)
    counts = tl.zeros((BLOCK,), tl.float32)
    extra = tl.zeros((BLOCK,), tl.float32)
    for n0 in range(0, N, BLOCK):
        offs = n0 + tl.arange(0, BLOCK)
        ok = offs < N
        values += tl.load(X + offs, mask=ok, other=0.0)
        if COUNT_TARGETS:
            counts += (tl.load(TARGETS + offs, mask=ok, other=ignore_index) != ignore_index).to(tl.float32)
        else:
            counts += tl.load(X + N + offs, mask=ok, other=0.0)
        if ROWS == 3:
            extra += tl.load(X + 2 * N + offs, mask=ok, other=0.0)
    n = tl.sum(counts, axis=0)
    den = tl.where(eps > 0, n + eps, tl.maximum(n, 1.0))
    tl.store(LOSS, tl.sum(values, axis=0) / den)
    tl.store(DEN, den)
    if ROWS == 3:
        tl.store(EXTRA, tl.sum(extra, axis=0))


def loss_mean(op: str, x: torch.Tensor, eps: float, targets: torch.Tensor | None = None,
              ignore_index: int = -100, launch: bool = True):
    """(loss, denominator, extra sum or None), 0-dim fp32 tensors, from ``x`` [N] (values; the count
    from ``targets`` != ``ignore_index``) or [2 | 3, N] (values, counts[, extra]). ``launch=False``
    only records the launch (the custom ops' fake implementations)."""
    rows, n = (1, x.shape[0]) if x.dim() == 1 else x.shape
    if (targets is None) == (rows == 1) or rows > 3:
        raise ValueError(f"loss_mean takes [N] values with targets, or [2 | 3, N] sums without; got {tuple(x.shape)}")
    scalar = lambda: torch.empty((), dtype=torch.float32, device=x.device)  # noqa: E731
    loss, den, extra = scalar(), scalar(), scalar() if rows == 3 else None
    t = targets if targets is not None else x
    KernelPlan(op, _loss_mean_kernel, (1,), (x, t, loss, den, extra if extra is not None else den, n, ignore_index,
                                            float(eps)),
               dict(ROWS=rows, COUNT_TARGETS=targets is not None, BLOCK=BLOCK), 4, 1,
               (2.0 * rows * n, float(x.numel() * 4 + (t.numel() * t.element_size() if targets is not None else 0)
                                      + 12))).run(launch)
    return loss, den, extra
