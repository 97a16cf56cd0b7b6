"""Property-based tests (hypothesis) of the fused ops on random shapes and values: the Triton path
(through the interpreter on the CPU) agrees with the reference, invariants hold, and malformed
inputs are rejected with a ValueError naming the argument. The masking properties live in
tests/test_masking.py."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from electra_fast import ops

try:
    ops.backend("cpu", "triton")
    BACKENDS = ["reference", "triton"]
except ValueError:  # TRITON_INTERPRET is off and there is no GPU
    BACKENDS = ["reference"]

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(B=st.integers(1, 4), T=st.integers(2, 40), P=st.integers(1, 8), seed=st.integers(0, 2**31 - 1),
       backend=st.sampled_from(BACKENDS))
def test_replace_tokens_matches_a_python_loop(B, T, P, seed, backend):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 30, (B, T), generator=g)
    P = min(P, T - 1)
    pos = torch.stack([torch.randperm(T - 1, generator=g)[:P].sort().values + 1 for _ in range(B)])
    w = (torch.rand(B, P, generator=g) < 0.8).float()
    pos = torch.where(w > 0, pos, torch.zeros_like(pos))
    samples = torch.randint(0, 30, (B, P), generator=g)
    got, flag = ops.replace_tokens(ids, pos, samples, w, backend=backend)
    want = ids.clone()
    for b in range(B):
        for j in range(P):
            if w[b, j] > 0:
                want[b, pos[b, j]] = samples[b, j]
    assert torch.equal(got, want)
    assert torch.equal(flag, want != ids)


@SETTINGS
@given(N=st.integers(1, 60), H=st.integers(1, 70), seed=st.integers(0, 2**31 - 1),
       p_mask=st.floats(0.0, 1.0), scale=st.floats(0.01, 10.0))
def test_rtd_loss_paths_agree_and_are_permutation_invariant(N, H, seed, p_mask, scale):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g) * scale
    w = torch.randn(H, generator=g)
    b = torch.randn((), generator=g)
    labels = torch.rand(N, generator=g) < 0.3
    mask = torch.rand(N, generator=g) < p_mask
    ref = ops.rtd_loss(h, w, b, labels, mask, backend="reference")
    assert ref >= 0 and torch.isfinite(ref)
    perm = torch.randperm(N, generator=g)
    torch.testing.assert_close(ops.rtd_loss(h[perm], w, b, labels[perm], mask[perm], backend="reference"), ref)
    if "triton" in BACKENDS:
        torch.testing.assert_close(ops.rtd_loss(h, w, b, labels, mask, backend="triton"), ref, rtol=1e-5, atol=1e-5)
    if not mask.any():
        assert ref.item() == 0.0


@SETTINGS
@given(M=st.integers(1, 12), E=st.integers(1, 24), V=st.integers(2, 90), seed=st.integers(0, 2**31 - 1),
       p_ignore=st.floats(0.0, 1.0), temperature=st.floats(0.25, 4.0), bias=st.booleans())
def test_generator_head_paths_agree_on_loss_and_keep_ignored_targets(M, E, V, seed, p_ignore, temperature, bias):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(M, E, generator=g)
    W = torch.randn(V, E, generator=g) / E**0.5
    b = torch.randn(V, generator=g) if bias else None
    targets = torch.randint(0, V, (M,), generator=g)
    ignored = torch.rand(M, generator=g) < p_ignore
    targets[ignored] = -100
    results = {}
    for backend in BACKENDS:
        loss, samples = ops.generator_loss_and_sample(h, W, b, targets, temperature=temperature, seed=seed,
                                                      backend=backend)
        assert torch.isfinite(loss) and loss >= 0
        assert samples.dtype == torch.int64 and samples.shape == (M,)
        assert torch.equal(samples[ignored], targets[ignored])
        assert ((samples[~ignored] >= 0) & (samples[~ignored] < V)).all()
        results[backend] = loss
    if len(results) == 2:
        torch.testing.assert_close(results["triton"], results["reference"], rtol=1e-5, atol=1e-5)


@SETTINGS
@given(backend=st.sampled_from(BACKENDS), bad=st.sampled_from(["rank", "length", "dtype"]),
       M=st.integers(2, 9), E=st.integers(2, 9), V=st.integers(2, 20))
def test_malformed_generator_head_inputs_are_rejected_by_name(backend, bad, M, E, V):
    h, W, t = torch.randn(M, E), torch.randn(V, E), torch.randint(0, V, (M,))
    if bad == "rank":
        h, name = h[None], "hidden"
    elif bad == "length":
        t, name = t[:-1], "targets"
    else:
        t, name = t.float(), "targets"
    with pytest.raises(ValueError, match=name):
        ops.generator_loss_and_sample(h, W, None, t, seed=0, backend=backend)
