"""Fused generator head (kernels/generator_head.py) against an independent fp64 computation.

Both backends run here: the reference (plain PyTorch) and the Triton kernels, on the CPU through
the Triton interpreter (TRITON_INTERPRET=1 must be set before triton is imported) or on CUDA
when a GPU is present and the interpreter is switched off (TRITON_INTERPRET=0).
Inputs are fresh random numbers each run; the sampling tests put their seed in the failure message.
The reference draws the kernel's Philox uniforms bit for bit, so its samples are compared exactly.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from electra_fast.kernels import generator_head as gh  # noqa: E402
from electra_fast.kernels.dispatch import interpreting  # noqa: E402
from electra_fast.kernels.generator_head import _clamped_uniform, _philox_uniforms  # noqa: E402
from scipy import stats  # noqa: E402

IGNORE = -100
DEVICE = "cpu" if interpreting() or not torch.cuda.is_available() else "cuda"
BACKENDS = [
    "reference",
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(
            DEVICE == "cpu" and not interpreting(), reason="triton on the CPU needs TRITON_INTERPRET=1"
        ),
    ),
]
# Max abs error allowed, relative to the largest reference value (outputs are in the input dtype).
GRAD_TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
LOSS_RTOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}


def run(backend, hidden, weight, bias, targets, **kwargs):
    if backend == "triton":
        return gh.generator_loss_and_sample_triton(hidden, weight, bias, targets, **kwargs)
    return gh.generator_loss_and_sample_reference(hidden, weight, bias, targets, **kwargs)


def make_inputs(M, E, V, dtype=torch.float32, with_bias=True, ignore_frac=0.2):
    """Logits with std ~2; about ignore_frac of the rows ignored (never all of them)."""
    hidden = torch.randn(M, E, device=DEVICE)
    weight = torch.randn(V, E, device=DEVICE) * (2.0 / E**0.5)
    bias = torch.randn(V, device=DEVICE) * 0.5 if with_bias else None
    targets = torch.randint(0, V, (M,), device=DEVICE)
    ignored = torch.rand(M, device=DEVICE) < ignore_frac
    ignored[0] = False
    targets[ignored] = IGNORE
    cast = lambda t: None if t is None else t.to(dtype).requires_grad_()
    return cast(hidden), cast(weight), cast(bias), targets


def fp64_oracle(hidden, weight, bias, targets, eps=0.0):
    """Loss, grads (dh, dW, db) and logits from float64 copies of the inputs: the cross-entropy summed
    over the non-ignored rows, divided by their number + eps (by max(number, 1) for eps = 0)."""
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    b = bias.detach().double().requires_grad_() if bias is not None else None
    logits = h @ w.T + (b if b is not None else 0.0)
    valid = targets != IGNORE
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp[valid.nonzero()[:, 0], targets[valid]]
    n = int(valid.sum())
    loss = -picked.sum() / (n + eps if eps else max(n, 1))
    inputs = [x for x in (h, w, b) if x is not None]
    grads = torch.autograd.grad(loss, inputs)
    db = grads[2] if b is not None else None
    return loss.detach(), grads[0], grads[1], db, logits.detach()


def assert_close_rel(got, want, tol, name):
    err = (got.double() - want).abs().max().item()
    scale = want.abs().max().item()
    assert err <= tol * scale + 1e-12, f"{name}: max abs error {err:.3g} vs max |ref| {scale:.3g}"


def check_against_oracle(backend, hidden, weight, bias, targets, dtype, **kwargs):
    loss, samples = run(backend, hidden, weight, bias, targets, seed=7, **kwargs)
    want_loss, want_dh, want_dw, want_db, _ = fp64_oracle(hidden, weight, bias, targets, kwargs.get("eps", 0.0))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert samples.dtype == torch.int64 and samples.shape == targets.shape
    torch.testing.assert_close(loss.double(), want_loss, rtol=LOSS_RTOL[dtype], atol=1e-6)
    loss.backward()
    assert hidden.grad.dtype == dtype and weight.grad.dtype == dtype
    assert_close_rel(hidden.grad, want_dh, GRAD_TOL[dtype], "dL/dh")
    assert_close_rel(weight.grad, want_dw, GRAD_TOL[dtype], "dL/dW")
    if bias is not None:
        assert_close_rel(bias.grad, want_db, GRAD_TOL[dtype], "dL/db")
    valid = targets != IGNORE
    assert torch.equal(samples[~valid], targets[~valid])
    assert bool(((samples[valid] >= 0) & (samples[valid] < weight.shape[0])).all())


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_and_grads_match_fp64(backend, dtype, with_bias):
    inputs = make_inputs(37, 48, 1000, dtype, with_bias)
    check_against_oracle(backend, *inputs, dtype)


@pytest.mark.parametrize("V, block_m, block_v", [(1000, 16, 64), (333, 32, 128), (333, 16, 256)])
@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_vocab_not_a_multiple_of_the_block(backend, V, block_m, block_v):
    inputs = make_inputs(37, 48, V)
    check_against_oracle(backend, *inputs, torch.float32, block_m=block_m, block_v=block_v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_row(backend):
    inputs = make_inputs(1, 48, 1000, ignore_frac=0.0)
    check_against_oracle(backend, *inputs, torch.float32)


@pytest.mark.parametrize("chunk_rows", [0, 8], ids=["fused", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_eps_divides_by_the_row_count_plus_eps(backend, dtype, chunk_rows):
    """eps (the model passes the official code's 1e-6): loss and gradients are the summed
    cross-entropy / (non-ignored rows + eps). A large eps, so that it shows far above the tolerance;
    with every row ignored the loss is still 0, not NaN; a bad eps is a ValueError naming it."""
    if backend == "reference" and chunk_rows:
        pytest.skip("the reference has one formulation")
    eps = float(torch.rand(()) * 5 + 1)
    extra = dict(chunk_rows=chunk_rows) if backend == "triton" else {}
    check_against_oracle(backend, *make_inputs(29, 48, 333, dtype), dtype, eps=eps, **extra)
    hidden, weight, bias, targets = make_inputs(13, 48, 333, dtype)
    targets.fill_(IGNORE)
    loss, _ = run(backend, hidden, weight, bias, targets, seed=3, eps=eps, **extra)
    assert loss.item() == 0.0
    loss.backward()
    assert all(torch.count_nonzero(t.grad) == 0 for t in (hidden, weight, bias))
    for bad in (-1.0, float("nan"), float("inf"), True, None):
        with pytest.raises(ValueError, match="eps"):
            run(backend, hidden, weight, bias, targets, seed=3, eps=bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_row_ignored(backend):
    hidden, weight, bias, targets = make_inputs(21, 48, 100)
    targets.fill_(IGNORE)
    loss, samples = run(backend, hidden, weight, bias, targets, seed=3)
    assert loss.item() == 0.0
    loss.backward()
    for t in (hidden, weight, bias):
        assert torch.count_nonzero(t.grad) == 0
    assert torch.equal(samples, targets)


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_controls_samples(backend):
    hidden, weight, bias, targets = make_inputs(37, 48, 1000)
    first = run(backend, hidden, weight, bias, targets, seed=11)[1]
    again = run(backend, hidden, weight, bias, targets, seed=11)[1]
    as_tensor = run(backend, hidden, weight, bias, targets, seed=torch.tensor(11, device=DEVICE))[1]
    other = run(backend, hidden, weight, bias, targets, seed=12)[1]
    assert torch.equal(first, again)
    assert torch.equal(first, as_tensor)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_samples_do_not_depend_on_block_sizes(backend):
    hidden, weight, bias, targets = make_inputs(37, 48, 333)
    runs = [
        run(backend, hidden, weight, bias, targets, seed=5, return_argmax=True, block_m=bm, block_v=bv)
        for bm, bv in [(16, 64), (64, 64), (32, 128)]
    ]
    for loss, samples, argmax in runs[1:]:
        assert torch.equal(samples, runs[0][1])
        assert torch.equal(argmax, runs[0][2])
        torch.testing.assert_close(loss, runs[0][0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("V, splits", [(1000, 3), (333, 7), (129, 2), (1000, 64)])
@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_vocabulary_splits_match_the_oracle_and_each_other(backend, V, splits):
    """The forward splits the vocabulary across programs and combines partial states: at every split
    boundary (V not a multiple of the split or of BLOCK_V; more splits asked than tiles) the loss,
    gradients and argmax match the fp64 oracle, and samples and argmax equal the unsplit run's."""
    inputs = make_inputs(37, 48, V)
    check_against_oracle(backend, *inputs, torch.float32, block_v=64, vocab_splits=splits)
    hidden, weight, bias, targets = make_inputs(37, 48, V)
    _, _, _, _, logits = fp64_oracle(hidden, weight, bias, targets)
    whole = run(backend, hidden, weight, bias, targets, seed=9, return_argmax=True, block_v=64, vocab_splits=1)
    split = run(backend, hidden, weight, bias, targets, seed=9, return_argmax=True, block_v=64, vocab_splits=splits)
    assert torch.equal(split[1], whole[1])
    assert torch.equal(split[2], whole[2])
    assert torch.equal(whole[2], logits.argmax(-1))
    torch.testing.assert_close(split[0], whole[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_split_edge_cases(backend):
    """One row, and every row ignored, with the vocabulary split."""
    check_against_oracle(backend, *make_inputs(1, 48, 333, ignore_frac=0.0), torch.float32, block_v=64,
                         vocab_splits=4)
    hidden, weight, bias, targets = make_inputs(21, 48, 333)
    targets.fill_(IGNORE)
    loss, samples = run(backend, hidden, weight, bias, targets, seed=3, block_v=64, vocab_splits=3)
    assert loss.item() == 0.0 and torch.equal(samples, targets)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("chunk_rows", [16, 37, 1])
@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_chunked_head_matches_fp64(backend, chunk_rows, dtype, with_bias):
    """The chunked formulation (Base and Large by default; forced here at small shapes): loss and gradients
    against the fp64 oracle with chunk boundaries inside the rows (37 = 16 + 16 + 5), one chunk, and
    one row per chunk, V = 1000 (not a multiple of the rows kernel's tile nor of 8)."""
    inputs = make_inputs(37, 48, 1000, dtype, with_bias)
    check_against_oracle(backend, *inputs, dtype, chunk_rows=chunk_rows)


@pytest.mark.parametrize("V, chunk_rows", [(333, 16), (1000, 7), (129, 61)])
@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_chunked_samples_equal_the_fused_kernels_and_the_reference(backend, V, chunk_rows):
    """fp32: the rows kernel draws the fused kernels' Philox words from the same logits, so samples and
    argmax are equal across formulations and chunk sizes, and losses agree to fp32 rounding."""
    seed = fresh_seed()
    hidden, weight, bias, targets = make_inputs(61, 48, V)
    kwargs = dict(seed=seed, temperature=0.7, return_argmax=True)
    want = gh.generator_loss_and_sample_reference(hidden, weight, bias, targets, **kwargs)
    fused = run(backend, hidden, weight, bias, targets, chunk_rows=0, **kwargs)
    chunked = run(backend, hidden, weight, bias, targets, chunk_rows=chunk_rows, **kwargs)
    for got in (fused, chunked):
        differ = (got[1] != want[1]).nonzero()[:, 0].tolist()
        assert not differ, f"seed {seed}: rows {differ} of 61 sample differently"
        assert torch.equal(got[2], want[2]), f"seed {seed}"
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_chunked_edge_cases(backend):
    """One row; every row ignored (zero loss and gradients); and without gradients (eval: no dlogits,
    no gradient matmuls) the same loss and samples as with them."""
    check_against_oracle(backend, *make_inputs(1, 48, 333, ignore_frac=0.0), torch.float32, chunk_rows=4)
    hidden, weight, bias, targets = make_inputs(21, 48, 333)
    targets.fill_(IGNORE)
    loss, samples = run(backend, hidden, weight, bias, targets, seed=3, chunk_rows=8)
    assert loss.item() == 0.0 and torch.equal(samples, targets)
    loss.backward()
    assert all(torch.count_nonzero(t.grad) == 0 for t in (hidden, weight, bias))
    hidden, weight, bias, targets = make_inputs(29, 48, 333)
    with_grads = run(backend, hidden, weight, bias, targets, seed=4, chunk_rows=8)
    with torch.no_grad():
        without = run(backend, hidden, weight, bias, targets, seed=4, chunk_rows=8)
    assert torch.equal(with_grads[0].detach(), without[0]) and torch.equal(with_grads[1], without[1])


def test_chunked_is_the_default_for_wide_embeddings_only():
    assert not gh._use_chunked(128, None) and not gh._use_chunked(256, None)  # tiny, small: fused kernels
    assert gh._use_chunked(768, None) and gh._use_chunked(1024, None)  # base, large
    assert gh._use_chunked(128, 16) and not gh._use_chunked(768, 0)
    assert gh._chunk_size(20224, 30522, None) % 128 == 0 and gh._chunk_size(20224, 30522, None) * 30522 * 6 <= 2**30
    assert gh._chunk_size(100, 30522, None) == 128 and gh._chunk_size(100, 30522, 7) == 7
    with pytest.raises(ValueError, match="chunk_rows"):
        gh.generator_loss_and_sample_triton(*make_inputs(4, 16, 50), seed=0, chunk_rows=-1)


@triton.jit
def _uniforms_kernel(SEED, OUT, row0, R, V, BLOCK_M: tl.constexpr, Q: tl.constexpr):
    """OUT[r, v] = the forward kernel's uniform of vocabulary index v at row row0 + r (its own helper)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    g = tl.program_id(1) * Q + tl.arange(0, Q)
    zero = tl.zeros((BLOCK_M, Q), tl.uint32)
    words = _philox_uniforms(tl.load(SEED), zero + g.to(tl.uint32)[None, :],
                             zero + (row0 + rows).to(tl.uint32)[:, None])
    at = OUT + rows.to(tl.int64)[:, None] * V + 4 * g[None, :]
    ok = (rows < R)[:, None]
    tl.store(at, words[0], mask=ok & (4 * g < V)[None, :])
    tl.store(at + 1, words[1], mask=ok & (4 * g + 1 < V)[None, :])
    tl.store(at + 2, words[2], mask=ok & (4 * g + 2 < V)[None, :])
    tl.store(at + 3, words[3], mask=ok & (4 * g + 3 < V)[None, :])


@triton.jit
def _convert_kernel(WORDS, OUT, N, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(OUT + i, _clamped_uniform(tl.load(WORDS + i, mask=i < N, other=0)), mask=i < N)


def fresh_seed() -> int:
    """A 63-bit sampling seed drawn from the test's seeded generator (tests/conftest.py: fresh each run,
    reported on failure); tests put it in their failure messages and seed the inputs' RNG with it."""
    seed = int(torch.randint(0, 2**63 - 1, ()))
    torch.manual_seed(seed)
    return seed


@pytest.mark.skipif(DEVICE == "cpu" and not interpreting(), reason="triton on the CPU needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("row0, rows, V, block_m, q", [
    (0, 37, 333, 16, 16),  # V neither a multiple of 4 nor of the tile
    (0, 5, 1001, 32, 64),
    (65530, 40, 30, 16, 4),  # rows across 2**16
    (2**31 - 45, 45, 127, 64, 8),  # the largest int32 rows
])
@pytest.mark.parametrize("port", ["dispatch", "torch"])
def test_reference_uniforms_equal_the_kernels_bit_for_bit(row0, rows, V, block_m, q, port):
    """The reference's Philox port gives the forward kernel's uniforms, bit for bit, for every (row, v):
    as the reference calls it (C++ eager on the CPU) and the torch port (GPU, traced)."""
    uniform = gh._reference_uniform if port == "dispatch" else gh._reference_uniform_torch
    seeds = [fresh_seed(), int(torch.randint(0, 2**32, ())), 2**63 - 1]  # random, high word zero, every bit set
    for seed in seeds:
        s = torch.tensor([seed], device=DEVICE)
        got = torch.full((rows, V), -1.0, device=DEVICE)
        _uniforms_kernel[(triton.cdiv(rows, block_m), triton.cdiv(V, 4 * q))](s, got, row0, rows, V,
                                                                              BLOCK_M=block_m, Q=q)
        want = uniform(s, row0, row0 + rows, V)
        assert want.dtype == torch.float32 and want.shape == (rows, V)
        differ = int((got.view(torch.int32) != want.view(torch.int32)).sum())
        assert differ == 0, f"seed {seed}: {differ} of {rows * V} uniforms differ"
        assert float(want.min()) >= gh.U_EPS and float(want.max()) <= 1.0 - gh.U_EPS


@pytest.mark.parametrize("row0, rows, V", [(0, 37, 1000), (3, 2, 1), (0, 1, 4097), (2**32 - 3, 6, 13)])
def test_cpu_philox_equals_the_torch_port(row0, rows, V):
    """The C++ uniforms the eager CPU reference uses (csrc/philox.cpp) are the torch port's, bit for bit,
    for random, negative and all-bits seeds and for rows past 2**32 (the kernel's uint32 row counter)."""
    assert gh._cpu_philox() is not None, "electra_fast._C lacks philox_uniforms: rebuild (pip install -e .)"
    for seed in [fresh_seed(), -fresh_seed(), 2**63 - 1, -(2**63)]:
        s = torch.tensor([seed])
        got = gh._reference_uniform(s, row0, row0 + rows, V)
        want = gh._reference_uniform_torch(s, row0, row0 + rows, V)
        assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape == (rows, V)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), f"seed {seed}"


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_philox_threads_and_lanes_change_nothing(threads):
    """The C++ uniforms split rows across threads and draw 16 Philox counters at a time: at a size that
    takes three threads (200 rows x 4,099 indices: over 2**18 uniforms a thread; 1,025 counters a row, so
    the last block of 16 is partial; V not a multiple of 4), any thread count gives the torch port's bits."""
    philox = gh._cpu_philox()
    assert philox is not None, "electra_fast._C lacks philox_uniforms: rebuild (pip install -e .)"
    seed = fresh_seed()
    row0, rows, V = 2**32 - 90, 200, 4099  # rows wrap the kernel's uint32 row counter
    got = philox(seed, row0, row0 + rows, V, gh._PHILOX_CONSTANTS, gh._UNIFORM_SCALE, gh.U_EPS, 1.0 - gh.U_EPS,
                 threads)
    want = gh._reference_uniform_torch(torch.tensor([seed]), row0, row0 + rows, V)
    assert torch.equal(torch.from_numpy(got).view(torch.int32), want.view(torch.int32)), f"seed {seed}"


