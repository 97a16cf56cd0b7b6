"""The fused ops at the shapes a real training step gives them, on a GPU (skipped without one).

``python -m electra_fast.bench`` runs this before it times anything: the op tests elsewhere use
small odd shapes that the interpreter can run; these use what one step of the Small and Base
presets launches under bf16 autocast: M = batch x max_predictions masked rows, E the embedding
size, V = 30522, bf16 hidden states and weights. Each output is checked element by element
(rtol and atol together) against a float64 computation on the same bf16-rounded inputs.

They also run what the CPU tests cannot: under the interpreter bf16 inputs take the generator head's
fp32 variant (``DOT_F32``, ``kernels.dispatch.interpreter_fp32_variant``); here the bf16 tensor-core
variant a GPU launches is checked against the op's own reference.
"""

import pytest
import torch
from electra_fast.kernels.launches import record_launches

from electra_fast.config import ElectraConfig
from electra_fast.ops import generator_loss, generator_loss_and_sample, rtd_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
IGNORE = -100


def _head_inputs(preset: str):
    cfg = ElectraConfig.preset(preset)
    M, E, V = cfg.batch_size * cfg.max_predictions, cfg.embedding_size, cfg.vocab_size
    g = torch.Generator(device="cuda").manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    hidden = torch.randn(M, E, device="cuda", generator=g).bfloat16()
    weight = (torch.randn(V, E, device="cuda", generator=g) * (2.0 / E**0.5)).bfloat16()
    bias = (torch.randn(V, device="cuda", generator=g) * 0.5).bfloat16()
    targets = torch.randint(0, V, (M,), device="cuda", generator=g)
    targets[torch.rand(M, device="cuda", generator=g) < 0.1] = IGNORE  # padding slots
    return hidden, weight, bias, targets


@pytest.mark.parametrize("preset", ["small", "base"])
def test_generator_head_at_training_shapes(preset):
    hidden, weight, bias, targets = _head_inputs(preset)
    h, w, b = (t.clone().requires_grad_() for t in (hidden, weight, bias))
    loss, samples = generator_loss_and_sample(h, w, b, targets, seed=torch.tensor([5], device="cuda"))
    loss.backward()

    valid = targets != IGNORE
    M = hidden.shape[0]
    ref_loss = 0.0
    dh = torch.empty(M, hidden.shape[1], dtype=torch.float64, device="cuda")
    dw = torch.zeros(weight.shape, dtype=torch.float64, device="cuda")
    db = torch.zeros(bias.shape, dtype=torch.float64, device="cuda")
    w64, b64 = weight.double(), bias.double()
    n = int(valid.sum())
    for r0 in range(0, M, 2048):  # fp64 logits of 2048 rows at a time
        h64 = hidden[r0:r0 + 2048].double()
        t = targets[r0:r0 + 2048]
        ok = t != IGNORE
        logits = h64 @ w64.T + b64
        lse = torch.logsumexp(logits, -1)
        picked = logits.gather(1, t.clamp(min=0)[:, None])[:, 0]
        ref_loss += float(((lse - picked) * ok).sum())
        d = torch.softmax(logits, -1)
        d[ok.nonzero()[:, 0], t[ok]] -= 1.0
        d[~ok] = 0.0
        d /= n
        dh[r0:r0 + 2048] = d @ w64
        dw += d.T @ h64
        db += d.sum(0)
    torch.testing.assert_close(loss.double().cpu(), torch.tensor(ref_loss / n, dtype=torch.float64),
                               rtol=1e-3, atol=1e-4)
    # bf16 outputs: 2^-8 relative, plus an absolute floor at the gradients' own scale
    for name, got, want in (("dh", h.grad, dh), ("dW", w.grad, dw), ("db", b.grad, db)):
        atol = 2e-2 * float(want.abs().max())
        torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=atol, msg=f"{preset} {name}")
    assert torch.equal(samples[~valid], targets[~valid])
    assert bool(((samples[valid] >= 0) & (samples[valid] < weight.shape[0])).all())


def test_generator_head_gpu_variant_matches_the_reference():
    """The bf16 tensor-core variant (DOT_F32 False in every launch, forward and backward) against
    ``generator_loss_and_sample_reference`` on the same bf16 inputs at the Small step's shape. The
    reference draws the kernel's Philox uniforms, so samples differ only where fp32 summation order
    moves a near-tie: at most 1% of the rows."""
    hidden, weight, bias, targets = _head_inputs("small")
    seed = torch.tensor([11], device="cuda")
    results = {}
    for backend in ("triton", "reference"):
        h, w, b = (t.clone().requires_grad_() for t in (hidden, weight, bias))
        with record_launches() as launches:
            loss, samples, argmax = generator_loss_and_sample(h, w, b, targets, seed=seed, return_argmax=True,
                                                              backend=backend)
            loss.backward()
        results[backend] = (loss, samples, argmax, h.grad, w.grad, b.grad, launches)
    variants = {(lch.kernel, lch.constexprs["DOT_F32"]) for lch in results["triton"][-1] if "DOT_F32" in lch.constexprs}
    assert {k for k, _ in variants} == {"_generator_head_fwd_kernel", "_generator_head_bwd_dh_kernel",
                                        "_generator_head_bwd_dw_kernel"}, variants
    assert all(dot_f32 is False for _, dot_f32 in variants), variants
    (loss, samples, argmax, dh, dw, db, _), (r_loss, r_samples, r_argmax, r_dh, r_dw, r_db, _) = (
        results["triton"], results["reference"])
    torch.testing.assert_close(loss, r_loss, rtol=1e-4, atol=1e-5)
    for name, got, want in (("dh", dh, r_dh), ("dW", dw, r_dw), ("db", db, r_db)):
        torch.testing.assert_close(got.double(), want.double(), rtol=2e-2, atol=2e-2 * float(want.abs().max()),
                                   msg=name)
    assert float((samples == r_samples).float().mean()) >= 0.99
    assert float((argmax == r_argmax).float().mean()) >= 0.99


