"""AdamW for the training step: a device-tensor learning rate and a device-side skip of non-finite steps.

The update is torch.optim.AdamW's (Loshchilov & Hutter decoupled weight decay, bias correction;
the official ELECTRA code's AdamWeightDecayOptimizer minus its missing bias correction), with
two things a fast step needs and torch.optim.AdamW cannot give inside one compiled region:

- ``lr`` is a 0-dim tensor on the training device. The schedule writes it with ``fill_`` (no
  host sync, no recompilation when it changes, and a captured CUDA graph reads the new value).
- ``found_inf`` is a 0-dim device flag. When it is 1 the update is skipped exactly: parameters,
  moments and the step count stay as they were, and nobody reads the flag on the host.
- ``step(grad_scale)`` divides the gradients by a 0-dim device tensor as it reads them: gradient
  clipping without a pass of its own over the gradients (the training step passes
  max(1, (norm + 1e-6) / max_norm), the inverse of clip_grad_norm_'s factor).

Two lowerings of the same update: eager steps call torch's fused multi-tensor kernel
(``torch._fused_adamw_``, one launch per parameter group, which honours ``found_inf``);
inside ``torch.compile`` the same arithmetic is written with foreach ops, which the compiler
fuses (the fused kernel has no fake implementation with a tensor learning rate).
tests/test_optim.py holds both to torch.optim.AdamW.
"""

from __future__ import annotations

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[tuple[list[torch.nn.Parameter], float]]:
    """Decoupled weight decay on matrices; none on LayerNorm and biases (official optimization.py)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [(g, wd) for g, wd in ((decay, weight_decay), (no_decay, 0.0)) if g]


class AdamW:
    """AdamW over ``groups`` = [(params, weight_decay), ...] with a tensor lr and a device-side skip.

    ``step()`` applies one update from the parameters' ``.grad``; set ``found_inf`` (1.0 = skip)
    before calling it. State lives on the parameters' device and is allocated up front, so
    ``torch.compile`` and CUDA graphs see fixed addresses.
    """

    def __init__(self, groups, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6):
        self.groups = [(list(ps), float(wd)) for ps, wd in groups]
        params = self.params
        if not params:
            raise ValueError("AdamW got no parameters")
        dev = params[0].device
        self.beta1, self.beta2 = map(float, betas)
        self.eps = float(eps)
        self.lr = torch.tensor(float(lr), dtype=torch.float32, device=dev)
        self.found_inf = torch.zeros((), dtype=torch.float32, device=dev)
        self.step_count = torch.zeros((), dtype=torch.float32, device=dev)  # updates applied
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for ps, _ in self.groups for p in ps]

    def tensors(self) -> list[torch.Tensor]:
        """Every state tensor (for torch._dynamo.mark_static_address)."""
        return [self.lr, self.found_inf, self.step_count, *self.exp_avg, *self.exp_avg_sq]

    def set_lr(self, lr: float) -> None:
        self.lr.fill_(lr)

    @torch.no_grad()
    def step(self, grad_scale: torch.Tensor | None = None) -> None:
        """One update from the parameters' ``.grad``, each divided by ``grad_scale`` (a 0-dim fp32
        tensor on the parameters' device) when given."""
        if torch.compiler.is_compiling():
            self._step_foreach(grad_scale)
        else:
            self._step_fused(grad_scale)

    def _chunks(self):
        i = 0
        for ps, wd in self.groups:
            n = len(ps)
            yield ps, [p.grad for p in ps], self.exp_avg[i:i + n], self.exp_avg_sq[i:i + n], wd
            i += n

    def _step_fused(self, grad_scale) -> None:
        self.step_count.add_(1.0 - self.found_inf)
        for ps, grads, m, v, wd in self._chunks():
            # the kernel reads the step count per tensor; all share one
            torch._fused_adamw_(ps, grads, m, v, [], [self.step_count] * len(ps), lr=self.lr, beta1=self.beta1,
                                beta2=self.beta2, weight_decay=wd, eps=self.eps, amsgrad=False, maximize=False,
                                grad_scale=grad_scale, found_inf=self.found_inf)

    def _step_foreach(self, grad_scale) -> None:
        keep = 1.0 - self.found_inf  # 1: apply, 0: leave everything as it is
        t = self.step_count.add_(keep).clamp(min=1.0)
        bc1 = 1.0 - self.beta1 ** t
        bc2_sqrt = (1.0 - self.beta2 ** t).sqrt()
        lr = self.lr * keep
        for ps, grads, m, v, wd in self._chunks():
            # a skipped step may carry inf / NaN gradients: zero them so no moment turns NaN
            grads = [torch.where(keep > 0, g, torch.zeros_like(g)) for g in grads]
            if grad_scale is not None:
                grads = torch._foreach_div(grads, grad_scale)
            if wd:
                torch._foreach_mul_(ps, 1.0 - lr * wd)
            torch._foreach_mul_(m, 1.0 - (1.0 - self.beta1) * keep)
            torch._foreach_add_(m, torch._foreach_mul(grads, (1.0 - self.beta1) * keep))
            torch._foreach_mul_(v, 1.0 - (1.0 - self.beta2) * keep)
            torch._foreach_add_(v, torch._foreach_mul(torch._foreach_mul(grads, grads), (1.0 - self.beta2) * keep))
            denom = torch._foreach_div(torch._foreach_sqrt(v), bc2_sqrt)
            torch._foreach_add_(denom, self.eps)
            torch._foreach_sub_(ps, torch._foreach_mul(torch._foreach_div(m, denom), lr / bc1))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"lr": self.lr.detach().clone(), "step_count": self.step_count.detach().clone(),
                "exp_avg": [t.detach().clone() for t in self.exp_avg],
                "exp_avg_sq": [t.detach().clone() for t in self.exp_avg_sq]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["exp_avg"]) != len(self.exp_avg):
            raise ValueError(f"optimizer state holds {len(state['exp_avg'])} tensors; this model has "
                             f"{len(self.exp_avg)} parameters")
        self.lr.copy_(state["lr"])
        self.step_count.copy_(state["step_count"])
        for dst, src in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
            if dst.shape != src.shape:
                raise ValueError(f"optimizer state of shape {tuple(src.shape)} for a parameter of shape "
                                 f"{tuple(dst.shape)}")
            dst.copy_(src)