@pytest.mark.skipif(DEVICE == "cpu" and not interpreting(), reason="triton on the CPU needs TRITON_INTERPRET=1")
def test_uniform_conversion_matches_triton_at_the_edges():
    """tl.uint_to_uniform_float and the clamp, bit for bit, on the extreme words and on random ones."""
    seed = fresh_seed()
    edges = torch.tensor([0, 1, 2, 127, 128, 2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 2, 2**32 - 1])
    words = torch.cat([edges, torch.randint(0, 2**32, (4096,))]).to(DEVICE)
    got = torch.empty(words.shape, device=DEVICE)
    _convert_kernel[(triton.cdiv(len(words), 1024),)](words.to(torch.uint32), got, len(words), BLOCK=1024)
    want = gh._clamped_uniform_reference(words)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32)), f"seed {seed}"
    # 0 and 2**32 - 1 (-1 as int32, folded to 0) hit the low clamp, 2**31 - 1 and 2**31 the high one.
    lo, hi = float(np.float32(gh.U_EPS)), float(np.float32(1 - gh.U_EPS))
    assert want[[0, 10]].tolist() == [lo, lo] and want[[6, 7]].tolist() == [hi, hi]


@pytest.mark.parametrize("V, block_m, block_v, splits, temperature", [
    (555, 16, 64, None, 1.0),
    (333, 32, 128, 3, 0.5),
    (129, 64, 256, None, 2.0),
    (1001, 64, 64, 7, 1.0),
])
@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_reference_samples_equal_triton(backend, V, block_m, block_v, splits, temperature):
    """fp32 inputs: reference and Triton draw the same samples (and argmax), at every block size and split."""
    seed = fresh_seed()
    hidden, weight, bias, targets = make_inputs(61, 48, V)
    kwargs = dict(seed=seed, temperature=temperature, return_argmax=True)
    _, want, want_argmax = gh.generator_loss_and_sample_reference(hidden, weight, bias, targets, **kwargs)
    _, got, got_argmax = run(backend, hidden, weight, bias, targets, block_m=block_m, block_v=block_v,
                             vocab_splits=splits, **kwargs)
    differ = (got != want).nonzero()[:, 0].tolist()
    assert not differ, f"seed {seed}: rows {differ} of 61 sample differently"
    assert torch.equal(got_argmax, want_argmax), f"seed {seed}"


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_reference_samples_equal_triton_past_2_16_rows(backend):
    """66,000 rows of equal (zero) logits: the sample is the argmax of the noise alone, so every row checks
    the kernel's row counter and word layout against the reference (V = 7: the last counter is partial)."""
    seed = fresh_seed()
    M, E, V = 66_000, 16, 7
    hidden, weight, bias = torch.zeros(M, E, device=DEVICE), torch.zeros(V, E, device=DEVICE), None
    targets = torch.randint(0, V, (M,), device=DEVICE)
    want = gh.generator_loss_and_sample_reference(hidden, weight, bias, targets, seed=seed)[1]
    got = run(backend, hidden, weight, bias, targets, seed=seed, block_m=8192)[1]
    differ = (got != want).nonzero()[:, 0].tolist()
    assert not differ, f"seed {seed}: {len(differ)} rows differ, first {differ[:5]}"
    assert len(torch.unique(want)) == V


