"""Throughput of the fused ops against eager PyTorch and torch.compile.

    pytest benchmarks/test_bench_ops.py                          # all (GPU suites skip without CUDA)
    pytest benchmarks/test_bench_ops.py -k cpu                   # the CPU-sized reference suite
    pytest benchmarks/test_bench_ops.py --benchmark-json out.json

GPU suites, at the shapes of one training step of the Small and Base presets (read from
``ElectraConfig.preset``; docs/ARCHITECTURE.md, section 1), forward + backward where the op has a
gradient, bf16 activations:
- generator head: M = batch x max_predictions masked rows (128 x 19, 256 x 79), E = the embedding
  size (128 / 768), V = 30522. Eager = full [M, V] logits + F.cross_entropy + Gumbel-max on the full logits.
- replace_tokens: (B, T, P) = (batch, max_seq_length, max_predictions): (128, 128, 19) / (256, 512, 79).
  Eager = the scatter reference.
- rtd_loss: (B, T, H) = (batch, max_seq_length, hidden_size): (128, 128, 256) / (256, 512, 768).
  Eager = linear + BCE-with-logits.
"fused" is the Triton op, "eager" the plain PyTorch baseline, "compiled" torch.compile of the
op's reference (of the eager baseline for the generator head).
Peak memory above the inputs (MiB) and the GPU name go to extra_info. Results: RESULTS.md.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from electra_fast.kernels import replace_tokens as rt
from electra_fast.kernels import rtd_loss as rl

from electra_fast import ElectraConfig

IGNORE = -100
PRESETS = {name: ElectraConfig.preset(name) for name in ("small", "base")}
GEN_SHAPES = {k: dict(M=c.batch_size * c.max_predictions, E=c.embedding_size, vocab=c.vocab_size)
              for k, c in PRESETS.items()}
REPLACE_SHAPES = {k: dict(B=c.batch_size, T=c.max_seq_length, P=c.max_predictions) for k, c in PRESETS.items()}
RTD_SHAPES = {k: dict(B=c.batch_size, T=c.max_seq_length, H=c.hidden_size) for k, c in PRESETS.items()}
# The CPU suite: Small's length and masked slots per row (T = 128, P = 19), at a deliberately reduced
# batch (16), width (64) and vocabulary (2000) so that the reference path runs in milliseconds on one
# CPU thread; it tracks the CPU fallback, not a training step.
_SMALL = PRESETS["small"]
CPU_BATCH, CPU_WIDTH, CPU_VOCAB = 16, 64, 2000
CPU_GEN_SHAPE = dict(M=CPU_BATCH * _SMALL.max_predictions, E=CPU_WIDTH, vocab=CPU_VOCAB)
CPU_REPLACE_SHAPE = dict(B=CPU_BATCH, T=_SMALL.max_seq_length, P=_SMALL.max_predictions)
CPU_RTD_SHAPE = dict(B=CPU_BATCH, T=_SMALL.max_seq_length, H=CPU_WIDTH)
IMPLS = ["fused", "eager", "compiled"]


# ----------------------------------------------------------------------------- baselines
def generator_head_eager(hidden, weight, bias, targets, seed):
    """The unfused head: [M, V] logits in fp32, cross-entropy, Gumbel-max over the full logits."""
    logits = F.linear(hidden, weight, bias).float()
    loss = F.cross_entropy(logits, targets, ignore_index=IGNORE)
    with torch.no_grad():
        u = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
        samples = torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)
    return loss, samples


def replace_tokens_eager(input_ids, positions, samples, weights):
    """The obvious PyTorch: boolean-mask the real slots, index-put (a device sync: data-dependent shape)."""
    corrupted = input_ids.clone()
    real = weights > 0
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(positions)
    corrupted[rows[real], positions[real]] = samples[real].to(input_ids.dtype)
    return corrupted, corrupted != input_ids


def rtd_loss_eager(hidden, weight, bias, labels, mask):
    logits = F.linear(hidden, weight[None], bias[None]).squeeze(-1).float()
    m = mask.float()
    return F.binary_cross_entropy_with_logits(logits, labels.float(), weight=m, reduction="sum") / m.sum().clamp_min(1)


# ----------------------------------------------------------------------------- inputs
def generator_inputs(M, E, device, dtype, vocab):
    hidden = torch.randn(M, E, device=device, dtype=dtype, requires_grad=True)
    weight = (torch.randn(vocab, E, device=device) * E**-0.5).to(dtype).requires_grad_()
    bias = torch.zeros(weight.shape[0], device=device, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, weight.shape[0], (M,), device=device)
    targets[torch.rand(M, device=device) < 0.1] = IGNORE  # padding slots
    return [hidden, weight, bias, targets]


def replace_inputs(B, T, P, device):
    ids = torch.randint(1000, 30000, (B, T), device=device)
    positions = torch.sort(torch.rand(B, T, device=device).argsort(dim=1)[:, :P], dim=1).values
    weights = (torch.rand(B, P, device=device) < 0.9).float()
    positions = torch.where(weights > 0, positions, torch.zeros_like(positions))
    samples = torch.randint(1000, 30000, (B, P), device=device)
    return [ids, positions, samples, weights]


def rtd_inputs(B, T, H, device, dtype):
    hidden = torch.randn(B, T, H, device=device, dtype=dtype, requires_grad=True)
    weight = (torch.randn(H, device=device) * H**-0.5).requires_grad_()
    bias = torch.zeros((), device=device, requires_grad=True)
    labels = torch.rand(B, T, device=device) < 0.15
    mask = torch.rand(B, T, device=device) < 0.95
    return [hidden, weight, bias, labels, mask]


# ----------------------------------------------------------------------------- harness
def run_benchmark(benchmark, fn, inputs, *, backward: bool, device: str):
    """Time fn(*inputs) (+ backward of its first output) with pytest-benchmark; on CUDA also record
    the peak memory of one step above what the inputs hold."""
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]

    def step():
        for x in leaves:
            x.grad = None
        out = fn(*inputs)
        if backward:
            (out[0] if isinstance(out, tuple) else out).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: Triton / torch.compile compile here
    step()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        benchmark.extra_info["peak_mem_MiB"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
        benchmark.extra_info["torch"] = torch.__version__
    benchmark(step)


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: the fused ops run Triton kernels; see test_cpu_* for the CPU-sized suite")
    return "cuda"


def pick(impl, fused, eager, reference):
    return {"fused": fused, "eager": eager}.get(impl) or torch.compile(reference)


# ----------------------------------------------------------------------------- GPU suites
@pytest.mark.parametrize("impl", IMPLS + ["fused-other"])
@pytest.mark.parametrize("preset", list(GEN_SHAPES))
def test_generator_head(benchmark, cuda, preset, impl):
    """"fused" is the op as training calls it (Small: the fused kernels; Base: the chunked formulation);
    "fused-other" forces the other formulation (``chunk_rows``), to check the default's choice on the card.
    extra_info["roofline_share"]: the cost model's ideal time for the head (electra_fast.proxies.head_ideal,
    H100 peaks) over the measured mean."""
    from electra_fast.kernels.generator_head import _use_chunked, generator_loss_and_sample_triton

    from electra_fast.proxies import head_ideal

    benchmark.group = f"generator_head-{preset}"
    inputs = generator_inputs(**GEN_SHAPES[preset], device=cuda, dtype=torch.bfloat16)
    other = 0 if _use_chunked(GEN_SHAPES[preset]["E"], None) else 4096
    fused = lambda h, w, b, t: generator_loss_and_sample_triton(h, w, b, t, seed=1234,
                                                               chunk_rows=other if impl == "fused-other" else None)
    eager = lambda h, w, b, t: generator_head_eager(h, w, b, t, 1234)
    # compiled: the eager head (the reference's torch.Generator would break the graph)
    run_benchmark(benchmark, pick(impl.split("-")[0], fused, eager, eager), inputs, backward=True, device=cuda)
    ideal_us = head_ideal(PRESETS[preset], "bf16")["ideal_us"]
    benchmark.extra_info["ideal_us"] = round(ideal_us, 1)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["roofline_share"] = round(ideal_us * 1e-6 / benchmark.stats.stats.mean, 3)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("preset", list(REPLACE_SHAPES))
def test_replace_tokens(benchmark, cuda, preset, impl):
    benchmark.group = f"replace_tokens-{preset}"
    inputs = replace_inputs(**REPLACE_SHAPES[preset], device=cuda)
    fused = lambda *a: rt.replace_tokens(*a, backend="triton")
    run_benchmark(benchmark, pick(impl, fused, replace_tokens_eager, rt.replace_tokens_reference), inputs,
                  backward=False, device=cuda)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("preset", list(RTD_SHAPES))
def test_rtd_loss(benchmark, cuda, preset, impl):
    benchmark.group = f"rtd_loss-{preset}"
    inputs = rtd_inputs(**RTD_SHAPES[preset], device=cuda, dtype=torch.bfloat16)
    fused = lambda *a: rl.rtd_loss(*a, backend="triton")
    run_benchmark(benchmark, pick(impl, fused, rtd_loss_eager, rl.rtd_loss_reference), inputs, backward=True,
                  device=cuda)


# ----------------------------------------------------------------------------- CPU-sized suite
# The ops' reference path (what CPU tensors dispatch to) against the eager baselines at small
# shapes, fp32, on one thread (at these sizes extra threads only add contention, and one thread
# is comparable across machines). This tracks the CPU fallback; it says nothing about the GPU.
@pytest.fixture(autouse=True)
def one_thread_on_cpu(request):
    if not request.node.name.startswith("test_cpu_"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("impl", ["reference", "eager"])
def test_cpu_generator_head(benchmark, impl):
    from electra_fast.ops import generator_loss_and_sample

    benchmark.group = "cpu-generator_head"
    inputs = generator_inputs(**CPU_GEN_SHAPE, device="cpu", dtype=torch.float32)
    ref = lambda h, w, b, t: generator_loss_and_sample(h, w, b, t, seed=1234, backend="reference")
    eager = lambda h, w, b, t: generator_head_eager(h, w, b, t, 1234)
    run_benchmark(benchmark, ref if impl == "reference" else eager, inputs, backward=True, device="cpu")


@pytest.mark.parametrize("impl", ["reference", "eager"])
def test_cpu_replace_tokens(benchmark, impl):
    benchmark.group = "cpu-replace_tokens"
    inputs = replace_inputs(**CPU_REPLACE_SHAPE, device="cpu")
    ref = lambda *a: rt.replace_tokens(*a, backend="reference")
    run_benchmark(benchmark, ref if impl == "reference" else replace_tokens_eager, inputs, backward=False,
                  device="cpu")


@pytest.mark.parametrize("impl", ["reference", "eager"])
def test_cpu_rtd_loss(benchmark, impl):
    benchmark.group = "cpu-rtd_loss"
    inputs = rtd_inputs(**CPU_RTD_SHAPE, device="cpu", dtype=torch.float32)
    ref = lambda *a: rl.rtd_loss(*a, backend="reference")
    run_benchmark(benchmark, ref if impl == "reference" else rtd_loss_eager, inputs, backward=True, device="cpu")
