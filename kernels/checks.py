"""Input checks shared by the three ops: what a caller can get wrong, caught before anything launches.

Each op's host function checks its own contract (shapes, dtypes, devices, index ranges) with these
helpers, so the messages read alike from op to op: a ``ValueError`` that names the argument, says
what was expected and what came (docs/ARCHITECTURE.md, section 5). ``electra_fast.ops`` adds the
checks of its public entry points on top (:func:`require_tensors`, :func:`require_binary_mask`).

Checks that read values (index ranges, 0/1 masks) are host reads: free on the CPU, a device sync on
CUDA, so they run on CPU tensors and with ``debug=True`` on CUDA, and never while torch.compile
traces, on fake tensors or inside ``value_checks(False)`` (:func:`reads_values`).
"""

from __future__ import annotations

import math

import torch

from .dispatch import values_readable

# The floating dtypes every op accepts for its activations and weights.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def describe(x) -> str:
    """"torch.float32 (3, 4)" for a tensor, the type's name for anything else: for error messages."""
    return f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def is_integer(t: torch.Tensor) -> bool:
    """An integer dtype: not floating, complex or bool."""
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


def require_float(**named: torch.Tensor | None) -> None:
    """Each tensor given (None skipped) has one of :data:`FLOAT_DTYPES`."""
    for name, t in named.items():
        if t is not None and t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be float16, bfloat16 or float32; got {t.dtype}")


def require_integer(name: str, t: torch.Tensor, what: str = "") -> None:
    """``t`` has an integer dtype; ``what`` says what the integers are ("token ids")."""
    if not is_integer(t):
        raise ValueError(f"{name} must be an integer tensor{f' ({what})' if what else ''}; got {t.dtype}")


def require_same_device(anchor: str, device: torch.device, **named: torch.Tensor | None) -> None:
    """Each tensor given (None skipped) lives on ``device``, the device of the argument ``anchor``."""
    for name, t in named.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but {anchor} is on {device}; use one device")


def reads_values(t: torch.Tensor, debug: bool) -> bool:
    """Whether a check may read ``t``'s values on the host now: ``t`` is not empty, on the CPU or
    ``debug`` is set, and nothing forbids the read (see the module docstring)."""
    return t.numel() > 0 and (t.device.type == "cpu" or debug) and values_readable(t)


def require_eps(eps) -> None:
    """The loss denominator's ``eps`` is a finite number >= 0."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0 (the loss is sum / (count + eps)); got {eps!r}")


def loss_denominator(count: torch.Tensor, eps: float) -> torch.Tensor:
    """count + eps, or max(count, 1) when eps is 0 (the loss of no counted rows is then 0.0, not NaN;
    with eps > 0 it is 0 / eps = 0.0): one kernel, no host read."""
    return count + eps if eps else count.clamp(min=1)


def require_tensors(op: str, **named) -> None:
    """A numpy array or a list where a tensor goes (None skipped): TypeError naming the argument."""
    for name, t in named.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__module__}.{type(t).__name__} "
                            "(convert it with torch.as_tensor)")


def require_binary_mask(op: str, mask: torch.Tensor, debug: bool) -> None:
    """A loss mask holds only 0 and 1 (a mask of -1 would give a negative loss); bool always does."""
    if mask.dtype != torch.bool and reads_values(mask, debug) and not bool(((mask == 0) | (mask == 1)).all()):
        lo, hi = float(mask.min()), float(mask.max())
        raise ValueError(f"{op}: mask must hold only 0 and 1 (or be bool); got values in [{lo}, {hi}]")
