"""Every CLI fed a table of bad arguments: each gives exit status 2, one line on stderr that names
the flag, no traceback, and no file anywhere under the test's folder changes (the folder tree is
hashed before and after). Each case is a row of docs/RELIABILITY.md."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import RESUME, SMALL, _corpus

from electra_fast import Electra, ElectraConfig, bench, export, finetune, predict, train
from electra_fast.checkpoint import save_checkpoint
from electra_fast.tokenizer import load_tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = "the cat sat on a mat dogs ran good bad".split()


def tree_digest(root: Path) -> dict[str, str]:
    """path -> sha256 of every file (and '<dir>' for every folder) under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained tiny run (2 steps), a corpus, a user's folder, GLUE-shaped data, HF folders."""
    root = tmp_path_factory.mktemp("fuzz")
    corpus = _corpus(root / "corpus", seed=11)
    run = root / "run"
    assert train.main(["--data", str(corpus), "--out", str(run), *SMALL, "--steps", "2", "--save-every", "1"]) == 0
    user = root / "user"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}\n')
    (user / "metrics.jsonl").write_text('{"step": 1}\n')
    (root / "a_file").write_text("not a folder\n")
    glue = root / "glue"
    glue.mkdir()
    for split in ("train", "dev"):
        (glue / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{w} {w}\t{i % 2}\n"
                                                                         for i, w in enumerate(WORDS)))
    hf = root / "hf"
    export.main(["--checkpoint", str(run), "--out", str(hf)])
    broken_cfg = root / "hf_broken_config"
    shutil.copytree(hf / "discriminator", broken_cfg)
    (broken_cfg / "config.json").write_text("{ not json")
    broken_w = root / "hf_broken_weights"
    shutil.copytree(hf / "discriminator", broken_w)
    (broken_w / "model.safetensors").write_bytes(b"\0" * 100)
    ft_out = root / "ft_done"  # a finished fine-tuning run
    assert finetune.main(["--checkpoint", str(run), "--task", "sst2", "--data-dir", str(glue), "--out", str(ft_out),
                          "--epochs", "1", "--no-progress", "--seq-len", "16"]) == 0
    moved = root / "other_corpus"
    _corpus(moved, seed=12)
    return root


