"""How an op's Triton path becomes a torch custom op: one registration pattern for every op.

Each op registers its launchers as ``electra_fast::<name>`` custom ops with :func:`triton_op`, so
``torch.compile(fullgraph=True)`` traces each as one opaque node and a CUDA graph can capture it. An op
hands over three things:

- ``launch(*args, launch=True)``: builds the op's ``KernelPlan`` s and runs them; with ``launch=False``
  it builds and records the same plans without running anything (its outputs are then empty tensors);
- ``fake(*args)``: outputs of the right shapes and dtypes from the shapes alone, what the compiler sees;
- for a differentiable op, ``backward`` and ``setup_context`` as ``register_autograd`` takes them.

The fake implementation calls ``launch(..., launch=False)`` while a launch recorder is active
(``kernels/launches.py``) and ``fake`` otherwise, so a training step run under ``FakeTensorMode``
records exactly the launches a GPU step makes, and tracing never depends on values or specialises on
shapes beyond what ``fake`` does. Schemas are spelled out: the kernel files use
``from __future__ import annotations``, from which torch cannot infer one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .launches import recording


def triton_op(name: str, schema: str, launch: Callable, fake: Callable, *, backward: Callable | None = None,
              setup_context: Callable | None = None):
    """Register ``launch`` as the custom op ``electra_fast::<name>`` with ``schema`` (see the module
    docstring for ``launch``, ``fake``, ``backward`` and ``setup_context``); returns the op."""
    op = torch.library.custom_op(f"electra_fast::{name}", launch, mutates_args=(), schema=schema)

    def fake_or_record(*args):
        if recording():  # the real launcher, recording its plans without launching
            return launch(*args, launch=False)
        return fake(*args)

    op.register_fake(fake_or_record)
    if backward is not None:
        op.register_autograd(_first_grad_or_zeros(backward), setup_context=_no_zero_grads(setup_context))
    return op


def _no_zero_grads(setup_context: Callable | None) -> Callable:
    """Autograd hands unused outputs' gradients over as None instead of materialising zeros: our ops
    return a loss and tensors kept for the backward, so the default costs a zeros kernel per extra output
    per step."""

    def setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        first = output[0] if isinstance(output, (tuple, list)) else output
        ctx.first_output_shape, ctx.first_output_dtype, ctx.first_output_device = first.shape, first.dtype, first.device
        if setup_context is not None:
            setup_context(ctx, inputs, output)

    return setup


def _first_grad_or_zeros(backward: Callable) -> Callable:
    """The backward rules read the first output's gradient (the loss's); with materialisation off it is
    None when only another output reached the loss, and then zeros of the first output's shape."""

    def rule(ctx, grad, *rest):
        if grad is None:
            grad = torch.zeros(ctx.first_output_shape, dtype=ctx.first_output_dtype, device=ctx.first_output_device)
        return backward(ctx, grad, *rest)

    return rule
