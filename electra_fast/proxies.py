"""CPU-side proxies for what a training step costs on a GPU: FLOPs per step and kernels per step.

    python -m electra_fast.bench --proxies [--no-compile] [--json PATH]

ELECTRA-Small is launch bound (docs/ARCHITECTURE.md, section 3): its step time on a GPU follows the number of
kernels it launches more than its FLOPs. Both can be counted without a GPU:

FLOPs per step: ``torch.utils.flop_counter`` over forward + backward (matmuls and attention, the
latter through SDPA's math backend: the counter has no formula for the CPU's fused attention
kernel; the optimizer has no matmuls), ours on the reference ops against ``HFElectra``. The
counter cannot see inside Triton kernels; the fused generator head does the same matmuls plus a
recomputation of the logit tiles in each of its two backward kernels (4 M E V FLOPs, reported
separately). FLOPs per sequence do not depend on the batch: counted at a small batch and scaled
to the preset's batch. Ours matches ``ElectraConfig.flops_per_token`` (the MFU formula).

Kernels per step: one steady-state step (forward + backward + AdamW with ``fused=True`` as on a
GPU; its state already exists), counted two ways at once:
- aten ops dispatched (a ``TorchDispatchMode``: below autograd, so backward ops count; after
  composite ops are decomposed, so ``F.linear`` counts as its ``addmm``), except ops that never
  launch a kernel: views and metadata (``NO_KERNEL_OPS``: view, t, transpose, permute, expand,
  as_strided, reshape, detach, alias, (un)squeeze, split, chunk, unbind, slice, select, ...) and
  bare allocations (empty, empty_like, empty_strided, new_empty). A torch custom op (our fused
  ops are ``torch.ops.electra_fast.*``) is not counted itself: its implementation runs with the
  counter on, so the aten ops and the Triton launches inside count instead.
- launches of ``@triton.jit`` kernels (each ``kernel[grid](...)`` = one kernel), counted by
  wrapping the ``run`` method of every kernel object in ``electra_fast.kernels``; our fused path
  is forced with ``Electra(backend="triton")`` under TRITON_INTERPRET=1, so the kernels really run
  (in the interpreter) and the count is the one a GPU would see. Tensor copies the interpreter
  makes around a launch are not counted.
Differences from a GPU, all small and the same for both sides: input range checks our ops run
only on CPU tensors (they read values back to the host; skipped on CUDA) are left out and
reported; dropout is off (the CPU splits dropout into three ops where CUDA runs one, and
scaled_dot_product_attention with dropout falls back to its unfused math path on the CPU while
CUDA keeps one fused kernel); ``_fused_adamw_`` counts as one (on CUDA it is one multi-tensor
launch per chunk of parameters).

torch.compile (where it works on the CPU): the kernels of one compiled step, read from the
wrapper code inductor generates for the forward and backward graphs (``call()``): generated
(fused) kernel calls plus extern calls (matmuls, attention, custom ops). Inductor's CPU backend
generates C++ loops instead of Triton kernels, but the fusion decisions are made by the same
scheduler, so the count is indicative. The optimizer step and any code between graph breaks
stay eager and are not in this count; the number of graphs is reported.

Cost model (``cost_table``; printed by ``--proxies``, one record per launch with ``--cost-json PATH``):
every kernel launch of one training step at each preset (tiny, small, base, large; bf16 autocast
and fp32), recorded from a shape-only step (``FakeTensorMode``, the launch recorder of
``electra_fast.kernels.launches``), with the FLOPs and HBM bytes its grid and tiles imply (the op's
own cost function: dot FLOPs over padded tiles, each program's loads and stores, an operand that fits
in L2 read once), library matmuls inside an op (cuBLAS, recorded with ``record_extern``) at 2 m n k
FLOPs and their operands once, and launches without a cost function (the streaming RTD and
replacement kernels) at their tensors' bytes once and 2 x the hidden states' elements in FLOPs.
The implied time on an H100 (``H100``: 132 SMs, 3.0 TB/s, 800 TFLOP/s bf16, 67 TFLOP/s fp32 without
tensor cores) is max(FLOPs / (peak x wave efficiency), bytes / bandwidth), where wave efficiency =
programs / (SMs x waves) charges a grid that leaves SMs idle in its last wave. The generator head's
ideal: its minimal FLOPs (three logit sweeps: 6 M V E: the logits, dL/dh, dL/dW) and minimal bytes
(h, W and b read once per sweep, dh, dW, db written once) at the same peaks.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .config import ElectraConfig
from .harness import build_step, env_var, environment

# aten ops that never launch a kernel: views and metadata, and allocations without a fill.
NO_KERNEL_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "view_as", "t", "transpose", "permute", "expand",
    "expand_as", "as_strided", "detach", "detach_", "alias", "unsqueeze", "squeeze", "split", "split_with_sizes",
    "chunk", "unbind", "slice", "select", "narrow", "diagonal", "unfold", "movedim", "view_as_real",
    "view_as_complex", "_conj", "conj", "resolve_conj", "resolve_neg", "lift_fresh", "numpy_T", "_neg_view",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "resize_", "set_",
})
IGNORED_NAMESPACES = frozenset({"profiler"})  # record_function markers


# ----------------------------------------------------------------------------- kernel counting
@dataclass
class KernelCount:
    """Kernels a block of code would launch on a GPU. See the module docstring for the rules."""

    aten: Counter = field(default_factory=Counter)  # compute aten ops, by op name
    triton: Counter = field(default_factory=Counter)  # @triton.jit launches, by kernel name
    opaque: Counter = field(default_factory=Counter)  # non-aten ops we could not open: one each
    input_checks: int = 0  # ops of CPU-only input checks in electra_fast.kernels (not counted)
    _in_launch: int = 0

    @property
    def total(self) -> int:
        return sum(self.aten.values()) + sum(self.triton.values()) + sum(self.opaque.values())

    def as_dict(self) -> dict:
        return {"total": self.total, "aten": sum(self.aten.values()), "triton": sum(self.triton.values()),
                "opaque": sum(self.opaque.values()), "input_checks_excluded": self.input_checks,
                "aten_by_op": dict(self.aten.most_common()), "triton_by_kernel": dict(self.triton),
                "opaque_by_op": dict(self.opaque)}


def _kernels_dir() -> str:
    from . import kernels

    return str(Path(kernels.__file__).resolve().parent)


def _from_input_check(kernels_dir: str) -> bool:
    """True when the op was issued by a ``_check*`` function of electra_fast.kernels (CPU only)."""
    f = sys._getframe(2)
    for _ in range(40):
        if f is None:
            return False
        if f.f_code.co_name.startswith("_check") and f.f_code.co_filename.startswith(kernels_dir):
            return True
        f = f.f_back
    return False


def _custom_op_impl(func, args) -> Callable | None:
    """The Python implementation behind a ``torch.library.custom_op`` for the args' device."""
    try:
        from torch._library.custom_ops import OPDEFS
    except ImportError:
        return None
    opdef = OPDEFS.get(func._schema.name)
    if opdef is None:
        return None
    dev = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
    return getattr(opdef, "_backend_fns", {}).get(dev) or getattr(opdef, "_init_fn", None)


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, kc: KernelCount, exclude_input_checks: bool):
        super().__init__()
        self.kc, self.exclude_input_checks = kc, exclude_input_checks
        self.kernels_dir = _kernels_dir()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kc = self.kc
        ns = func.namespace
        if kc._in_launch or ns in IGNORED_NAMESPACES:
            return func(*args, **kwargs)
        if ns != "aten":
            impl = _custom_op_impl(func, args)
            if impl is not None:
                with self:  # the mode is off inside this handler: back on for the op's own ops
                    return impl(*args, **kwargs)
            kc.opaque[str(func.overloadpacket)] += 1
            return func(*args, **kwargs)
        if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
            # reaches here undecomposed only below autograd (inside a custom op): count its parts
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        name = func.overloadpacket.__name__
        if name not in NO_KERNEL_OPS:
            if self.exclude_input_checks and _from_input_check(self.kernels_dir):
                kc.input_checks += 1
            else:
                kc.aten[name] += 1
        return func(*args, **kwargs)


