"""Fine-tuning: GLUE readers, metrics against scipy, exact layer-wise learning rates, learnable
synthetic GLUE-format tasks on the tiny preset (CPU), the probe's data, and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from electra_fast import checkpoint
from electra_fast.config import ElectraConfig
from electra_fast.finetune import (
    PROBE_TASKS,
    Pretrained,
    _pair_lengths,
    encode,
    finetune,
    load_run,
    main,
    predict,
    probe_data,
)
from electra_fast.glue import (
    GLUE_TASKS,
    compute_metrics,
    f1_score,
    matthews_corrcoef,
    pearson,
    read_split,
    spearman,
)
from electra_fast.model import Electra
from electra_fast.recipe import (
    Hyper,
    SequenceClassifier,
    layerwise_param_groups,
    load_classifier,
    lr_factor,
    make_optimizer,
)
from electra_fast.tokenizer import load_tokenizer

WORDS = "the a cat dog red blue runs sits big small tree house car green fast slow happy sad old new".split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # the tiny model is far below what two threads can share; on a busy 2-core machine the
    # OpenMP barrier of a second thread costs more than the matmuls
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_run(root: Path, *, vocab_delta: int = 0, objective: str = "electra", **overrides) -> Path:
    """A run folder holding a randomly initialised tiny model (2 layers) over a word vocabulary."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "words.txt").write_text("\n".join(SPECIALS + ["good", *WORDS]) + "\n", encoding="utf-8")
    tok = load_tokenizer(root / "words.txt")
    cfg = ElectraConfig.preset("tiny", vocab_size=tok.vocab_size + vocab_delta, num_layers=2,
                               generator_num_layers=2, **overrides)
    torch.manual_seed(0)
    model = Electra(cfg, objective)
    run = root / "run"
    tok.save(run / "vocab")
    checkpoint.save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(), "objective": objective,
                                "vocab_hash": tok.vocab_hash(), "step": 0}, run, 0)
    return run


def _sentence(rng: random.Random, lo: int = 4, hi: int = 8) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]


def _write(path: Path, header: str | None, rows: list[str], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([("\ufeff" if bom else "") + header] if header is not None else []) + rows
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_sst2(d: Path, rng: random.Random, n=(500, 200)) -> None:
    """label 1 iff the sentence contains "good"."""
    for name, count in zip(("train", "dev"), n):
        rows = []
        for _ in range(count):
            w, y = _sentence(rng), rng.random() < 0.5
            if y:
                w.insert(rng.randrange(len(w) + 1), "good")
            rows.append(f"{' '.join(w)}\t{int(y)}")
        _write(d / f"{name}.tsv", "sentence\tlabel", rows)


def make_mrpc(d: Path, rng: random.Random, n=(600, 200)) -> None:
    """label 1 iff "good" is in sentence 2; "good" also occurs in sentence 1 at random, so the
    task needs the two columns and the segment ids (ignoring segments gives ~75%)."""
    for name, count in zip(("train", "dev"), n):
        rows = []
        for i in range(count):
            a, b, y = _sentence(rng), _sentence(rng), rng.random() < 0.5
            if rng.random() < 0.5:
                a.insert(rng.randrange(len(a) + 1), "good")
            if y:
                b.insert(rng.randrange(len(b) + 1), "good")
            rows.append(f"{int(y)}\t{1000 + i}\t{2000 + i}\t{' '.join(a)}\t{' '.join(b)}")
        # GLUE's MRPC header, byte order mark included
        _write(d / f"{name}.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", rows, bom=True)


def make_stsb(d: Path, rng: random.Random, n=(400, 200)) -> None:
    """score = 5 x the fraction of "good" among the words of both sentences."""
    pool = WORDS + ["good"] * 5
    for name, count in zip(("train", "dev"), n):
        rows = []
        for i in range(count):
            a, b = [rng.choice(pool) for _ in range(6)], [rng.choice(pool) for _ in range(6)]
            score = 5 * (a + b).count("good") / 12
            rows.append(f"{i}\tmain-news\tf\t2012\t{i}\tnone\tnone\t{' '.join(a)}\t{' '.join(b)}\t{score:.3f}")
        _write(d / f"{name}.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t"
               "sentence2\tscore", rows)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("ft"))


