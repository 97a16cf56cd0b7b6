"""Mixed precision reaches the kernels: under bf16 autocast the generator head and the RTD loss get
bf16 hidden states and weights (the tensor-core variants on a GPU), accumulate in fp32, return fp32
losses and give fp32 parameters fp32 gradients.

CUDA autocast does not reach custom ops by itself, and the ops apply one rule at their boundary for
"cuda" and "cpu", so a CPU autocast run shows what a CUDA run launches. The numerics are checked per
element against an fp64 oracle run on the same bf16-rounded inputs.
"""


import pytest
import torch
from electra_fast.kernels import rtd_loss as rl
from electra_fast.kernels.dispatch import interpreting
from electra_fast.kernels.launches import record_launches

from electra_fast import ops
from electra_fast.config import ElectraConfig
from electra_fast.model import Electra

DEVICE = "cpu" if interpreting() or not torch.cuda.is_available() else "cuda"
BACKENDS = [
    "reference",
    pytest.param("triton", marks=pytest.mark.skipif(
        DEVICE == "cpu" and not interpreting(), reason="triton on the CPU needs TRITON_INTERPRET=1")),
]
IGNORE = -100
BF16 = torch.bfloat16
# Per element: |got - want| <= atol + rtol * |want|. On the CPU both paths compute in fp32 from the
# bf16-rounded operands, so the error is the conversion of the bf16 outputs (dh, dW) plus fp32 sums:
# one bf16 ulp, 2**-7 relative (the interpreter's fp32 -> bf16 cast truncates; a GPU's rounds to
# nearest, half that). A GPU's tensor-core backward also rounds the softmax gradient to bf16 before
# its dots, hence the wider GPU tolerance.
GRAD_BF16 = dict(rtol=2**-7, atol=1e-7) if DEVICE == "cpu" else dict(rtol=2e-2, atol=1e-5)
FP32_OUT = dict(rtol=1e-5, atol=1e-7)  # fp32 outputs: the loss, dL/db


def _generator(device):
    seed = int(torch.randint(0, 2**31, ()))  # from the test's seed (tests/conftest.py); printed on failure
    return seed, torch.Generator(device).manual_seed(seed)


def _call_in_autocast(fn):
    with torch.autocast(DEVICE, dtype=BF16):
        return fn()


def _batch(cfg, B, g):
    """A masked batch in the format of electra_fast.masking, with random ids and positions."""
    T, P = cfg.max_seq_length, cfg.max_predictions
    original = torch.randint(5, cfg.vocab_size, (B, T), generator=g)
    positions = torch.stack([torch.randperm(T - 1, generator=g)[:P].sort().values + 1 for _ in range(B)])
    weights = torch.ones(B, P)
    weights[0, -2:] = 0.0  # padding slots
    positions[0, -2:] = 0
    masked_ids = torch.where(weights > 0, original.gather(1, positions), torch.zeros_like(positions))
    input_ids = original.scatter(1, positions, torch.where(weights > 0, torch.full_like(positions, 4),
                                                           original.gather(1, positions)))
    attention_mask = torch.ones(B, T, dtype=torch.bool)
    attention_mask[1, -3:] = False
    batch = dict(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids), attention_mask=attention_mask,
                 masked_positions=positions, masked_ids=masked_ids, masked_weights=weights, original_ids=original)
    return {k: v.to(DEVICE) for k, v in batch.items()}