def _cases(w: Path) -> dict[str, tuple]:
    corpus, run, user = w / "corpus", w / "run", w / "user"
    t = ["--data", str(corpus), "--out", str(w / "new"), "--no-progress"]
    ft = ["--checkpoint", str(run), "--task", "sst2", "--data-dir", str(w / "glue"), "--out", str(w / "ft"),
          "--no-progress"]
    return {  # name: (main, argv, words the one line must contain)
        "train --vocab-size 0": (train.main, [*t, "--vocab-size", "0"], ["--vocab-size", "[16,"]),
        "train --keep 0": (train.main, [*t, "--keep", "0"], ["--keep", ">= 1"]),
        "train --eval-every -1": (train.main, [*t, "--eval-every", "-1"], ["--eval-every", ">= 0"]),
        "train --eval-batches 0": (train.main, [*t, "--eval-batches", "0"], ["--eval-batches", ">= 1"]),
        "train --workers -1": (train.main, [*t, "--workers", "-1"], ["--workers", "[1,"]),
        "train --log-every 0": (train.main, [*t, "--log-every", "0"], ["--log-every", ">= 1"]),
        "train --warmup -1": (train.main, [*t, "--warmup", "-1"], ["--warmup", ">= 0"]),
        "train --lr nan": (train.main, [*t, "--lr", "nan"], ["--lr", "finite", "> 0"]),
        "train --lr inf": (train.main, [*t, "--lr", "inf"], ["--lr", "finite"]),
        "train --lr -1": (train.main, [*t, "--lr", "-1"], ["--lr", "> 0"]),
        "train --mask-prob 1.5": (train.main, [*t, "--mask-prob", "1.5"], ["--mask-prob", "(0, 1)"]),
        "train --disc-weight 0": (train.main, [*t, "--disc-weight", "0"], ["--disc-weight", "> 0"]),
        "train --save-every-minutes nan": (train.main, [*t, "--save-every-minutes", "nan"], ["--save-every-minutes"]),
        "train --seq-len 4096": (train.main, [*t, "--seq-len", "4096"], ["--seq-len", "position embeddings"]),
        "train --grad-accum 3 (batch 128)": (train.main, [*t, "--grad-accum", "3"], ["--grad-accum", "divisible"]),
        "train --steps abc": (train.main, [*t, "--steps", "abc"], ["--steps", "invalid int"]),
        "train --preset huge": (train.main, [*t, "--preset", "huge"], ["--preset", "tiny"]),
        "train --objective mlm --gdes": (train.main, [*t, "--objective", "mlm", "--gdes"], ["--gdes", "mlm"]),
        "train --vocab with --vocab-size": (train.main, [*t, "--vocab", str(run / "vocab"), "--vocab-size", "100"],
                                            ["--vocab-size", "--vocab"]),
        "train --out a file": (train.main, [*t, "--out", str(w / "a_file")], ["--out", "is a file"]),
        "train --out inside --data": (train.main, [*t, "--out", str(corpus / "run")], ["--out", "inside the --data"]),
        "train --out a run (forgot --resume)": (train.main, [*t, "--out", str(run)],
                                                ["already holds a training run", f"--resume {run}", "--overwrite"]),
        "train --out a user's folder": (train.main, [*t, "--out", str(user)], ["not empty", "--overwrite"]),
        "train --resume --lr": (train.main, ["--resume", str(run), "--lr", "0.1"], ["--lr", "cannot change"]),
        "train --resume --preset": (train.main, ["--resume", str(run), "--preset", "small"], ["--preset"]),
        "train --resume --batch-size": (train.main, ["--resume", str(run), "--batch-size", "8"], ["--batch-size"]),
        "train --resume --objective": (train.main, ["--resume", str(run), "--objective", "mlm"], ["--objective"]),
        "train --resume --out elsewhere": (train.main, ["--resume", str(run), "--out", str(w / "x")], ["--out"]),
        "train --resume --data other text": (train.main, ["--resume", str(run), "--steps", "3", "--data",
                                                          str(w / "other_corpus")], ["--data", "not the corpus"]),
        "train --resume --steps below": (train.main, ["--resume", str(run), "--steps", "1", *RESUME],
                                         ["--steps 1", "below step 2"]),
        "finetune --warmup-fraction nan": (finetune.main, [*ft, "--warmup-fraction", "nan"], ["--warmup-fraction"]),
        "finetune --warmup-fraction 5": (finetune.main, [*ft, "--warmup-fraction", "5"], ["--warmup-fraction", "[0, 1]"]),
        "finetune --weight-decay -1": (finetune.main, [*ft, "--weight-decay", "-1"], ["--weight-decay", ">= 0"]),
        "finetune --lr inf": (finetune.main, [*ft, "--lr", "inf"], ["--lr", "finite"]),
        "finetune --dropout 2": (finetune.main, [*ft, "--dropout", "2"], ["--dropout", "[0, 1)"]),
        "finetune --layer-decay 0": (finetune.main, [*ft, "--layer-decay", "0"], ["--layer-decay", "(0, 1]"]),
        "finetune --epochs 0": (finetune.main, [*ft, "--epochs", "0"], ["--epochs", ">= 1"]),
        "finetune --null-threshold nan": (finetune.main, [*ft, "--null-threshold", "nan"], ["--null-threshold"]),
        "finetune --out a finished run": (finetune.main, [*ft, "--out", str(w / "ft_done")],
                                          ["already holds a fine-tuning run", "--overwrite"]),
        "finetune --out a user's folder": (finetune.main, [*ft, "--out", str(user)], ["not empty", "--overwrite"]),
        "finetune --out the checkpoint": (finetune.main, [*ft, "--out", str(run)], ["--checkpoint folder"]),
        "finetune HF broken config.json": (finetune.main, [*ft[2:], "--checkpoint", str(w / "hf_broken_config")],
                                           ["config.json", "not valid JSON"]),
        "finetune HF broken weights": (finetune.main, [*ft[2:], "--checkpoint", str(w / "hf_broken_weights")],
                                       ["model.safetensors", "unreadable"]),
        "finetune --seeds abc": (finetune.main, [*ft, "--seeds", "abc"], ["--seeds", "distinct", "integers"]),
        "finetune --seeds 1,1": (finetune.main, [*ft, "--seeds", "1,1"], ["--seeds", "distinct"]),
        "finetune --seeds -1,2": (finetune.main, [*ft, "--seeds=-1,2"], ["--seeds", "[0, 4294967295]"]),
        "finetune --seeds ''": (finetune.main, [*ft, "--seeds", ""], ["--seeds"]),
        "finetune --seeds with --task probe": (finetune.main, [*ft[:2], "--task", "probe", "--seeds", "1,2"],
                                               ["--seeds", "probe"]),
        "finetune --predict-test --task tsv": (finetune.main, [*ft[:2], "--task", "tsv", "--predict-test",
                                                               "--data-dir", str(w / "glue")], ["--predict-test", "GLUE"]),
        "finetune --predict-test without test.tsv": (finetune.main, [*ft, "--predict-test"],
                                                     ["test.tsv", "no such file"]),
        "predict --batch-size 0": (predict.main, ["--model", str(w / "ft_done"), "--text", "x", "--batch-size", "0"],
                                   ["--batch-size", ">= 1"]),
        "predict --text ''": (predict.main, ["--model", str(w / "ft_done"), "--text", " "], ["--text", "empty"]),
        "predict --text and --input": (predict.main, ["--model", str(w / "ft_done"), "--text", "x", "--input",
                                                      str(w / "glue" / "dev.tsv")], ["--input", "--text"]),
        "predict --text-b with --input": (predict.main, ["--model", str(w / "ft_done"), "--input",
                                                         str(w / "glue" / "dev.tsv"), "--text-b", "y"], ["--text-b"]),
        "predict --out a folder": (predict.main, ["--model", str(w / "ft_done"), "--text", "x", "--out", str(user)],
                                   ["--out", "is a folder"]),
        "predict --model a training run": (predict.main, ["--model", str(run), "--text", "x"],
                                           ["--model", "pre-training run"]),
        "predict --model an export": (predict.main, ["--model", str(w / "hf"), "--text", "x"],
                                      ["--model", "not a fine-tuning output"]),
        "predict --input .txt with no column": (predict.main, ["--model", str(w / "ft_done"), "--input",
                                                               str(w / "a_file")], ["--input", ".tsv"]),
        "export --out a user's folder": (export.main, ["--checkpoint", str(run), "--out", str(user)],
                                         ["not empty", "--overwrite"]),
        "export --out an export": (export.main, ["--checkpoint", str(run), "--out", str(w / "hf")],
                                   ["already holds an export run", "--overwrite"]),
        "export --out inside the run": (export.main, ["--checkpoint", str(run), "--out", str(run / "hf")],
                                        ["inside the --checkpoint"]),
        "bench --proxy-preset huge": (bench.main, ["--proxies", "--proxy-preset", "huge"], ["--proxy-preset"]),
        "bench --iters 0": (bench.main, ["--iters", "0"], ["--iters", ">= 1"]),
        "bench --transfer-sizes of two": (bench.main, ["--transfer", "--transfer-out", str(w / "tr"),
                                                       "--transfer-sizes", "800,50"], ["--transfer-sizes", "three"]),
        "bench --transfer-sizes 0": (bench.main, ["--transfer", "--transfer-out", str(w / "tr"),
                                                  "--transfer-sizes", "800,0,50"], ["--transfer-sizes", ">= 1"]),
    }


