"""Triton kernels of electra_fast, installed as ``electra_fast.kernels``.

One file per op: the ``@triton.jit`` kernel, its host launcher (input checks, block sizes),
a plain PyTorch reference and the autograd wrapper. Public entry points live in
``electra_fast.ops``, which dispatches between the Triton path and the reference.

Shared by the three ops: ``dispatch`` (which implementation runs, autocast at the boundary),
``checks`` (input validation), ``custom_ops`` (how a Triton path becomes a torch custom op),
``launches`` (the launch recorder) and ``loss_mean`` (both losses' final sum / (count + eps) in one
launch).
"""