def _triton_leaves(obj) -> Iterator:
    """The launchable kernel objects (JITFunction / InterpretedFunction) in obj's wrappers."""
    try:
        from triton.runtime.jit import KernelInterface
    except ImportError:
        return
    seen = 0
    while isinstance(obj, KernelInterface) and seen < 8:  # autotune / heuristics wrap a .fn
        inner = getattr(obj, "fn", None)
        if not isinstance(inner, KernelInterface):
            yield obj
            return
        obj, seen = inner, seen + 1


@contextmanager
def _count_triton_launches(kc: KernelCount, modules: tuple[str, ...]) -> Iterator[None]:
    """Wrap ``run`` of every @triton.jit kernel defined at the top of ``modules`` (and their
    submodules): ``kernel[grid](...)`` calls ``run``, so each call is one launch (device-side
    calls of jit helpers are not)."""
    patched = {}
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not any(mod_name == m or mod_name.startswith(m + ".") for m in modules):
            continue
        for attr, obj in list(vars(mod).items()):
            for leaf in _triton_leaves(obj):
                if id(leaf) in patched:
                    continue
                name = getattr(getattr(leaf, "fn", None), "__name__", attr)

                def run(*a, _orig=leaf.run, _name=name, **k):
                    if not k.get("warmup", False):
                        kc.triton[_name] += 1
                    kc._in_launch += 1
                    try:
                        return _orig(*a, **k)
                    finally:
                        kc._in_launch -= 1

                patched[id(leaf)] = (leaf, "run" in vars(leaf), vars(leaf).get("run"))
                leaf.run = run
    try:
        yield
    finally:
        for leaf, had, old in patched.values():
            if had:
                leaf.run = old
            else:
                del leaf.run