def _finetune(run: Path, task: str, data: Path, out: Path, *extra: str) -> dict:
    rc = main(["--checkpoint", str(run), "--task", task, "--data-dir", str(data), "--out", str(out),
               "--seq-len", "32", "--no-progress", *extra])
    assert rc == 0
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- metrics


def test_metrics_match_scipy_and_hand_counts(seed):
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    y[:50] = np.round(y[:50])  # ties: Spearman must average their ranks
    x[10:30] = 1.0
    assert pearson(x, y) == pytest.approx(scipy_stats.pearsonr(x, y)[0], abs=1e-12)
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y)[0], abs=1e-12)

    pred, gold = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    tp = np.sum((pred == 1) & (gold == 1))
    tn = np.sum((pred == 0) & (gold == 0))
    fp = np.sum((pred == 1) & (gold == 0))
    fn = np.sum((pred == 0) & (gold == 1))
    assert f1_score(pred, gold) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert matthews_corrcoef(pred, gold) == pytest.approx(mcc)
    assert matthews_corrcoef(np.ones(5, int), np.array([0, 1, 1, 0, 1])) == 0.0  # constant prediction
    m = compute_metrics(GLUE_TASKS["cola"], pred, gold)
    assert set(m) == {"accuracy", "f1", "mcc"} and m["accuracy"] == pytest.approx(np.mean(pred == gold))
    assert set(compute_metrics(GLUE_TASKS["stsb"], x, y)) == {"pearson", "spearman"}


def test_pair_truncation_is_longest_first():
    def reference(la, lb, budget):  # BERT's _truncate_seq_pair, one token at a time
        while la + lb > budget:
            if la > lb:
                la -= 1
            else:
                lb -= 1
        return la, lb

    for la in range(0, 12):
        for lb in range(0, 12):
            for budget in range(0, 15):
                assert _pair_lengths(la, lb, budget) == reference(la, lb, budget), (la, lb, budget)


# ----------------------------------------------------------------------------- the recipe


