"""train --init-from: continue pre-training a published ELECTRA model (HuggingFace pair, a
discriminator alone, or one of our runs) with its sizes, its weights exactly, and its vocabulary."""

import json
from pathlib import Path

import pytest
import torch
from train_helpers import SMALL_VOCAB, WORDS, _corpus

from electra_fast.checkpoint import list_checkpoints, load_checkpoint
from electra_fast.hf import save_hf
from electra_fast.train import build_parser, given_flags, main, setup, validate_args

transformers = pytest.importorskip("transformers")
ARGS = [*SMALL_VOCAB, "--no-tensorboard"]  # SMALL without --vocab-size: the vocabulary is the model's


def _published(folder: Path) -> Path:
    """A tiny 'published' ELECTRA pair as transformers writes it: discriminator/ and generator/,
    each with config.json, model.safetensors and the tokenizer files of one shared vocab.txt."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + sorted(set(WORDS)) + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list(".,")
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    common = dict(vocab_size=len(vocab), embedding_size=16, max_position_embeddings=64, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    disc = transformers.ElectraForPreTraining(transformers.ElectraConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **common))
    gen = transformers.ElectraForMaskedLM(transformers.ElectraConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=1, intermediate_size=32, **common))
    gen.electra.embeddings.load_state_dict(disc.electra.embeddings.state_dict())  # ELECTRA shares them
    tok = transformers.ElectraTokenizer(str(folder / "vocab.txt"))
    for name, m in (("discriminator", disc), ("generator", gen)):
        m.save_pretrained(folder / name)
        tok.save_pretrained(folder / name)
    return folder


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("init")
    return _published(tmp / "pub"), _corpus(tmp / "corpus", seed=8)


def _setup(argv):
    args = build_parser().parse_args(argv)
    validate_args(args, given_flags(argv))
    return setup(args)


def test_weights_after_setup_export_to_the_published_tensors_exactly(published, tmp_path):
    pub, corpus = published
    run = _setup(["--data", str(corpus), "--out", str(tmp_path / "run"), "--init-from", str(pub), *ARGS,
                  "--steps", "1"])
    try:  # zero steps trained: the model as the run starts it
        assert (run.cfg.hidden_size, run.cfg.generator_hidden_size, run.cfg.num_layers) == (32, 16, 2)
        assert run.cfg.tie_encoders is False  # the tiny preset ties; the published model does not
        save_hf(run.model, tmp_path / "exp", tokenizer=run.tokenizer)
        opt = run.optimizer.state_dict()  # a fresh optimizer: no steps, zero moments
        assert opt["step_count"].item() == 0 and all(not t.any() for t in opt["exp_avg"] + opt["exp_avg_sq"])
    finally:
        run.close()
        run.checkpointer.wait_quietly()
    for part in ("discriminator", "generator"):
        theirs, ours = _tensors(pub / part), _tensors(tmp_path / "exp" / part)
        assert len(theirs) > 20
        for k, v in theirs.items():
            assert torch.equal(ours[k], v), f"{part}: {k}"
    # the corpus was tokenised with the published vocabulary, not one trained on it
    assert (tmp_path / "run" / "vocab" / "vocab.txt").read_text().split() == (pub / "vocab.txt").read_text().split()


def test_continued_run_trains_from_the_published_weights(published, tmp_path, capsys):
    pub, corpus = published
    run = tmp_path / "run"
    assert main(["--data", str(corpus), "--out", str(run), "--init-from", str(pub / "discriminator"),
                 str(pub / "generator"), *ARGS, "--steps", "3", "--lr", "1e-3", "--warmup", "1"]) == 0
    ck = load_checkpoint(list_checkpoints(run)[-1])
    assert ck["step"] == 3 and ck["config"]["hidden_size"] == 32 and ck["config"]["learning_rate"] == 1e-3
    assert ck["config"]["warmup_steps"] == 1
    first = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()][0]
    assert first["step"] == 1 and first["lr"] == pytest.approx(0.0)  # a fresh schedule: warmup from 0
    w = ck["model"]["discriminator.layers.0.ffn_in.weight"]
    assert not torch.equal(w, _tensors(pub / "discriminator")["electra.encoder.layer.0.intermediate.dense.weight"])

    # one of our runs as the source: its newest checkpoint's weights, exactly
    again = _setup(["--data", str(corpus), "--out", str(tmp_path / "again"), "--init-from", str(run), *ARGS,
                    "--steps", "1"])
    try:
        for k, v in again.model.state_dict().items():
            assert torch.equal(v, ck["model"][k]), k
    finally:
        again.close()
        again.checkpointer.wait_quietly()


def test_a_discriminator_alone_starts_a_fresh_generator_said_in_one_line(published, tmp_path, capsys):
    pub, corpus = published
    run = _setup(["--data", str(corpus), "--out", str(tmp_path / "run"), "--init-from", str(pub / "discriminator"),
                  "--preset", "small", *ARGS, "--steps", "1"])
    try:
        assert run.cfg.generator_hidden_size == 8  # small's generator is 1/4 of the discriminator (32)
        theirs = _tensors(pub / "discriminator")
        assert torch.equal(run.model.state_dict()["discriminator.layers.1.ln2.weight"],
                           theirs["electra.encoder.layer.1.output.LayerNorm.weight"])
    finally:
        run.close()
        run.checkpointer.wait_quietly()
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "fresh generator" in ln]
    assert len(lines) == 1 and "discriminator without a generator" in lines[0]


@pytest.mark.parametrize("extra, says", [
    (["--vocab", "{vocab}"], "is not the vocabulary of"),
    (["--vocab-size", "100"], "--vocab-size with --init-from"),
    (["--resume", "{out}"], "--init-from starts a new run"),
    (["--objective", "mlm"], "continues with --objective electra"),
])
def test_refused_in_one_line(published, tmp_path, capsys, extra, says):
    pub, corpus = published
    other = tmp_path / "other.txt"
    other.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    (tmp_path / "out").mkdir()
    extra = [e.format(vocab=other, out=tmp_path / "out") for e in extra]
    common = ["--init-from", str(pub)] if "--resume" in extra else [
        "--data", str(corpus), "--out", str(tmp_path / "out"), "--init-from", str(pub), *ARGS, "--steps", "1"]
    assert main([*common, *extra]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and says in err[0], err
    assert not any((tmp_path / "out").iterdir())  # refused before anything was written
