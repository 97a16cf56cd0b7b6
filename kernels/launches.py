"""Which kernel variants the ops launch: a recorder for tests and for ``tools/compile_kernels.py``.

    from electra_fast.kernels.launches import record_launches

    with record_launches() as launches:
        model(**batch).loss.backward()
    for launch in launches:
        print(launch.op, launch.kernel, launch.dtypes, launch.constexprs, launch.grid)

Every Triton launcher builds a :class:`KernelPlan` (kernel, grid, arguments, constexprs, warps,
stages) in one function, shared by the real launch and by the custom ops' fake (shape-only)
implementations. The real launch runs the plan; the fake implementation only records it. So a
training step run under ``FakeTensorMode`` (no memory, no compute) lists exactly the variants a
GPU step launches, which is how the compile check gets its list from the model. The reference
implementations record their input dtypes and shapes too (kernel "reference").

With no recorder active, recording costs one truth test of a module-level list.

Cost model: a launcher may attach the FLOPs and HBM bytes its grid and tiles imply (``KernelPlan.cost``,
computed by the op's own cost function from the same block sizes it launches with), and work an op
hands to a library (the chunked generator head's cuBLAS matmuls) is recorded with
:func:`record_extern`. ``electra_fast.proxies.cost_table`` turns the records into implied H100 times.
An operand no larger than :data:`L2_RESIDENT_BYTES` counts once however often programs reload it
(it stays in L2 while the launch runs); a larger one counts every load a program issues.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

__all__ = ["Launch", "KernelPlan", "record_launches", "recording", "record_reference", "record_extern", "triton_type",
           "hbm_bytes", "L2_RESIDENT_BYTES"]

# Half an H100's 50 MB L2: an operand this small is read from HBM once per launch (see the docstring).
L2_RESIDENT_BYTES = 25 * 2**20

_recorders: list[list[Launch]] = []


@dataclass(frozen=True)
class Launch:
    """One launch (or one reference call). ``signature`` maps each runtime argument to its Triton
    type ("*bf16", "i32", ...), as ``triton.compile(ASTSource(fn, signature, constexprs))`` wants it."""

    op: str  # the op and its part: "generator_head.fwd", "rtd_loss.bwd", ...
    kernel: str  # the @triton.jit function's name, or "reference"
    dtypes: dict[str, torch.dtype]  # tensor arguments
    shapes: dict[str, tuple[int, ...]]  # tensor arguments
    constexprs: dict = field(default_factory=dict)
    grid: tuple[int, ...] | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    signature: dict[str, str] = field(default_factory=dict)
    fn: object = field(default=None, compare=False, repr=False)  # the @triton.jit function; None: extern
    flops: float | None = None  # implied by the grid and tiles (None: the op gave no cost)
    bytes: float | None = None  # HBM bytes implied by what each program loads and stores


def hbm_bytes(unique: float, issued: float) -> float:
    """HBM bytes of one operand: read once if it fits in L2 (``L2_RESIDENT_BYTES``), else every load."""
    return unique if unique <= L2_RESIDENT_BYTES else max(unique, issued)


@contextlib.contextmanager
def record_launches() -> Iterator[list[Launch]]:
    """Collect every launch made inside the block into the yielded list (nesting is fine)."""
    launches: list[Launch] = []
    _recorders.append(launches)
    try:
        yield launches
    finally:
        del _recorders[next(i for i, r in enumerate(_recorders) if r is launches)]


def recording() -> bool:
    return bool(_recorders)


def _append(launch: Launch) -> None:
    for launches in _recorders:
        launches.append(launch)


def record_extern(op: str, kernel: str, flops: float, bytes: float, **tensors: torch.Tensor | None) -> None:
    """Record library work inside an op (e.g. ``kernel="cublas.mm"``): not a Triton kernel, so the compile
    check skips it, but the cost model counts it."""
    if _recorders:
        given = {k: t for k, t in tensors.items() if t is not None}
        _append(Launch(op=op, kernel=kernel, dtypes={k: t.dtype for k, t in given.items()},
                       shapes={k: tuple(t.shape) for k, t in given.items()}, flops=float(flops), bytes=float(bytes)))


def record_reference(op: str, **tensors: torch.Tensor | None) -> None:
    """Record that the reference implementation of ``op`` ran on these tensors."""
    if _recorders:
        given = {k: t for k, t in tensors.items() if t is not None}
        _append(Launch(op=op, kernel="reference", dtypes={k: t.dtype for k, t in given.items()},
                       shapes={k: tuple(t.shape) for k, t in given.items()}))


_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                 torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
                 torch.uint8: "u8", torch.bool: "i1"}


def triton_type(value) -> str:
    """The type Triton's launcher gives a runtime argument: "*<dtype>" for a tensor, "i32"/"i64" for an
    int, "fp32" for a float."""
    if isinstance(value, torch.Tensor):
        return "*" + _TRITON_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for a {type(value).__name__} argument")


_ARG_NAMES: dict[object, list[str]] = {}


def _arg_names(fn) -> list[str]:
    if fn not in _ARG_NAMES:  # JITFunction and the interpreter's InterpretedFunction both wrap .fn
        _ARG_NAMES[fn] = getattr(fn, "arg_names", None) or list(inspect.signature(fn.fn).parameters)
    return _ARG_NAMES[fn]


@dataclass
class KernelPlan:
    """A Triton launch, decided before it happens: ``fn[grid](*args, **constexprs, num_warps, num_stages)``."""

    op: str
    fn: object
    grid: tuple[int, ...]
    args: tuple
    constexprs: dict
    num_warps: int
    num_stages: int
    cost: tuple[float, float] | None = None  # (FLOPs, HBM bytes) from the op's cost function

    def run(self, launch: bool = True) -> None:
        """Record the plan if a recorder is active; launch it unless ``launch`` is False (the fake
        implementations: shapes only, nothing to compute)."""
        if _recorders:
            names = _arg_names(self.fn)
            named = dict(zip(names, self.args))
            tensors = {k: v for k, v in named.items() if isinstance(v, torch.Tensor)}
            _append(Launch(
                op=self.op, kernel=self.fn.fn.__name__, dtypes={k: t.dtype for k, t in tensors.items()},
                shapes={k: tuple(t.shape) for k, t in tensors.items()}, constexprs=dict(self.constexprs),
                grid=tuple(self.grid), num_warps=self.num_warps, num_stages=self.num_stages,
                signature={k: triton_type(v) for k, v in named.items()}, fn=self.fn,
                flops=self.cost[0] if self.cost else None, bytes=self.cost[1] if self.cost else None))
        if launch:
            self.fn[self.grid](*self.args, **self.constexprs, num_warps=self.num_warps,
                               num_stages=self.num_stages)
