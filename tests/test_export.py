"""python -m electra_fast.export: the folders load offline with transformers and give our logits
(fp32, eval mode, max abs diff <= 1e-5); the exported discriminator is also a fine-tuning input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from electra_fast import checkpoint
from electra_fast.config import ElectraConfig
from electra_fast.export import main
from electra_fast.finetune import load_pretrained
from electra_fast.model import Electra
from electra_fast.recipe import SequenceClassifier
from electra_fast.tokenizer import load_tokenizer

transformers = pytest.importorskip("transformers")

WORDS = "the a cat dog red blue runs sits big small tree house car green fast slow happy sad old new good".split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def make_run(root: Path, *, vocab_delta: int = 0, objective: str = "electra", **overrides) -> tuple[Path, Electra]:
    """A run folder with a random tiny model whose LayerNorms and biases are perturbed too (the
    default init makes them constants, which would hide a swapped weight)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "words.txt").write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    tok = load_tokenizer(root / "words.txt")
    cfg = ElectraConfig.preset("tiny", vocab_size=tok.vocab_size + vocab_delta, num_layers=2,
                               generator_num_layers=2, **overrides)
    model = Electra(cfg, objective)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    run = root / "run"
    tok.save(run / "vocab")
    checkpoint.save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(), "objective": objective,
                                "vocab_hash": tok.vocab_hash(), "step": 7}, run, 7)
    return run, model.eval()


def _inputs(vocab_size: int, B: int = 3, T: int = 17):
    ids = torch.randint(5, vocab_size, (B, T))
    ids[:, 0] = 2  # [CLS]
    types = (torch.arange(T) >= 9).long().expand(B, T).contiguous()
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 12:] = 0
    return ids, types, mask


# embedding_size 64 != hidden 128 exercises embeddings_project; gdes folds the delta into the
# discriminator's word embeddings
@pytest.mark.parametrize("overrides", [{}, {"embedding_size": 64, "gdes": True}], ids=["tiny", "project+gdes"])
def test_export_loads_in_transformers_with_our_logits(tmp_path, capsys, overrides):
    run, ours = make_run(tmp_path, **overrides)
    if ours.disc_embedding_delta is not None:  # make the saved GDES delta non-zero
        with torch.no_grad():
            ours.disc_embedding_delta.normal_(std=0.05)
        state = checkpoint.load_checkpoint(checkpoint.checkpoint_path(run, 7))
        state["model"] = ours.state_dict()
        checkpoint.save_checkpoint(state, run, 7)
    assert main(["--checkpoint", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert "wrote" in capsys.readouterr().out
    disc_dir, gen_dir = tmp_path / "hf" / "discriminator", tmp_path / "hf" / "generator"
    for d in (disc_dir, gen_dir):
        assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json"} <= {p.name for p in d.iterdir()}

    ids, types, mask = _inputs(ours.config.vocab_size)
    disc = transformers.ElectraForPreTraining.from_pretrained(disc_dir).eval()
    gen = transformers.ElectraForMaskedLM.from_pretrained(gen_dir).eval()
    clf, info = transformers.ElectraForSequenceClassification.from_pretrained(
        disc_dir, num_labels=3, output_loading_info=True)
    clf.eval()
    assert all(k.startswith("classifier.") for k in info["missing_keys"]), info["missing_keys"]
    assert not info["mismatched_keys"] and not info["error_msgs"]
    with torch.no_grad():
        kw = dict(input_ids=ids, token_type_ids=types, attention_mask=mask)
        real = mask.bool()
        d_ref = ours.discriminator_logits(ids, types, mask)
        assert (disc(**kw).logits - d_ref)[real].abs().max() <= 1e-5
        g_ref = ours.generator_logits(ids, types, mask)
        assert (gen(**kw).logits - g_ref)[real].abs().max() <= 1e-5
        h_ref = ours.discriminator_hidden(ids, types, mask)
        assert (clf.electra(**kw).last_hidden_state - h_ref)[real].abs().max() <= 1e-5

    # the tokenizer files: transformers encodes a pair as our fine-tuning does
    tok = load_tokenizer(run / "vocab")
    hf_tok = transformers.AutoTokenizer.from_pretrained(disc_dir)
    enc = hf_tok("the good cat", "a red dog")
    a, b = tok.encode("the good cat"), tok.encode("a red dog")
    assert enc["input_ids"] == [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]
    assert enc["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)


def test_exported_discriminator_is_a_finetuning_input(tmp_path):
    """load_pretrained on the HF folder rebuilds the same encoder (and vocabulary) as the run."""
    run, ours = make_run(tmp_path, embedding_size=64)
    assert main(["--checkpoint", str(run), "--out", str(tmp_path / "hf")]) == 0
    from_hf = load_pretrained(tmp_path / "hf" / "discriminator", log=lambda m: None)
    from_run = load_pretrained(run, log=lambda m: None)
    assert from_hf.tokenizer.vocab_hash() == from_run.tokenizer.vocab_hash()
    ids, types, mask = _inputs(ours.config.vocab_size)
    torch.manual_seed(0)
    a = SequenceClassifier.from_electra(from_hf.model, 2).eval()
    torch.manual_seed(0)
    b = SequenceClassifier.from_electra(from_run.model, 2).eval()
    with torch.no_grad():
        assert (a(ids, types, mask) - b(ids, types, mask)).abs().max() <= 1e-6


@pytest.mark.parametrize("case", ["missing folder", "no checkpoint", "vocab size", "mlm objective"])
def test_export_bad_input_one_error_line(tmp_path, capsys, case):
    if case == "missing folder":
        run, words = tmp_path / "nope", ["nope", "no such folder"]
    elif case == "no checkpoint":
        run, words = tmp_path / "empty", ["no checkpoints"]
        run.mkdir()
    elif case == "vocab size":
        run, _ = make_run(tmp_path, vocab_delta=2)
        words = ["28-token", "26 tokens"]
    else:
        run, _ = make_run(tmp_path, objective="mlm")
        words = ["'mlm'", "no discriminator"]
    rc = main(["--checkpoint", str(run), "--out", str(tmp_path / "out")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc != 0 and len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w in err[0], (w, err[0])
    assert not (tmp_path / "out" / "discriminator").exists()
