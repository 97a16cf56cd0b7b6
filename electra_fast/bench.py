"""One command that says how fast a pre-training step is: ``python -m electra_fast.bench``.

On a CUDA GPU it first runs the GPU op tests (the op test files' CUDA cases and the ops at the
real shapes of a Small and a Base step: bf16, V = 30522, M = the masked rows), then times one
pre-training step (forward + backward + clipping + AdamW) at the small, tiny and base presets for
four implementations on the same batch and precision (bf16 autocast): ``ours`` (the step exactly
as ``python -m electra_fast.train`` runs it on a GPU), ``ours-eager``, ``hf-eager`` and
``hf-compiled`` (``electra_fast.harness`` describes each),
and prints one table: tokens/s (real tokens only), step ms, peak memory, MFU, speed-up vs
hf-eager and vs hf-compiled, with the card's name and the torch / triton versions (``--json PATH``
saves it). Without a GPU it says so and runs the CPU variants (tiny preset, batch 8 x 128, fp32,
one thread; the compiled rows with --cpu-compile) into the same table. ``--proxies`` prints the
CPU-side proxies instead (``electra_fast.proxies``).

MFU = model FLOPs per token x tokens/s / the card's peak dense bf16 FLOP/s, with
``ElectraConfig.flops_per_token``: 6 x (multiply-adds per token of every weight matmul, the attention
score and value products, and the LM head at the masked rows only). It is the same number for
every implementation of a preset, so HF's full-sequence logits count as waste, not as work.

The steps and their shapes come from the step harness (``electra_fast.harness``), which also backs
``benchmarks/test_bench_step.py`` and the proxies; this module is the command and its table.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shlex
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from . import proxies
from .cli import ArgumentParser
from .config import FLOPS_PER_TOKEN_FORMULA, PRESETS, ElectraConfig
from .harness import (
    COMPILED_IMPLS,
    CPU_COMPILE_SKIP,
    CPU_SHAPE,
    GPU_SHAPES,
    IMPL_LABELS,
    IMPLS,
    build_step,
    environment,
    time_step,
    torch_threads,
)

# the op tests (their CUDA cases), then the ops at the real shapes of a Small and a Base step
GPU_OP_TESTS = ("tests/test_generator_head.py", "tests/test_rtd_loss.py", "tests/test_replace_tokens.py",
                "tests/test_gpu_shapes.py")
# Peak dense bf16 tensor-core FLOP/s (vendor data sheets), matched in order on the device name.
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
                   ("A100", 312e12))
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- peaks
def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a known card (H100 SXM / PCIe / NVL, H200, A100), else None."""
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


def run_gpu_tests(timeout_s: float = 240) -> dict:
    """``pytest -q`` the op test files (their CUDA cases run here); pass/fail and the summary."""
    files = [f for f in GPU_OP_TESTS if (REPO / f).is_file()]
    if not files:
        return {"status": "skipped", "summary": f"tests/ not found under {REPO}"}
    t0 = time.time()
    try:
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                             cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "FAIL", "summary": f"timed out after {timeout_s:.0f} s", "files": files}
    lines = [ln for ln in res.stdout.strip().splitlines() if ln.strip()]
    return {"status": "PASS" if res.returncode == 0 else "FAIL", "summary": lines[-1] if lines else "",
            "seconds": round(time.time() - t0, 1), "files": files}


# ----------------------------------------------------------------------------- the table
def run_benchmarks(cases: list[tuple[str, int, int]], impls: tuple[str, ...], device: torch.device, *,
                   warmup: int, iters: int, budget_s: float = float("inf"),
                   cpu_compile: bool = False, log=print) -> list[dict]:
    """Time every (preset, batch, seq) x impl; one row per pair, speed-ups filled per config."""
    t_start = time.time()
    rows = []
    peak = peak_flops(torch.cuda.get_device_name()) if device.type == "cuda" else None
    for preset, B, T in cases:
        cfg = ElectraConfig.preset(preset)
        flops_tok = cfg.flops_per_token(T)
        for impl in impls:
            row = {"config": f"{preset} {B}x{T}", "preset": preset, "batch_size": B, "seq_len": T,
                   "impl": impl, "implementation": IMPL_LABELS[impl], "tokens_per_s": None, "step_ms": None,
                   "peak_mem_mib": None, "mfu": None, "vs_hf": None, "vs_compiled": None, "status": "ok"}
            rows.append(row)
            if impl in COMPILED_IMPLS and device.type == "cpu" and not cpu_compile:
                row["status"] = "skipped: " + CPU_COMPILE_SKIP
                continue
            if time.time() - t_start > budget_s:
                row["status"] = f"skipped: time budget ({budget_s:.0f} s) spent"
                continue
            log(f"  {row['config']:<14} {row['implementation']:<15} ...", end="", flush=True)
            t0 = time.time()
            try:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                step = build_step(impl, cfg, B, T, device)
                row.update(time_step(step, warmup, iters))
                if peak is not None:
                    row["mfu"] = flops_tok * row["tokens_per_s"] / peak
            except torch.cuda.OutOfMemoryError:
                row["status"] = "OOM"
            except Exception as e:  # a broken row must not hide the others
                row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            finally:
                step = None
                if impl in COMPILED_IMPLS:
                    torch._dynamo.reset()  # drop the compiled graphs with the model
                gc.collect()
            log(f" {time.time() - t0:5.1f} s  {row['status']}")
        ref = {r["impl"]: r["tokens_per_s"] for r in rows if r["config"] == f"{preset} {B}x{T}"}
        for r in rows:
            if r["config"] == f"{preset} {B}x{T}" and r["tokens_per_s"]:
                r["vs_hf"] = r["tokens_per_s"] / ref["hf-eager"] if ref.get("hf-eager") else None
                r["vs_compiled"] = r["tokens_per_s"] / ref["hf-compiled"] if ref.get("hf-compiled") else None
    return rows