def test_layerwise_learning_rates_exact():
    # embedding_size != hidden_size: embeddings_project exists and belongs with the embeddings
    cfg = ElectraConfig.preset("tiny", vocab_size=50, num_layers=3, generator_num_layers=3, embedding_size=64)
    model = SequenceClassifier(cfg, num_outputs=3)
    lr, d, L = 2e-4, 0.7, 3
    groups = layerwise_param_groups(model, lr, d, weight_decay=0.01)
    lr_of, wd_of = {}, {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in lr_of, "a parameter sits in two groups"
            lr_of[id(p)], wd_of[id(p)] = g["lr"], g["weight_decay"]
    expected = {}
    for name, _ in model.named_parameters():
        if name.startswith("classifier."):
            expected[name] = lr  # the head: the peak lr
        elif name.startswith("encoder.layers."):
            i = int(name.split(".")[2])
            expected[name] = lr * d ** (L - i)  # top layer (i = 2): lr * d; bottom (i = 0): lr * d^3
        else:
            assert name.startswith(("embeddings.", "encoder.embeddings_project.")), name
            expected[name] = lr * d ** (L + 1)  # one factor below the lowest layer
    named = dict(model.named_parameters())
    assert set(expected) == set(named) and len(lr_of) == len(named)
    for name, p in named.items():
        assert lr_of[id(p)] == pytest.approx(expected[name], rel=1e-12), name
        no_decay = name.endswith(".bias") or ".ln1." in name or ".ln2." in name or ".LayerNorm." in name
        assert wd_of[id(p)] == (0.0 if no_decay else 0.01), name
    assert lr_of[id(model.encoder.layers[2].qkv.weight)] == pytest.approx(1.4e-4)
    assert lr_of[id(model.encoder.layers[0].ffn_in.weight)] == pytest.approx(2e-4 * 0.343)
    assert lr_of[id(model.embeddings.word_embeddings.weight)] == pytest.approx(2e-4 * 0.2401)
    assert lr_of[id(model.encoder.embeddings_project.weight)] == pytest.approx(2e-4 * 0.2401)


def test_the_optimizer_is_fused_and_is_adamw_with_the_schedule(seed):
    """make_optimizer's fused AdamW (one kernel over all tensors, CPU and CUDA) against AdamW written
    out in fp64: decoupled weight decay, bias-corrected moments, eps 1e-6, each group's lr times the
    warmup/decay factor of the step."""
    cfg = ElectraConfig.preset("tiny", vocab_size=50, num_layers=2, generator_num_layers=2)
    model = SequenceClassifier(cfg, num_outputs=3)
    hp = Hyper(epochs=1, lr=3e-3, batch_size=10)
    opt, sched, total, warmup = make_optimizer(model, hp, n_train=40)  # 4 steps, 1 of warmup
    assert opt.defaults["fused"] is True
    g = torch.Generator().manual_seed(seed)
    ref = {id(p): (p.detach().double().clone(), torch.zeros_like(p, dtype=torch.float64),
                   torch.zeros_like(p, dtype=torch.float64), group["lr"], group["weight_decay"])
           for group in opt.param_groups for p in group["params"]}
    for step in range(total):
        factor = lr_factor(step, warmup, total)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        for group in opt.param_groups:
            for p in group["params"]:
                w, m, v, lr, wd = ref[id(p)]
                grad, t = p.grad.double(), step + 1
                w.mul_(1 - lr * factor * wd)
                m.mul_(0.9).add_(0.1 * grad)
                v.mul_(0.999).add_(0.001 * grad * grad)
                w.sub_(lr * factor * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-6))
        opt.step()
        sched.step()
    for group in opt.param_groups:
        for p in group["params"]:
            torch.testing.assert_close(p.detach().double(), ref[id(p)][0], rtol=1e-5, atol=1e-6)


def test_lr_schedule_warmup_then_linear_decay():
    total, warmup = 100, 10
    f = [lr_factor(s, warmup, total) for s in range(total)]
    assert f[0] == pytest.approx(0.1 * 1.0) and f[4] == pytest.approx(0.5 * 0.96)
    assert f[9] == pytest.approx(1.0 * 0.91)  # warmup done; decay already running (multiplied)
    assert f[50] == pytest.approx(0.5) and f[99] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(f[9:], f[10:]))


@pytest.mark.parametrize("variant", ["electra", "gdes", "mlm"])
def test_classifier_encoder_is_the_discriminator(variant):
    cfg = ElectraConfig.preset("tiny", vocab_size=60, num_layers=2, generator_num_layers=2, embedding_size=64,
                               gdes=variant == "gdes")
    electra = Electra(cfg, "mlm" if variant == "mlm" else "electra").eval()
    if electra.disc_embedding_delta is not None:
        with torch.no_grad():
            electra.disc_embedding_delta.normal_(std=0.05)
    clf = SequenceClassifier.from_electra(electra, 2).eval()
    ids = torch.randint(5, 60, (3, 11))
    types = (torch.arange(11) > 5).long().expand(3, 11)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 8:] = 0
    with torch.no_grad():
        ref = electra.discriminator_hidden(ids, types, mask)
        torch.testing.assert_close(clf.hidden(ids, types, mask), ref, rtol=0, atol=1e-6)
        logits = clf(ids, types, mask)
        torch.testing.assert_close(logits, ref[:, 0] @ clf.classifier.weight.T + clf.classifier.bias)


# ----------------------------------------------------------------------------- GLUE layouts


