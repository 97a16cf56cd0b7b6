"""End-to-end pre-training step throughput: forward + backward + clipping + AdamW, tokens/s (real tokens).

    pytest benchmarks/test_bench_step.py                       # CPU variant here, GPU suites need CUDA
    pytest benchmarks/test_bench_step.py -k gpu --benchmark-json step.json
    python -m electra_fast.bench                               # the same steps as one table, with MFU

Implementations (``electra_fast.harness.IMPLS``), same synthetic masked batch and initial weights:
- ours: the training step exactly as ``python -m electra_fast.train`` runs it on a GPU
  (``train.make_train_step``: fused ops, forward + backward + clipping + AdamW compiled as one
  region, CUDA graphs on CUDA; compilation happens in the untimed warm-up);
- ours-eager: the same step with --no-compile (on the CPU the ops run their PyTorch references:
  there is no Triton without a GPU);
- hf-eager: ``electra_fast.baselines.HFElectra`` (HF ElectraForMaskedLM with full-sequence logits +
  ElectraForPreTraining, sampling in torch) with fused torch.optim.AdamW;
- hf-compiled: torch.compile of the HF pair.
``test_objective_step_cpu``: ours-eager for both objectives at the default run's shape (tiny, 128 x 32,
one thread): what a step of ``bench --transfer``'s two pre-trainings costs (the MLM baseline draws no
samples). GPU suites: bf16 autocast, fused AdamW, tiny 32x128, small 128x128 and base 32x512 (the official
base batch of 256 does not fit an 80 GB card with HF's full-sequence logits). CPU variant: tiny 8x128,
fp32, one torch thread; torch.compile skips there unless ELECTRA_FAST_BENCH_CPU_COMPILE=1 (it
compiles for 45-120 s on a 2-core machine, longer than the rest of this folder together).
extra_info: tokens, tokens_per_s, step_ms, peak_mem_MiB (CUDA: max allocated over the timed
rounds, weights and optimizer state included), device, precision. Results: RESULTS.md.
"""

from __future__ import annotations

import os

import pytest
import torch

from electra_fast import ElectraConfig, harness

pytest.importorskip("transformers")


def run_step_benchmark(benchmark, impl: str, preset: str, B: int, T: int, device: str, *, rounds: int,
                       warmup: int, objective: str | None = None) -> None:
    cfg = ElectraConfig.preset(preset)
    step = harness.build_step(impl, cfg, B, T, device, objective=objective or "electra")
    cuda = device == "cuda"

    def one_step():
        step()
        if cuda:
            torch.cuda.synchronize()

    try:
        for _ in range(warmup):  # compilation, AdamW state, autotuning: not timed
            one_step()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        benchmark.group = f"step-{preset}-{B}x{T}-{device}" + ("-objectives" if objective else "")
        benchmark.extra_info.update(impl=harness.IMPL_LABELS[impl], objective=objective or "electra", tokens=step.tokens, device=torch.cuda.get_device_name()
                                    if cuda else "cpu", precision="bf16 autocast" if cuda else "fp32",
                                    torch_threads=torch.get_num_threads())
        benchmark.pedantic(one_step, rounds=rounds, iterations=1)
    finally:
        if impl in harness.COMPILED_IMPLS:
            torch._dynamo.reset()  # the next test compiles a new model: drop these graphs
    if cuda:
        benchmark.extra_info["peak_mem_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if benchmark.stats:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info["step_ms"] = round(median * 1e3, 2)
        benchmark.extra_info["tokens_per_s"] = round(step.tokens / median)


@pytest.mark.parametrize("impl", harness.IMPLS)
def test_step_cpu(benchmark, impl):
    preset, B, T = harness.CPU_SHAPE
    if impl in harness.COMPILED_IMPLS and os.environ.get("ELECTRA_FAST_BENCH_CPU_COMPILE") != "1":
        pytest.skip(harness.CPU_COMPILE_SKIP)
    with harness.torch_threads(1):  # one thread: comparable across machines, and faster on a loaded 2-core VM
        run_step_benchmark(benchmark, impl, preset, B, T, "cpu", rounds=4, warmup=1)


@pytest.mark.parametrize("objective", ["electra", "mlm"])
def test_objective_step_cpu(benchmark, objective):
    cfg = ElectraConfig.preset("tiny")
    with harness.torch_threads(1):
        run_step_benchmark(benchmark, "ours-eager", "tiny", cfg.batch_size, cfg.max_seq_length, "cpu", rounds=6,
                           warmup=1, objective=objective)


@pytest.mark.parametrize("impl", harness.IMPLS)
@pytest.mark.parametrize("preset", list(harness.GPU_SHAPES))
def test_step_gpu(benchmark, preset, impl):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: GPU-sized step (bf16, Triton ops); test_step_cpu is the CPU variant")
    B, T = harness.GPU_SHAPES[preset]
    torch.cuda.empty_cache()
    run_step_benchmark(benchmark, impl, preset, B, T, "cuda", rounds=10, warmup=3)