def test_reference_samples_do_not_depend_on_its_row_chunks(monkeypatch):
    """The eager reference samples in row chunks sized by a memory budget; the draws do not depend on them."""
    # At ELECTRA's vocabulary the budget gives chunks of well over a hundred rows, not 2.
    assert gh._EAGER_CHUNK_BYTES // gh._NOISE_BYTES_PER_LOGIT // 30522 >= 100
    seed = fresh_seed()
    hidden, weight, bias, targets = make_inputs(50, 16, 30)
    whole = gh.generator_loss_and_sample_reference(hidden, weight, bias, targets, seed=seed)[1]
    monkeypatch.setattr(gh, "_EAGER_CHUNK_BYTES", 7 * 30 * gh._NOISE_BYTES_PER_LOGIT)  # 7-row chunks
    chunked = gh.generator_loss_and_sample_reference(hidden, weight, bias, targets, seed=seed)[1]
    assert torch.equal(chunked, whole), f"seed {seed}"


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_frequencies_follow_softmax(backend, temperature):
    rows, E, V = 2000, 16, 16
    # Logits with std ~0.8: even at T = 0.5 no single token takes almost all the draws.
    hidden = F.normalize(torch.randn(1, E, device=DEVICE), dim=-1).expand(rows, E).contiguous()
    weight = torch.randn(V, E, device=DEVICE) * 0.7
    bias = torch.randn(V, device=DEVICE) * 0.4
    targets = torch.randint(0, V, (rows,), device=DEVICE)
    seed = int(torch.randint(0, 2**31, ()))
    _, samples = run(backend, hidden, weight, bias, targets, temperature=temperature, seed=seed)
    logits = hidden[0].double() @ weight.double().T + bias.double()
    expected = torch.softmax(logits / temperature, dim=-1).cpu().numpy() * rows
    observed = np.bincount(samples.cpu().numpy(), minlength=V).astype(np.float64)
    # Merge the rarest categories until every bin expects >= 5 draws (chi-square validity).
    order = np.argsort(expected)
    exp_bins, obs_bins, e_acc, o_acc = [], [], 0.0, 0.0
    for i in order:
        e_acc, o_acc = e_acc + expected[i], o_acc + observed[i]
        if e_acc >= 5:
            exp_bins.append(e_acc), obs_bins.append(o_acc)
            e_acc = o_acc = 0.0
    exp_bins[-1] += e_acc
    obs_bins[-1] += o_acc
    assert len(exp_bins) >= 3
    p_value = stats.chisquare(obs_bins, exp_bins).pvalue
    assert p_value > 1e-3, f"seed {seed}: samples do not follow softmax(logits / {temperature}): p = {p_value:.2g}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_argmax_matches_torch(backend):
    hidden, weight, bias, targets = make_inputs(37, 48, 1000)
    _, _, argmax = run(backend, hidden, weight, bias, targets, seed=1, return_argmax=True)
    *_, logits = fp64_oracle(hidden, weight, bias, targets)
    assert argmax.dtype == torch.int64
    top2 = logits.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4  # rows whose maximum fp32 rounding cannot flip
    assert torch.equal(argmax[clear], logits.argmax(-1)[clear])
    picked = logits.gather(1, argmax[:, None])[:, 0]
    assert bool((picked >= top2[:, 0] - 1e-4).all())