def _fmt(x, spec: str, suffix: str = "") -> str:
    return "n/a" if x is None else format(x, spec) + suffix


def format_table(rows: list[dict]) -> str:
    """One line per row: config, implementation, tokens/s, step ms, peak MiB, MFU, speed-ups."""
    head = (f"{'config':<14} {'implementation':<15} {'tokens/s':>11} {'step ms':>9} {'peak MiB':>9} "
            f"{'MFU':>6} {'vs hf-eager':>11} {'vs hf-compiled':>14}")
    out = [head, "-" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            out.append(f"{r['config']:<14} {r['implementation']:<15} {r['status']}")
            continue
        mfu = None if r["mfu"] is None else 100 * r["mfu"]
        out.append(f"{r['config']:<14} {r['implementation']:<15} {r['tokens_per_s']:>11,.0f} {r['step_ms']:>9.1f} "
                   f"{_fmt(r['peak_mem_mib'], ',.0f'):>9} {_fmt(mfu, '.1f', '%'):>6} "
                   f"{_fmt(r['vs_hf'], '.2f', 'x'):>11} {_fmt(r['vs_compiled'], '.2f', 'x'):>14}")
    return "\n".join(out)


FORMULA = "MFU = model FLOPs/token x tokens/s / peak dense bf16 FLOP/s; " + FLOPS_PER_TOKEN_FORMULA


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m electra_fast.bench",
        description="Time one ELECTRA pre-training step (forward + backward + clipping + AdamW) as train runs "
                    "it (ours: compiled + CUDA graphs; ours-eager) and HF transformers (hf-eager, hf-compiled), "
                    "on the same batch and precision, and print one table: tokens/s, step ms, peak memory, model "
                    "FLOPs utilisation (MFU) and speed-ups vs hf-eager and hf-compiled. On a CUDA GPU it first "
                    "runs the GPU op tests; the presets run at " + ", ".join(
                        f"{k} {b}x{t}" for k, (b, t) in GPU_SHAPES.items()) + " with bf16 autocast. Without a "
                    "GPU it runs the CPU variants (tiny preset, batch 8 x 128, fp32).",
        epilog=FORMULA + ". Peak FLOP/s known for H100 SXM/PCIe/NVL, H200, A100 (else MFU n/a). "
               "--proxies: FLOPs per step and kernels per step (eager aten ops + Triton launches under "
               "TRITON_INTERPRET=1, and torch.compile's kernels), see electra_fast.proxies.",
    )
    p.add_argument("--json", metavar="PATH", help="also save the table (and machine, versions) as JSON")
    p.add_argument("--preset", nargs="+", choices=list(GPU_SHAPES), default=None,
                   help="presets to time on a GPU (default: all; --quick: small). Without a GPU only tiny runs")
    p.add_argument("--impl", nargs="+", choices=IMPLS, default=None, help="implementations (default: all)")
    p.add_argument("--batch-size", type=int, default=None, help="override the batch size of every preset")
    p.add_argument("--quick", action="store_true",
                   help="fewer steps; GPU: small preset only; CPU: ours-eager and hf-eager only")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 GPU, 1 CPU)")
    p.add_argument("--iters", type=int, default=None, help="timed steps (default 20 GPU, 5 CPU; --quick 10 / 3)")
    p.add_argument("--no-tests", action="store_true", help="skip the GPU op tests")
    p.add_argument("--budget", type=float, default=380.0,
                   help="seconds for the whole command (tests included); rows that would start later are "
                        "skipped and say so (default 380: with the last row (a compile: up to ~90 s) the run fits in 8 minutes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    p.add_argument("--cpu-compile", action="store_true", help="also time torch.compile on the CPU (slow)")
    p.add_argument("--proxies", action="store_true",
                   help="print the CPU-side proxies (FLOPs and kernels per step) instead of timing")
    p.add_argument("--proxy-preset", default="small", choices=list(PRESETS),
                   help="preset whose shapes the proxies use (default small)")
    p.add_argument("--no-compile", action="store_true", help="with --proxies: skip the torch.compile kernel counts")
    p.add_argument("--cost-json", metavar="PATH",
                   help="with --proxies: write the cost model's records here (one per kernel launch of a step at "
                        "every preset: op, kernel, preset, programs, flops, bytes, implied_us)")
    p.add_argument("--transfer", action="store_true",
                   help="CPU, ~1 hour on 2 cores: pre-train ELECTRA (the default run's recipe) and the MLM baseline at "
                        "equal model FLOPs, fine-tune them and a random-init control on offline text tasks "
                        "(electra_fast.transfer) with several seeds, next to a bag of words; print the table")
    p.add_argument("--transfer-out", metavar="DIR", default="runs/transfer",
                   help="with --transfer: pre-training runs, fine-tuning folders and transfer.json (default "
                        "runs/transfer; finished pre-training runs of the same command are reused)")
    p.add_argument("--transfer-seeds", metavar="S1,S2,...", default="1,2,3",
                   help="with --transfer: fine-tuning seeds (default 1,2,3)")
    p.add_argument("--transfer-epochs", type=int, default=10,
                   help="with --transfer: fine-tuning epochs over each task's training examples (default 10; "
                        "the best dev epoch's test accuracy counts)")
    p.add_argument("--transfer-sizes", metavar="TRAIN,DEV,TEST", default=None,
                   help="with --transfer: examples per task and split, at most (default 8000,500,2000; a task "
                        "with fewer takes all it has)")
    p.add_argument("--transfer-tasks", metavar="T1,T2,...", default="topic,order,next,words",
                   help="with --transfer: tasks (default all: topic, order, next, words)")
    p.add_argument("--transfer-jobs", type=int, default=None,
                   help="with --transfer: fine-tuning processes, each with cores / jobs torch threads "
                        "(default: min(4, cores))")
    p.add_argument("--transfer-pretrain-seed", type=int, default=None,
                   help="with --transfer: seed of both pre-training runs (default 1234, the default run's); another "
                        "seed is another trajectory (initialisation, data order, masks, held-out documents), to see "
                        "how much of a result is the draw (give it its own --transfer-out to keep both)")
    p.add_argument("--transfer-train-args", metavar="ARGS", default="",
                   help="with --transfer: extra `python -m electra_fast.train` flags for both pre-training runs, "
                        "e.g. \"--steps 1200 --seq-len 64\" (default: none, the default run)")
    args = p.parse_args(argv)
    if args.transfer:
        return _transfer(p, args)
    for flag, v, lo in (("--iters", args.iters, 1), ("--warmup", args.warmup, 0), ("--batch-size", args.batch_size, 1),
                        ("--threads", args.threads, 1)):
        if v is not None and v < lo:
            p.error(f"{flag} must be an integer >= {lo}, got {v}")
    if not (math.isfinite(args.budget) and args.budget > 0):
        p.error(f"--budget must be a finite number of seconds > 0, got {args.budget}")

    if args.proxies:
        records = proxies.cost_table()
        print(proxies.format_cost_table(records) + "\n", flush=True)
        if args.cost_json:
            Path(args.cost_json).write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
        res = proxies.run(args.proxy_preset, compile=not args.no_compile, log=print)
        print(proxies.format_report(res))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        return 0

    t_start = time.time()
    cuda = torch.cuda.is_available()
    env = environment()
    tests = None
    if cuda:
        device = torch.device("cuda")
        presets = args.preset or (["small"] if args.quick else ["small", "tiny", "base"])  # the headline first
        cases = [(k, args.batch_size or GPU_SHAPES[k][0], GPU_SHAPES[k][1]) for k in presets]
        impls = tuple(args.impl or IMPLS)
        warmup = args.warmup if args.warmup is not None else 3
        iters = args.iters or (10 if args.quick else 20)
        print(f"electra_fast bench on {env['device']} | torch {env['torch']} | triton {env['triton']} | bf16 autocast")
        if not args.no_tests:
            print("GPU op tests: " + " ".join(GPU_OP_TESTS) + " ...", flush=True)
            tests = run_gpu_tests(timeout_s=min(240.0, args.budget / 2))
            print(f"GPU op tests: {tests['status']} ({tests['summary']})")
        threads = nullcontext()
    else:
        device = torch.device("cpu")
        print("no CUDA GPU found: running the CPU variants")
        if args.preset and args.preset != ["tiny"]:
            print(f"  (--preset {' '.join(args.preset)} needs a GPU; the CPU variants use tiny)")
        preset, B, T = CPU_SHAPE
        cases = [(preset, args.batch_size or B, T)]
        impls = tuple(args.impl or (("ours-eager", "hf-eager") if args.quick else IMPLS))
        warmup = args.warmup if args.warmup is not None else 1
        iters = args.iters or (3 if args.quick else 5)
        threads = torch_threads(args.threads)
        print(f"electra_fast bench on the CPU ({env['cpu_count']} cores, {args.threads} torch thread(s)) | torch "
              f"{env['torch']} | triton {env['triton']} | fp32 | our ops dispatch to their PyTorch references on "
              "the CPU (Triton needs a GPU)")
    with threads:
        env["torch_threads"] = torch.get_num_threads()
        rows = run_benchmarks(cases, impls, device, warmup=warmup, iters=iters,
                              budget_s=args.budget - (time.time() - t_start),
                              cpu_compile=args.cpu_compile)
    print()
    print(format_table(rows))
    print(FORMULA + (f"; peak {peak_flops(env['device']) / 1e12:.0f} TFLOP/s" if cuda and peak_flops(env["device"])
                     else "; peak n/a on this device"))
    print(f"{'CUDA events' if cuda else 'perf_counter, median'} over {iters} steps after {warmup} warm-up; "
          f"vs hf-eager / vs hf-compiled: tokens/s ratios within a config")
    if args.json:
        record = {"environment": env, "command": "python -m electra_fast.bench " + " ".join(sys.argv[1:] if argv is None
                                                                                          else argv),
                  "tests": tests, "formula": FORMULA, "warmup": warmup, "iters": iters, "rows": rows}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"saved {args.json}")
    return 0


