"""replace_tokens (kernels/replace_tokens.py) against a plain Python loop.

Both backends run: the reference and the Triton kernel, on the CPU through the Triton
interpreter (TRITON_INTERPRET=1, set before triton is imported) or on CUDA when a GPU is present
and TRITON_INTERPRET=0. Inputs are fresh random numbers each run; the seed is printed (pytest
shows it on failure) and ELECTRA_TEST_SEED=<seed> replays it.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402
import torch  # noqa: E402
from electra_fast.kernels import replace_tokens as rt  # noqa: E402
from electra_fast.kernels.dispatch import interpreting

from electra_fast import ops  # noqa: E402

DEVICE = "cpu" if interpreting() or not torch.cuda.is_available() else "cuda"
BACKENDS = [
    "reference",
    pytest.param("triton", marks=pytest.mark.skipif(
        DEVICE == "cpu" and not interpreting(), reason="triton on the CPU needs TRITON_INTERPRET=1")),
]


def run(backend, *args, **kwargs):
    return rt.replace_tokens(*args, backend=backend, **kwargs)


def make_batch(B, T, P, V=50, n_real=None, equal_frac=0.3):
    """A batch in the masking format: per row n real slots (sorted distinct positions, weight 1),
    then padding slots (position 0, weight 0, a random sample that must be ignored). About
    equal_frac of the real samples equal the original id (they must not count as replaced)."""
    ids = torch.randint(0, V, (B, T))
    positions = torch.zeros(B, P, dtype=torch.long)
    weights = torch.zeros(B, P)
    for b in range(B):
        n = int(torch.randint(0, min(P, T) + 1, ())) if n_real is None else n_real
        positions[b, :n] = torch.sort(torch.randperm(T)[:n]).values
        weights[b, :n] = 1.0
    samples = torch.randint(0, V, (B, P))
    keep = torch.rand(B, P) < equal_frac
    samples = torch.where(keep, ids.gather(1, positions), samples)
    return ids, positions, samples, weights


def python_loop(ids, positions, samples, weights):
    corrupted = ids.tolist()
    flags = [[False] * ids.shape[1] for _ in range(ids.shape[0])]
    for b in range(ids.shape[0]):
        for p in range(positions.shape[1]):
            if weights[b, p] > 0:
                t, s = int(positions[b, p]), int(samples[b, p])
                corrupted[b][t] = s
                flags[b][t] = s != int(ids[b, t])
    return torch.tensor(corrupted, dtype=ids.dtype), torch.tensor(flags)


def check(backend, ids, positions, samples, weights):
    want_ids, want_flags = python_loop(ids, positions, samples, weights)
    dev = lambda t: t.to(DEVICE)
    got_ids, got_flags = run(backend, dev(ids), dev(positions), dev(samples), dev(weights))
    assert got_ids.dtype == ids.dtype and got_flags.dtype == torch.bool
    assert torch.equal(got_ids.cpu(), want_ids)
    assert torch.equal(got_flags.cpu(), want_flags)
    assert torch.equal(got_flags.cpu(), got_ids.cpu() != ids)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,T,P", [(3, 29, 7), (5, 37, 19), (2, 130, 11), (1, 1, 1), (4, 17, 17)])
def test_matches_python_loop(backend, B, T, P):
    check(backend, *make_batch(B, T, P))


@pytest.mark.parametrize("backend", BACKENDS)
def test_samples_equal_to_original_are_not_replaced(backend):
    ids, positions, samples, weights = make_batch(3, 23, 6, n_real=6, equal_frac=1.0)
    got_ids, got_flags = run(backend, *(t.to(DEVICE) for t in (ids, positions, samples, weights)))
    assert torch.equal(got_ids.cpu(), ids)
    assert not got_flags.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_slots_are_ignored(backend):
    # all padding: nothing changes, whatever the padding samples say
    ids, positions, samples, weights = make_batch(3, 21, 5, n_real=0, equal_frac=0.0)
    got_ids, got_flags = run(backend, *(t.to(DEVICE) for t in (ids, positions, samples, weights)))
    assert torch.equal(got_ids.cpu(), ids) and not got_flags.any()
    # a real slot at position 0 sharing the column with padding slots at position 0
    ids, positions, samples, weights = make_batch(2, 13, 6, n_real=3, equal_frac=0.0)
    positions[:, 0] = 0
    samples[:, 0] = (ids[:, 0] + 1) % 50
    check(backend, ids, positions, samples, weights)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ids_dtype,pos_dtype,w_dtype", [
    (torch.int32, torch.int32, torch.bool), (torch.int64, torch.int32, torch.float16),
    (torch.int32, torch.int64, torch.int64)])
def test_dtypes(backend, ids_dtype, pos_dtype, w_dtype):
    ids, positions, samples, weights = make_batch(3, 31, 8)
    check(backend, ids.to(ids_dtype), positions.to(pos_dtype), samples.to(torch.int32), weights.to(w_dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_are_not_differentiable(backend):
    ids, positions, samples, weights = (t.to(DEVICE) for t in make_batch(2, 11, 4))
    weights.requires_grad_()
    got_ids, got_flags = run(backend, ids, positions, samples, weights)
    assert not got_ids.requires_grad and not got_flags.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs(backend):
    ids, positions, samples, weights = (t.to(DEVICE) for t in make_batch(2, 11, 4, n_real=4))
    bad = [
        ((ids[0], positions, samples, weights), "input_ids"),  # rank
        ((ids.float(), positions, samples, weights), "input_ids"),  # float ids
        ((ids, positions[:1], samples, weights), "positions"),  # batch mismatch
        ((ids, positions[:, :3], samples, weights), "same shape"),
        ((ids, positions, samples[:, :3], weights), "same shape"),
        ((ids, positions.float(), samples, weights), "positions"),
        ((ids, positions, samples.float(), weights), "samples"),
        ((ids, positions, samples, weights[..., None]), "weights"),
    ]
    too_far = positions.clone()
    too_far[1, 3] = ids.shape[1]
    negative = positions.clone()
    negative[0, 0] = -1
    bad += [((ids, too_far, samples, weights), "positions"), ((ids, negative, samples, weights), "positions")]
    for args, name in bad:
        with pytest.raises(ValueError, match=name):
            run(backend, *args, debug=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: a device mismatch needs two devices")
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_device_mismatch(backend):
    ids, positions, samples, weights = make_batch(2, 11, 4)
    with pytest.raises(ValueError, match="samples"):
        rt.replace_tokens(ids.cuda(), positions.cuda(), samples, weights.cuda(), backend=backend)


def test_dispatch(monkeypatch):
    ids, positions, samples, weights = make_batch(2, 9, 3)
    # the ops never read the environment: the call's backend argument decides, None meaning "auto"
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", "fastest")
    assert rt.select_backend("cpu") == "reference" and ops.backend("cpu") == "reference"
    assert rt.select_backend("cuda") == "triton" and rt.select_backend("cuda", "auto") == "triton"
    assert rt.select_backend("cuda", "reference") == "reference"
    assert ops.backend("cuda", "triton") == "triton"
    with pytest.raises(ValueError, match="backend"):
        ops.replace_tokens(ids, positions, samples, weights, backend="cudnn")
    # the public entry point is the same function
    want = python_loop(ids, positions, samples, weights)
    got = ops.replace_tokens(ids, positions, samples, weights)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_custom_op_passes_opcheck_and_compiles(backend):
    ids, positions, samples, weights = (t.to(DEVICE) for t in make_batch(3, 29, 6))
    torch.library.opcheck(rt._replace_tokens_op, (ids, positions, samples, weights))
    compiled = torch.compile(lambda *a: rt.replace_tokens(*a, backend=backend), fullgraph=True, backend="aot_eager")
    got_ids, got_flags = compiled(ids, positions, samples, weights)
    want_ids, want_flags = python_loop(*(t.cpu() for t in (ids, positions, samples, weights)))
    assert torch.equal(got_ids.cpu(), want_ids) and torch.equal(got_flags.cpu(), want_flags)
