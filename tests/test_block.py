"""The encoder layer's residual trick (model._SkipLinear): the same values and gradients as the
plain post-LN layer written with autograd's own ops, two eager kernels fewer per layer, and no
damage to the gradients when the backward builds a graph or runs under autocast."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from electra_fast import ElectraConfig, proxies
from electra_fast.model import Block, _SkipLinear


def _plain_block(block: Block, x, attn_mask=None):
    """The layer as nn.Linear + autograd write it: the independent reference."""
    B, T, C = x.shape
    qkv = block.qkv(x).view(B, T, 3, block.n_head, C // block.n_head)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).reshape(B, T, C)
    x = block.ln1(x + block.attn_out(y))
    return block.ln2(x + block.ffn_out(F.gelu(block.ffn_in(x))))


def _block(dtype=torch.float32, hidden=24, heads=3, ffn=40):
    cfg = ElectraConfig.preset("tiny", dropout=0.0, attention_dropout=0.0)
    block = Block(hidden, heads, ffn, cfg).to(dtype)
    with torch.no_grad():  # random everything, LayerNorms included
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 and p.shape[0] == hidden else 0.0))
    return block


def _grads(fn, block, x, upstream, autocast=False):
    x = x.detach().requires_grad_(True)
    block.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = (fn(x) * upstream).sum()
    loss.backward()  # outside the autocast region, as the training step runs it
    return [x.grad] + [p.grad for p in block.parameters()]


@pytest.mark.parametrize("shape", [(2, 7, 24), (1, 1, 24), (3, 13, 24)])
def test_block_matches_the_plain_layer_forward_and_backward_in_fp64(shape):
    block = _block(torch.float64)
    x = torch.randn(shape, dtype=torch.float64)
    up = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(block(x), _plain_block(block, x), rtol=1e-12, atol=1e-12)
    got = _grads(block, block, x, up)
    want = _grads(lambda t: _plain_block(block, t), block, x, up)
    for (name, _), g, w in zip([("x", None)] + list(block.named_parameters()), got, want):
        assert g.dtype == w.dtype and torch.allclose(g, w, rtol=1e-10, atol=1e-10), name


def test_block_with_padding_mask_matches_the_plain_layer():
    block = _block(torch.float64)
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    mask = torch.zeros(2, 1, 1, 9, dtype=torch.float64)
    mask[1, ..., 6:] = float("-inf")
    up = torch.randn_like(x)
    got = _grads(lambda t: block(t, mask), block, x, up)
    want = _grads(lambda t: _plain_block(block, t, mask), block, x, up)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-10)


def _skip(x, w, b):
    """Both outputs of _SkipLinear used, the residual one twice, flattened for gradcheck."""
    s, y = _SkipLinear.apply(x, w, b)
    return torch.cat([(s * s).sin().reshape(-1), (y.tanh() + s.sum(-1, keepdim=True)).reshape(-1)])


def test_gradcheck_of_skip_linear_first_and_second_order():
    x = torch.randn(2, 3, 5, dtype=torch.double, requires_grad=True)
    w = torch.randn(7, 5, dtype=torch.double, requires_grad=True)
    b = torch.randn(7, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(_skip, (x, w, b))
    assert torch.autograd.gradgradcheck(_skip, (x, w, b))


def test_create_graph_leaves_the_incoming_residual_gradient_intact():
    """With create_graph=True the residual gradient is part of the new graph: reusing its buffer
    would corrupt the second derivative. Compare both orders against the plain layer."""
    block = _block(torch.float64)
    x = torch.randn(2, 5, 24, dtype=torch.float64, requires_grad=True)
    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention has no double backward
        _second_order(block, x)


def _second_order(block, x):
    (gx,) = torch.autograd.grad(block(x).pow(2).sum(), x, create_graph=True)
    (ggx,) = torch.autograd.grad(gx.pow(2).sum(), x)
    x2 = x.detach().requires_grad_(True)
    (gx2,) = torch.autograd.grad(_plain_block(block, x2).pow(2).sum(), x2, create_graph=True)
    (ggx2,) = torch.autograd.grad(gx2.pow(2).sum(), x2)
    assert torch.allclose(gx, gx2, rtol=1e-10, atol=1e-10)
    assert torch.allclose(ggx, ggx2, rtol=1e-8, atol=1e-8)


def test_under_cpu_bf16_autocast_the_gradients_match_and_stay_fp32():
    block = _block(torch.float32)
    x = torch.randn(3, 11, 24)
    up = torch.randn(3, 11, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    got = _grads(block, block, x, up, autocast=True)
    want = _grads(lambda t: _plain_block(block, t), block, x, up, autocast=True)
    assert out.dtype == torch.float32  # LayerNorm under autocast: fp32
    for (name, p), g, w in zip([("x", x)] + list(block.named_parameters()), got, want):
        assert g.dtype == torch.float32 == p.dtype, name
        # both sides run the same bf16 matmuls; sums in a different order, so bf16-level tolerance
        assert torch.allclose(g, w, rtol=2e-2, atol=2e-2 * w.abs().mean().item()), name


def test_skip_linear_without_bias_matches_linear():
    lin = torch.nn.Linear(6, 5, bias=False).double()
    x = torch.randn(4, 6, dtype=torch.double, requires_grad=True)
    s, y = _SkipLinear.apply(x, lin.weight, None)
    ((s * 2).sum() + (y * y).sum()).backward()
    gx, gw = x.grad, lin.weight.grad
    x.grad, lin.weight.grad = None, None
    ((x * 2).sum() + (lin(x) ** 2).sum()).backward()
    assert torch.allclose(gx, x.grad, rtol=1e-12, atol=1e-12) and torch.allclose(gw, lin.weight.grad, rtol=1e-12)


def test_frozen_projection_still_passes_the_input_gradient():
    block = _block(torch.float64)
    for p in block.qkv.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 4, 24, dtype=torch.float64, requires_grad=True)
    block(x).sum().backward()
    assert block.qkv.weight.grad is None and x.grad is not None
    x2 = x.detach().requires_grad_(True)
    _plain_block(block, x2).sum().backward()
    assert torch.allclose(x.grad, x2.grad, rtol=1e-10, atol=1e-10)


def test_one_layer_launches_two_eager_kernels_fewer_than_the_plain_layer():
    """What the trick is for: the residual gradient add folds into the projection's input-gradient
    GEMM (in-place addmm_, beta 1, no copy), in both sublayers."""
    block = _block(torch.float32)
    x = torch.randn(2, 6, 24)

    def count(fn, autocast=False):
        xx = x.clone().requires_grad_(True)
        block.zero_grad(set_to_none=True)
        # one autocast region per step, as in training (autocast caches weight casts within a region)
        with proxies.count_kernels() as kc:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = fn(xx).sum()
            loss.backward()  # outside the region, as the training step runs it
        return kc

    ours, plain = count(block), count(lambda t: _plain_block(block, t))
    assert plain.total - ours.total == 2, (dict(ours.aten), dict(plain.aten))
    assert ours.aten["addmm_"] == 2 and plain.aten["add"] - ours.aten["add"] == 2
    # under bf16 autocast (the CUDA default's dtypes): the residual sum is one promoting add and the
    # bias gradient is summed in fp32 directly, two casts back to fp32 fewer per sublayer
    ours, plain = count(block, autocast=True), count(lambda t: _plain_block(block, t), autocast=True)
    assert plain.total - ours.total == 4, (dict(ours.aten), dict(plain.aten))
    assert plain.aten["_to_copy"] - ours.aten["_to_copy"] == 4
