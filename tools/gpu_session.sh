#!/usr/bin/env bash
# Everything this project can only measure on a GPU, in one call of at most ~10 minutes, most
# valuable first, each step time-boxed so that one failure leaves the others running:
#
#   1. the machine: GPU, driver, Python, torch, triton, transformers        -> env.txt
#   2. install without a network (the C++ masking extension built in place)  -> session.log
#   3. the ops at the real shapes of a Small and a Base step, bf16 tensor-core variants included,
#      against the reference (tests/test_gpu_shapes.py)                      -> session.log
#   4. python -m electra_fast.bench --no-tests: the training step as train runs it (ours,
#      ours-eager, hf-eager, hf-compiled) at tiny, Small and Base          -> bench.json
#   5. the default command, `python -m electra_fast.train`, for 300 steps on the GPU: compiled step,
#      CUDA graphs, prefetch, asynchronous checkpoints, evaluation, end to end  -> session.log
#   6. the fused ops against eager and torch.compile at Small and Base, bf16  -> ops.json
# (The op test files' other CUDA cases, which bench runs before its table without --no-tests, are
# left to a second call: compiling their many variants can take minutes.)
#
# Usage, from the repository root on a machine with a CUDA GPU:
#     bash tools/gpu_session.sh [OUT_DIR]        (default: $OUT if set, else ./gpu_out)
# Worst case ~9.8 minutes (the device tool's limit per command is 10): call it with timeout_s=600.
# Then copy the tables into benchmarks/RESULTS.md with the card's name and the versions in env.txt.
# Budgets (seconds) can be overridden: INSTALL_S, SHAPES_S, BENCH_S, TRAIN_S, OPS_S. Needs what the GPU machines here
# have installed: torch, triton, pybind11, setuptools, pytest, pytest-benchmark, transformers.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_out}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
log="$out/session.log"
: > "$log"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log it, never stop the session
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $* (limit ${limit} s, $(date -u +%T))" | tee -a "$log"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s$([ "$rc" = 124 ] && echo ' (time limit)')" | tee -a "$log"
}

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_session.sh: no CUDA GPU visible to torch here; nothing to measure" | tee -a "$log"
    exit 2
fi

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    python - <<'PY'
import platform, torch, triton
print("python", platform.python_version(), "| torch", torch.__version__, "| triton", triton.__version__,
      "| cuda", torch.version.cuda, "|", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
try:
    import transformers
    print("transformers", transformers.__version__)
except ImportError:
    print("transformers: not installed (the hf rows of the bench will be missing)")
PY
} > "$out/env.txt" 2>&1
tee -a "$log" < "$out/env.txt"

step install "${INSTALL_S:-45}" python -m pip install -q --no-deps --no-build-isolation -e .
step shapes "${SHAPES_S:-90}" python -m pytest -q -p no:cacheprovider tests/test_gpu_shapes.py
bench_s=${BENCH_S:-250}  # bench plans its rows to end 40 s before its step's limit
step bench "$bench_s" python -m electra_fast.bench --no-tests --json "$out/bench.json" --budget $((bench_s - 40))
run_dir=$(mktemp -d)  # outside OUT_DIR: only a few files come back from a device call
step train "${TRAIN_S:-110}" python -m electra_fast.train --steps 300 --log-every 50 --eval-every 150 \
    --save-every 100 --no-progress --out "$run_dir/run"
# the generator head first (file order; issue 16's measurement), then the other two ops
step ops "${OPS_S:-90}" python -m pytest -q -p no:cacheprovider benchmarks/test_bench_ops.py \
    -k "not cpu" --benchmark-max-time=0.5 --benchmark-json "$out/ops.json"
echo "=== done: $(ls "$out" | tr '\n' ' ')" | tee -a "$log"