CASES = list(_cases(Path("/x")))


@pytest.mark.parametrize("case", CASES)
def test_bad_argument_is_one_line_exit_2_and_changes_nothing(world, capsys, case):
    fn, argv, words = _cases(world)[case]
    before = tree_digest(world)
    try:
        rc = fn(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w in err[0], (w, err[0])
    assert tree_digest(world) == before


def test_electra_config_rejects_out_of_range_and_non_finite_fields():
    for kw, words in (({"dropout": 2.0}, ["dropout", "[0, 1)"]), ({"learning_rate": float("nan")}, ["learning_rate",
                      "finite"]), ({"vocab_size": 0}, ["vocab_size"]), ({"warmup_steps": -1}, ["warmup_steps"]),
                      ({"adam_beta2": 1.0}, ["adam_beta2"]), ({"num_layers": 2.5}, ["num_layers", "int"])):
        with pytest.raises(ValueError) as e:
            ElectraConfig(**kw)
        assert all(x in str(e.value) for x in words), (kw, e.value)


def test_public_api_names_the_argument_for_wrong_types_and_values(world):
    import numpy as np

    from electra_fast import ops
    from electra_fast.hf import HFFormatError, load_hf

    h, wt, b = torch.randn(2, 3, 4), torch.randn(4), torch.zeros(())
    y, m = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(TypeError, match="rtd_loss: hidden must be a torch.Tensor, got numpy.ndarray"):
        ops.rtd_loss(h.numpy(), wt, b, y, m)
    with pytest.raises(TypeError, match="replace_tokens: input_ids must be a torch.Tensor, got builtins.list"):
        ops.replace_tokens([[1, 2]], torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long),
                           torch.ones(1, 1))
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1"):
        ops.rtd_loss(h, wt, b, y, -m)  # was a negative loss
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1"):
        ops.rtd_loss_from_logits(torch.randn(2, 3), y, m * 2)
    model = Electra(ElectraConfig.preset("tiny", vocab_size=50, num_layers=1, generator_num_layers=1)).eval()
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 50\); got values in \[0, 60\]"):
        model.discriminator_logits(torch.tensor([[0, 60]]))
    with pytest.raises(ValueError, match="input_ids has 129 positions; the model has 128 position embeddings"):
        model.generator_logits(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor, got numpy.ndarray"):
        model.discriminator_logits(np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(HFFormatError, match="holds a generator"):
        load_hf(world / "hf" / "generator", world / "hf" / "discriminator")
    with pytest.raises(HFFormatError, match="not valid JSON"):
        load_hf(world / "hf_broken_config")
    with pytest.raises(HFFormatError, match="unreadable weights"):
        load_hf(world / "hf_broken_weights")


def test_help_shows_real_defaults_and_never_default_none(capsys):
    for fn in (train.main, finetune.main, export.main, bench.main, predict.main):
        with pytest.raises(SystemExit):
            fn(["--help"])
        out = capsys.readouterr().out
        assert "(default: None)" not in out
    with pytest.raises(SystemExit):
        train.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "tiny 2800, small 1000000, base 766000, large 400000" in out  # --steps by preset
    assert "tiny 0.004, small 0.0005, base 0.0002, large 0.0002" in out  # --lr by preset
    assert "(default: 1234)" in out


def test_export_writes_tokenizer_files_that_fine_tune_and_load_in_transformers(world):
    transformers = pytest.importorskip("transformers")
    disc = world / "hf" / "discriminator"
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        assert (disc / name).is_file(), name
    tok = transformers.AutoTokenizer.from_pretrained(str(disc))
    ours = load_tokenizer(world / "run" / "vocab")
    assert tok("the cat sat")["input_ids"] == [ours.cls_id, *ours.encode_batch(["the cat sat"])[0], ours.sep_id]
    assert json.loads((world / "hf" / "run.json").read_text())["kind"] == "export"


def test_finetune_and_export_load_exactly_the_checkpoint_named(world, capsys, tmp_path):
    run = world / "run"
    assert finetune.main(["--checkpoint", str(run / "ckpt-00000001.pt"), "--task", "sst2", "--data-dir",
                          str(world / "glue"), "--out", str(tmp_path / "ft"), "--epochs", "1", "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "ckpt-00000001.pt (step 1" in out and "ckpt-00000002.pt" not in out
    assert export.main(["--checkpoint", str(run / "ckpt-00000001.pt"), "--out", str(tmp_path / "hf")]) == 0
    assert "ckpt-00000001.pt (step 1" in capsys.readouterr().err
    assert export.main(["--checkpoint", str(run), "--out", str(tmp_path / "hf2")]) == 0
    assert "ckpt-00000002.pt (step 2" in capsys.readouterr().err  # a folder: its newest, named with its step


def test_save_checkpoint_pruning_keeps_the_new_one_and_touches_only_its_own(tmp_path):
    from electra_fast.checkpoint import AsyncCheckpointer, list_checkpoints

    for step in (100, 200, 300):  # not this run's (newer steps than the run's own)
        save_checkpoint({"model": {}, "step": step}, tmp_path, step, keep=0)
    ck = AsyncCheckpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        ck.save({"model": {}, "step": step}, step)
        assert ck.wait() == tmp_path / f"ckpt-{step:08d}.pt"
        assert (tmp_path / f"ckpt-{step:08d}.pt").exists()  # the one just written is never pruned
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt-00000002.pt", "ckpt-00000003.pt", "ckpt-00000100.pt", "ckpt-00000200.pt", "ckpt-00000300.pt"]
