"""The step harness: one pre-training step of each implementation, ready to time or count.

``build_step(impl, cfg, batch, seq)`` returns a :class:`Step` (model, synthetic masked batch,
optimizer; calling it runs forward + backward + clipping + AdamW); ``time_step`` times it. The
benchmark CLI (``python -m electra_fast.bench``: the table), the CPU-side proxies
(``electra_fast.proxies``: FLOPs and kernels per step) and ``benchmarks/test_bench_step.py`` all
build their steps here, at the shapes defined here, so none of them imports another.

Implementations (``IMPLS``), same batch and precision (bf16 autocast on CUDA, fp32 on the CPU):

    ours         the step exactly as ``python -m electra_fast.train`` runs it on a GPU
                 (``train.make_train_step``: fused Triton ops, one torch.compile region, CUDA graphs)
    ours-eager   the same step with --no-compile
    hf-eager     electra_fast.baselines.HFElectra: HF ElectraForMaskedLM (full-sequence logits) +
                 ElectraForPreTraining, sampling in torch, torch.optim.AdamW (fused)
    hf-compiled  torch.compile of the HF pair: what a savvy user would run instead
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from .config import ElectraConfig

IMPLS = ("ours", "ours-eager", "hf-eager", "hf-compiled")
IMPL_LABELS = {k: k for k in IMPLS}
COMPILED_IMPLS = ("ours", "hf-compiled")
GUMBEL_SEED = 1234  # fixed: timing does not depend on the draws, and no per-step recompiles


# ----------------------------------------------------------------------------- benchmark shapes
def _preset_shape(preset: str, batch_size: int | None = None, seq_len: int | None = None) -> tuple[int, int]:
    cfg = ElectraConfig.preset(preset)
    return batch_size or cfg.batch_size, seq_len or cfg.max_seq_length


# Base at its preset length but batch 32 instead of its 256: 256 x 512 does not fit an 80 GB card
# with HF's full-sequence logits without accumulation; 32 x 512 = 16k tokens already fill a GPU
# for a compute-bound model.
BASE_BENCH_BATCH = 32
# Tiny is timed at batch 32 over its 128 positions (max_position_embeddings), not its training
# shape 128 x 32 (the same 4k tokens per step): the shape benchmarks/RESULTS.md records.
TINY_BENCH_BATCH = 32
# (batch, seq) per preset on one GPU: small at its preset (official) shape.
GPU_SHAPES = {
    "tiny": _preset_shape("tiny", TINY_BENCH_BATCH, ElectraConfig.preset("tiny").max_position_embeddings),
    "small": _preset_shape("small"),
    "base": _preset_shape("base", BASE_BENCH_BATCH),
}
# The CPU variant: tiny at the GPU benchmark's length, batch 8 so that a 2-core CPU times it in seconds.
CPU_SHAPE = ("tiny", 8, GPU_SHAPES["tiny"][1])
CPU_COMPILE_SKIP = ("torch.compile on a 2-core CPU compiles for 45-120 s per model (fwd+bwd, inductor C++; "
                    "cold cache, quiet to loaded machine), more than all other CPU benchmarks together; "
                    "--cpu-compile (ELECTRA_FAST_BENCH_CPU_COMPILE=1 under pytest) runs it")


# ----------------------------------------------------------------------------- one training step
@contextmanager
def env_var(name: str, value: str | None) -> Iterator[None]:
    """Set (or, with None, unset) an environment variable for the block; restore it afterwards."""
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@dataclass
class Step:
    """One pre-training step of one implementation: ``step()`` runs forward + backward + clipping + AdamW."""

    impl: str
    cfg: ElectraConfig
    batch_size: int
    seq_len: int
    device: torch.device
    model: torch.nn.Module
    optimizer: object
    run: Callable[[], None]
    tokens: int  # real (non-padding) tokens per step

    def __call__(self) -> None:
        return self.run()


def build_step(impl: str, cfg: ElectraConfig, batch_size: int, seq_len: int | None = None,
               device: str | torch.device = "cpu", *, compile_model: bool = False, seed: int = 0,
               backend: str = "auto", objective: str = "electra") -> Step:
    """Model, synthetic masked batch and optimizer for ``impl`` (one of IMPLS), ready to step.

    ``ours`` / ``ours-eager`` are the training step exactly as ``electra_fast.train`` builds it
    (``make_train_step``: the same optimizer, clipping, device-side guard and metrics, bf16
    autocast on CUDA; ``ours`` compiled as one region with CUDA graphs, as ``train`` runs by
    default on a GPU). The HF rows run the same batch with torch.optim.AdamW (fused on CUDA),
    clipping and the same autocast; ``hf-compiled`` wraps the HF pair in torch.compile.
    (Fused AdamW on the CPU too, so the kernel proxies count the step a GPU runs.)
    ``compile_model`` (``ours-eager`` only) compiles the model alone (forward + backward graphs;
    the kernel proxies count those). ``backend`` is the ``ours`` model's (``Electra(backend=...)``:
    "auto" runs Triton on CUDA and the reference on the CPU); the environment plays no part.
    ``objective``: "electra", or "mlm" for the BERT-style baseline (``ours`` rows only).
    """
    from .baselines import HFElectra, random_masked_batch
    from .model import Electra
    from .optim import AdamW, param_groups
    from .train import device_batch, make_train_step

    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}")
    if objective != "electra" and not impl.startswith("ours"):
        raise ValueError(f"the {impl} rows train ELECTRA only; objective={objective!r} needs an 'ours' row")
    device = torch.device(device)
    T = seq_len or cfg.max_seq_length
    torch.manual_seed(seed)
    amp = torch.bfloat16 if device.type == "cuda" else None
    cpu_batch = random_masked_batch(cfg, batch_size, T, seed=seed)
    cpu_batch["attention_mask"] = cpu_batch["attention_mask"].bool()
    tokens = int(cpu_batch["attention_mask"].sum())
    if impl.startswith("ours"):
        model = Electra(cfg, objective=objective, backend=backend).to(device).train()
        optimizer = AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                          betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
        step = make_train_step(model, optimizer, cfg, objective=objective, amp_dtype=amp, compile=impl == "ours",
                               forward=torch.compile(model) if compile_model else None)
        batch = device_batch(cpu_batch, tokens != cpu_batch["attention_mask"].numel(), device)
        seeds = torch.full((1,), GUMBEL_SEED, dtype=torch.int64, device=device)

        def run() -> None:
            step([batch], seeds)

        return Step(impl, cfg, batch_size, T, device, model, optimizer, run, tokens)

    model = HFElectra(cfg).to(device).train()
    groups = [{"params": ps, "weight_decay": wd} for ps, wd in param_groups(model, cfg.weight_decay)]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_eps, fused=True)
    fwd = torch.compile(model) if impl == "hf-compiled" else model
    batch = {k: v.to(device) for k, v in cpu_batch.items()}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = fwd(**batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()

    return Step(impl, cfg, batch_size, T, device, model, optimizer, run, tokens)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch.set_num_threads(n) for the block (None: leave as is)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_step(step: Step, warmup: int, iters: int) -> dict:
    """Warm up (compilation, optimizer state), then time ``iters`` steps.

    CUDA: CUDA events around the ``iters`` steps after a synchronize, mean ms per step; peak
    memory = torch.cuda.max_memory_allocated over the timed steps (stats reset after warm-up;
    weights, gradients and optimizer state included). CPU: perf_counter per step, the median
    (robust to other load on the machine); no peak memory.
    """
    for _ in range(warmup):
        step()
    if step.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            step()
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / iters
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        ms, peak = statistics.median(times) * 1e3, None
    return {"step_ms": ms, "tokens_per_s": step.tokens / (ms / 1e3), "peak_mem_mib": peak}


# ----------------------------------------------------------------------------- environment
def environment() -> dict:
    """Machine, card and library versions for a results record."""
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "date": datetime.date.today().isoformat()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = "cpu (no CUDA GPU)"
    return info
