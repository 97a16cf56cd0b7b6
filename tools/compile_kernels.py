"""Compile the Triton kernel variants one training step launches, for sm_80 and sm_90a, and report
their resource use.

    python tools/compile_kernels.py                  # every preset, bf16 autocast and fp32, both archs
    python tools/compile_kernels.py -k rtd           # kernels whose name contains "rtd"
    python tools/compile_kernels.py --preset small   # one preset (repeatable)
    python tools/compile_kernels.py --arch 90        # one architecture
    python tools/compile_kernels.py --json out.json  # also write one record per variant and arch
    python tools/compile_kernels.py -j 1             # no worker processes

The list of variants comes from the model, not from hand-kept shapes: for each preset (tiny,
small, base, large: ``ElectraConfig.preset(name)``, batch = batch_size, sequence = max_seq_length,
masked rows = batch x max_predictions) it runs one forward and backward of ``Electra`` on the Triton
backend under ``FakeTensorMode`` (shapes only: no memory, no compute) and records every launch the
ops plan (``electra_fast.kernels.launches``): kernel, argument dtypes, constexprs (block sizes),
warps and stages. It does so twice: under bf16 autocast (the default CUDA configuration) and in
fp32; and for both objectives, ELECTRA (the default) and the MLM baseline (``--objective mlm``, whose
generator head draws no samples: its own kernel variants). The fake tensors live on the CPU, recorded
under ``torch.autocast("cpu", torch.bfloat16)``: CUDA autocast is off on a machine without CUDA, and
the ops apply one autocast rule at their boundary for both device types, so the same dtypes reach the
kernels. No interpreter runs, so each
launch records the GPU's own choices (tensor cores for bf16, exact fp32 dots for fp32). The
library op the model does not call, ``rtd_loss_from_logits``, is recorded at each preset's
(batch, sequence) logits. Identical variants compile once, listing every preset that uses them.

Compiling needs no GPU: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` runs
the whole pipeline down to a cubin with the ptxas shipped in the triton wheel. Registers and local
memory (spills) come from ``cuobjdump --dump-resource-usage`` on the cubin, shared memory from the
compile metadata (Triton allocates it dynamically). Exit status 1 on a compile error, on spills, or
on shared memory beyond the architecture's per-block limit.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

PRESETS = ("tiny", "small", "base", "large")
MODES = ("bf16", "fp32")  # bf16: the default CUDA step (bf16 autocast); fp32: no autocast
OBJECTIVES = ("electra", "mlm")  # what `python -m electra_fast.train --objective` trains
ARCHS = (80, 90)  # A100 (sm_80), H100 (sm_90a: triton adds the "a" from capability 90 on)
# most dynamic shared memory one block may use (CUDA programming guide, compute capabilities)
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


# ----------------------------------------------------------------------------- what a step launches
def record_step(preset: str, mode: str, objective: str = "electra") -> list:
    """The launches of one training step (forward + backward) of ``Electra`` at ``preset`` in ``mode``
    for ``objective`` (``electra_fast.proxies.step_launches``), plus, for ELECTRA, ``rtd_loss_from_logits``
    at the preset's (batch, sequence) logits, which the library exports but the model does not call;
    shapes only."""
    import torch
    from electra_fast.kernels.launches import record_launches
    from torch._subclasses.fake_tensor import FakeTensorMode

    from electra_fast import ops
    from electra_fast.config import ElectraConfig
    from electra_fast.proxies import step_launches

    launches = step_launches(preset, mode, objective)
    if objective != "electra":
        return launches
    cfg = ElectraConfig.preset(preset)
    with FakeTensorMode(), record_launches() as extra:
        logits = torch.zeros(cfg.batch_size, cfg.max_seq_length, requires_grad=True,
                             dtype=torch.bfloat16 if mode == "bf16" else torch.float32)
        labels = torch.zeros(cfg.batch_size, cfg.max_seq_length, dtype=torch.bool)
        ops.rtd_loss_from_logits(logits, labels, labels, backend="triton").backward()
    return [*launches, *extra]


def collect_variants(presets=PRESETS, modes=MODES, objectives=OBJECTIVES) -> list[dict]:
    """Distinct kernel variants over the presets, modes and objectives, in order of first launch. Each:
    name, module and fn_name (to re-import the kernel in a worker), signature, constexprs, num_warps,
    num_stages, and uses: [{preset, dtype, objective, op, grid}]."""
    variants: dict[tuple, dict] = {}
    for preset, mode, objective in ((p, m, o) for p in presets for o in objectives for m in modes):
        for launch in record_step(preset, mode, objective):
            if launch.kernel == "reference":
                raise RuntimeError(f"{launch.op} ran its reference, not a Triton kernel, at {preset}/{mode}/{objective}")
            if launch.fn is None:  # library work (record_extern: a cuBLAS matmul): nothing to compile
                continue
            fn = launch.fn.fn
            key = (fn.__module__, fn.__name__, tuple(launch.signature.items()),
                   tuple(launch.constexprs.items()), launch.num_warps, launch.num_stages)
            v = variants.setdefault(key, dict(
                name=fn.__name__.strip("_").removesuffix("_kernel"), module=fn.__module__,
                fn_name=fn.__name__, signature=dict(launch.signature), constexprs=dict(launch.constexprs),
                num_warps=launch.num_warps, num_stages=launch.num_stages, uses=[]))
            use = dict(preset=preset, dtype=mode, objective=objective, op=launch.op, grid=list(launch.grid))
            if use not in v["uses"]:
                v["uses"].append(use)
    for v in variants.values():
        v["presets"] = list(dict.fromkeys(u["preset"] for u in v["uses"]))
        v["dtypes"] = [m for m in modes if any(u["dtype"] == m for u in v["uses"])]  # bf16 before fp32
        v["objectives"] = [o for o in objectives if any(u["objective"] == o for u in v["uses"])]
    return list(variants.values())


# ----------------------------------------------------------------------------- compiling
def _cuobjdump() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if os.path.exists(path):
        return path
    found = shutil.which("cuobjdump")
    if found is None:
        raise RuntimeError(f"cuobjdump not found (looked in {os.path.dirname(path)} and PATH)")
    return found


def resource_usage(cubin: bytes) -> dict:
    """Registers, static shared and local (spill) bytes of the single kernel in ``cubin``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", path], check=True,
                             capture_output=True, text=True).stdout
    fields = dict(re.findall(r"\b(REG|SHARED|LOCAL|STACK):(\d+)", out.split("Function", 1)[-1]))
    if "REG" not in fields:
        raise RuntimeError(f"could not read cuobjdump's resource usage:\n{out}")
    return {k.lower(): int(v) for k, v in fields.items()}