def _transfer(p: ArgumentParser, args) -> int:
    from . import transfer
    from .finetune import FinetuneError, parse_seeds

    try:
        seeds = parse_seeds(args.transfer_seeds)
    except FinetuneError as e:
        p.error(str(e).replace("--seeds", "--transfer-seeds"))
    train_args = shlex.split(args.transfer_train_args)
    bad = sorted({a for a in train_args if a in ("--out", "--objective", "--seed", "--resume", "--overwrite")})
    if bad:
        p.error(f"--transfer-train-args may not set {', '.join(bad)} (the benchmark sets them)")
    env = environment()
    task_names = tuple(t for t in args.transfer_tasks.split(",") if t)
    unknown = sorted(set(task_names) - set(transfer.TASK_NAMES))
    if unknown or not task_names:
        p.error(f"--transfer-tasks: unknown task(s) {', '.join(unknown) or '(none given)'}; choose from "
                f"{', '.join(transfer.TASK_NAMES)}")
    jobs = args.transfer_jobs if args.transfer_jobs is not None else max(1, min(4, os.cpu_count() or 1))
    if jobs < 1:
        p.error(f"--transfer-jobs must be an integer >= 1, got {jobs}")
    if args.transfer_epochs < 1:
        p.error(f"--transfer-epochs must be an integer >= 1, got {args.transfer_epochs}")
    sizes = transfer.DEFAULT_SIZES
    if args.transfer_sizes is not None:
        try:
            sizes = tuple(int(x) for x in args.transfer_sizes.split(","))
        except ValueError:
            sizes = ()
        if len(sizes) != 3 or min(sizes) < 1:
            p.error(f"--transfer-sizes takes three integers >= 1, TRAIN,DEV,TEST (default "
                    f"{','.join(map(str, transfer.DEFAULT_SIZES))}), got {args.transfer_sizes!r}")
    pretrain_seed = transfer.DEFAULT_PRETRAIN_SEED if args.transfer_pretrain_seed is None else args.transfer_pretrain_seed
    results = transfer.run(Path(args.transfer_out), seeds, train_args, pretrain_seed=pretrain_seed,
                           epochs=args.transfer_epochs, task_names=task_names, workers=jobs, sizes=sizes)
    print()
    print(transfer.format_table(results))
    print(f"test accuracy of the best dev epoch, mean +- std [min-max] over fine-tuning seeds {args.transfer_seeds} "
          f"(pre-training seed {results['pretrain_seed']}); "
          f"{results['seconds']} s on {env['device']} ({env['cpu_count']} cores); "
          f"{Path(args.transfer_out) / 'transfer.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