@pytest.mark.parametrize("autocast", [True, False], ids=["bf16-autocast", "fp32"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_model_step_sends_autocast_dtype_to_the_kernels(backend, autocast, monkeypatch):
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", backend)
    seed, g = _generator("cpu")
    torch.manual_seed(seed)
    cfg = ElectraConfig.preset("tiny", vocab_size=96, num_layers=1, generator_num_layers=1)
    model = Electra(cfg).to(DEVICE)
    batch = _batch(cfg, 3, g)
    with record_launches() as launches:
        if autocast:
            out = _call_in_autocast(lambda: model(**batch, seed=seed))
        else:
            out = model(**batch, seed=seed)
        out.loss.backward()
    want = BF16 if autocast else torch.float32
    M = 3 * cfg.max_predictions
    by_op = {}
    for launch in launches:
        if launch.kernel == "reference" or launch.fn is not None:  # not the library calls (record_extern)
            by_op.setdefault(launch.op, []).append(launch)
    if backend == "reference":
        assert sorted(by_op) == ["generator_head", "replace_tokens", "rtd_loss"], f"seed {seed}: {sorted(by_op)}"
        head, rtd = by_op["generator_head"][0], by_op["rtd_loss"][0]
        assert (head.dtypes["hidden"], head.dtypes["weight"], head.dtypes["bias"]) == (want, want, torch.float32)
        assert head.shapes["hidden"] == (M, cfg.embedding_size) and head.shapes["weight"] == (96, cfg.embedding_size)
        assert (rtd.dtypes["hidden"], rtd.dtypes["weight"], rtd.dtypes["bias"]) == (want, want, torch.float32)
    else:
        assert sorted(by_op) == ["generator_head.bwd_dh", "generator_head.bwd_dw", "generator_head.fwd",
                                 "generator_head.fwd_combine", "generator_head.fwd_mean", "replace_tokens",
                                 "rtd_loss.bwd", "rtd_loss.fwd", "rtd_loss.fwd_mean"], (
            f"seed {seed}: {sorted(by_op)}")
        for op, (h, w, out_name) in {"generator_head.fwd": ("H", "W", None), "generator_head.bwd_dh": ("H", "W", "DH"),
                                     "generator_head.bwd_dw": ("H", "W", "DW"), "rtd_loss.fwd": ("h_ptr", "w_ptr", None),
                                     "rtd_loss.bwd": ("h_ptr", "w_ptr", "dh_ptr")}.items():
            (launch,) = by_op[op]
            assert launch.dtypes[h] == want and launch.dtypes[w] == want, launch
            if out_name is not None:  # dL/dh over a split vocabulary: fp32 partial sums [splits, M, E], then cast
                split_dh = op == "generator_head.bwd_dh" and len(launch.shapes[out_name]) == 3
                assert launch.dtypes[out_name] == (torch.float32 if split_dh else want), launch
        fwd = by_op["generator_head.fwd"][0]
        assert fwd.shapes["H"] == (M, cfg.embedding_size) and fwd.dtypes["B"] == torch.float32
        # the interpreter computes in fp32 whatever the inputs; a GPU uses tensor cores for bf16
        assert fwd.constexprs["DOT_F32"] is (interpreting() or not autocast)
    # fp32 losses, fp32 master weights with fp32 gradients
    assert out.mlm_loss.dtype == torch.float32 and out.disc_loss.dtype == torch.float32
    assert torch.isfinite(out.loss)
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        if p.grad is not None:
            assert p.grad.dtype == torch.float32 and bool(torch.isfinite(p.grad).all()), name
    for p in (model.embeddings.word_embeddings.weight, model.generator_head.bias,
              model.discriminator_head.dense_prediction.weight, model.discriminator_head.dense_prediction.bias):
        assert p.grad is not None and bool((p.grad != 0).any())


def _assert_per_element(got, want, tol, what, seed):
    torch.testing.assert_close(got.double(), want, **tol, msg=lambda m: f"{what} (seed {seed}): {m}")


def _head_oracle(h, w, b, targets):
    """fp64 loss and gradients of mean cross-entropy over the non-ignored rows."""
    h, w, b = (x.detach().double().requires_grad_() for x in (h, w, b))
    valid = targets != IGNORE
    logp = torch.log_softmax(h @ w.T + b, dim=-1)
    loss = -logp[valid.nonzero()[:, 0], targets[valid]].sum() / valid.sum()
    return (loss.detach(), *torch.autograd.grad(loss, (h, w, b)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_generator_head_bf16_matches_fp64_per_element(backend):
    seed, g = _generator("cpu")
    M, E, V = 37, 40, 1000  # odd rows, E not a power of two, V not a multiple of any block
    hidden = torch.randn(M, E, generator=g).to(DEVICE).requires_grad_()  # fp32, like a LayerNorm output
    weight = (torch.randn(V, E, generator=g) * (2.0 / E**0.5)).to(DEVICE).requires_grad_()  # fp32 master weight
    bias = (torch.randn(V, generator=g) * 0.5).to(DEVICE).requires_grad_()
    targets = torch.randint(0, V, (M,), generator=g)
    targets[torch.rand(M, generator=g) < 0.2] = IGNORE
    targets[0] = 3
    targets = targets.to(DEVICE)
    loss, _ = _call_in_autocast(lambda: ops.generator_loss_and_sample(
        hidden, weight, bias, targets, seed=seed, backend=backend))
    loss.backward()
    want = _head_oracle(hidden.to(BF16), weight.to(BF16), bias, targets)  # the same bf16-rounded operands
    assert loss.dtype == torch.float32
    assert hidden.grad.dtype == weight.grad.dtype == bias.grad.dtype == torch.float32
    _assert_per_element(loss, want[0], FP32_OUT, "loss", seed)
    _assert_per_element(hidden.grad, want[1], GRAD_BF16, "dL/dh", seed)
    is_target = torch.zeros(V, dtype=torch.bool, device=DEVICE)
    is_target[targets[targets != IGNORE]] = True
    assert int((~is_target).sum()) > V // 2  # most rows of W are no row's target: softmax terms only
    assert bool((want[2][~is_target].abs() > 0).all())
    _assert_per_element(weight.grad[is_target], want[2][is_target], GRAD_BF16, "dL/dW at targets", seed)
    _assert_per_element(weight.grad[~is_target], want[2][~is_target], GRAD_BF16, "dL/dW elsewhere", seed)
    _assert_per_element(bias.grad, want[3], FP32_OUT, "dL/db", seed)
    # and the op did not simply run in fp32: bf16 rounding of the operands moves the loss
    unrounded = _head_oracle(hidden, weight, bias, targets)[0]
    assert (want[0] - unrounded).abs() > 10 * (loss.double() - want[0]).abs()


@pytest.mark.parametrize("backend", BACKENDS)
def test_rtd_loss_bf16_matches_fp64_per_element(backend):
    seed, g = _generator("cpu")
    lead, H = (3, 37), 50
    hidden = torch.randn(*lead, H, generator=g).to(DEVICE).requires_grad_()
    weight = (torch.randn(H, generator=g) * 0.3).to(DEVICE).requires_grad_()
    bias = (torch.randn((), generator=g) * 0.5).to(DEVICE).requires_grad_()
    labels = (torch.rand(lead, generator=g) < 0.3).to(DEVICE)
    mask = (torch.rand(lead, generator=g) < 0.8).to(DEVICE)
    loss = _call_in_autocast(lambda: rl.rtd_loss(hidden, weight, bias, labels, mask, backend=backend))
    loss.backward()
    h, w, b = (x.detach().double().requires_grad_() for x in (hidden.to(BF16), weight.to(BF16), bias))
    m = mask.double()
    z = h @ w + b
    ref = (torch.nn.functional.binary_cross_entropy_with_logits(z, labels.double(), reduction="none") * m).sum() / m.sum()
    want_dh, want_dw, want_db = torch.autograd.grad(ref, (h, w, b))
    assert loss.dtype == torch.float32
    assert hidden.grad.dtype == weight.grad.dtype == bias.grad.dtype == torch.float32
    _assert_per_element(loss, ref.detach(), FP32_OUT, "loss", seed)
    _assert_per_element(hidden.grad, want_dh, GRAD_BF16, "dL/dh", seed)
    _assert_per_element(weight.grad, want_dw, GRAD_BF16, "dL/dw", seed)
    _assert_per_element(bias.grad, want_db, FP32_OUT, "dL/db", seed)


def test_autocast_rounds_only_matmul_operands():
    """The boundary rule itself: hidden and weight take the autocast dtype, fp64 and integers do not,
    and nothing changes outside autocast."""
    from electra_fast.kernels.dispatch import autocast_operands

    x, w, i, d = torch.randn(3), torch.randn(3), torch.arange(3), torch.randn(3, dtype=torch.float64)
    assert [t.dtype for t in autocast_operands("cpu", x, w, i, d)] == [torch.float32, torch.float32,
                                                                      torch.int64, torch.float64]
    with torch.autocast("cpu", dtype=BF16):
        assert [t.dtype for t in autocast_operands("cpu", x, w, i, d)] == [BF16, BF16, torch.int64, torch.float64]
        assert autocast_operands("cpu", None)[0] is None
