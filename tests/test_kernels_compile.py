"""The kernel variants a training step launches compile for sm_80 and sm_90a, without register spills
and within each architecture's shared memory per block.

The interpreter tests (TRITON_INTERPRET=1) accept kernels a GPU compile rejects; this runs
``tools/compile_kernels.py`` in a fresh process without the interpreter, which needs no GPU. The
script takes its variants from one fake (shape-only) training step per preset and precision.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from electra_fast.config import ElectraConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "compile_kernels.py"
ROW = re.compile(r"^(\S+)\s+(bf16|fp32|bf16\+fp32)\s+(\S+)\s+(sm_80|sm_90a)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+"
                 r"[\d.]+s", re.M)
PRESETS = {"tiny", "small", "base", "large"}
LIMIT = {"sm_80": 163 * 1024, "sm_90a": 227 * 1024}
HEAD = ("generator_head_fwd", "generator_head_combine", "generator_head_bwd_dh", "generator_head_bwd_dw")
CHUNKED_HEAD = ("generator_head_rows",)  # Base and Large: the chunked head (cuBLAS logits + one rows kernel)
HEAD_PRESETS = {"tiny", "small"}
RTD = ("rtd_fwd", "rtd_bwd")


def _tool():
    spec = importlib.util.spec_from_file_location("compile_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compile_report(tmp_path_factory):
    pytest.importorskip("triton")
    path = tmp_path_factory.mktemp("compile") / "variants.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    records = json.loads(path.read_text())["variants"] if path.exists() else []
    return proc, records


def test_every_variant_compiles_without_spills_within_shared_memory(compile_report):
    proc, records = compile_report
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert records, out
    for r in records:
        where = f"{r['kernel']} [{r['dtype']}, {r['preset']}] {r['arch']}"
        assert r["spills"] == 0, f"{where} spills {r['spills']} bytes"
        assert 0 < r["shared_bytes"] <= LIMIT[r["arch"]], f"{where}: {r['shared_bytes']} bytes of shared memory"
        assert 0 < r["registers"] <= 255, f"{where}: {r['registers']} registers"
    # the printed table has the same rows as the JSON
    rows = ROW.findall(proc.stdout)
    assert sorted((n, a) for n, _d, _p, a, *_ in rows) == sorted((r["kernel"], r["arch"]) for r in records), out


def test_variants_cover_every_preset_and_precision(compile_report):
    _, records = compile_report
    by_arch = {}
    for r in records:
        by_arch.setdefault((r["kernel"], r["preset"], r["dtype"], json.dumps(r["constexprs"])), set()).add(r["arch"])
    assert all(archs == {"sm_80", "sm_90a"} for archs in by_arch.values()), "a variant lacks one architecture"
    for kernels, want in ((HEAD, HEAD_PRESETS), (CHUNKED_HEAD, PRESETS - HEAD_PRESETS),
                          (RTD + ("rtd_logits_fwd",), PRESETS)):
        for kernel in kernels:
            for dtype in ("bf16", "fp32"):
                presets = {p for r in records if r["kernel"] == kernel and dtype in r["dtypes"] for p in r["presets"]}
                assert presets == want, f"{kernel} {dtype}: presets {presets}"
    # the MLM objective (`--objective mlm`) runs the head without sampling: its own variants, compiled too
    for kernel, want in (("generator_head_fwd", HEAD_PRESETS), ("generator_head_combine", HEAD_PRESETS),
                         ("generator_head_rows", PRESETS - HEAD_PRESETS)):
        for dtype in ("bf16", "fp32"):
            for objective, sample in (("electra", True), ("mlm", False)):
                presets = {u["preset"] for r in records if r["kernel"] == kernel and r["constexprs"]["SAMPLE"] is sample
                           for u in r["uses"] if u["dtype"] == dtype and u["objective"] == objective}
                assert presets == want, f"{kernel} {dtype} {objective}: presets {presets}"
    presets = {p for r in records if r["kernel"] == "replace_tokens" for p in r["presets"]}
    assert presets == PRESETS
    # deduplicated: no two records of one architecture describe the same compilation
    keys = [(r["kernel"], r["arch"], json.dumps(r["signature"]), json.dumps(r["constexprs"]), r["num_warps"],
             r["num_stages"]) for r in records]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("mode", ["bf16", "fp32"])
def test_recorded_step_is_the_gpu_step(mode):
    """One fake tiny step, recorded in this process: the head's operands arrive in the step's
    precision, with the GPU's dot choice (tensor cores for bf16), at the preset's shapes."""
    cfg = ElectraConfig.preset("tiny")
    launches = [launch for launch in _tool().record_step("tiny", mode) if launch.fn is not None]  # Triton only
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    ops = [launch.op for launch in launches]
    assert sorted(set(ops)) == ["generator_head.bwd_dh", "generator_head.bwd_dw", "generator_head.fwd",
                                "generator_head.fwd_combine", "generator_head.fwd_mean", "replace_tokens",
                                "rtd_loss.bwd", "rtd_loss.fwd", "rtd_loss.fwd_mean", "rtd_loss_from_logits.fwd",
                                "rtd_loss_from_logits.fwd_mean"]
    assert all(ops.count(op) == 1 for op in ops), ops
    M = cfg.batch_size * cfg.max_predictions
    for launch in launches:
        if launch.op.endswith("_mean"):  # the loss's mean (kernels/loss_mean.py): fp32 sums, whatever the step's dtype
            assert all(dt in (torch.float32, torch.int64) for dt in launch.dtypes.values()), launch
            continue
        if launch.op.startswith("generator_head") and launch.op != "generator_head.fwd_combine":
            assert launch.dtypes["H"] == dtype and launch.dtypes["W"] == dtype, launch
            assert launch.dtypes["B"] == torch.float32  # the bias stays fp32 and is added in fp32
            assert launch.constexprs["DOT_F32"] is (mode == "fp32"), launch
            assert launch.shapes["H"] == (M, cfg.embedding_size)
            assert launch.shapes["W"] == (cfg.vocab_size, cfg.embedding_size)
            assert min(launch.constexprs[k] for k in ("BLOCK_M", "BLOCK_V", "BLOCK_E")) >= 16  # tl.dot tiles
        if launch.op.startswith("rtd_loss."):
            assert launch.dtypes["h_ptr"] == dtype and launch.dtypes["w_ptr"] == dtype, launch
            assert launch.shapes["h_ptr"] == (cfg.batch_size * cfg.max_seq_length, cfg.hidden_size)
        if launch.op == "replace_tokens":
            assert launch.shapes["pos_ptr"] == (cfg.batch_size, cfg.max_predictions)
    fwd = next(launch for launch in launches if launch.op == "generator_head.fwd")
    splits = fwd.shapes["PART_M"][0]  # the vocabulary splits: one partial state per split and row
    assert fwd.grid == (-(-M // fwd.constexprs["BLOCK_M"]), splits)
    assert fwd.grid[0] * splits >= min(2 * 132, -(-cfg.vocab_size // fwd.constexprs["BLOCK_V"]))
    assert fwd.signature["H"] == ("*bf16" if mode == "bf16" else "*fp32") and fwd.signature["M"] == "i32"
