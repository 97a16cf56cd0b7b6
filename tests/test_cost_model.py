"""The cost model (electra_fast.proxies.cost_table): FLOPs and bytes per launch from grids and tiles,
and the implied H100 time, checked against hand counts."""

import torch
from electra_fast.kernels import generator_head as gh
from electra_fast.kernels.launches import L2_RESIDENT_BYTES, Launch, hbm_bytes

from electra_fast import proxies
from electra_fast.config import ElectraConfig


def test_forward_cost_is_the_hand_count_for_exact_tiles():
    cfg = dict(BLOCK_M=64, BLOCK_V=128, BLOCK_E=32)
    M, V, E = 128, 512, 32  # whole tiles: no padding, every operand L2-resident
    flops, nbytes = gh._cost("fwd", M, V, E, 2, 4, cfg, splits=2)
    assert flops == 2 * M * V * E
    assert nbytes == M * E * 2 + V * E * 2 + V * 4 + M * 8 + 2 * M * 24


def test_operands_over_the_l2_size_count_every_load():
    assert hbm_bytes(1000, 5000) == 1000
    big = L2_RESIDENT_BYTES + 1
    assert hbm_bytes(big, 7 * big) == 7 * big


def test_implied_time_is_the_slower_of_compute_and_memory_with_idle_sms():
    fn = gh._generator_head_fwd_kernel
    launch = Launch(op="x", kernel="k", dtypes={}, shapes={}, grid=(66, 1), fn=fn, flops=8e9, bytes=3e6)
    r = proxies.launch_cost(launch, "bf16")
    # 66 programs on 132 SMs: half the card, so compute takes twice 8e9 / 800e12 s = 20 us; memory 1 us
    assert r["programs"] == 66 and abs(r["implied_us"] - 20.0) < 1e-9 and r["bound"] == "compute"
    launch = Launch(op="x", kernel="k", dtypes={}, shapes={}, grid=(264,), fn=fn, flops=8e9, bytes=3e9)
    r = proxies.launch_cost(launch, "bf16")
    assert abs(r["implied_us"] - 1000.0) < 1e-9 and r["bound"] == "memory"


def test_every_head_launch_of_a_step_has_a_cost_and_at_least_the_minimal_flops():
    cfg = ElectraConfig.preset("tiny")
    records = [r for r in proxies.cost_table(presets=("tiny",), modes=("bf16",)) if r["op"].startswith("generator_head")]
    assert {r["op"] for r in records} >= {"generator_head.fwd", "generator_head.fwd_combine",
                                         "generator_head.bwd_dh", "generator_head.bwd_dw"}
    M, V, E = cfg.batch_size * cfg.max_predictions, cfg.vocab_size, cfg.embedding_size
    assert sum(r["flops"] for r in records) >= 6 * M * V * E
    fwd = next(r for r in records if r["op"] == "generator_head.fwd")
    assert fwd["programs"] >= 2 * proxies.H100["sms"]  # the vocabulary split fills the card
    ideal = proxies.head_ideal(cfg, "bf16")
    assert sum(r["implied_us"] for r in records) >= ideal["ideal_us"] > 0
    assert torch.isfinite(torch.tensor([r["implied_us"] for r in records])).all()
