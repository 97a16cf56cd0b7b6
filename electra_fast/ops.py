"""Fused ELECTRA ops, for this package's model and for other trainers.

    from electra_fast.ops import generator_loss_and_sample, replace_tokens, rtd_loss, rtd_loss_from_logits

They follow the data flow of one pre-training step (DESIGN.md §1):

1. ``generator_loss_and_sample(hidden, weight, bias, targets, seed=...)``: the generator's tied LM
   head at the masked rows, MLM cross-entropy and Gumbel-max samples, without materialising the
   [M, V] logits.
2. ``replace_tokens(input_ids, positions, samples, weights)``: the discriminator's input (the
   samples written into the original ids) and the is-replaced labels, in one pass.
3. ``rtd_loss(hidden, weight, bias, labels, mask)``: the discriminator's H -> 1 projection fused
   with the sigmoid BCE, its masked mean and the gradient; ``rtd_loss_from_logits`` when the
   trainer already has the logits.

Each op runs its Triton kernel on CUDA tensors and its plain PyTorch reference on CPU tensors.
``backend="triton"`` / ``"reference"`` (or the environment variable ELECTRA_FAST_BACKEND) forces
one; the Triton path on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported.
``backend(device)`` says which one a call will take. The Triton paths are torch custom ops
(``torch.ops.electra_fast.*``, with fake implementations and registered gradients), so
``torch.compile(fullgraph=True)`` traces a training step through them without graph breaks. The
kernels, references and autograd wrappers live one op per file in ``electra_fast.kernels``.

The ops range-check the ids they index with (a host read: on CPU tensors by default, on CUDA with
``debug=True``); ``with value_checks(False):`` turns that off around a training step whose loader
guarantees the ranges, so the step reads nothing back to the host.
"""

from __future__ import annotations

import torch

from .kernels.dispatch import select_backend, value_checks
from .kernels.generator_head import generator_loss_and_sample
from .kernels.replace_tokens import replace_tokens
from .kernels.rtd_loss import rtd_loss, rtd_loss_from_logits

__all__ = ["generator_loss_and_sample", "replace_tokens", "rtd_loss", "rtd_loss_from_logits", "backend",
           "value_checks"]


def backend(device: torch.device | str | None = None, override: str | None = None) -> str:
    """The implementation the ops pick for tensors on ``device``: "triton" or "reference".

    ``device`` defaults to the current CUDA device when there is one, else the CPU. ``override``
    is what a call's ``backend=`` argument would be (None: ELECTRA_FAST_BACKEND, then the device).
    Raises like the ops do: ValueError for "triton" on the CPU without TRITON_INTERPRET=1
    and for an unknown name.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return select_backend(device, override)