@contextmanager
def count_kernels(exclude_input_checks: bool = True,
                  kernel_modules: tuple[str, ...] = ("electra_fast.kernels",)) -> Iterator[KernelCount]:
    """Count the kernels the block would launch on a GPU: compute aten ops + Triton launches of
    the @triton.jit kernels in ``kernel_modules``.

        with count_kernels() as kc:
            step()
        kc.total, kc.aten, kc.triton
    """
    kc = KernelCount()
    with _count_triton_launches(kc, kernel_modules), _DispatchCounter(kc, exclude_input_checks):
        yield kc


def interpreting() -> bool:
    """True when our Triton kernels were defined under TRITON_INTERPRET=1 (they run on the CPU)."""
    from .kernels import dispatch  # lazily: triton must not be imported before the caller sets the env

    return dispatch.interpreting()


# ----------------------------------------------------------------------------- the step
def proxy_config(preset: str) -> ElectraConfig:
    """The preset with dropout off (see the module docstring: CPU and CUDA split dropout differently)."""
    return ElectraConfig.preset(preset, dropout=0.0, attention_dropout=0.0)


def step_kernels(impl: str, preset: str = "small", batch_size: int = 2) -> KernelCount:
    """Kernels of one steady-state step of ``impl`` ("fused", "reference", "hf") on the CPU.

    "fused" forces the Triton path (the model's backend "triton") and needs TRITON_INTERPRET=1
    set before triton was imported. The warm-up step (creates the AdamW state) runs on the
    reference ops and is not counted.
    """
    if impl == "fused" and not interpreting():
        raise RuntimeError("counting the fused path needs TRITON_INTERPRET=1 set before triton is imported; "
                           "use proxies.run(), which starts a subprocess with it")
    cfg = proxy_config(preset)
    step = build_step("hf-eager" if impl == "hf" else "ours-eager", cfg, batch_size, device="cpu",
                      backend="reference")
    step.run()
    if impl == "fused":  # the same model on the Triton ops from here on (an eager step reads it per call)
        step.model.backend = "triton"
    with count_kernels() as kc:
        step.run()
    return kc


