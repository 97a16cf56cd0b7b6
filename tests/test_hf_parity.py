"""HuggingFace parity: random HF ELECTRA weights loaded with load_hf give HF's logits, and
save_hf -> load_hf is exact. transformers is only used here, as the independent reference."""

import warnings

import pytest
import torch

from electra_fast import ElectraConfig
from electra_fast.baselines import hf_configs
from electra_fast.hf import load_hf, save_hf
from electra_fast.model import Electra

transformers = pytest.importorskip("transformers")


def _hf_pair(cfg: ElectraConfig):
    d_cfg, g_cfg = hf_configs(cfg)
    disc = transformers.ElectraForPreTraining(d_cfg).eval()
    gen = transformers.ElectraForMaskedLM(g_cfg).eval()
    with torch.no_grad():  # break symmetry: HF inits biases and LayerNorms to constants
        for p in list(disc.parameters()) + list(gen.parameters()):
            p.add_(torch.randn_like(p) * 0.02)
        # ELECTRA shares embeddings between the two networks, as released checkpoints do
        gen.electra.embeddings.load_state_dict(disc.electra.embeddings.state_dict())
    return disc, gen


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    # the small preset's widths; 3 layers instead of 12 keep the CPU test quick
    cfg = ElectraConfig.preset("small", num_layers=3, generator_num_layers=3)
    disc, gen = _hf_pair(cfg)
    root = tmp_path_factory.mktemp("hf")
    disc.save_pretrained(root / "disc")
    gen.save_pretrained(root / "gen")
    return cfg, disc, gen, root


def _inputs(cfg, B=3, T=37):
    ids = torch.randint(5, cfg.vocab_size, (B, T))
    types = torch.randint(0, 2, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 30:] = 0  # one padded row
    return ids, types, mask


def test_load_hf_matches_transformers_logits(small_pair):
    cfg, disc, gen, root = small_pair
    ours = load_hf(root / "disc", root / "gen").eval()
    assert ours.config.hidden_size == cfg.hidden_size and ours.config.generator_hidden_size == 64
    ids, types, mask = _inputs(cfg)
    with torch.no_grad():
        want_d = disc(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
        want_g = gen(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
        got_d = ours.discriminator_logits(ids, types, mask)
        got_g = ours.generator_logits(ids, types, mask)
    real = mask.bool()
    assert (got_d - want_d)[real].abs().max().item() <= 1e-5
    assert (got_g - want_g)[real].abs().max().item() <= 1e-5


@pytest.mark.parametrize("tie", [True, False], ids=["tied-encoders", "own-encoders"])
def test_save_hf_load_hf_round_trip_is_exact(tmp_path, tie):
    cfg = ElectraConfig.preset("tiny", vocab_size=211, tie_encoders=tie)
    model = Electra(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_hf(model, tmp_path)
    back = load_hf(tmp_path / "discriminator", tmp_path / "generator")
    assert back.config.tie_encoders == tie and (back.generator is back.discriminator) == tie
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_exported_folders_load_in_transformers(tmp_path):
    cfg = ElectraConfig.preset("tiny", vocab_size=157, num_layers=2, generator_num_layers=2)
    model = Electra(cfg).eval()
    save_hf(model, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        disc = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "discriminator").eval()
        gen = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "generator").eval()
    ids, types, mask = _inputs(cfg, T=23)
    with torch.no_grad():
        torch.testing.assert_close(disc(ids, attention_mask=mask, token_type_ids=types).logits[mask.bool()],
                                   model.discriminator_logits(ids, types, mask)[mask.bool()], rtol=0, atol=1e-5)
        torch.testing.assert_close(gen(ids, attention_mask=mask, token_type_ids=types).logits[mask.bool()],
                                   model.generator_logits(ids, types, mask)[mask.bool()], rtol=0, atol=1e-5)
