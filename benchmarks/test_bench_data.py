"""Data-pipeline throughput: tokenisation, packing, whole-corpus preparation and the loader.

    pytest benchmarks/test_bench_data.py
    pytest benchmarks/test_bench_data.py --benchmark-json data.json
    BENCH_PREPARE_MB=64,256 pytest benchmarks/test_bench_data.py -k prepare   # corpus sizes
    BENCH_LOADER_GB=1 pytest benchmarks/test_bench_data.py -k loader          # shard-set size

- tokenise / pack: the embedded default corpus (``corpus.default_corpus``, ~6.3 MB of prose),
  vocabulary 4096 trained on it once per session (the tiny preset's).
- prepare: ``python -m electra_fast.prepare`` in a child process on a generated corpus (Zipfian
  words over a 60k-word lexicon, 10% of them (BENCH_OPEN_SHARE) from an open-ended one so that
  distinct words keep growing with the text as in real corpora; sentences of 5-30 words,
  documents of 1-40 sentences) at each size in BENCH_PREPARE_MB, vocabulary 30522 trained on it,
  all cores. Records MB/s and the peak
  resident memory: of the largest single process (``ru_maxrss``) and of the whole process tree
  (parent + workers, sampled from /proc every 50 ms).
- loader: a synthetic shard set of BENCH_LOADER_GB GB (rows of 128, random lengths 64-128),
  evicted from the page cache first (``posix_fadvise(DONTNEED)``), then ``PretrainingLoader``
  batches of 128 with masking for a fixed number of batches: real tokens/s, cold cache included
  (torch imported beforehand, as in training: the loader imports it at its first batch).
Results: RESULTS.md ("Data pipeline").
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from electra_fast.corpus import default_corpus
from electra_fast.prepare import prepare_dataset
from electra_fast.tokenizer import train_tokenizer

VOCAB = 4096  # the tiny preset's vocabulary (electra_fast.train)
PREPARE_MB = [int(x) for x in os.environ.get("BENCH_PREPARE_MB", "32,128").split(",")]
LOADER_GB = float(os.environ.get("BENCH_LOADER_GB", "1"))
OPEN_SHARE = float(os.environ.get("BENCH_OPEN_SHARE", "0.1"))


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


# ----------------------------------------------------------------------------- whole preparation


def generate_corpus(path: Path, megabytes: int, seed: int = 0, open_share: float = 0.0) -> int:
    """Plain text, one sentence per line, blank lines between documents; returns its bytes.

    Words come from a fixed 60k-word lexicon (Zipf-like frequencies); with ``open_share`` > 0
    that share of them comes instead from an open-ended lexicon (ranks drawn from Zipf(1.2), spelt
    as syllables), so the number of distinct words keeps growing with the text as in real corpora
    (Heaps' law), which is what the vocabulary trainer's memory follows."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    lexicon = ["".join(rng.choice(letters, rng.integers(1, 11))) for _ in range(60_000)]
    p = 1.0 / np.arange(1, len(lexicon) + 1) ** 1.1  # Zipf-like word frequencies
    p /= p.sum()
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < megabytes << 20:
            words = rng.choice(len(lexicon), 200_000, p=p)
            lengths = rng.integers(5, 31, 20_000)
            tokens = [lexicon[w] for w in words]
            if open_share > 0:
                for i, rank in zip(np.flatnonzero(rng.random(len(words)) < open_share),
                                   rng.zipf(1.2, len(words)).tolist()):  # fmt: skip
                    tokens[i] = _open_word(rank)
            pos, lines = 0, []
            for n in lengths:
                if pos + n > len(words):
                    break
                lines.append(" ".join(tokens[pos : pos + n]) + ".")
                pos += n
                if rng.random() < 0.05:
                    lines.append("")  # ends a document (about 20 sentences each)
            text = "\n".join(lines) + "\n\n"
            f.write(text)
            written += len(text)
    return path.stat().st_size


_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # 70


def _open_word(rank: int) -> str:
    """The word of a rank in the open-ended lexicon: its digits in base 70, as syllables."""
    out = []
    while True:
        rank, d = divmod(rank, len(_SYLLABLES))
        out.append(_SYLLABLES[d])
        if rank == 0:
            return "".join(out)


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("megabytes", PREPARE_MB)
def test_prepare_throughput_and_memory(benchmark, tmp_path, megabytes):
    src = tmp_path / "corpus.txt"
    size = generate_corpus(src, megabytes, open_share=OPEN_SHARE)
    peak = {"tree": 0}

    def run():
        out = tmp_path / f"out{time.monotonic_ns()}"
        proc = subprocess.Popen([sys.executable, "-m", "electra_fast.prepare", "--data", str(src), "--out", str(out),
                                 "--no-progress"], stderr=subprocess.PIPE, text=True)  # fmt: skip
        done = threading.Event()

        def watch():
            while not done.is_set():
                peak["tree"] = max(peak["tree"], _tree_rss(proc.pid))
                time.sleep(0.05)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        _, err = proc.communicate()
        done.set()
        t.join()
        assert proc.returncode == 0, err
        peak["summary"] = err.strip().splitlines()[-1]
        peak["vocab"] = next((x for x in err.splitlines() if x.startswith("vocabulary:")), "")
        return out

    benchmark.group = "prepare"
    out = benchmark.pedantic(run, rounds=1, iterations=1)
    m = json.loads((out / "manifest.json").read_text())
    seconds = benchmark.stats.stats.median if benchmark.stats else float("nan")
    benchmark.extra_info.update(
        corpus_mb=round(size / 1e6, 1), open_share=OPEN_SHARE, mb_per_s=round(size / 1e6 / seconds, 2),
        tokens=sum(m["num_tokens"].values()), peak_rss_largest_process_mb=round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        peak_rss_tree_mb=round(peak["tree"] / 2**20), workers=os.cpu_count(), summary=peak["summary"],
        vocabulary=peak["vocab"], load_avg=os.getloadavg()[0],
    )  # fmt: skip
    print(benchmark.extra_info)


# ----------------------------------------------------------------------------- loader, cold cache


def _synthetic_shards(folder: Path, gigabytes: float, T: int = 128, vocab: int = 30522) -> int:
    """A shard set written directly (no tokenising): random ids, lengths 64..T. Returns rows."""
    from electra_fast.loader import FORMAT_VERSION, split_files

    rows = int(gigabytes * 1e9 / (T * 2 + T + 4))
    files = split_files("train")
    rng = np.random.default_rng(0)
    with open(folder / files["input_ids"], "wb") as ids, open(folder / files["token_type_ids"], "wb") as seg, \
            open(folder / files["lengths"], "wb") as lens:  # fmt: skip
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            lengths = rng.integers(64, T + 1, n).astype(np.int32)
            block = rng.integers(5, vocab, (n, T)).astype(np.uint16)
            block[:, 0] = 2
            block[np.arange(T) >= lengths[:, None]] = 0
            block[np.arange(n), lengths - 1] = 3
            ids.write(block.tobytes())
            seg.write(np.zeros((n, T), np.uint8).tobytes())
            lens.write(lengths.tobytes())
    for f in files.values():
        with open(folder / f, "rb") as fh:
            os.fsync(fh.fileno())
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # cold page cache
    manifest = {"format_version": FORMAT_VERSION, "num_examples": {"train": rows, "holdout": 0}, "max_seq_length": T,
                "dtype": "uint16", "vocab_size": vocab, "most_frequent_token": 5,
                "special_ids": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "all": [0, 1, 2, 3, 4]}}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return rows


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise to evict the cache")
def test_loader_cold_cache_tokens_per_s(benchmark, tmp_path):
    import torch  # noqa: F401  # training imports it long before the first batch: its ~1.7 s here is not loader time

    from electra_fast.loader import PretrainingLoader

    rows = _synthetic_shards(tmp_path, LOADER_GB)
    loader = PretrainingLoader(tmp_path, "train", 128, seed=0)
    it = iter(loader)
    n_batches = 2000  # about 4 shuffle buffers, each read cold: start-up and steady state

    def run():
        return sum(int(next(it)["attention_mask"].sum()) for _ in range(n_batches))

    benchmark.group = "loader"
    tokens = benchmark.pedantic(run, rounds=1, iterations=1)  # one round: the cache is cold only once
    seconds = benchmark.stats.stats.median if benchmark.stats else float("nan")
    benchmark.extra_info.update(shard_gb=LOADER_GB, rows=rows, batches=n_batches, tokens=tokens,
                                tokens_per_s=round(tokens / seconds))  # fmt: skip
    print(benchmark.extra_info)
