"""Fused ELECTRA ops, for this package's model and for other trainers.

    from electra_fast.ops import generator_loss_and_sample, replace_tokens, rtd_loss, rtd_loss_from_logits
    from electra_fast.ops import generator_loss  # the MLM loss alone (BERT-style trainers)

They follow the data flow of one pre-training step (docs/ARCHITECTURE.md, section 2):

1. ``generator_loss_and_sample(hidden, weight, bias, targets, seed=...)``: the generator's tied LM
   head at the masked rows, MLM cross-entropy and Gumbel-max samples, without materialising the
   [M, V] logits; ``generator_loss`` the same loss (and argmax) with no sampling, for an MLM objective.
2. ``replace_tokens(input_ids, positions, samples, weights)``: the discriminator's input (the
   samples written into the original ids) and the is-replaced labels, in one pass.
3. ``rtd_loss(hidden, weight, bias, labels, mask)``: the discriminator's H -> 1 projection fused
   with the sigmoid BCE, its masked mean and the gradient; ``rtd_loss_from_logits`` when the
   trainer already has the logits.

Each op runs its Triton kernel on CUDA tensors and its plain PyTorch reference on CPU tensors.
A call's ``backend="triton"`` / ``"reference"`` forces one (the ops never read the environment; the
model reads ELECTRA_FAST_BACKEND once, as the default of ``Electra(config, backend=...)``); the
Triton path on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported.
``backend(device, override)`` says which one a call will take. The Triton paths are torch custom ops
(``torch.ops.electra_fast.*``, with fake implementations and registered gradients), so
``torch.compile(fullgraph=True)`` traces a training step through them without graph breaks. The
kernels, references and autograd wrappers live one op per file in ``electra_fast.kernels``.

The ops range-check the ids they index with (a host read: on CPU tensors by default, on CUDA with
``debug=True``); ``with value_checks(False):`` turns that off around a training step whose loader
guarantees the ranges, so the step reads nothing back to the host.
"""

from __future__ import annotations

import functools

import torch

from .kernels import generator_head as _generator_head
from .kernels import replace_tokens as _replace_tokens
from .kernels import rtd_loss as _rtd_loss
from .kernels.checks import require_binary_mask, require_tensors
from .kernels.dispatch import select_backend, value_checks

__all__ = ["generator_loss_and_sample", "generator_loss", "replace_tokens", "rtd_loss", "rtd_loss_from_logits", "backend",
           "value_checks"]


def backend(device: torch.device | str | None = None, override: str | None = None) -> str:
    """The implementation the ops pick for tensors on ``device``: "triton" or "reference".

    ``device`` defaults to the current CUDA device when there is one, else the CPU. ``override``
    is what a call's ``backend=`` argument would be (None or "auto": by the device; a model's
    ``backend`` attribute is what it passes).
    Raises like the ops do: ValueError for "triton" on the CPU without TRITON_INTERPRET=1
    and for an unknown name.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return select_backend(device, override)


# The public entry points check what a user can get wrong before anything dispatches
# (kernels/checks.py): a numpy array or a list where a tensor goes (TypeError naming the argument),
# and a loss mask that is not 0/1.
def _checked(fn, tensor_args: tuple[str, ...], mask_arg: str | None = None):
    import inspect

    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():  # traced: the eager call checked the same inputs
            return fn(*args, **kwargs)
        bound = sig.bind_partial(*args, **kwargs)
        require_tensors(fn.__name__, **{k: bound.arguments.get(k) for k in tensor_args})
        if mask_arg is not None and bound.arguments.get(mask_arg) is not None:
            require_binary_mask(fn.__name__, bound.arguments[mask_arg], bool(bound.arguments.get("debug")))
        return fn(*args, **kwargs)

    return wrapper


generator_loss_and_sample = _checked(_generator_head.generator_loss_and_sample,
                                     ("hidden", "weight", "bias", "targets"))
generator_loss = _checked(_generator_head.generator_loss, ("hidden", "weight", "bias", "targets"))
replace_tokens = _checked(_replace_tokens.replace_tokens, ("input_ids", "positions", "samples", "weights"))
rtd_loss = _checked(_rtd_loss.rtd_loss, ("hidden", "weight", "bias", "labels", "mask"), mask_arg="mask")
rtd_loss_from_logits = _checked(_rtd_loss.rtd_loss_from_logits, ("logits", "labels", "mask"), mask_arg="mask")
