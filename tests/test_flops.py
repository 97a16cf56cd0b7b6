"""FLOPs of one small-preset training step: the LM head at the masked rows only must make our
step at least 15% cheaper than HF's (full-sequence generator logits). docs/ARCHITECTURE.md, section 3."""

import pytest
import torch

from electra_fast import ElectraConfig
from electra_fast.baselines import HFElectra, random_masked_batch, step_flops
from electra_fast.model import Electra

pytest.importorskip("transformers")


def test_small_preset_step_flops_at_least_15_percent_below_hf():
    cfg = ElectraConfig.preset("small", dropout=0.0, attention_dropout=0.0)
    batch = random_masked_batch(cfg, batch_size=2)  # FLOPs per sequence do not depend on the batch
    torch.manual_seed(0)
    ours = step_flops(Electra(cfg), batch)
    hf = step_flops(HFElectra(cfg), batch)
    print(f"\nsmall preset, per sequence of 128: ours {ours / 2 / 1e9:.2f} GFLOP, HF {hf / 2 / 1e9:.2f} GFLOP, "
          f"ours/HF = {ours / hf:.3f}")
    assert ours <= 0.85 * hf, (ours, hf)
    # sanity against the analytic count: 6 * params-in-matmuls * tokens + attention, within 20%
    H, G, E, L, T, V, P = 256, 64, 128, 12, 128, cfg.vocab_size, cfg.max_predictions
    dense = L * (4 * H * H + 2 * H * 1024) + L * (4 * G * G + 2 * G * 256) + E * H + E * G + H * H + H
    attn = L * 2 * T * (H + G)  # QK^T and AV per token
    want = 2 * 2 * 3 * ((dense + attn) * T + P * (G * E + E * V))  # 2 sequences x 2 FLOP/MAC x (fwd + bwd)
    assert abs(ours - want) / want < 0.2, (ours, want)
