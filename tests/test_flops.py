"""FLOPs of a training step. The analytic count behind MFU (``ElectraConfig.flops_per_token``, the
only copy of the formula) must equal what torch's FLOP counter sees in our step, and the LM head at
the masked rows only must make our step at least 15% cheaper than HF's (full-sequence generator
logits). docs/ARCHITECTURE.md, section 3."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from electra_fast import ElectraConfig
from electra_fast.baselines import HFElectra, random_masked_batch
from electra_fast.model import Electra
from electra_fast.proxies import count_flops

B = 2  # FLOPs per sequence do not depend on the batch


def counted(model: torch.nn.Module, batch: dict) -> int:
    # SDPA's math backend: the counter has no formula for the CPU's fused attention kernel and would
    # leave attention out; the math path's batched matmuls are the same FLOPs.
    torch.manual_seed(0)
    with sdpa_kernel([SDPBackend.MATH]):
        return count_flops(model, batch)


@pytest.mark.parametrize("preset,seq_len", [("tiny", None), ("small", None), ("small", 64)])
def test_flops_per_token_formula_matches_the_flop_counter(preset, seq_len):
    cfg = ElectraConfig.preset(preset, dropout=0.0, attention_dropout=0.0)
    T = seq_len or cfg.max_seq_length
    batch = random_masked_batch(cfg, B, T)
    ours = counted(Electra(cfg, backend="reference"), batch)
    want = cfg.flops_per_token(T) * B * T
    # the counter does not see the discriminator's H -> 1 product (6 H FLOPs per token: the RTD
    # loss multiplies and sums rather than calling a matmul); everything else is counted exactly
    assert ours == pytest.approx(want - 6 * cfg.hidden_size * B * T, rel=1e-9), (ours, want)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_mlm_flops_per_token_matches_the_flop_counter(preset):
    # the BERT baseline (objective="mlm"): what equal-compute comparisons (bench --transfer) divide by
    cfg = ElectraConfig.preset(preset, dropout=0.0, attention_dropout=0.0)
    T = cfg.max_seq_length
    ours = counted(Electra(cfg, "mlm"), random_masked_batch(cfg, B, T))
    assert ours == pytest.approx(cfg.flops_per_token(T, objective="mlm") * B * T, rel=1e-9), ours
    assert cfg.flops_per_token(T, objective="mlm") < cfg.flops_per_token(T)
    with pytest.raises(ValueError, match="objective"):
        cfg.flops_per_token(T, objective="bert")


def test_small_preset_step_flops_at_least_15_percent_below_hf():
    pytest.importorskip("transformers")
    cfg = ElectraConfig.preset("small", dropout=0.0, attention_dropout=0.0)
    batch = random_masked_batch(cfg, B)
    ours = counted(Electra(cfg, backend="reference"), batch)
    hf = counted(HFElectra(cfg), batch)
    print(f"\nsmall preset, per sequence of 128: ours {ours / B / 1e9:.2f} GFLOP, HF {hf / B / 1e9:.2f} GFLOP, "
          f"ours/HF = {ours / hf:.3f}")
    assert ours <= 0.85 * hf, (ours, hf)
