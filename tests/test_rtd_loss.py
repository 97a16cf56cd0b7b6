"""rtd_loss and rtd_loss_from_logits (kernels/rtd_loss.py) against independent fp64 formulas.

The oracle never calls torch's BCE: loss = max(z, 0) - z * y + log(1 + exp(-|z|)) and its
gradients (sigmoid(z) - y) * mask / n are written out in float64 from the same (rounded) inputs.
Both backends run: the reference and the Triton kernels, on the CPU through the Triton
interpreter (TRITON_INTERPRET=1, set before triton is imported) or on CUDA when a GPU is present
and TRITON_INTERPRET=0. Inputs are fresh random numbers each run, from the test's seed (tests/conftest.py:
reported on failure, replayed with ELECTRA_TEST_SEED=<seed>).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402
import torch  # noqa: E402
from electra_fast.kernels import rtd_loss as rl  # noqa: E402
from electra_fast.kernels.dispatch import interpreting

from electra_fast import ops  # noqa: E402

DEVICE = "cpu" if interpreting() or not torch.cuda.is_available() else "cuda"
BACKENDS = [
    "reference",
    pytest.param("triton", marks=pytest.mark.skipif(
        DEVICE == "cpu" and not interpreting(), reason="triton on the CPU needs TRITON_INTERPRET=1")),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The loss is fp32 from inputs the oracle sees too: only summation order differs. An fp32 BCE of a
# saturated logit, log(1 + exp(-|z|)), is exact only to ~1e-7 absolute: a single-token loss of
# 0.007 can be 2.6e-5 off relatively, so the relative bound gets an absolute floor.
LOSS_RTOL = 2e-5
LOSS_ATOL = 1e-6
GRAD_ATOL = 1e-6  # every |dloss/dlogit| <= 1 / n, so sums of them are exact to ~1e-7 in fp32
# Gradients come back in the input dtype: max abs error relative to the largest oracle value.
GRAD_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def make_targets(lead, label_kind="bool", mask_kind="bool", mask_frac=0.7):
    labels = torch.rand(lead) < 0.3
    mask = torch.rand(lead) < mask_frac
    labels = {"bool": labels, "int": labels.long(), "float": torch.rand(lead)}[label_kind]
    mask = {"bool": mask, "float": mask.float()}[mask_kind]
    return labels.to(DEVICE), mask.to(DEVICE)


def make_inputs(lead, H, dtype, **kw):
    """Logits of std ~2 so the BCE sees both saturated and uncertain tokens."""
    hidden = torch.randn(*lead, H, device=DEVICE).to(dtype).requires_grad_()
    weight = (torch.randn(H, device=DEVICE) * (2.0 / H**0.5)).requires_grad_()
    bias = (torch.randn((), device=DEVICE) * 0.5).requires_grad_()
    return (hidden, weight, bias, *make_targets(lead, **kw))


def oracle_from_logits(z, labels, mask, eps=0.0):
    """fp64 loss and dloss/dz for logits z (fp64): sum / (n + eps), or / max(n, 1) for eps = 0."""
    y, m = labels.double(), mask.double()
    per_token = z.clamp_min(0) - z * y + torch.log(1 + torch.exp(-z.abs()))
    n = m.sum()
    n = n + eps if eps else torch.where(n > 0, n, torch.ones_like(n))
    return (per_token * m).sum() / n, (torch.sigmoid(z) - y) * m / n


def oracle(hidden, weight, bias, labels, mask, eps=0.0):
    """fp64 loss and gradients (dhidden, dweight, dbias) of rtd_loss."""
    h, w, b = hidden.detach().double(), weight.detach().double(), bias.detach().double()
    loss, dz = oracle_from_logits(h @ w + b, labels, mask, eps)
    dh = dz[..., None] * w
    dw = (dz[..., None] * h).reshape(-1, h.shape[-1]).sum(0)
    return loss, (dh, dw, dz.sum())


def assert_close(got, want, tol, what, atol=0.0):
    got, want = got.detach().double().cpu(), want.cpu()
    assert got.shape == want.shape, what
    scale = max(want.abs().max().item(), 1e-30) if want.numel() else 1.0
    err = (got - want).abs().max().item() if want.numel() else 0.0
    assert err <= tol * scale + atol, f"{what}: max abs error {err:.3g} > {tol} x {scale:.3g} + {atol}"


def check_rtd(backend, hidden, weight, bias, labels, mask, grad_scale=1.0, eps=0.0):
    want_loss, want_grads = oracle(hidden, weight, bias, labels, mask, eps)
    loss = rl.rtd_loss(hidden, weight, bias, labels, mask, eps=eps, backend=backend)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close(loss, want_loss, LOSS_RTOL, "loss", LOSS_ATOL)
    grads = torch.autograd.grad(loss * grad_scale, (hidden, weight, bias))
    for name, g, w, x in zip(("dhidden", "dweight", "dbias"), grads, want_grads, (hidden, weight, bias)):
        assert g.dtype == x.dtype, name
        # dbias = sum of dlogits that cancel: bound it relative to the terms too (fp32 rounding ~1e-7)
        assert_close(g, w * grad_scale, GRAD_TOL[x.dtype], name, GRAD_ATOL * abs(grad_scale))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,H", [((3, 29), 40), ((37,), 40), ((2, 9), 300), ((1,), 40), ((), 19)])
def test_rtd_loss_matches_fp64(backend, dtype, lead, H):
    # H=40 and 19: one partial tile; H=300: several tiles, the last one partial
    check_rtd(backend, *make_inputs(lead, H, dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label_kind,mask_kind", [("int", "float"), ("float", "bool"), ("bool", "float")])
def test_rtd_loss_label_and_mask_types(backend, label_kind, mask_kind):
    check_rtd(backend, *make_inputs((3, 29), 40, torch.float32, label_kind=label_kind, mask_kind=mask_kind),
              grad_scale=3.7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rtd_loss_empty_mask(backend, dtype):
    hidden, weight, bias, labels, mask = make_inputs((3, 29), 40, dtype, mask_frac=0.0)
    loss = rl.rtd_loss(hidden, weight, bias, labels, mask, backend=backend)
    assert loss.item() == 0.0
    for g in torch.autograd.grad(loss, (hidden, weight, bias)):
        assert torch.equal(g, torch.zeros_like(g))
    # no tokens at all
    hidden, weight, bias, labels, mask = make_inputs((0,), 40, dtype)
    loss = rl.rtd_loss(hidden, weight, bias, labels, mask, backend=backend)
    assert loss.item() == 0.0
    assert torch.autograd.grad(loss, weight)[0].abs().sum().item() == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rtd_loss_eps_divides_by_mask_sum_plus_eps(backend, dtype):
    """eps (the model passes the official code's 1e-6): loss and gradients are sum / (sum(mask) + eps).
    A large eps, so that it shows far above the tolerance; an empty mask still gives 0, not NaN."""
    lead = (3, 29)
    eps = float(torch.rand(()) * 5 + 1)
    check_rtd(backend, *make_inputs(lead, 40, dtype), grad_scale=1.3, eps=eps)
    labels, mask = make_targets(lead, mask_kind="float")
    logits = (torch.randn(lead, device=DEVICE) * 2).requires_grad_()
    want_loss, want_grad = oracle_from_logits(logits.detach().double(), labels, mask, eps)
    loss = rl.rtd_loss_from_logits(logits, labels, mask, eps=eps, backend=backend)
    assert_close(loss, want_loss, LOSS_RTOL, "loss from logits", LOSS_ATOL)
    assert_close(torch.autograd.grad(loss, logits)[0], want_grad, GRAD_TOL[torch.float32], "dlogits")
    hidden, weight, bias, labels, mask = make_inputs(lead, 40, dtype, mask_frac=0.0)
    loss = rl.rtd_loss(hidden, weight, bias, labels, mask, eps=eps, backend=backend)
    assert loss.item() == 0.0
    assert all(torch.count_nonzero(g) == 0 for g in torch.autograd.grad(loss, (hidden, weight, bias)))
    for bad in (-1e-6, float("nan"), float("inf"), True, "1e-6"):
        with pytest.raises(ValueError, match="eps"):
            rl.rtd_loss(hidden, weight, bias, labels, mask, eps=bad, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rtd_loss_strided_hidden(backend):
    # a slice of a wider buffer: rows are not H apart
    hidden, weight, bias, labels, mask = make_inputs((31,), 40, torch.float32)
    wide = torch.randn(31, 47, device=DEVICE)
    wide[:, 3:43] = hidden.detach()
    sliced = wide[:, 3:43].requires_grad_()  # a leaf view, stride (47, 1)
    check_rtd(backend, sliced, weight, bias, labels, mask)


def test_rtd_backward_with_several_row_blocks_per_program(monkeypatch):
    if not interpreting() and DEVICE == "cpu":
        pytest.skip("triton on the CPU needs TRITON_INTERPRET=1")
    # few programs -> each one loops over several row blocks and sums its partial dweight
    monkeypatch.setattr(rl, "_BWD_PROGRAMS", 2)
    hidden, weight, bias, labels, mask = make_inputs((3, 70), 40, torch.float32)
    block_m, _, rows_per_prog, chunks = rl._bwd_blocks(210, 40)
    assert rows_per_prog > block_m and chunks == 2
    check_rtd("triton", hidden, weight, bias, labels, mask)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead", [(3, 29), (37,), (1,), ()])
def test_rtd_loss_from_logits_matches_fp64(backend, dtype, lead):
    labels, mask = make_targets(lead)
    logits = (torch.randn(lead, device=DEVICE) * 2).to(dtype).requires_grad_()
    want_loss, want_grad = oracle_from_logits(logits.detach().double(), labels, mask)
    loss = rl.rtd_loss_from_logits(logits, labels, mask, backend=backend)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close(loss, want_loss, LOSS_RTOL, "loss", LOSS_ATOL)
    (grad,) = torch.autograd.grad(loss * 0.5, logits)
    assert grad.dtype == dtype
    assert_close(grad, want_grad * 0.5, GRAD_TOL[dtype], "dlogits")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rtd_loss_from_logits_empty_mask(backend):
    labels, mask = make_targets((4, 13), mask_kind="float", mask_frac=0.0)
    logits = torch.randn(4, 13, device=DEVICE, requires_grad=True)
    loss = rl.rtd_loss_from_logits(logits, labels, mask, backend=backend)
    assert loss.item() == 0.0
    assert torch.equal(torch.autograd.grad(loss, logits)[0], torch.zeros_like(logits))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_equals_logits_path(backend):
    hidden, weight, bias, labels, mask = make_inputs((5, 11), 40, torch.float32)
    fused = rl.rtd_loss(hidden, weight, bias, labels, mask, backend=backend)
    split = rl.rtd_loss_from_logits(hidden @ weight + bias, labels, mask, backend=backend)
    assert abs(fused.item() - split.item()) <= 1e-5 * abs(split.item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs(backend):
    hidden, weight, bias, labels, mask = make_inputs((3, 7), 40, torch.float32)
    bad = [
        ((hidden.long(), weight, bias, labels, mask), "hidden"),
        ((hidden[0, 0, 0], weight, bias, labels, mask), "hidden"),  # 0-dim
        ((hidden, weight[:-1], bias, labels, mask), "weight"),
        ((hidden, weight[None], bias, labels, mask), "weight"),
        ((hidden, weight, bias[None], labels, mask), "bias"),
        ((hidden, weight, bias, labels[:, :-1], mask), "labels"),
        ((hidden, weight, bias, labels.T, mask), "labels"),
        ((hidden, weight, bias, labels, mask[0]), "mask"),
        ((hidden, weight, bias, labels.long() * 2, mask), "labels"),  # outside [0, 1]
        ((hidden, weight, bias, labels.float() - 1, mask), "labels"),
    ]
    for args, name in bad:
        with pytest.raises(ValueError, match=name):
            rl.rtd_loss(*args, backend=backend, debug=True)
    logits = hidden.detach()[..., 0]
    for args, name in [((logits.long(), labels, mask), "logits"), ((logits, labels[:1], mask), "labels"),
                       ((logits, labels, mask[:, :2]), "mask")]:
        with pytest.raises(ValueError, match=name):
            rl.rtd_loss_from_logits(*args, backend=backend, debug=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: a device mismatch needs two devices")
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_device_mismatch(backend):
    hidden, weight, bias, labels, mask = make_inputs((3, 7), 40, torch.float32)
    with pytest.raises(ValueError, match="weight"):
        rl.rtd_loss(hidden.cuda(), weight.cpu(), bias.cuda(), labels.cuda(), mask.cuda(), backend=backend)


def test_public_api(monkeypatch):
    monkeypatch.delenv("ELECTRA_FAST_BACKEND", raising=False)
    hidden, weight, bias, labels, mask = make_inputs((3, 7), 40, torch.float32)
    # the public wrappers check input types and mask values, then call the kernels module's dispatch
    assert ops.rtd_loss.__wrapped__ is rl.rtd_loss and ops.rtd_loss_from_logits.__wrapped__ is rl.rtd_loss_from_logits
    want, _ = oracle(hidden, weight, bias, labels, mask)
    assert_close(ops.rtd_loss(hidden, weight, bias, labels, mask), want, LOSS_RTOL, "loss", LOSS_ATOL)
    assert ops.backend(DEVICE) == ("triton" if DEVICE == "cuda" else "reference")
    assert ops.backend("cuda", "reference") == "reference"


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_custom_ops_pass_opcheck(backend):
    # schema, fake (meta) implementation and autograd registration agree with the real kernels
    hidden, weight, bias, labels, mask = make_inputs((3, 7), 40, torch.float32)
    torch.library.opcheck(rl._rtd_fwd_op, (hidden, weight, bias, labels, mask))
    dlogit = torch.randn(21, device=DEVICE)
    scalar = lambda x: torch.tensor(x, device=DEVICE)  # noqa: E731
    torch.library.opcheck(rl._rtd_bwd_op, (hidden.detach(), weight.detach(), dlogit, scalar(0.3), scalar(17.0),
                                           scalar(-2.5)))
    logits = torch.randn(3, 7, device=DEVICE, requires_grad=True)
    torch.library.opcheck(rl._rtd_logits_fwd_op, (logits, labels, mask.float()))


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_torch_compile_fullgraph(backend):
    # the Triton path traces without graph breaks (aot_eager: no C++ compiler needed on the CPU)
    hidden, weight, bias, labels, mask = make_inputs((3, 29), 40, torch.float32)
    step = lambda h, w, b, y, m: (rl.rtd_loss(h, w, b, y, m, backend=backend)
                                  + rl.rtd_loss_from_logits(h @ w + b, y, m, backend=backend))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    want = torch.autograd.grad(step(hidden, weight, bias, labels, mask), (hidden, weight, bias))
    loss = compiled(hidden, weight, bias, labels, mask)
    got = torch.autograd.grad(loss, (hidden, weight, bias))
    for g, w in zip(got, want):
        assert torch.equal(g, w)