GLUE_FILES = {  # task: (file, header or None, one row, expected (text_a, text_b, label))
    "sst2": ("train.tsv", "sentence\tlabel", "it 's a \"charming\" film \t1", ("it 's a \"charming\" film ", None, "1")),
    "cola": ("train.tsv", None, "gj04\t0\t*\tThe more we study verbs.", ("The more we study verbs.", None, "0")),
    "mrpc": ("train.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t702876\t702977\tA \"x\"\tB",
             ("A \"x\"", "B", "1")),
    "qqp": ("train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "7\t15\t16\tHow?\tWhy?\t0",
            ("How?", "Why?", "0")),
    "qnli": ("train.tsv", "index\tquestion\tsentence\tlabel", "0\tWhen?\tThen.\tnot_entailment",
             ("When?", "Then.", "not_entailment")),
    "rte": ("train.tsv", "index\tsentence1\tsentence2\tlabel", "0\tS one.\tS two.\tentailment",
            ("S one.", "S two.", "entailment")),
    "wnli": ("train.tsv", "index\tsentence1\tsentence2\tlabel", "3\tW one.\tW two.\t1", ("W one.", "W two.", "1")),
    "mnli": ("dev_mismatched.tsv", "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
             "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\t"
             "gold_label", "0\t1\t1n\tletters\t( A )\t( B )\t(ROOT A)\t(ROOT B)\tPremise.\tHypothesis.\tneutral\t"
             "neutral\tentailment\tneutral\tneutral\tneutral", ("Premise.", "Hypothesis.", "neutral")),
    "stsb": ("dev.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
             "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man.\tA guy.\t4.250", ("A man.", "A guy.", "4.250")),
}


@pytest.mark.parametrize("task", sorted(GLUE_FILES))
def test_glue_layouts(tmp_path, task):
    name, header, row, (a, b, label) = GLUE_FILES[task]
    path = tmp_path / name
    path.write_text((header + "\n" if header else "") + row + "\n\n", encoding="utf-8")  # trailing blank line
    ex = read_split(path, GLUE_TASKS[task])
    assert ex.text_a == [a] and ex.labels == [label] and ex.lines == [2 if header else 1]
    assert ex.text_b == (None if b is None else [b])
    assert GLUE_TASKS["mnli"].dev_files == ("dev_matched.tsv", "dev_mismatched.tsv")


def test_user_csv_by_name_and_index(tmp_path, run_dir, seed):
    """--task tsv on a CSV: quoted fields with commas, columns by header name and by index."""
    rng = random.Random(seed)
    d = tmp_path / "csv"
    for name, count in (("train", 500), ("dev", 100)):
        rows = ["id,text,extra,label"]
        for i in range(count):
            w, y = _sentence(rng), rng.random() < 0.5
            if y:
                w.insert(rng.randrange(len(w) + 1), "good")
            rows.append(f'{i},"{" ".join(w)}, sure",x,{"yes" if y else "no"}')
        _write(d / f"{name}.csv", None, rows)
    res = _finetune(run_dir, "tsv", d, tmp_path / "out", "--text-cols", "text", "--label-col", "3")
    assert res["best"]["dev"]["dev"]["accuracy"] >= 0.9, res["epochs"]
    info = json.loads((tmp_path / "out" / "best" / "config.json").read_text(encoding="utf-8"))
    assert info["labels"] == ["no", "yes"]


# ----------------------------------------------------------------------------- learnable tasks


def _check_outputs(out: Path, res: dict, dev_file: Path, task: str) -> None:
    """Predictions: one row per dev example; best/: reloads and reproduces the best dev score."""
    rows = (out / "dev_predictions.tsv").read_text(encoding="utf-8").splitlines()
    n_dev = sum(1 for line in dev_file.read_text(encoding="utf-8-sig").splitlines()[1:] if line.strip())
    assert rows[0] == "line\tprediction\tlabel" and len(rows) == n_dev + 1
    model, info = load_classifier(out / "best")
    assert info["epoch"] == res["best"]["epoch"] and info["task"] == task
    tok = load_tokenizer(out / "best")
    from electra_fast.finetune import encode, predict

    t = GLUE_TASKS[task]
    data = encode(tok, read_split(dev_file, t), t, 32)
    metrics = compute_metrics(t, predict(model, data, tok.pad_id, "cpu"), data.targets)
    assert metrics[t.metric] == pytest.approx(res["best"]["value"], abs=1e-6)


