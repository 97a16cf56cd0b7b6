"""Throughput of dynamic masking (electra_fast.masking) against a numpy and a torch baseline.

    pytest benchmarks/test_bench_masking.py
    pytest benchmarks/test_bench_masking.py --benchmark-columns=mean,median,ops -k 128x128

Shapes, from the presets (``ElectraConfig.preset``): (B, T) = (128, 128) (the Small preset's batch),
(32, 512) (Base's length at the step benchmark's batch, ``harness.GPU_SHAPES``), and (256, 512) (the
Base preset's batch, large enough for the C++ path to use several threads). Inputs look like packed pre-training data:
[CLS] A [SEP] B [SEP], 95% of rows full length, the rest shorter with padding.
Implementations:
- cpp-1t: the C++ extension on one thread; cpp-all: threads=None (all cores; small batches still
  run on one thread, see ``threads`` in ``mask_batch``);
- cpp-1t-wwm: one thread, whole-word masking (70% of pieces start a word);
- numpy: the vectorised numpy backend;
- torch-bernoulli: what HF ``DataCollatorForLanguageModeling`` does (our own few lines): an
  independent Bernoulli(p) per token with special tokens zeroed, then 80/10/10, on one torch
  thread. A generous baseline (HF builds the special-token mask row by row in Python); it gives
  neither exact per-row counts nor the static [B, N] format, so it is a speed reference only.
Tokens per second go to ``extra_info["tokens_per_s"]``. Results: RESULTS.md, section "Masking".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from electra_fast import ElectraConfig
from electra_fast.harness import GPU_SHAPES
from electra_fast.masking import mask_batch

SMALL, BASE = ElectraConfig.preset("small"), ElectraConfig.preset("base")
V = SMALL.vocab_size  # BERT uncased WordPiece
MASK_PROB = SMALL.mask_prob
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103  # BERT uncased vocab.txt
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
SHAPES = {f"{b}x{t}": (b, t) for b, t in ((SMALL.batch_size, SMALL.max_seq_length), GPU_SHAPES["base"],
                                          (BASE.batch_size, BASE.max_seq_length))}


def packed_batch(B: int, T: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(999, V, size=(B, T)).astype(np.int32)  # ordinary WordPiece ids
    lengths = np.where(rng.random(B) < 0.05, rng.integers(8, T, B), T)  # 5% short: build_pretraining_dataset
    ids[:, 0] = CLS
    ids[np.arange(B), lengths // 2] = SEP
    ids[np.arange(B), lengths - 1] = SEP
    ids[np.arange(T)[None, :] >= lengths[:, None]] = PAD
    return ids


def torch_bernoulli_mask(
    input_ids: torch.Tensor, specials: torch.Tensor, mask_prob: float, g: torch.Generator
):
    """HF-style masking: Bernoulli(p) per non-special token; of those 80% [MASK], 10% random, 10% kept."""
    labels = input_ids.clone()
    probability = torch.full(input_ids.shape, mask_prob)
    probability.masked_fill_(torch.isin(input_ids, specials), 0.0)
    masked = torch.bernoulli(probability, generator=g).bool()
    labels[~masked] = -100
    inputs = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=g).bool() & masked
    inputs[to_mask] = MASK
    to_random = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=g).bool() & masked & ~to_mask
    inputs[to_random] = torch.randint(V, input_ids.shape, generator=g, dtype=input_ids.dtype)[to_random]
    return inputs, labels


IMPLS = ["cpp-1t", "cpp-all", "cpp-1t-wwm", "numpy", "torch-bernoulli"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_masking_throughput(benchmark, shape, impl):
    B, T = SHAPES[shape]
    ids = packed_batch(B, T)
    threads_before = torch.get_num_threads()
    if impl == "torch-bernoulli":
        torch.set_num_threads(1)  # one core, like cpp-1t (data-loader workers run one thread each)
        t_ids, t_specials = torch.from_numpy(ids.astype(np.int64)), torch.tensor(SPECIALS)
        g = torch.Generator().manual_seed(0)
        fn = lambda: torch_bernoulli_mask(t_ids, t_specials, MASK_PROB, g)
    else:
        backend = "numpy" if impl == "numpy" else "cpp"
        threads = None if impl == "cpp-all" else 1
        kw = dict(vocab_size=V, mask_token_id=MASK, special_ids=SPECIALS, mask_prob=MASK_PROB, backend=backend,
                  threads=threads)
        if impl == "cpp-1t-wwm":
            kw["word_starts"] = np.random.default_rng(1).random((B, T)) < 0.7
        step = iter(range(1 << 62))  # a new seed every call, as in training
        fn = lambda: mask_batch(ids, seed=next(step), **kw)
    try:
        benchmark(fn)
    finally:
        torch.set_num_threads(threads_before)
    benchmark.extra_info["tokens"] = B * T
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["tokens_per_s"] = round(B * T / benchmark.stats.stats.median)