def count_flops(model: torch.nn.Module, batch: dict) -> int:
    """FLOPs of one forward + backward (torch.utils.flop_counter: matmuls and attention; run it
    under SDPA's math backend on the CPU, see ``step_flops``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = model(**batch)
        loss = out if isinstance(out, torch.Tensor) else out.loss
        loss.backward()
    return counter.get_total_flops()


def step_flops(preset: str = "small", batch_size: int = 2) -> dict:
    """FLOPs of one step (forward + backward), ours (reference ops) and HF, counted at ``batch_size``
    and scaled to the preset's batch (FLOPs per sequence do not depend on the batch)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .baselines import HFElectra, random_masked_batch
    from .model import Electra

    cfg = proxy_config(preset)
    T, B_full = cfg.max_seq_length, cfg.batch_size
    batch = random_masked_batch(cfg, batch_size)
    torch.manual_seed(0)
    # The math backend: flop_counter has no formula for the CPU's fused attention kernel and would
    # leave attention out; the math path's batched matmuls are the same FLOPs, and counted.
    with sdpa_kernel([SDPBackend.MATH]):
        ours = count_flops(Electra(cfg, backend="reference"), batch)
        hf = count_flops(HFElectra(cfg), batch)
    scale = B_full / batch_size
    M = B_full * cfg.max_predictions
    return {"counted_batch": batch_size, "batch": B_full, "seq_len": T, "scale": scale,
            "ours": ours * scale, "hf": hf * scale, "ours_over_hf": ours / hf,
            "model_flops_analytic": cfg.flops_per_token(T) * B_full * T,
            "fused_head_recompute": 4 * M * cfg.embedding_size * cfg.vocab_size}


# ----------------------------------------------------------------------------- torch.compile
_GENERATED_RE = re.compile(r"^\s*(cpp_fused_\w+|triton_\w+)(?:\.run)?\(", re.M)
_EXTERN_RE = re.compile(r"^\s*(?:\w+(?:\s*,\s*\w+)*\s*=\s*)?(extern_kernels\.\w+|torch\.ops\.\w+\.\w+)(?:\.\w+)?\(",
                        re.M)


