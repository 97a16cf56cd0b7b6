"""Data-pipeline throughput: tokenisation and example packing, in tokens/s.

    pytest benchmarks/test_bench_data.py
    pytest benchmarks/test_bench_data.py --benchmark-json data.json

Input: the embedded default corpus (``electra_fast.corpus.default_corpus``: the running Python's
own documentation, ~1.4 MB of prose), with a WordPiece vocabulary of 4096 trained on it once per
session (what ``python -m electra_fast.train`` does for the tiny preset).
- tokenise: ``ElectraTokenizer.encode_batch`` over every line of the corpus (the tokenizers
  library runs it on all cores);
- pack: ``prepare_dataset`` into a fresh directory each round (tokenise + pack into
  ``[CLS] A [SEP] B [SEP]`` rows of 128 + write the shards and manifest), in-process.
extra_info: tokens (ids produced; for packing, real tokens written, [CLS]/[SEP] included),
tokens_per_s, chars_per_s. Masking throughput is in test_bench_masking.py. Results: RESULTS.md.
"""

from __future__ import annotations

import itertools

import pytest

from electra_fast.corpus import default_corpus
from electra_fast.data import prepare_dataset
from electra_fast.tokenizer import train_tokenizer

VOCAB = 4096  # the tiny preset's vocabulary (electra_fast.train)


@pytest.fixture(scope="module")
def corpus():
    docs = default_corpus()
    return docs, train_tokenizer(docs, VOCAB)


def _report(benchmark, tokens: int, chars: int) -> None:
    benchmark.extra_info.update(tokens=tokens, chars=chars)
    if benchmark.stats:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info["tokens_per_s"] = round(tokens / median)
        benchmark.extra_info["chars_per_s"] = round(chars / median)


def test_tokenize_throughput(benchmark, corpus):
    docs, tok = corpus
    lines = [line for doc in docs for line in doc]
    benchmark.group = "data"
    ids = benchmark.pedantic(tok.encode_batch, args=(lines,), rounds=3, iterations=1, warmup_rounds=1)
    _report(benchmark, sum(map(len, ids)), sum(map(len, lines)))


def test_pack_throughput(benchmark, corpus, tmp_path):
    docs, tok = corpus
    fresh = (tmp_path / f"round{i}" for i in itertools.count())  # a new folder: no shard reuse

    def setup():
        return (docs, tok, next(fresh)), {"max_seq_length": 128, "num_workers": 0, "progress": False}

    benchmark.group = "data"
    ds = benchmark.pedantic(prepare_dataset, setup=setup, rounds=3, iterations=1)
    assert not ds.reused
    _report(benchmark, sum(ds.manifest["num_tokens"].values()), sum(len(line) for doc in docs for line in doc))