def test_chunked_head_at_base_matches_the_fused_kernels():
    """Base's default head is the chunked formulation (cuBLAS logits with fp32 output, the rows kernel,
    two cuBLAS gradient matmuls with fp32 accumulation): against the fused kernels (``chunk_rows=0``) on
    the same bf16 inputs, losses and gradients agree, and samples differ only at fp32 near-ties."""
    from electra_fast.kernels.generator_head import generator_loss_and_sample_triton

    hidden, weight, bias, targets = _head_inputs("base")
    seed = torch.tensor([13], device="cuda")
    results = {}
    for chunk_rows in (None, 0):
        h, w, b = (t.clone().requires_grad_() for t in (hidden, weight, bias))
        with record_launches() as launches:
            loss, samples = generator_loss_and_sample_triton(h, w, b, targets, seed=seed, chunk_rows=chunk_rows)
            loss.backward()
        results[chunk_rows] = (loss, samples, h.grad, w.grad, b.grad, {lch.op for lch in launches})
    chunked, fused = results[None], results[0]
    assert {"generator_head.logits", "generator_head.rows", "generator_head.grad_h",
            "generator_head.grad_w"} <= chunked[-1] and "generator_head.bwd_dh" not in chunked[-1], chunked[-1]
    torch.testing.assert_close(chunked[0], fused[0], rtol=1e-4, atol=1e-5)
    for name, got, want in zip(("dh", "dW", "db"), chunked[2:5], fused[2:5]):
        torch.testing.assert_close(got.double(), want.double(), rtol=2e-2, atol=2e-2 * float(want.abs().max()),
                                   msg=name)
    assert float((chunked[1] == fused[1]).float().mean()) >= 0.99


@pytest.mark.parametrize("preset", ["small", "base"])
def test_rtd_loss_at_training_shapes(preset):
    cfg = ElectraConfig.preset(preset)
    B, T, H = cfg.batch_size, cfg.max_seq_length, cfg.hidden_size
    g = torch.Generator(device="cuda").manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    feats = torch.randn(B, T, H, device="cuda", generator=g).bfloat16()
    weight = (torch.randn(H, device="cuda", generator=g) / H**0.5).bfloat16()
    bias = torch.randn((), device="cuda", generator=g).bfloat16()
    labels = torch.rand(B, T, device="cuda", generator=g) < 0.15
    mask = torch.rand(B, T, device="cuda", generator=g) < 0.9
    f, w, b = (t.clone().requires_grad_() for t in (feats, weight, bias))
    loss = rtd_loss(f, w, b, labels, mask)
    loss.backward()
    f64, w64, b64 = (t.double().requires_grad_() for t in (feats, weight, bias))
    z = f64 @ w64 + b64
    ref = torch.nn.functional.binary_cross_entropy_with_logits(z[mask], labels[mask].double())
    ref.backward()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-3, atol=1e-5)
    for name, got, want in (("dh", f.grad, f64.grad), ("dw", w.grad, w64.grad), ("db", b.grad, b64.grad)):
        torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()),
                                   msg=f"{preset} {name}")


# last: the MLM objective's variants (gpu_session.sh gives this file a time budget; the ELECTRA step's come first)
@pytest.mark.parametrize("preset", ["small", "base"])
def test_mlm_head_without_sampling_is_the_sampling_heads_loss(preset):
    """The MLM objective's head (``generator_loss``: the SAMPLE=False variants, fused at Small, chunked at
    Base) gives the sampling head's loss, gradients and argmax on the GPU too (bit for bit under the
    interpreter; here the two compiled variants may round the log-sum-exp differently in the last bit)."""
    hidden, weight, bias, targets = _head_inputs(preset)
    out = {}
    for sample in (True, False):
        h, w, b = (t.clone().requires_grad_() for t in (hidden, weight, bias))
        with record_launches() as launches:
            if sample:
                loss, _, argmax = generator_loss_and_sample(h, w, b, targets, seed=torch.tensor([3], device="cuda"),
                                                            return_argmax=True)
            else:
                loss, argmax = generator_loss(h, w, b, targets, return_argmax=True)
            loss.backward()
        flags = {lch.constexprs["SAMPLE"] for lch in launches if "SAMPLE" in lch.constexprs}
        assert flags == {sample}, flags
        out[sample] = (loss, argmax, h.grad, w.grad, b.grad)
    (loss, argmax, *grads), (want_loss, want_argmax, *want_grads) = out[False], out[True]
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=0)
    assert float((argmax == want_argmax).float().mean()) >= 0.999
    for name, got, want in zip(("dh", "dW", "db"), grads, want_grads):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-2, atol=1e-3 * float(want.abs().max()),
                                   msg=f"{preset} {name}")