def _call_body(text: str) -> str | None:
    """The body of the wrapper's ``def call(`` (a module function, or a method of ``Runner`` in
    newer inductor), comment lines dropped."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("def call("):
            indent = len(line) - len(line.lstrip())
            body = []
            for ln in lines[i + 1:]:
                if ln.strip() and len(ln) - len(ln.lstrip()) <= indent:
                    break
                if not ln.lstrip().startswith("#"):
                    body.append(ln)
            return "\n".join(body)
    return None


def _wrapper_calls(cache_dir: str) -> tuple[Counter, Counter, int]:
    """Generated-kernel and extern calls in the ``call()`` of every inductor wrapper under cache_dir."""
    generated, extern, n = Counter(), Counter(), 0
    for path in glob.glob(os.path.join(cache_dir, "**", "*.py"), recursive=True):
        body = _call_body(Path(path).read_text(encoding="utf-8", errors="replace"))
        if body is None:
            continue
        n += 1
        generated.update(_GENERATED_RE.findall(body))
        extern.update(_EXTERN_RE.findall(body))
    return generated, extern, n


def compiled_kernels(impl: str, preset: str = "small", batch_size: int = 2) -> dict:
    """Kernels of one torch.compile'd step (forward + backward graphs) of "reference" or "hf".

    Compiles in a fresh inductor cache directory (so every graph is generated, not loaded) and
    counts the calls in the generated wrappers; also returns inductor's
    ``metrics.generated_kernel_count`` (kernels generated during compilation, variants
    included: larger than what a step calls) and dynamo's graph count.
    """
    import time

    import torch._dynamo
    import torch._inductor.config as inductor_config
    import torch._inductor.metrics as metrics

    cfg = proxy_config(preset)
    torch._dynamo.reset()
    with tempfile.TemporaryDirectory(prefix="electra_fast_inductor_") as tmp:
        with env_var("TORCHINDUCTOR_CACHE_DIR", tmp):
            with inductor_config.patch(fx_graph_cache=False):
                step = (build_step("hf-compiled", cfg, batch_size, device="cpu") if impl == "hf" else
                        build_step("ours-eager", cfg, batch_size, device="cpu", compile_model=True,
                                   backend="reference"))
                before = metrics.generated_kernel_count
                torch._dynamo.utils.counters.clear()
                t0 = time.time()
                step.run()
                seconds = time.time() - t0
                generated = metrics.generated_kernel_count - before
                graphs = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
                breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
            calls, extern, wrappers = _wrapper_calls(tmp)
    torch._dynamo.reset()
    return {"total": sum(calls.values()) + sum(extern.values()), "generated_calls": sum(calls.values()),
            "extern_calls": sum(extern.values()), "extern_by_op": dict(extern.most_common()),
            "wrappers": wrappers, "graphs": graphs, "graph_breaks": breaks,
            "inductor_generated_kernel_count": generated, "compile_seconds": round(seconds, 1)}


# ----------------------------------------------------------------------------- all of it
def measure(preset: str = "small", batch_size: int = 2, *, kernels: tuple[str, ...] = ("fused", "reference", "hf"),
            compile: bool = False, log: Callable | None = None) -> dict:
    """FLOPs per step and kernels per step in this process (the fused count needs interpreting())."""
    say = log or (lambda *a, **k: None)
    cfg = proxy_config(preset)
    res = {"preset": preset, "batch": cfg.batch_size, "seq_len": cfg.max_seq_length, "counted_batch": batch_size,
           "environment": environment(), "kernels": {}, "compiled": {}}
    say(f"FLOPs per step at {preset} (counted at batch {batch_size}) ...", flush=True)
    res["flops"] = step_flops(preset, batch_size)
    for impl in kernels:
        say(f"kernels per step: {impl} ...", flush=True)
        res["kernels"][impl] = step_kernels(impl, preset, batch_size).as_dict()
    if compile:
        for impl in ("reference", "hf"):
            say(f"torch.compile kernels per step: {impl} (compiling, minutes on a CPU) ...", flush=True)
            try:
                res["compiled"][impl] = compiled_kernels(impl, preset, batch_size)
            except Exception as e:  # compile can fail on a CPU without a C++ toolchain
                res["compiled"][impl] = {"error": f"{type(e).__name__}: {e}"}
    return res


def run(preset: str = "small", batch_size: int = 2, *, compile: bool = True, log: Callable | None = None) -> dict:
    """``measure`` with the fused count in a subprocess under TRITON_INTERPRET=1 when this process
    is not interpreting (the variable must be set before triton is imported)."""
    if interpreting():
        return measure(preset, batch_size, compile=compile, log=log)
    res = measure(preset, batch_size, kernels=("reference", "hf"), compile=compile, log=log)
    if log:
        log("kernels per step: fused (subprocess, Triton interpreter: a minute or two) ...", flush=True)
    env = dict(os.environ, TRITON_INTERPRET="1")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fused.json"
        subprocess.run([sys.executable, "-m", "electra_fast.proxies", "--preset", preset, "--batch-size",
                        str(batch_size), "--fused-only", "--json", str(out)], env=env, check=True)
        res["kernels"] = {"fused": json.loads(out.read_text())["kernels"]["fused"], **res["kernels"]}
    return res


def format_report(res: dict) -> str:
    env, fl = res["environment"], res["flops"]
    lines = [f"CPU-side proxies at the {res['preset']} preset's shapes (batch {res['batch']} x {res['seq_len']}); "
             f"torch {env['torch']}, triton {env['triton']}, transformers {env['transformers']}, {env['date']}",
             "",
             f"FLOPs per step (flop_counter, fwd+bwd; counted at batch {fl['counted_batch']}, x{fl['scale']:g}):",
             f"  ours {fl['ours'] / 1e12:8.3f} TFLOP   HF {fl['hf'] / 1e12:8.3f} TFLOP   ours/HF = {fl['ours_over_hf']:.3f}"
             f"   (analytic model FLOPs {fl['model_flops_analytic'] / 1e12:.3f} TFLOP; the fused head also "
             f"recomputes logit tiles: +{fl['fused_head_recompute'] / 1e12:.3f} TFLOP executed)",
             "",
             f"Kernels per step (fwd+bwd+fused AdamW, steady state, dropout off, counted at batch "
             f"{res['counted_batch']}):",
             f"  {'implementation':<16} {'total':>6} {'aten ops':>9} {'triton':>7} {'opaque':>7} {'checks excl.':>13}"]
    for impl, k in res["kernels"].items():
        lines.append(f"  {impl:<16} {k['total']:>6} {k['aten']:>9} {k['triton']:>7} {k['opaque']:>7} "
                     f"{k['input_checks_excluded']:>13}")
    if res.get("compiled"):
        lines += ["", "torch.compile (inductor CPU backend), kernels per compiled step (fwd+bwd graphs):",
                  f"  {'implementation':<16} {'total':>6} {'generated':>10} {'extern':>7} {'graphs':>7} "
                  f"{'breaks':>7} {'compile s':>10} {'metrics.generated_kernel_count':>31}"]
        for impl, c in res["compiled"].items():
            if "error" in c:
                lines.append(f"  {impl:<16} failed: {c['error']}")
                continue
            lines.append(f"  {impl:<16} {c['total']:>6} {c['generated_calls']:>10} {c['extern_calls']:>7} "
                         f"{c['graphs']:>7} {c['graph_breaks']:>7} {c['compile_seconds']:>10} "
                         f"{c['inductor_generated_kernel_count']:>31}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- cost model
H100 = dict(name="H100 SXM", sms=132, bandwidth=3.0e12, peak={"bf16": 800e12, "fp32": 67e12})
COST_PRESETS = ("tiny", "small", "base", "large")
COST_MODES = ("bf16", "fp32")


def step_launches(preset: str, mode: str, objective: str = "electra") -> list:
    """The launches of one training step (forward + backward) of ``Electra(objective=objective)`` at ``preset``
    in ``mode`` ("bf16": autocast, "fp32"), recorded on fake tensors: shapes, tiles, grids and costs, no compute."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .kernels.launches import record_launches
    from .model import Electra

    cfg = ElectraConfig.preset(preset)
    B, T, P = cfg.batch_size, cfg.max_seq_length, cfg.max_predictions
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else nullcontext()
    with FakeTensorMode():
        model = Electra(cfg, objective=objective, backend="triton").train()
        ids = torch.zeros(B, T, dtype=torch.int64)
        slots = torch.zeros(B, P, dtype=torch.int64)
        batch = dict(input_ids=ids, token_type_ids=ids, attention_mask=torch.ones(B, T, dtype=torch.bool),
                     masked_positions=slots, masked_ids=slots, masked_weights=torch.ones(B, P),
                     original_ids=ids)
        with record_launches() as launches:
            with autocast:
                out = model(**batch)
            out.loss.backward()
    return launches


