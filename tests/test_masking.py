"""Dynamic masking (electra_fast.masking, csrc/masking.cpp) against the rules of
google-research/electra pretrain_helpers.mask, for both backends.

Inputs are fresh random batches every run, from the test's seed (tests/conftest.py: reported when
the test fails; rerun one with ELECTRA_TEST_SEED=<seed> to reproduce it).
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from electra_fast import masking
from electra_fast.masking import MaskedBatch, mask_batch

try:
    from electra_fast import _C

    HAVE_CPP = hasattr(_C, "mask_batch")
except ImportError:
    _C = None
    HAVE_CPP = False

BACKENDS = [
    pytest.param("cpp", marks=pytest.mark.skipif(not HAVE_CPP, reason="electra_fast._C lacks mask_batch")),
    "numpy",
]

# A small BERT-like vocabulary: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, then ordinary ids.
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 1000
SIGMAS = 5.0


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


def make_batch(rng, B, T, vocab=VOCAB, dtype=np.int32, unk_rate=0.02) -> np.ndarray:
    """[CLS] A [SEP] B [SEP] [PAD]...: random real lengths (some rows all padding), a few [UNK]s."""
    ids = rng.integers(len(SPECIALS), vocab, size=(B, T))
    ids[rng.random((B, T)) < unk_rate] = UNK
    if T:
        lengths = rng.integers(0, T + 1, size=B)
        lengths[: B // 2] = np.maximum(lengths[: B // 2], T - 3)  # half the rows (nearly) full
        ids[:, 0] = CLS
        mid = np.maximum(lengths // 2, 1)
        ids[np.arange(B), np.minimum(mid, T - 1)] = SEP
        ids[np.arange(B), np.maximum(lengths - 1, 0)] = SEP
        ids[np.arange(T)[None, :] >= lengths[:, None]] = PAD
    return ids.astype(dtype)


def run(ids, backend, **kw) -> MaskedBatch:
    args = dict(vocab_size=VOCAB, mask_token_id=MASK, special_ids=SPECIALS, seed=1234, backend=backend)
    args.update(kw)
    return mask_batch(ids, **args)


def expected_count(L: int, mask_prob: float, n_max: int) -> int:
    return max(1, min(n_max, round(L * mask_prob)))  # Python's round: half to even, like tf.round


def words_of_row(cand_row: np.ndarray, starts_row: np.ndarray) -> list[list[int]]:
    """Reference word segmentation: a word opens at a candidate marked as a start or following a
    non-candidate, and continues over candidates not marked as starts."""
    words: list[list[int]] = []
    prev = False
    for t, c in enumerate(cand_row):
        if c and (starts_row[t] or not prev):
            words.append([t])
        elif c:
            words[-1].append(t)
        prev = bool(c)
    return words


def check_rules(
    ids,
    out,
    *,
    vocab_size=VOCAB,
    mask_token_id=MASK,
    special_ids=SPECIALS,
    mask_prob=0.15,
    max_predictions=None,
    mask_replace_prob=0.85,
    random_replace_prob=0.0,
    word_starts=None,
    pad_token_id=PAD,
):
    """Asserts every rule of the contract; returns (#[MASK], #kept, #random) over chosen positions."""
    B, T = ids.shape
    N = max(1, int((mask_prob + 0.005) * T)) if max_predictions is None else max_predictions
    specials = sorted(set(special_ids) | {pad_token_id})
    is_special = np.isin(ids, specials)

    assert isinstance(out, MaskedBatch)
    assert out.input_ids.dtype == ids.dtype and out.input_ids.shape == (B, T)
    assert out.masked_positions.dtype == np.int64 and out.masked_positions.shape == (B, N)
    assert out.masked_ids.dtype == np.int64 and out.masked_ids.shape == (B, N)
    assert out.masked_weights.dtype == np.float32 and out.masked_weights.shape == (B, N)

    k = out.masked_weights.sum(axis=1).astype(np.int64)
    real = np.arange(N)[None, :] < k[:, None]
    np.testing.assert_array_equal(out.masked_weights, real.astype(np.float32), "weights: 1s then 0s")
    assert (out.masked_positions[~real] == 0).all() and (out.masked_ids[~real] == 0).all()
    pos = out.masked_positions
    assert ((np.diff(pos, axis=1) > 0) | ~real[:, 1:]).all(), "positions must be unique and ascending"
    rows, p = np.nonzero(real)[0], pos[real]
    assert ((p >= 0) & (p < T)).all()
    assert not is_special[rows, p].any(), "a special or padding position was chosen"
    np.testing.assert_array_equal(out.masked_ids[real], ids[rows, p], "masked_ids must be the originals")

    chosen = np.zeros((B, T), dtype=bool)
    chosen[rows, p] = True
    np.testing.assert_array_equal(out.input_ids[~chosen], ids[~chosen], "unchosen positions changed")
    new, old = out.input_ids[rows, p].astype(np.int64), ids[rows, p].astype(np.int64)
    is_mask = new == mask_token_id
    is_keep = new == old
    is_random = ~is_mask & ~is_keep
    if random_replace_prob == 0:
        assert not is_random.any()
    assert ((new[is_random] >= 0) & (new[is_random] < vocab_size)).all()
    assert not np.isin(new[is_random], specials).any(), "a random replacement was a special id"
    if mask_replace_prob == 0:
        assert not is_mask.any()
    if mask_replace_prob == 1:
        assert is_mask.all()

    L = (ids != pad_token_id).sum(axis=1)
    c = (~is_special).sum(axis=1)
    n = np.array([expected_count(int(l), mask_prob, N) for l in L], dtype=np.int64)
    if word_starts is None:
        np.testing.assert_array_equal(k, np.where(c > 0, np.minimum(n, c), 0), "per-row counts")
    else:
        for b in range(B):
            words = words_of_row(~is_special[b], word_starts[b])
            taken = [w for w in words if chosen[b, w[0]]]
            for w in taken:
                assert chosen[b, w].all(), f"row {b}: word {w} only partly chosen"
            assert sum(len(w) for w in taken) == k[b] <= N
            if k[b] < n[b]:  # stopped short: every word left out would have overflowed N
                assert all(len(w) > N - k[b] for w in words if not chosen[b, w[0]]), f"row {b}"
            elif taken:  # the word that reached n was the last one added
                assert any(k[b] - len(w) < n[b] for w in taken), f"row {b}: kept adding words past n"
    return int(is_mask.sum()), int(is_keep.sum()), int(is_random.sum())


def assert_binomial(successes: int, trials: int, p: float, what: str):
    sigma = math.sqrt(trials * p * (1 - p))
    assert abs(successes - trials * p) <= SIGMAS * sigma + 1e-9, (
        f"{what}: {successes}/{trials}, expected {p:.3f} +- {SIGMAS} sigma"
    )


# ----------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(64, 128), (16, 512), (7, 5), (3, 1)])
@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.int64])
def test_rules_token_masking(rng, backend, shape, dtype):
    ids = make_batch(rng, *shape, dtype=dtype)
    before = ids.copy()
    out = run(ids, backend, seed=int(rng.integers(2**63)))
    np.testing.assert_array_equal(ids, before, "input_ids must not be modified")
    check_rules(ids, out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "mask_prob,max_predictions", [(0.15, None), (0.25, None), (0.5, 7), (0.0, None), (1.0, 200)]
)
def test_counts_follow_pretrain_helpers(rng, backend, mask_prob, max_predictions):
    ids = make_batch(rng, 48, 128)
    out = run(ids, backend, mask_prob=mask_prob, max_predictions=max_predictions)
    check_rules(ids, out, mask_prob=mask_prob, max_predictions=max_predictions)


