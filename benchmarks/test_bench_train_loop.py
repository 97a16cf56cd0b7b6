"""What the training loop costs besides the step: background batches and background checkpoints.

    pytest benchmarks/test_bench_train_loop.py
    pytest benchmarks/test_bench_train_loop.py --benchmark-json loop.json

- prefetch: ``electra_fast.prefetch.Prefetcher`` over a ``PretrainingLoader`` at Small shapes
  (128 x 128, 15% dynamic masking with the C++ extension, 19 predictions), shards packed from the
  embedded corpus; batches taken as fast as the loop can take them. Goal: >= 5M tokens/s, so the
  loader never holds back a GPU step (Small on an H100 consumes ~1-2M tokens/s).
- checkpoints: ``python -m electra_fast.train`` (tiny preset, embedded corpus, 120 steps, data
  prepared once) checkpointing every 20 steps against only at the end. Goal: < 5% more wall time,
  since the write (fsync included) happens in a background thread after a snapshot to host memory.

Timings depend on the machine's load: run on an idle machine (results: RESULTS.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from electra_fast.corpus import default_corpus
from electra_fast.data import PretrainingLoader, prepare_dataset
from electra_fast.prefetch import Prefetcher
from electra_fast.tokenizer import train_tokenizer
from electra_fast.train import main


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    docs = default_corpus()
    tok = train_tokenizer(docs, 4096)
    out = tmp_path_factory.mktemp("shards128")
    prepare_dataset(docs, tok, out, 128, seed=0, progress=False)
    return out, tok


def test_prefetching_loader_at_small_shapes(benchmark, small_shards):
    data, tok = small_shards
    n_batches = 60
    benchmark.group = "train loop"

    def run():
        loader = PretrainingLoader(data, "train", 128, tokenizer=tok, seed=0, mask_prob=0.15, max_predictions=19)
        pf = Prefetcher(loader, depth=4)
        try:
            t0 = time.perf_counter()
            got = [next(pf) for _ in range(n_batches)]
            return time.perf_counter() - t0, sum(b.tokens for b in got), n_batches * 128 * 128
        finally:
            pf.close()

    seconds, real, positions = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(real_tokens_per_s=round(real / seconds), positions_per_s=round(positions / seconds),
                                torch_threads=torch.get_num_threads())
    assert real / seconds >= 5e6, f"{real / seconds / 1e6:.2f}M real tokens/s"


@pytest.fixture(scope="module")
def tiny_run_dir(tmp_path_factory):
    """A run folder whose vocabulary and shards are built once (reused by every timed run)."""
    out = tmp_path_factory.mktemp("tiny")
    assert main(["--out", str(out), "--steps", "1", "--no-progress", "--eval-batches", "1"]) == 0
    return out


def _train_seconds(out, save_every: int) -> float:
    """120 steps resumed from a copy of the 1-step run: its vocabulary and shards are reused (a run
    folder is owned by its run, so a new run into it is refused; --resume continues it)."""
    import shutil
    import tempfile

    copy = Path(tempfile.mkdtemp()) / "run"
    shutil.copytree(out, copy)
    t0 = time.perf_counter()
    assert main(["--resume", str(copy), "--steps", "121", "--save-every", str(save_every), "--no-progress",
                 "--eval-batches", "1", "--log-every", "20"]) == 0
    seconds = time.perf_counter() - t0
    shutil.rmtree(copy.parent)
    return seconds


def test_checkpoint_every_20_steps_costs_under_5_percent(benchmark, tiny_run_dir):
    benchmark.group = "train loop"
    base = min(_train_seconds(tiny_run_dir, 1000) for _ in range(2))
    with_ckpt = benchmark.pedantic(_train_seconds, args=(tiny_run_dir, 20), rounds=2, iterations=1)
    with_ckpt = min(with_ckpt, benchmark.stats.stats.min if benchmark.stats else with_ckpt)
    benchmark.extra_info.update(seconds_no_ckpt=round(base, 2), seconds_every_20=round(with_ckpt, 2),
                                overhead=round(with_ckpt / base - 1, 4))
    assert with_ckpt <= 1.05 * base, f"{with_ckpt:.1f} s with checkpoints every 20 steps vs {base:.1f} s"
