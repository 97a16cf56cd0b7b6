"""Compile every Triton kernel ahead of time for sm_80 and sm_90a and report its resource use.

    python tools/compile_kernels.py            # all kernels, both architectures
    python tools/compile_kernels.py -k rtd     # kernels whose name contains "rtd"
    python tools/compile_kernels.py --arch 90  # one architecture
    python tools/compile_kernels.py -j 1       # no worker processes

Needs no GPU (DESIGN.md §3): ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``
runs the whole pipeline down to a cubin with the ptxas shipped in the triton wheel. The
interpreter (TRITON_INTERPRET=1) accepts kernels a GPU compile rejects (tl.dot tiles < 16,
unsupported casts), so CI runs this script to catch them.

Each kernel module lists the configurations it launches at ELECTRA-Small and Base shapes in
``aot_specs()``. Registers and local memory come from ``cuobjdump --dump-resource-usage`` on the
cubin (local memory is what Triton reports as ``n_spills``), shared memory from the compile
metadata (Triton allocates it dynamically). Exit status 1 on a compile error, on spills, or on
shared memory beyond the architecture's limit.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

# Must hold before triton is imported: under the interpreter @triton.jit gives functions that
# cannot be compiled. The FP-fusion default (on) is pinned to silence triton 3.9's warning.
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

KERNEL_MODULES = ("electra_fast.kernels.generator_head", "electra_fast.kernels.replace_tokens",
                  "electra_fast.kernels.rtd_loss")
# optional while it is being written; a module that exists but fails to import is an error
OPTIONAL_MODULES = ("electra_fast.kernels.generator_head",)
ARCHS = (80, 90)  # A100 (sm_80), H100 (sm_90a: triton adds the "a" from capability 90 on)
# most dynamic shared memory one block may use (CUDA programming guide, compute capabilities)
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def collect_specs(modules=KERNEL_MODULES) -> tuple[list[dict], list[str]]:
    """All aot_specs() of the kernel modules, and notes on optional modules that are absent."""
    specs, notes = [], []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if name in OPTIONAL_MODULES and e.name == name:
                notes.append(f"{name}: not present, skipped")
                continue
            raise
        if not hasattr(module, "aot_specs") and name in OPTIONAL_MODULES:
            notes.append(f"{name}: has no aot_specs() yet, skipped")
            continue
        for index, spec in enumerate(module.aot_specs()):
            specs.append(dict(spec, module=name, index=index))
    return specs, notes


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


def compile_spec(spec: dict, arch: int) -> dict:
    """Compile one spec for sm_<arch>; returns its row of the report."""
    import triton
    from triton.backends.compiler import GPUTarget

    fn = spec["fn"]
    if not isinstance(fn, triton.JITFunction):
        raise RuntimeError("the kernel was built for the interpreter: unset TRITON_INTERPRET before importing triton")
    src = triton.compiler.ASTSource(fn=fn, signature=spec["signature"], constexprs=spec.get("constexprs", {}))
    options = {"num_warps": spec.get("num_warps", 4), "num_stages": spec.get("num_stages", 3)}
    t0 = time.perf_counter()
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    seconds = time.perf_counter() - t0
    usage = resource_usage(kernel.asm["cubin"])
    shared = max(int(kernel.metadata.shared), usage.get("shared", 0))
    return {"registers": usage["reg"], "shared": shared, "spills": usage.get("local", 0),
            "seconds": seconds}


def _compile_job(module: str, index: int, arch: int) -> dict:
    """Worker: compile spec ``index`` of ``module`` (specs hold functions: re-collected here)."""
    spec = importlib.import_module(module).aot_specs()[index]
    return compile_spec(spec, arch)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, action="append", choices=ARCHS,
                        help="compute capability (repeatable); default: 80 and 90")
    parser.add_argument("-k", dest="pattern", default="", help="only kernels whose name contains this")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    parser.add_argument("-j", dest="jobs", type=int, default=min(8, cores),
                        help="parallel compile processes (default: CPU cores, at most 8)")
    args = parser.parse_args(argv)
    archs = args.arch or list(ARCHS)

    import triton

    specs, notes = collect_specs()
    jobs = [(spec, arch) for spec in specs if args.pattern in spec["name"] for arch in archs]
    if not jobs:
        print(f"no kernel matches {args.pattern!r}", file=sys.stderr)
        return 1

    # ptxas and LLVM are single-threaded: one process per job. Results are printed in order.
    if args.jobs > 1:
        pool = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
        futures = [pool.submit(_compile_job, spec["module"], spec["index"], arch) for spec, arch in jobs]
    else:
        pool, futures = None, [None] * len(jobs)

    header = f"{'kernel':<40} {'arch':<7} {'warps':>5} {'registers':>9} {'shared (B)':>10} {'spills (B)':>10} {'compile':>8}"
    arch_names = ", ".join(f"sm_{a}" + ("a" if a >= 90 else "") for a in archs)
    print(f"triton {triton.__version__}: {len(jobs)} kernel compilations ({arch_names})")
    print(header)
    print("-" * len(header))
    failures = []
    for (spec, arch), future in zip(jobs, futures):
        arch_name = f"sm_{arch}" + ("a" if arch >= 90 else "")
        try:
            row = future.result() if future is not None else compile_spec(spec, arch)
        except Exception as e:  # report every kernel, then fail
            msg = str(e).strip().splitlines()
            failures.append(f"{spec['name']} {arch_name}: {type(e).__name__}: {msg[-1] if msg else ''}")
            print(f"{spec['name']:<40} {arch_name:<7} {'COMPILE ERROR':>48}")
            continue
        problems = []
        if row["spills"] > 0:
            problems.append(f"{row['spills']} bytes of register spills")
        if row["shared"] > SHARED_LIMIT[arch]:
            problems.append(f"{row['shared']} bytes of shared memory > {SHARED_LIMIT[arch]}")
        failures += [f"{spec['name']} {arch_name}: {p}" for p in problems]
        print(f"{spec['name']:<40} {arch_name:<7} {spec.get('num_warps', 4):>5} {row['registers']:>9} "
              f"{row['shared']:>10} {row['spills']:>10} {row['seconds']:>7.1f}s" + ("  <-- FAIL" if problems else ""))
    if pool is not None:
        pool.shutdown()
    for note in notes:
        print(f"note: {note}")
    if failures:
        print(f"\n{len(failures)} failure(s):", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    print(f"\nall {len(jobs)} compiled without spills")
    return 0


if __name__ == "__main__":
    sys.exit(main())