def test_default_max_predictions_is_official():
    # configure_pretraining.py: max_predictions_per_seq = int((mask_prob + 0.005) * max_seq_length)
    for T, p, N in [(128, 0.15, 19), (512, 0.15, 79), (512, 0.25, 130)]:
        out = mask_batch(
            np.full((1, T), 7, np.int32),
            vocab_size=10,
            mask_token_id=4,
            special_ids=[4],
            mask_prob=p,
            seed=0,
            backend="numpy",
        )
        assert out.masked_positions.shape == (1, N)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_without_candidates(backend):
    ids = np.array([[PAD] * 6, [CLS, SEP, PAD, PAD, PAD, PAD], [CLS, MASK, UNK, SEP, MASK, PAD]], np.int32)
    out = run(ids, backend, max_predictions=3)
    assert not out.masked_weights.any() and not out.masked_positions.any() and not out.masked_ids.any()
    np.testing.assert_array_equal(out.input_ids, ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fewer_candidates_than_n_takes_all(backend):
    ids = np.array([[CLS, 10, SEP, UNK, UNK, UNK, UNK, UNK, UNK, SEP, 11, 12]], np.int32)  # L=12, p=.5 -> 6
    out = run(ids, backend, mask_prob=0.5, max_predictions=8)
    check_rules(ids, out, mask_prob=0.5, max_predictions=8)
    np.testing.assert_array_equal(out.masked_positions[0, :3], [1, 10, 11])


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batches(backend):
    for shape in [(0, 16), (3, 0), (0, 0)]:
        ids = np.zeros(shape, np.int32)
        out = run(ids, backend)
        check_rules(ids, out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(rng, backend):
    ids = make_batch(rng, 16, 64)
    view = np.asfortranarray(ids)[:, ::1]
    assert not view.flags.c_contiguous
    a, b = run(view, backend), run(ids, backend)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("backend", BACKENDS)
def test_electra_85_15_split(rng, backend):
    ids = make_batch(rng, 3000, 128)
    out = run(ids, backend, seed=int(rng.integers(2**63)))
    n_mask, n_keep, n_random = check_rules(ids, out)
    total = n_mask + n_keep + n_random
    assert total > 30000
    assert_binomial(n_mask, total, 0.85, "[MASK] share")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bert_80_10_10_split(rng, backend):
    ids = make_batch(rng, 3000, 128)
    out = run(ids, backend, mask_replace_prob=0.8, random_replace_prob=0.1, seed=int(rng.integers(2**63)))
    n_mask, n_keep, n_random = check_rules(ids, out, mask_replace_prob=0.8, random_replace_prob=0.1)
    total = n_mask + n_keep + n_random
    # a random draw equal to the original counts as kept: P = 0.1 / 995
    p_random = 0.1 * (1 - 1 / (VOCAB - len(SPECIALS)))
    assert_binomial(n_mask, total, 0.8, "[MASK] share")
    assert_binomial(n_random, total, p_random, "random share")


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_ids_uniform_over_non_special_vocab(rng, backend):
    vocab, specials = 16, (0, 3, 4, 9, 15)  # specials inside and at the end of the range
    ids = rng.integers(0, vocab, size=(2000, 64)).astype(np.int32)
    ids[np.isin(ids, specials)] = 1
    out = mask_batch(
        ids,
        vocab_size=vocab,
        mask_token_id=4,
        special_ids=specials,
        mask_prob=0.5,
        mask_replace_prob=0.0,
        random_replace_prob=1.0,
        seed=int(rng.integers(2**63)),
        backend=backend,
    )
    real = out.masked_weights > 0
    rows = np.nonzero(real)[0]
    new = out.input_ids[rows, out.masked_positions[real]]
    allowed = [i for i in range(vocab) if i not in specials]
    counts = np.bincount(new, minlength=vocab)
    assert counts[list(specials)].sum() == 0
    for i in allowed:
        assert_binomial(int(counts[i]), new.size, 1 / len(allowed), f"random id {i}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("density", ["dense", "sparse"])  # C++ samples the two cases differently
def test_positions_uniform_over_candidates(rng, backend, density):
    # One row repeated: each candidate should be chosen with probability n / c in every row.
    row = np.full(64, PAD, np.int32)
    row[:60] = rng.integers(len(SPECIALS), VOCAB, 60)
    row[[0, 30, 59]] = CLS, SEP, SEP
    if density == "dense":
        row[[10, 20]] = UNK  # 55 candidates of 64, L = 60 -> n = 9
    else:
        row[rng.choice(np.arange(1, 59), 30, replace=False)] = UNK  # under half the row
    ids = np.repeat(row[None, :], 4000, axis=0)
    out = run(ids, backend, seed=int(rng.integers(2**63)), max_predictions=12)
    check_rules(ids, out, max_predictions=12)
    cand = ~np.isin(row, SPECIALS)
    n = min(expected_count(int((row != PAD).sum()), 0.15, 12), int(cand.sum()))
    hits = np.bincount(out.masked_positions[out.masked_weights > 0], minlength=64)
    assert hits[~cand].sum() == 0
    for t in np.flatnonzero(cand):
        assert_binomial(int(hits[t]), ids.shape[0], n / cand.sum(), f"position {t}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_special_ids_and_ids_beyond_uint16(rng, backend):
    # 12 special ids, some above what uint16 can hold, and a pad id no uint16 can equal.
    vocab, pad = 70000, 69999
    specials = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 65536, 69000)
    ids = rng.integers(0, 65536, size=(64, 96)).astype(np.uint16)
    ids[rng.random(ids.shape) < 0.05] = 7
    out = mask_batch(
        ids,
        vocab_size=vocab,
        mask_token_id=4,
        special_ids=specials,
        pad_token_id=pad,
        seed=5,
        backend=backend,
    )
    check_rules(ids, out, vocab_size=vocab, mask_token_id=4, special_ids=specials, pad_token_id=pad)


# ----------------------------------------------------------------------------- whole words


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("start_rate", [0.2, 0.6, 1.0])
def test_whole_word_masking(rng, backend, start_rate):
    ids = make_batch(rng, 200, 128)
    starts = rng.random(ids.shape) < start_rate
    out = run(ids, backend, word_starts=starts, seed=int(rng.integers(2**63)))
    check_rules(ids, out, word_starts=starts)
    if start_rate == 1.0:  # every piece is a word: exactly the token-mode counts
        check_rules(ids, out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_word_long_words_skipped_not_truncated(backend):
    # Words of 5 pieces with N = 7: at most one whole word fits; n = round(40 * .15) = 6.
    ids = np.full((50, 40), 7, np.int32)
    starts = np.zeros_like(ids, dtype=bool)
    starts[:, ::5] = True
    out = run(ids, backend, word_starts=starts, max_predictions=7, seed=3)
    check_rules(ids, out, word_starts=starts, max_predictions=7)
    k = out.masked_weights.sum(axis=1)
    assert (k == 5).all()
    assert (out.masked_positions[:, 0] % 5 == 0).all()


# ----------------------------------------------------------------------------- reproducibility


@pytest.mark.skipif(not HAVE_CPP, reason="electra_fast._C lacks mask_batch")
@pytest.mark.parametrize("whole_words", [False, True])
def test_cpp_thread_count_invariance(rng, whole_words):
    ids = make_batch(rng, 1600, 128)  # ~200k tokens: big enough for 3 threads to start
    starts = rng.random(ids.shape) < 0.5 if whole_words else None
    kw = dict(
        word_starts=starts, seed=int(rng.integers(2**63)), random_replace_prob=0.1, mask_replace_prob=0.8
    )
    outs = [run(ids, "cpp", threads=t, **kw) for t in (1, 2, 3, None)]
    for other in outs[1:]:
        for x, y in zip(outs[0], other):
            np.testing.assert_array_equal(x, y)


@pytest.mark.skipif(not HAVE_CPP, reason="electra_fast._C lacks mask_batch")
def test_cpp_output_independent_of_id_dtype(rng):
    ids = make_batch(rng, 32, 128)
    outs = [run(ids.astype(dt), "cpp", random_replace_prob=0.1) for dt in (np.int32, np.uint16, np.int64)]
    for other in outs[1:]:
        np.testing.assert_array_equal(outs[0].input_ids, other.input_ids.astype(np.int32))
        for x, y in zip(outs[0][1:], other[1:]):
            np.testing.assert_array_equal(x, y)


@pytest.mark.skipif(not HAVE_CPP, reason="electra_fast._C lacks mask_batch")
def test_backends_agree_on_counts(rng):
    ids = make_batch(rng, 64, 128)
    a, b = run(ids, "cpp"), run(ids, "numpy")
    np.testing.assert_array_equal(a.masked_weights, b.masked_weights)  # counts are deterministic


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("whole_words", [False, True])
def test_seed_reproducible_and_different_seeds_differ(rng, backend, whole_words):
    ids = make_batch(rng, 32, 128)
    starts = rng.random(ids.shape) < 0.5 if whole_words else None
    a = run(ids, backend, seed=7, word_starts=starts)
    b = run(ids, backend, seed=7, word_starts=starts)
    c = run(ids, backend, seed=8, word_starts=starts)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.masked_positions, c.masked_positions)
    # rows of one batch draw independently: not all rows pick the same positions
    full = np.repeat(make_batch(rng, 2, 128)[:1], 8, axis=0)  # row 0 is (nearly) full
    d = run(full, backend, seed=7)
    assert len({tuple(r) for r in d.masked_positions}) > 1


def test_fallback_to_numpy_warns_once(rng, monkeypatch):
    import electra_fast

    monkeypatch.delattr(electra_fast, "_C", raising=False)
    monkeypatch.setitem(sys.modules, "electra_fast._C", None)  # makes `from . import _C` fail
    monkeypatch.setattr(masking, "_warned_fallback", False)
    ids = make_batch(rng, 8, 64)
    with pytest.warns(RuntimeWarning, match="numpy backend"):
        out = run(ids, "cpp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = run(ids, "cpp")
    ref = run(ids, "numpy")
    for x, y, z in zip(out, again, ref):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


# ----------------------------------------------------------------------------- bad input

_GOOD = np.array([[CLS, 10, 11, 12, SEP, PAD]], np.int32)

BAD_INPUTS = [
    ({"input_ids": _GOOD.astype(np.float32)}, "input_ids"),
    ({"input_ids": _GOOD.astype(np.int8)}, "input_ids"),
    ({"input_ids": _GOOD[0]}, "input_ids"),
    ({"input_ids": _GOOD[None]}, "input_ids"),
    ({"input_ids": np.array([[CLS, 10, VOCAB, SEP]], np.int32)}, "input_ids"),
    ({"input_ids": np.array([[CLS, -1, 10, SEP]], np.int64)}, "input_ids"),
    ({"word_starts": np.ones_like(_GOOD)}, "word_starts"),
    ({"word_starts": np.ones(6, bool)}, "word_starts"),
    ({"word_starts": np.ones((1, 5), bool)}, "word_starts"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"vocab_size": -3}, "vocab_size"),
    ({"vocab_size": 12}, "input_ids"),  # ids up to SEP/12 no longer fit
    ({"mask_prob": -0.1}, "mask_prob"),
    ({"mask_prob": 1.5}, "mask_prob"),
    ({"mask_prob": float("nan")}, "mask_prob"),
    ({"mask_replace_prob": 1.01}, "mask_replace_prob"),
    ({"random_replace_prob": -0.5}, "random_replace_prob"),
    ({"mask_replace_prob": 0.9, "random_replace_prob": 0.2}, "mask_replace_prob \\+ random_replace_prob"),
    ({"mask_token_id": 10}, "mask_token_id.*must be among special_ids"),
    ({"special_ids": (PAD, CLS, SEP)}, "mask_token_id.*must be among special_ids"),
    ({"special_ids": (PAD, MASK, VOCAB + 5)}, "special_ids"),
    ({"special_ids": None}, "special_ids"),
    ({"max_predictions": 0}, "max_predictions"),
    ({"max_predictions": 2.5}, "max_predictions"),
    ({"max_predictions": 2**64}, "max_predictions"),
    ({"threads": 0}, "threads"),
    ({"backend": "cuda"}, "backend"),
    ({"pad_token_id": VOCAB}, "pad_token_id"),
    ({"seed": "abc"}, "seed"),
    ({"seed": 1.5}, "seed"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "change,message", BAD_INPUTS, ids=[m.split(".")[0] + str(i) for i, (_, m) in enumerate(BAD_INPUTS)]
)
def test_bad_input_raises_value_error(backend, change, message):
    args = dict(
        input_ids=_GOOD, vocab_size=VOCAB, mask_token_id=MASK, special_ids=SPECIALS, seed=0, backend=backend
    )
    args.update(change)
    ids = args.pop("input_ids")
    with pytest.raises(ValueError, match=message):
        mask_batch(ids, **args)


def test_large_id_reported_with_position_in_uint16():
    ids = np.array([[2, 10, 11], [2, 65535, 3]], np.uint16)
    for backend in ["numpy"] + (["cpp"] if HAVE_CPP else []):
        with pytest.raises(ValueError, match=r"input_ids\[1, 1\] = 65535"):
            mask_batch(
                ids, vocab_size=VOCAB, mask_token_id=MASK, special_ids=SPECIALS, seed=0, backend=backend
            )


@pytest.mark.skipif(not HAVE_CPP, reason="electra_fast._C lacks mask_batch")
def test_cpp_entry_point_rejects_bad_input_directly():
    sp = np.array(SPECIALS, np.int64)
    good = (_GOOD, None, sp, VOCAB, MASK, PAD, 0.15, 3, 0.85, 0.0, 0, 1)
    _C.mask_batch(*good)
    bad = {
        0: _GOOD[0],
        1: np.ones((1, 5), bool),
        3: 0,
        4: VOCAB,
        5: -1,
        6: 2.0,
        7: 0,
        8: 0.9,
        11: 0,
    }
    for i, value in bad.items():
        args = list(good)
        args[i] = value
        if i == 8:
            args[9] = 0.5
        with pytest.raises(ValueError):
            _C.mask_batch(*args)
    with pytest.raises(ValueError, match="int32, uint16 or int64"):
        _C.mask_batch(_GOOD.astype(np.int16), *good[1:])
    with pytest.raises(ValueError, match="word_starts"):
        _C.mask_batch(_GOOD, np.ones_like(_GOOD), *good[2:])


# ----------------------------------------------------------------------------- properties


@st.composite
def masking_cases(draw):
    B = draw(st.integers(0, 5))
    T = draw(st.integers(0, 40))
    vocab = draw(st.integers(6, 60))
    specials = draw(st.sets(st.integers(0, vocab - 1), max_size=6)) | {MASK}
    pad = draw(st.sampled_from([0, 1, vocab - 1]))
    seed = draw(st.integers(0, 2**64 - 1))
    data = np.random.default_rng(seed)  # ids come from a seeded generator so examples shrink cleanly
    dtype = draw(st.sampled_from([np.int32, np.uint16, np.int64]))
    ids = data.integers(0, vocab, size=(B, T))
    ids[data.random((B, T)) < draw(st.floats(0, 0.8))] = pad
    mask_replace = draw(st.floats(0, 1))
    random_replace = draw(st.floats(0, 1 - mask_replace)) if len(specials | {pad}) < vocab else 0.0
    starts = data.random((B, T)) < draw(st.floats(0, 1)) if draw(st.booleans()) else None
    return dict(
        input_ids=ids.astype(dtype),
        vocab_size=vocab,
        mask_token_id=MASK,
        special_ids=sorted(specials),
        pad_token_id=pad,
        mask_prob=draw(st.floats(0, 1)),
        max_predictions=draw(st.none() | st.integers(1, 50)),
        mask_replace_prob=mask_replace,
        random_replace_prob=random_replace,
        word_starts=starts,
        seed=seed,
    )


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=masking_cases())
def test_property_random_cases(case):
    ids = case.pop("input_ids")
    seed = case.pop("seed")
    rule_args = {k: v for k, v in case.items()}
    for backend in ["numpy"] + (["cpp"] if HAVE_CPP else []):
        out = mask_batch(ids, seed=seed, backend=backend, threads=2, **case)
        check_rules(ids, out, **rule_args)


# ----------------------------------------------------------------------------- count_real_tokens


@pytest.mark.skipif(_C is None, reason="electra_fast._C not built")
@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.int64])
def test_count_real_tokens_matches_numpy(rng, dtype):
    ids = make_batch(rng, 37, 71, dtype=dtype)
    np.testing.assert_array_equal(_C.count_real_tokens(ids), (ids != PAD).sum(axis=1))
    np.testing.assert_array_equal(_C.count_real_tokens(ids, 3), (ids != 3).sum(axis=1))
    with pytest.raises(ValueError):
        _C.count_real_tokens(ids[0])