def test_sst2_single_sentence_learns(tmp_path, run_dir, seed):
    make_sst2(tmp_path / "data", random.Random(seed))
    res = _finetune(run_dir, "sst2", tmp_path / "data", tmp_path / "out")
    assert res["best"]["dev"]["dev"]["accuracy"] >= 0.9, res["epochs"]
    _check_outputs(tmp_path / "out", res, tmp_path / "data" / "dev.tsv", "sst2")


def test_mrpc_pair_learns(tmp_path, run_dir, seed):
    make_mrpc(tmp_path / "data", random.Random(seed))
    res = _finetune(run_dir, "mrpc", tmp_path / "data", tmp_path / "out")
    best = res["best"]["dev"]["dev"]
    assert best["accuracy"] >= 0.9 and best["f1"] >= 0.9, res["epochs"]
    _check_outputs(tmp_path / "out", res, tmp_path / "data" / "dev.tsv", "mrpc")


def test_stsb_regression_learns(tmp_path, run_dir, seed):
    make_stsb(tmp_path / "data", random.Random(seed))
    res = _finetune(run_dir, "stsb", tmp_path / "data", tmp_path / "out")
    best = res["best"]["dev"]["dev"]
    assert best["pearson"] >= 0.8 and best["spearman"] >= 0.8, res["epochs"]
    _check_outputs(tmp_path / "out", res, tmp_path / "data" / "dev.tsv", "stsb")


