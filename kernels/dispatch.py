"""Which implementation an op runs: the Triton kernels or the PyTorch reference.

Shared by every op in this package. A call's ``backend=`` argument decides: "triton", "reference",
or "auto" / None: Triton for CUDA tensors and the reference for everything else. The ops never read
the environment. The variable ELECTRA_FAST_BACKEND is a default for whoever owns op call sites,
read once when it is built (:func:`resolve_backend`): the model resolves its backend at
construction (``Electra(config, backend=...)``, shown in its repr) and passes it to every op call,
so a compiled graph never depends on the environment at trace time.

The Triton path on CPU tensors needs the interpreter (TRITON_INTERPRET=1 set before triton is first
imported), except on fake tensors (``FakeTensorMode``), where no kernel runs: the launchers only plan
and record their launches (``kernels/launches.py``), which is how ``tools/compile_kernels.py`` lists a
GPU step's kernels on a CPU-only machine.

The interpreter computes bf16 wrongly (bf16 arithmetic and bf16 ``tl.dot``), so a kernel with a
tensor-core variant runs its fp32 variant there instead, named by :func:`interpreter_fp32_variant`
(the generator head's ``DOT_F32``). CPU tests thus exercise the fp32 variant for bf16 inputs;
``tests/test_gpu_shapes.py`` runs the bf16 variant a GPU launches against the reference.

Autocast does not reach custom ops by itself (under CUDA bf16 autocast LayerNorm returns fp32 and
parameters stay fp32), so every op casts its matmul operands at its boundary:
:func:`autocast_operands`, the same rule for "cuda" and "cpu" and for both backends.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import triton
from torch._subclasses.fake_tensor import FakeTensor


@triton.jit
def _probe_kernel(x):  # never launched: its type says whether triton was imported in interpreter mode
    pass


def interpreting() -> bool:
    """True when the kernels were defined under TRITON_INTERPRET=1 (the CPU interpreter)."""
    return not isinstance(_probe_kernel, triton.JITFunction)


def is_fake(t) -> bool:
    """True for a FakeTensor: shapes and dtypes only, no data, nothing to launch."""
    return isinstance(t, FakeTensor)


def values_readable(t: torch.Tensor) -> bool:
    """Whether a check may read ``t``'s values on the host: not while torch.compile traces (a graph
    cannot branch on values), not on a fake tensor (it has none), and not where value checks are
    turned off (``value_checks(False)``: a training step)."""
    return not torch.compiler.is_compiling() and not is_fake(t) and value_checks_enabled()


def autocast_operands(device_type: str, *tensors: torch.Tensor | None) -> tuple:
    """``tensors`` cast to the autocast dtype when autocast is on for ``device_type``, like the
    operands of a matmul under autocast (floating tensors other than fp64; anything else unchanged).

    The ops pass their matmul operands (hidden states and weights) through this, not biases or
    labels: a bias is added to the fp32 accumulator and keeps its own dtype. Gradients come back
    through the cast in the parameters' dtype, so fp32 master weights stay fp32.
    """
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
                 else t for t in tensors)


def autocast_projection(hidden, weight) -> tuple:
    """(hidden, weight) of a projection through :func:`autocast_operands` on hidden's device, as a
    Linear's would be: the hidden states stream at half the bytes; bias and loss stay fp32. A hidden
    that is not a tensor passes through, for the input checks to name it."""
    if isinstance(hidden, torch.Tensor):
        return autocast_operands(hidden.device.type, hidden, weight)
    return hidden, weight


BACKENDS = ("auto", "triton", "reference")
BACKEND_ENV = "ELECTRA_FAST_BACKEND"


def resolve_backend(backend: str | None = None) -> str:
    """The backend an owner of op call sites fixes when it is built: ``backend`` if given, else the
    environment variable ELECTRA_FAST_BACKEND if set, else "auto" (decided per call by the tensors'
    device). One of :data:`BACKENDS`; ValueError naming the choices otherwise."""
    source = "backend" if backend is not None else BACKEND_ENV
    choice = backend if backend is not None else os.environ.get(BACKEND_ENV, "")
    choice = (choice.strip().lower() if isinstance(choice, str) else choice) or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"{source} must be 'auto', 'triton' or 'reference'; got {choice!r}")
    return choice


def select_backend(device: torch.device | str, backend: str | None = None, *, fake: bool = False) -> str:
    """"triton" or "reference" for tensors on ``device`` and a call's ``backend`` argument (None: "auto";
    see the module docstring). ``fake``: the tensors are fake, so "triton" needs no interpreter on the
    CPU (nothing is launched)."""
    device = torch.device(device)
    choice = (backend.strip().lower() if isinstance(backend, str) else backend) or "auto"
    if choice == "auto":
        return "triton" if device.type == "cuda" else "reference"
    if choice == "reference":
        return "reference"
    if choice == "triton":
        if device.type != "cuda" and not interpreting() and not fake:
            raise ValueError(f"backend 'triton' on {device.type} tensors needs TRITON_INTERPRET=1 set before "
                             "triton is imported; use backend='reference' on the CPU")
        return "triton"
    raise ValueError(f"backend must be 'triton', 'reference', 'auto' or None; got {choice!r}")


def implementation(anchor: torch.Tensor, backend: str | None, triton_fn, reference_fn):
    """``triton_fn`` or ``reference_fn``, as :func:`select_backend` picks for tensors like ``anchor`` (the
    op's first tensor argument) and the call's ``backend``: every op's dispatch."""
    chosen = select_backend(anchor.device, backend, fake=is_fake(anchor))
    return triton_fn if chosen == "triton" else reference_fn


def interpreter_fp32_variant(t: torch.Tensor) -> bool:
    """True when a kernel with a tensor-core (bf16/fp16 ``tl.dot``) variant must run its fp32 variant
    instead for ``t``: under the interpreter, whose bf16 arithmetic and bf16 ``tl.dot`` are wrong. Never
    for fake tensors: they launch nothing and record the variant a GPU would run."""
    return interpreting() and not is_fake(t)


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
