"""Which implementation an op runs: the Triton kernels or the PyTorch reference.

Shared by every op in this package. The rule: an explicit ``backend=`` argument, else the
environment variable ELECTRA_FAST_BACKEND ("triton" / "reference"), else Triton for CUDA tensors
and the reference for everything else. The Triton path on CPU tensors needs the interpreter
(TRITON_INTERPRET=1 set before triton is first imported).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import triton


@triton.jit
def _probe_kernel(x):  # never launched: its type says whether triton was imported in interpreter mode
    pass


def interpreting() -> bool:
    """True when the kernels were defined under TRITON_INTERPRET=1 (the CPU interpreter)."""
    return not isinstance(_probe_kernel, triton.JITFunction)


def select_backend(device: torch.device | str, backend: str | None = None) -> str:
    """"triton" or "reference" for tensors on ``device`` (see the module docstring)."""
    device = torch.device(device)
    choice = backend if backend is not None else os.environ.get("ELECTRA_FAST_BACKEND", "")
    choice = choice.strip().lower()
    if choice in ("", "auto"):
        return "triton" if device.type == "cuda" else "reference"
    if choice == "reference":
        return "reference"
    if choice == "triton":
        if device.type != "cuda" and not interpreting():
            raise ValueError(f"backend 'triton' on {device.type} tensors needs TRITON_INTERPRET=1 set before "
                             "triton is imported; use backend='reference' on the CPU")
        return "triton"
    raise ValueError(f"backend must be 'triton', 'reference' or None (ELECTRA_FAST_BACKEND); got {choice!r}")


_checks = threading.local()


def value_checks_enabled() -> bool:
    """Whether the ops may read index tensors back to the host to range-check them (see value_checks)."""
    return getattr(_checks, "enabled", True)


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Turn the ops' value checks on or off in this thread for the block.

    The ops check the ids they index with (targets, positions) against their ranges. That reads
    the tensor back to the host: free on the CPU, a device sync on CUDA, so it runs by default on
    CPU tensors and with ``debug=True`` on CUDA. A training step whose data comes from a loader
    that guarantees the ranges turns it off, so the step never reads a tensor on the host.
    """
    before = value_checks_enabled()
    _checks.enabled = bool(enabled)
    try:
        yield
    finally:
        _checks.enabled = before
