"""torch.compile(fullgraph=True) traces a whole ELECTRA pre-training step (docs/ARCHITECTURE.md, section 3, "The whole step compiled").

fullgraph=True raises on any graph break, so a passing compile is the check that CUDA graphs can
capture the step; the compiled step must then give the eager step's loss, samples and gradients.
Both op backends: the Triton custom ops (through the interpreter on the CPU) and the plain PyTorch
references. backend="aot_eager" traces forward and backward through AOTAutograd without inductor's
code generation, which keeps this file fast on a CPU. Inputs are fresh random numbers each run.
"""

import copy

import pytest
import torch
import torch._dynamo
from electra_fast.kernels import generator_head as gh
from electra_fast.kernels.dispatch import interpreting
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from electra_fast import ElectraConfig, ops
from electra_fast.model import Electra

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MASK_ID, SPECIAL = 4, 5


@pytest.fixture(params=["triton", "reference"])
def backend(request, monkeypatch):
    try:
        ops.backend(DEVICE, request.param)
    except ValueError as e:  # triton on a CPU without TRITON_INTERPRET=1
        pytest.skip(str(e))
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", request.param)
    torch._dynamo.reset()
    counters.clear()
    yield request.param
    torch._dynamo.reset()


def _model():
    cfg = ElectraConfig(vocab_size=50, embedding_size=16, hidden_size=32, num_layers=1, num_heads=2,
                        intermediate_size=64, generator_hidden_size=16, generator_num_layers=1,
                        generator_num_heads=1, generator_intermediate_size=32, max_position_embeddings=32,
                        max_seq_length=16, dropout=0.0, attention_dropout=0.0)
    model = Electra(cfg).to(DEVICE)
    with torch.no_grad():  # spread the logits so samples, losses and gradients are not all alike
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def _batch(V=50, B=3, T=16, P=4):
    """A masked batch in the masking format, with padding tokens and one padding slot."""
    orig = torch.randint(SPECIAL, V, (B, T))
    attn = torch.ones(B, T, dtype=torch.long)
    attn[-1, T - 4:] = 0
    orig[attn == 0] = 0
    pos = torch.stack([torch.randperm(T - 5)[:P].sort().values + 1 for _ in range(B)])
    w = torch.ones(B, P)
    w[0, -1] = 0
    pos[0, -1] = 0
    masked_ids = torch.gather(orig, 1, pos) * (w > 0)
    inp = orig.scatter(1, pos, torch.where(w > 0, torch.full_like(pos, MASK_ID), torch.gather(orig, 1, pos)))
    batch = dict(input_ids=inp, token_type_ids=torch.zeros(B, T, dtype=torch.long), attention_mask=attn,
                 masked_positions=pos, masked_ids=masked_ids, masked_weights=w)
    return {k: v.to(DEVICE) for k, v in batch.items()}


def _step(model, batch, seed):
    model.zero_grad(set_to_none=True)
    out = model(**batch, seed=seed)
    out.loss.backward()
    return out, {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_step(eager, compiled):
    (out_e, grads_e), (out_c, grads_c) = eager, compiled
    assert torch.equal(out_c.samples, out_e.samples)  # the seed reaches the traced generator head
    for name in ("loss", "mlm_loss", "disc_loss"):
        torch.testing.assert_close(getattr(out_c, name), getattr(out_e, name), rtol=1e-5, atol=1e-6)
    assert grads_c.keys() == grads_e.keys()
    assert len(grads_e) > 10 and all(g.abs().sum() > 0 for g in grads_e.values())
    for name, g in grads_e.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_full_step_compiles_without_graph_breaks_and_matches_eager(backend):
    model, batch = _model(), _batch()
    twin = copy.deepcopy(model)
    cnt = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(twin, fullgraph=True, backend=cnt)

    seed = int(torch.randint(0, 2**31 - 1, ()))
    _assert_same_step(_step(model, batch, seed), _step(compiled, batch, seed))
    assert cnt.frame_count == 1
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_tensor_seed_draws_fresh_samples_without_recompiling(backend):
    # A (1,) int64 device tensor seed is a graph input: a captured CUDA graph refills it per step.
    model, batch = _model(), _batch()
    twin = copy.deepcopy(model)
    cnt = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(twin, fullgraph=True, backend=cnt)

    seeds = torch.randint(0, 2**31 - 1, (2,)).tolist()
    samples = []
    for s in seeds:
        seed = torch.tensor([s], device=DEVICE)
        eager, comp = _step(model, batch, seed), _step(compiled, batch, seed.clone())
        _assert_same_step(eager, comp)
        assert torch.equal(comp[0].samples, _step(model, batch, s)[0].samples)  # tensor seed == int seed
        samples.append(comp[0].samples)
    assert not torch.equal(samples[0], samples[1])
    assert cnt.frame_count == 1, "a new seed value recompiled the step"
    assert not counters["graph_break"], dict(counters["graph_break"])


def _head_inputs(M=20, E=16, V=50, with_bias=True):
    hidden = torch.randn(M, E, device=DEVICE, requires_grad=True)
    weight = (torch.randn(V, E, device=DEVICE) * 0.5).requires_grad_()
    bias = (torch.randn(V, device=DEVICE) * 0.5).requires_grad_() if with_bias else None
    targets = torch.randint(0, V, (M,), device=DEVICE)
    targets[torch.rand(M, device=DEVICE) < 0.25] = -100
    targets[0] = 1
    seed = torch.randint(0, 2**62, (1,), device=DEVICE)
    return hidden, weight, bias, targets, seed


@pytest.mark.skipif(DEVICE == "cpu" and not interpreting(), reason="triton on the CPU needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("with_bias", [True, False])
def test_generator_head_ops_pass_opcheck(with_bias):
    hidden, weight, bias, targets, seed = _head_inputs(with_bias=with_bias)
    for return_argmax in (True, False):
        for chunk_rows, need_grads in ((None, False), (8, True), (8, False)):  # fused; chunked, with grads or not
            torch.library.opcheck(gh._generator_head_fwd_op,
                                  (hidden, weight, bias, targets, seed, 0.7, -100, return_argmax, None, None, None,
                                   chunk_rows, need_grads))
            # without sampling (the MLM objective), the targets in the seed's place, as generator_loss passes them
            torch.library.opcheck(gh._generator_head_fwd_op,
                                  (hidden, weight, bias, targets, targets, 0.7, -100, return_argmax, None, None, None,
                                   chunk_rows, need_grads, 0.0, False))
    loss, _, _, lse, denominator, _, _ = gh._generator_head_fwd_op(hidden, weight, bias, targets, seed, 1.0, -100,
                                                               False, None, None)
    grad = torch.rand((), device=DEVICE)
    for need_dh, need_dw in ((True, True), (False, True), (True, False)):
        torch.library.opcheck(gh._generator_head_bwd_op,
                              (grad, hidden.detach(), weight.detach(), None if bias is None else bias.detach(),
                               targets, lse.detach(), denominator.detach(), -100, None, None, need_dh, need_dw))


def test_default_seed_compiles_without_graph_breaks(backend):
    """The training loop's call: no seed given, the model draws one on the device, in the graph."""
    model, batch = _model(), _batch()
    cnt = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=cnt)
    torch.manual_seed(7)
    first = compiled(**batch)
    first.loss.backward()
    second = compiled(**batch)
    assert torch.isfinite(first.loss) and torch.isfinite(second.loss)
    assert cnt.frame_count == 1
    assert not counters["graph_break"], dict(counters["graph_break"])