def compile_variant(variant: dict, arch: int) -> dict:
    """Compile one variant for sm_<arch>; returns registers, shared and spill bytes, seconds."""
    import triton
    from triton.backends.compiler import GPUTarget

    fn = getattr(importlib.import_module(variant["module"]), variant["fn_name"])
    if not isinstance(fn, triton.JITFunction):
        raise RuntimeError("the kernel was built for the interpreter: unset TRITON_INTERPRET before importing triton")
    signature = {name: variant["signature"].get(name, "constexpr") for name in fn.arg_names}
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=variant["constexprs"])
    options = {"num_warps": variant["num_warps"], "num_stages": variant["num_stages"]}
    t0 = time.perf_counter()
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    seconds = time.perf_counter() - t0
    usage = resource_usage(kernel.asm["cubin"])
    shared = max(int(kernel.metadata.shared), usage.get("shared", 0))
    return {"registers": usage["reg"], "shared": shared, "spills": usage.get("local", 0), "seconds": seconds}


def _arch_name(arch: int) -> str:
    return f"sm_{arch}" + ("a" if arch >= 90 else "")


def _config(constexprs: dict) -> str:
    return " ".join(f"{k.replace('BLOCK_', 'b')}={int(v) if isinstance(v, bool) else v}" for k, v in constexprs.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, action="append", choices=ARCHS,
                        help="compute capability (repeatable); default: 80 and 90")
    parser.add_argument("--preset", action="append", choices=PRESETS, help="preset (repeatable); default: all")
    parser.add_argument("-k", dest="pattern", default="", help="only kernels whose name contains this")
    parser.add_argument("--json", dest="json_path", help="write one record per variant and architecture here")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    parser.add_argument("-j", dest="jobs", type=int, default=min(8, cores),
                        help="parallel compile processes (default: CPU cores, at most 8)")
    args = parser.parse_args(argv)
    archs = args.arch or list(ARCHS)

    # Before triton is imported (here and in the spawned workers, which inherit the environment):
    # under the interpreter @triton.jit gives functions that cannot be compiled. The FP-fusion
    # default (on) is pinned to silence triton 3.9's warning.
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") == "1":
        print("triton was imported under TRITON_INTERPRET=1: run this script in a fresh process", file=sys.stderr)
        return 1
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton

    t0 = time.perf_counter()
    variants = [v for v in collect_variants(args.preset or PRESETS) if args.pattern in v["name"]]
    record_seconds = time.perf_counter() - t0
    jobs = [(v, arch) for v in variants for arch in archs]
    if not jobs:
        print(f"no kernel matches {args.pattern!r}", file=sys.stderr)
        return 1

    # ptxas and LLVM are single-threaded: one process per job. Results are printed in order.
    payload = lambda v: {k: v[k] for k in ("module", "fn_name", "signature", "constexprs", "num_warps", "num_stages")}
    if args.jobs > 1:
        pool = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
        futures = [pool.submit(compile_variant, payload(v), arch) for v, arch in jobs]
    else:
        pool, futures = None, [None] * len(jobs)

    header = (f"{'kernel':<22} {'dtype':<9} {'presets':<22} {'arch':<7} {'warps':>5} {'stages':>6} {'registers':>9} "
              f"{'shared (B)':>10} {'spills (B)':>10} {'compile':>8}  constexprs")
    print(f"triton {triton.__version__}: {len(variants)} kernel variants launched by one training step "
          f"(recorded in {record_seconds:.1f}s), {len(jobs)} compilations ({', '.join(map(_arch_name, archs))})")
    print(header)
    print("-" * len(header))
    failures, records = [], []
    for (v, arch), future in zip(jobs, futures):
        arch_name = _arch_name(arch)
        dtype, presets = "+".join(v["dtypes"]), ",".join(v["presets"])
        label = f"{v['name']:<22} {dtype:<9} {presets:<22} {arch_name:<7}"
        try:
            row = future.result() if future is not None else compile_variant(payload(v), arch)
        except Exception as e:  # report every kernel, then fail
            msg = str(e).strip().splitlines()
            failures.append(f"{v['name']} [{dtype}, {presets}] {arch_name}: {type(e).__name__}: {msg[-1] if msg else ''}")
            print(f"{label} {'COMPILE ERROR':>55}  {_config(v['constexprs'])}")
            continue
        problems = []
        if row["spills"] > 0:
            problems.append(f"{row['spills']} bytes of register spills")
        if row["shared"] > SHARED_LIMIT[arch]:
            problems.append(f"{row['shared']} bytes of shared memory > {SHARED_LIMIT[arch]}")
        failures += [f"{v['name']} [{dtype}, {presets}] {arch_name}: {p}" for p in problems]
        print(f"{label} {v['num_warps']:>5} {v['num_stages']:>6} {row['registers']:>9} {row['shared']:>10} "
              f"{row['spills']:>10} {row['seconds']:>7.1f}s  {_config(v['constexprs'])}"
              + ("  <-- FAIL" if problems else ""))
        records.append(dict(kernel=v["name"], preset=presets, presets=v["presets"], dtype=dtype, dtypes=v["dtypes"],
                            objectives=v["objectives"], arch=arch_name, registers=row["registers"], shared_bytes=row["shared"],
                            spills=row["spills"], shared_limit=SHARED_LIMIT[arch], num_warps=v["num_warps"],
                            num_stages=v["num_stages"], constexprs=v["constexprs"], signature=v["signature"],
                            uses=v["uses"], compile_seconds=round(row["seconds"], 2)))
    if pool is not None:
        pool.shutdown()
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(dict(triton=triton.__version__, variants=records), f, indent=1)
    if failures:
        print(f"\n{len(failures)} failure(s):", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    print(f"\nall {len(jobs)} compiled without spills, shared memory within each architecture's limit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