def test_dispatch(monkeypatch):
    hidden, weight, bias, targets = make_inputs(37, 48, 100)
    args = (hidden, weight, bias, targets)
    reference = gh.generator_loss_and_sample_reference(*args, seed=2)
    # the op never reads the environment: a call's backend argument (None: "auto") decides
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", "no-such-backend")
    if DEVICE == "cpu":
        assert torch.equal(gh.generator_loss_and_sample(*args, seed=2)[1], reference[1])
    assert torch.equal(gh.generator_loss_and_sample(*args, seed=2, backend="reference")[1], reference[1])
    if DEVICE == "cuda" or interpreting():
        triton_out = gh.generator_loss_and_sample_triton(*args, seed=2, return_argmax=True)
        dispatched = gh.generator_loss_and_sample(*args, seed=2, return_argmax=True, backend="triton")
        assert len(dispatched) == 3
        assert torch.equal(dispatched[1], triton_out[1])
    with pytest.raises(ValueError, match="backend"):
        gh.generator_loss_and_sample(*args, seed=2, backend="cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_checks_name_the_argument(backend):
    hidden, weight, bias, targets = make_inputs(8, 16, 50)
    bad_calls = {
        "hidden": dict(hidden=hidden[0]),
        "weight": dict(weight=weight[:, :8]),
        "bias": dict(bias=bias[:10]),
        "targets": dict(targets=targets.float()),
        "temperature": dict(temperature=0.0),
        "seed": dict(seed=-1),
    }
    for name, change in bad_calls.items():
        kwargs = dict(hidden=hidden, weight=weight, bias=bias, targets=targets, seed=1)
        kwargs.update(change)
        with pytest.raises(ValueError, match=name):
            run(backend, **kwargs)
    out_of_range = targets.clone()
    out_of_range[3] = 50
    with pytest.raises(ValueError, match="targets"):
        run(backend, hidden, weight, bias, out_of_range, seed=1, debug=True)
    with pytest.raises(ValueError, match="weight dtype"):
        run(backend, hidden, weight.detach().half(), bias, targets, seed=1)
    if backend == "triton":
        with pytest.raises(ValueError, match="block_v"):
            run(backend, hidden, weight, bias, targets, seed=1, block_v=32)


# ---------------------------------------------------------------------------- the loss alone (MLM objective)
@pytest.mark.parametrize("M, V, chunk_rows", [(37, 1000, 0), (37, 1000, 16), (1, 333, 0), (61, 129, 7)],
                         ids=["fused", "chunked", "one_row", "chunked_odd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_generator_loss_is_the_sampling_heads_loss_without_noise(backend, dtype, M, V, chunk_rows):
    """``generator_loss`` (sample=False: no Philox draws) gives the sampling head's loss, gradients and argmax
    bit for bit, on the fused kernels and across chunk boundaries; both against the fp64 oracle."""
    from electra_fast import ops

    hidden, weight, bias, targets = make_inputs(M, 48, V, dtype)
    kw = dict(chunk_rows=chunk_rows) if backend == "triton" else {}
    loss, argmax = ops.generator_loss(hidden, weight, bias, targets, return_argmax=True, backend=backend, **kw)
    grads = torch.autograd.grad(loss, (hidden, weight, bias))
    want = gh.generator_loss_and_sample(hidden, weight, bias, targets, seed=fresh_seed(), return_argmax=True,
                                        backend=backend, **kw)
    want_grads = torch.autograd.grad(want[0], (hidden, weight, bias))
    assert torch.equal(loss, want[0]) and torch.equal(argmax, want[2])
    for name, got, ref in zip(("dL/dh", "dL/dW", "dL/db"), grads, want_grads):
        assert torch.equal(got, ref), name
    oracle_loss, oracle_dh, oracle_dw, oracle_db, logits = fp64_oracle(hidden, weight, bias, targets)
    torch.testing.assert_close(loss.double(), oracle_loss, rtol=LOSS_RTOL[dtype], atol=1e-6)
    for name, got, ref in zip(("dL/dh", "dL/dW", "dL/db"), grads, (oracle_dh, oracle_dw, oracle_db)):
        assert_close_rel(got, ref, GRAD_TOL[dtype], name)
    if dtype == torch.float32:  # bf16 operands round the logits: near-ties may pick another index
        assert torch.equal(argmax, logits.argmax(-1))
    assert ops.generator_loss(hidden, weight, bias, targets, backend=backend, **kw).dim() == 0  # loss alone


@pytest.mark.parametrize("backend", BACKENDS)
def test_generator_loss_edge_cases_and_errors(backend):
    """Every row ignored: zero loss and gradients. No seed to give, and nothing that only sampling reads;
    the sampling head still needs its seed, and sample= must be a bool."""
    from electra_fast import ops

    hidden, weight, bias, targets = make_inputs(21, 48, 333)
    targets.fill_(IGNORE)
    for chunk in ((0, 8) if backend == "triton" else (None,)):
        kw = dict(chunk_rows=chunk) if chunk is not None else {}
        loss = ops.generator_loss(hidden, weight, bias, targets, backend=backend, **kw)
        assert loss.item() == 0.0
        grads = torch.autograd.grad(loss, (hidden, weight, bias))
        assert all(torch.count_nonzero(g) == 0 for g in grads)
    for name in ("seed", "temperature", "sample"):
        with pytest.raises(TypeError, match=name):
            ops.generator_loss(hidden, weight, bias, targets, backend=backend, **{name: 1})
    with pytest.raises(ValueError, match="seed is required"):
        run(backend, hidden, weight, bias, targets)
    with pytest.raises(ValueError, match="sample must be"):
        run(backend, hidden, weight, bias, targets, seed=1, sample="no")
    loss, samples = run(backend, hidden, weight, bias, targets, sample=False)
    assert samples is None and loss.item() == 0.0