def launch_cost(launch, mode: str, gpu: dict = H100) -> dict:
    """One record: op, kernel, preset-free fields (programs, FLOPs, bytes, implied microseconds)."""
    programs = 1
    for g in launch.grid or (1,):
        programs *= g
    if launch.flops is not None:
        flops, nbytes, model = launch.flops, launch.bytes, "tiles" if launch.fn is not None else "library"
    else:  # a streaming kernel without a cost function: its tensors once
        nbytes = sum(torch.Size(shape).numel() * torch.empty((), dtype=launch.dtypes[k]).element_size()
                     for k, shape in launch.shapes.items())
        h = launch.shapes.get("h_ptr")
        flops, model = (2 * torch.Size(h).numel() if h is not None else 0), "streaming"
    if launch.fn is None:  # a library call: assume it fills the card
        efficiency = 1.0
    else:
        waves = -(-programs // gpu["sms"])
        efficiency = programs / (waves * gpu["sms"])
    tensor_cores = mode == "bf16" or launch.fn is None and any(d != torch.float32 for d in launch.dtypes.values())
    peak = gpu["peak"]["bf16" if tensor_cores else "fp32"]
    compute_us, memory_us = flops / (peak * efficiency) * 1e6, nbytes / gpu["bandwidth"] * 1e6
    return dict(op=launch.op, kernel=launch.kernel, programs=programs, flops=float(flops), bytes=float(nbytes),
                implied_us=max(compute_us, memory_us), compute_us=compute_us, memory_us=memory_us,
                bound="compute" if compute_us >= memory_us else "memory", model=model)


def head_ideal(cfg: ElectraConfig, mode: str, gpu: dict = H100) -> dict:
    """The generator head's ideal time: minimal FLOPs (6 M V E) and bytes (see the module docstring)."""
    M, V, E = cfg.batch_size * cfg.max_predictions, cfg.vocab_size, cfg.embedding_size
    elt = 2 if mode == "bf16" else 4
    flops = 6 * M * V * E
    nbytes = 3 * (M * E * elt + V * E * elt + V * 4) + M * E * elt + V * E * 4 + V * 4 + M * 8 * 3
    peak = gpu["peak"][mode]
    return dict(M=M, V=V, E=E, flops=float(flops), bytes=float(nbytes),
                ideal_us=max(flops / peak, nbytes / gpu["bandwidth"]) * 1e6)


def cost_table(presets=COST_PRESETS, modes=COST_MODES, gpu: dict = H100) -> list[dict]:
    """One record per kernel launch of one training step at each preset and mode (see the docstring)."""
    records = []
    for preset in presets:
        for mode in modes:
            for launch in step_launches(preset, mode):
                if launch.kernel != "reference":
                    records.append(dict(preset=preset, dtype=mode, **launch_cost(launch, mode, gpu)))
    return records


def format_cost_table(records: list[dict], gpu: dict = H100) -> str:
    lines = [f"Cost model: implied time per launch of one training step on an {gpu['name']} "
             f"({gpu['sms']} SMs, {gpu['bandwidth'] / 1e12:g} TB/s, {gpu['peak']['bf16'] / 1e12:g} TFLOP/s bf16, "
             f"{gpu['peak']['fp32'] / 1e12:g} fp32) = max(FLOPs / (peak x wave efficiency), bytes / bandwidth)",
             f"  {'preset':<6} {'dtype':<5} {'op':<28} {'kernel':<34} {'programs':>9} {'GFLOP':>9} {'MB':>9} "
             f"{'implied us':>11} {'bound':>8}"]
    for r in records:
        lines.append(f"  {r['preset']:<6} {r['dtype']:<5} {r['op']:<28} {r['kernel'].strip('_'):<34} {r['programs']:>9} "
                     f"{r['flops'] / 1e9:>9.2f} {r['bytes'] / 1e6:>9.1f} {r['implied_us']:>11.1f} {r['bound']:>8}")
    lines += ["", "Generator head (forward + backward) against its ideal (minimal FLOPs 6 M V E, minimal bytes):",
              f"  {'preset':<6} {'dtype':<5} {'M':>7} {'E':>5} {'launches':>8} {'GFLOP':>9} {'implied us':>11} "
              f"{'ideal us':>9} {'ratio':>6} {'ideal for its FLOPs':>20} {'ratio':>6}"]
    for preset, mode in dict.fromkeys((r["preset"], r["dtype"]) for r in records):
        head = [r for r in records if r["preset"] == preset and r["dtype"] == mode
                and r["op"].startswith("generator_head")]
        if not head:
            continue
        ideal = head_ideal(ElectraConfig.preset(preset), mode, gpu)
        implied = sum(r["implied_us"] for r in head)
        flops = sum(r["flops"] for r in head)
        own = max(flops / gpu["peak"][mode], ideal["bytes"] / gpu["bandwidth"]) * 1e6
        lines.append(f"  {preset:<6} {mode:<5} {ideal['M']:>7} {ideal['E']:>5} {len(head):>8} {flops / 1e9:>9.1f} "
                     f"{implied:>11.1f} {ideal['ideal_us']:>9.1f} {implied / ideal['ideal_us']:>6.2f} {own:>20.1f} "
                     f"{implied / own:>6.2f}")
    return "\n".join(lines)


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m electra_fast.proxies",
                                description="CPU-side proxies (see the module docstring); "
                                            "normally run through python -m electra_fast.bench --proxies")
    p.add_argument("--preset", default="small")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--fused-only", action="store_true", help="only the fused kernel count (needs TRITON_INTERPRET=1)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--cost", action="store_true", help="only the cost model table (seconds)")
    p.add_argument("--cost-json", metavar="PATH", help="write the cost model's records (one per launch) here")
    args = p.parse_args(argv)
    if args.cost or args.cost_json:
        records = cost_table()
        print(format_cost_table(records))
        if args.cost_json:
            Path(args.cost_json).write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
        if args.cost:
            return 0
    if args.fused_only:
        res = {"kernels": {"fused": step_kernels("fused", args.preset, args.batch_size).as_dict()}}
    else:
        res = run(args.preset, args.batch_size, compile=not args.no_compile, log=print)
        print(format_report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