def test_a_test_split_is_scored_once_with_the_best_epochs_weights(tmp_path, run_dir, seed):
    """``finetune(test=...)`` (what the transfer benchmark reports): the test split is read after
    training with the weights of the best dev epoch, not the last, and not every epoch. The dev labels
    here are the opposite of the task's, so the more the model learns the worse dev gets and the best
    epoch is an early one."""
    make_sst2(tmp_path / "data", random.Random(seed), n=(300, 120))
    t = GLUE_TASKS["sst2"]
    pre = load_run(run_dir, log=lambda m: None)
    tok = pre.tokenizer
    train = encode(tok, read_split(tmp_path / "data" / "train.tsv", t), t, 32)
    test = encode(tok, read_split(tmp_path / "data" / "dev.tsv", t), t, 32)
    flipped = dataclasses.replace(test, targets=1 - test.targets)
    hp = Hyper(epochs=4, lr=3e-4, batch_size=16, seq_len=32, seed=seed)  # learnt over epochs, not in one
    torch.manual_seed(seed)
    model = SequenceClassifier.from_electra(pre.model, t.num_outputs, hp.dropout)
    res = finetune(model, t, train, {"dev": flipped}, hp, tmp_path / "out", pad_id=tok.pad_id, progress=False,
                   log=lambda m: None, test=test)
    assert all(r["dev"].keys() == {"dev"} for r in res["epochs"])  # no test read per epoch
    assert res["best"]["epoch"] < hp.epochs, res["epochs"]  # learning "good" makes the flipped dev worse
    # the last epoch scores otherwise, so the last epoch's weights could not pass for the best's below
    assert res["epochs"][-1]["dev"]["dev"]["accuracy"] != res["best"]["dev"]["dev"]["accuracy"], res["epochs"]
    best, _ = load_classifier(tmp_path / "out" / "best")
    want = compute_metrics(t, predict(best, test, tok.pad_id, "cpu"), test.targets)
    assert res["best"]["test"] == pytest.approx(want)
    # the best epoch's dev accuracy on flipped labels is one minus its test accuracy on the same rows
    assert res["best"]["test"]["accuracy"] == pytest.approx(1 - res["best"]["dev"]["dev"]["accuracy"])
    rows = (tmp_path / "out" / "test_predictions.tsv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + len(test)
    with pytest.raises(ValueError, match="needs labelled examples"):
        finetune(model, t, train, {"dev": flipped}, hp, tmp_path / "again", pad_id=tok.pad_id, progress=False,
                 log=lambda m: None, test=dataclasses.replace(test, targets=None))


# ----------------------------------------------------------------------------- the probe


@pytest.mark.parametrize("kind", ["next", "order"])
def test_probe_data_is_deterministic_balanced_and_split_by_document(run_dir, kind):
    pre = Pretrained(Electra(ElectraConfig.preset("tiny", vocab_size=26, num_layers=1, generator_num_layers=1)),
                     load_tokenizer(run_dir / "vocab"), "test")
    train, dev, info = probe_data(pre, 500, 200, kind)
    train2, dev2, _ = probe_data(pre, 500, 200, kind)
    assert (train.text_a, train.text_b, train.labels, dev.text_b) == (
        train2.text_a, train2.text_b, train2.labels, dev2.text_b)
    assert len(train) == 500 and len(dev) == 200 and info["dev_pairs"] == 100
    neg, pos = PROBE_TASKS[kind].labels
    assert dev.labels == [pos, neg] * 100  # each dev pair: the real pair and its corruption
    assert 150 < train.labels.count(pos) < 350
    from electra_fast.corpus import default_corpus

    corpus = default_corpus()
    follows, doc_of = set(), {}
    for i, doc in enumerate(corpus):
        follows.update(zip(doc, doc[1:]))
        for line in doc:
            doc_of.setdefault(line, set()).add(i)
    for ex in (train, dev):
        for a, b, y in zip(ex.text_a, ex.text_b, ex.labels):
            if y == pos:
                assert (a, b) in follows
            elif kind == "order":
                assert (b, a) in follows
            else:  # the second line comes from another document
                assert doc_of[b] - doc_of[a]
    dev_docs = set().union(*(doc_of[line] for line in dev.text_a + dev.text_b))
    dev_lines = set(dev.text_a + dev.text_b)
    assert not dev_lines & set(train.text_a + train.text_b)
    # no dev line occurs anywhere outside the dev documents (the corpus repeats passages)
    assert not any(line in dev_lines for i, doc in enumerate(corpus) if i not in dev_docs for line in doc)


def test_probe_dev_documents_are_the_pretraining_holdout(tmp_path):
    """With the run's data/ shards present, the dev documents are exactly those kept out of
    pre-training: their text never occurs in the training shard."""
    from electra_fast.corpus import default_corpus
    from electra_fast.data import load_dataset, prepare_dataset
    from electra_fast.finetune import pretraining_holdout
    from electra_fast.tokenizer import train_tokenizer

    docs = default_corpus()
    tok = train_tokenizer(docs, 2000)
    run = tmp_path / "run"
    prepare_dataset(None, tok, run / "data", 64, seed=11, progress=False, num_workers=0)
    held = pretraining_holdout(run, docs, tok)
    assert held is not None and len(held) == load_dataset(run / "data").manifest["num_documents"]["holdout"]
    # every segment of every held-out example is a run of tokens from the recovered documents
    n = 8
    grams = set()
    for i in held:
        s = [t for line in tok.encode_batch(docs[i]) for t in line]
        grams.update(tuple(s[j:j + n]) for j in range(len(s) - n + 1))
    hold = load_dataset(run / "data").splits["holdout"]
    found = total = 0
    for r in range(len(hold)):
        row = hold.input_ids[r, 1:hold.lengths[r]].tolist()
        while row:
            seg, row = (row[:row.index(tok.sep_id)], row[row.index(tok.sep_id) + 1:]) if tok.sep_id in row else (row, [])
            for j in range(len(seg) - n + 1):
                total += 1
                found += tuple(seg[j:j + n]) in grams
    assert total > 1000 and found == total
    # a manifest that does not describe this corpus's draw is not trusted
    m = json.loads((run / "data" / "manifest.json").read_text(encoding="utf-8"))
    m["key"]["seed"] = 12
    (run / "data" / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    assert pretraining_holdout(run, docs, tok) is None


def test_probe_cli_compares_pretrained_and_random(tmp_path, run_dir, capsys):
    out = tmp_path / "probe"
    rc = main(["--checkpoint", str(run_dir), "--task", "probe", "--out", str(out), "--probe-train", "96",
               "--probe-dev", "64", "--epochs", "1", "--seq-len", "32", "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    for name in ("pretrained", "random"):
        run_res = json.loads((out / name / "results.json").read_text(encoding="utf-8"))
        assert res[name] == run_res["best"]["value"] and 0.0 <= res[name] <= 1.0
        assert (out / name / "best" / "model.safetensors").is_file()
    assert res["dev_examples"] == 64 and res["task"] == PROBE_TASKS["next"].name
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("probe (next) dev accuracy")]
    assert printed == [res["summary"]] and f"pre-trained {res['pretrained']:.4f}" in printed[0]


# ----------------------------------------------------------------------------- bad input


def _bad_cases(tmp_path: Path, run_dir: Path, seed: int) -> dict:
    rng = random.Random(seed)
    good = tmp_path / "good"
    make_sst2(good, rng, n=(20, 10))
    bad_label = tmp_path / "bad_label"
    make_sst2(bad_label, rng, n=(20, 10))
    rows = (bad_label / "dev.tsv").read_text(encoding="utf-8").splitlines()
    rows[4] = "a cat\tpositive"
    (bad_label / "dev.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    no_col = tmp_path / "no_col"
    _write(no_col / "train.tsv", "text\tlabel", ["a cat\t1"])
    _write(no_col / "dev.tsv", "text\tlabel", ["a cat\t1"])
    short_row = tmp_path / "short_row"
    _write(short_row / "train.tsv", "index\tsentence1\tsentence2\tlabel", ["0\ta\tb\tentailment", "1\ta\tb"])
    _write(short_row / "dev.tsv", "index\tsentence1\tsentence2\tlabel", ["0\ta\tb\tentailment"])
    empty = tmp_path / "empty"
    make_sst2(empty, rng, n=(20, 0))
    no_dev = tmp_path / "no_dev"
    make_sst2(no_dev, rng, n=(20, 10))
    (no_dev / "dev.tsv").unlink()
    bad_vocab = make_run(tmp_path / "vocab_delta", vocab_delta=3)
    csv_dir = tmp_path / "csv"
    _write(csv_dir / "train.csv", "id,text,label", ["1,a cat,0"])
    _write(csv_dir / "dev.csv", "id,text,label", ["1,a cat,0"])
    one_label = tmp_path / "one_label"
    _write(one_label / "train.csv", "text,label", ["a cat,0", "a dog,0"])
    _write(one_label / "dev.csv", "text,label", ["a cat,0"])
    run = str(run_dir)
    return {  # name: (argv, words the one error line must contain)
        "label outside the set": (["--task", "sst2", "--data-dir", str(bad_label)],
                                  ["dev.tsv:5", "'positive'", "0, 1"]),
        "missing column (GLUE)": (["--task", "sst2", "--data-dir", str(no_col)], ["train.tsv", "'sentence'"]),
        "missing column (user)": (["--task", "tsv", "--data-dir", str(csv_dir), "--text-cols", "body",
                                   "--label-col", "label"], ["train.csv", "'body'", "'text'"]),
        "one label": (["--task", "tsv", "--data-dir", str(one_label), "--text-cols", "0", "--label-col", "label"],
                      ["train.csv", "'0'", "--regression"]),
        "short row": (["--task", "rte", "--data-dir", str(short_row)], ["train.tsv:3", "'label'"]),
        "empty split": (["--task", "sst2", "--data-dir", str(empty)], ["dev.tsv", "no examples"]),
        "missing file": (["--task", "sst2", "--data-dir", str(no_dev)], ["dev.tsv", "no such file"]),
        "missing data dir": (["--task", "sst2", "--data-dir", str(tmp_path / "nope")], ["nope", "no such folder"]),
        "unknown task": (["--task", "sst5", "--data-dir", str(good)], ["'sst5'", "sst2"]),
        "vocab size": (["--task", "sst2", "--data-dir", str(good), "--checkpoint", str(bad_vocab)],
                       ["29-token", "26 tokens", "vocab"]),
        "missing checkpoint": (["--task", "sst2", "--data-dir", str(good), "--checkpoint", str(tmp_path / "x")],
                               ["no such folder"]),
        "no data dir": (["--task", "sst2"], ["--data-dir"]),
    }, run


BAD = ["label outside the set", "missing column (GLUE)", "missing column (user)", "one label", "short row", "empty split",
       "missing file", "missing data dir", "unknown task", "vocab size", "missing checkpoint", "no data dir"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gives_one_error_line(tmp_path, run_dir, capsys, case, seed):
    cases, run = _bad_cases(tmp_path, run_dir, seed)
    argv, words = cases[case]
    if "--checkpoint" not in argv:
        argv = ["--checkpoint", run, *argv]
    rc = main([*argv, "--out", str(tmp_path / "out"), "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w in err[0], (w, err[0])


def test_seq_len_defaults_to_the_runs_pretraining_length_and_warns_beyond_it(capsys):
    """Our own run records its pre-training length: without --seq-len fine-tuning stays within it
    and says so; asking for more warns once, naming the position embeddings that were never
    trained; within it, or for a model without that record (HF), nothing."""
    from electra_fast.finetune import _hyper, build_parser

    cfg = ElectraConfig.preset("tiny", vocab_size=50)  # pre-trained at 32, 128 positions
    parse = build_parser().parse_args
    for task, usual in (("sst2", 128), ("probe", 64), ("squad", 128)):  # squad: 384 capped at 128 positions
        args = parse(["--checkpoint", "x", "--task", task])
        assert _hyper(args, cfg, trained_len=32).seq_len == 32
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "defaults to 32, the run's pre-training length" in err, err
        assert _hyper(args, cfg, trained_len=None).seq_len == usual
        assert _hyper(args, cfg, trained_len=usual).seq_len == usual
        assert capsys.readouterr().err == ""
    args = parse(["--checkpoint", "x", "--task", "probe", "--seq-len", "64"])
    assert _hyper(args, cfg, trained_len=32).seq_len == 64
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and "position embeddings 32-63" in err, err
    _hyper(args, cfg, trained_len=64)
    _hyper(args, cfg, trained_len=None)
    assert capsys.readouterr().err == ""


def test_diverging_finetune_fails_and_never_saves_a_nan_model_as_best(tmp_path, run_dir, capsys):
    """--lr 1e30 made every weight NaN and still saved them as best/ with exit 0."""
    data = tmp_path / "sst2"
    make_sst2(data, random.Random(3), n=(64, 16))
    out = tmp_path / "out"
    rc = main(["--checkpoint", str(run_dir), "--task", "sst2", "--data-dir", str(data), "--out", str(out),
               "--seq-len", "32", "--no-progress", "--lr", "1e30", "--epochs", "2", "--batch-size", "16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: non-finite") and "lower --lr" in err[-1], err
    assert not (out / "results.json").exists()
    if (out / "best").exists():  # an earlier finite epoch may be kept, never a non-finite one
        model, _ = load_classifier(out / "best")
        assert all(torch.isfinite(p).all() for p in model.parameters())
