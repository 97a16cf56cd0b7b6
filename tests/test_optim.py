"""electra_fast.optim.AdamW against torch.optim.AdamW, eager (fused kernel) and compiled (foreach),
and its exact device-side skip of non-finite steps."""

import pytest
import torch

from electra_fast.optim import AdamW


def _params(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in ((7, 5), (5,), (3, 11, 2), (1,))]


def _grads(params, k):
    g = torch.Generator().manual_seed(1000 + k)
    return [torch.randn(p.shape, generator=g) * 3 for p in params]


def _ours(params, lr):
    return AdamW([(params[:1] + params[2:3], 0.01), (params[1:2] + params[3:], 0.0)], lr=lr, betas=(0.9, 0.999),
                 eps=1e-6)


def _torch(params, lr):
    return torch.optim.AdamW([{"params": params[:1] + params[2:3], "weight_decay": 0.01},
                              {"params": params[1:2] + params[3:], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.999), eps=1e-6)


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_matches_torch_adamw_with_a_changing_lr(mode):
    seed = int(torch.randint(0, 2**31 - 1, ()))
    ours_p, ref_p = _params(seed), _params(seed)
    ours, ref = _ours(ours_p, 1e-2), _torch(ref_p, 1e-2)

    def apply(k):
        ours.step()

    fn = torch.compile(apply, fullgraph=True) if mode == "compiled" else apply
    for k in range(6):
        lr = 1e-2 * (k + 1) / 6
        ours.set_lr(lr)
        for grp in ref.param_groups:
            grp["lr"] = lr
        for p, q, g in zip(ours_p, ref_p, _grads(ours_p, k)):
            p.grad, q.grad = g.clone(), g.clone()
        fn(k)
        ref.step()
        for p, q in zip(ours_p, ref_p):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
    assert float(ours.step_count) == 6


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_found_inf_skips_the_update_exactly(mode, bad):
    params = _params(int(torch.randint(0, 2**31 - 1, ())))
    opt = _ours(params, 1e-2)
    fn = torch.compile(opt.step, fullgraph=True) if mode == "compiled" else opt.step
    for p, g in zip(params, _grads(params, 0)):
        p.grad = g
    fn()  # one real step: non-zero moments
    before = [t.clone() for t in (*params, *opt.exp_avg, *opt.exp_avg_sq, opt.step_count)]
    for p, g in zip(params, _grads(params, 1)):
        g[0] = bad
        p.grad = g
    opt.found_inf.fill_(1.0)
    fn()
    after = [*params, *opt.exp_avg, *opt.exp_avg_sq, opt.step_count]
    for b, a in zip(before, after):
        assert torch.equal(b, a.detach())
    opt.found_inf.fill_(0.0)
    for p, g in zip(params, _grads(params, 2)):
        p.grad = g
    fn()
    assert float(opt.step_count) == 2 and all(torch.isfinite(p).all() for p in params)


def test_state_dict_round_trip_continues_identically():
    seed = int(torch.randint(0, 2**31 - 1, ()))
    a_p, b_p = _params(seed), _params(seed)
    a = _ours(a_p, 3e-3)
    for k in range(3):
        for p, g in zip(a_p, _grads(a_p, k)):
            p.grad = g
        a.step()
    with torch.no_grad():
        for p, q in zip(a_p, b_p):
            q.copy_(p)
    b = _ours(b_p, 1.0)
    b.load_state_dict(a.state_dict())
    for p, q, g in zip(a_p, b_p, _grads(a_p, 9)):
        p.grad, q.grad = g, g.clone()
    a.step()
    b.step()
    for p, q in zip(a_p, b_p):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="parameters"):
        _ours(_params(0)[:2] * 3, 1.0).load_state_dict(a.state_dict())
