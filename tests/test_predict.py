"""Using a fine-tuned model: ``predict`` on --text and on files against the model run directly,
GLUE submission files from ``finetune --predict-test``, and ``finetune --seeds``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from test_finetune import make_run, make_sst2, make_stsb, one_thread  # noqa: F401 - the fixture

from electra_fast import predict
from electra_fast.finetune import main
from electra_fast.recipe import load_classifier
from electra_fast.tokenizer import load_tokenizer

TINY = ["--epochs", "1", "--seq-len", "32", "--no-progress", "--batch-size", "16"]
SST_TEST = ["good cat runs", "red dog sits", "the good tree", "old car"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A tiny run; SST-2-like and STS-B-like data with GLUE test files; both fine-tuned with
    --predict-test, SST-2 over three seeds."""
    root = tmp_path_factory.mktemp("predict")
    run = make_run(root)
    rng = random.Random(3)
    make_sst2(root / "sst", rng, n=(48, 24))
    # GLUE's test.tsv: index column first, no label; indices not in file order on purpose
    (root / "sst" / "test.tsv").write_text("index\tsentence\n" + "".join(
        f"{i}\t{s}\n" for i, s in zip((3, 0, 2, 1), SST_TEST)), encoding="utf-8")
    make_stsb(root / "stsb", rng, n=(48, 24))
    (root / "stsb" / "test.tsv").write_text(
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n"
        + "".join(f"{i}\tmain-news\tf\t2012\t{i}\tnone\tnone\tgood good good\tgood {w}\n"
                  for i, w in enumerate(["good", "cat", "red"])), encoding="utf-8")
    for task, data, extra in (("sst2", "sst", ["--seeds", "1,2,3"]), ("stsb", "stsb", [])):
        assert main(["--checkpoint", str(run), "--task", task, "--data-dir", str(root / data), "--out",
                     str(root / f"ft-{task}"), "--predict-test", *TINY, *extra]) == 0
    return root


def _direct(folder: Path, texts_a: list[str], texts_b: list[str] | None = None) -> np.ndarray:
    """The saved model run by hand, one example at a time: [CLS] a [SEP] (b [SEP]), no padding."""
    model, info = load_classifier(folder / "best")
    tok = load_tokenizer(folder / "best")
    out = []
    with torch.no_grad():
        for i, a in enumerate(texts_a):
            ids = [tok.cls_id, *tok.encode_batch([a])[0], tok.sep_id]
            types = [0] * len(ids)
            if texts_b is not None:
                b = tok.encode_batch([texts_b[i]])[0] + [tok.sep_id]
                ids, types = ids + b, types + [1] * len(b)
            y = model(torch.tensor([ids]), torch.tensor([types]), torch.ones(1, len(ids), dtype=torch.long))[0]
            out.append(y.item() if info["regression"] else torch.softmax(y, -1).numpy())
    return np.array(out)


def _rows(text: str) -> list[list[str]]:
    return [ln.split("\t") for ln in text.strip().splitlines()]


def test_predict_text_and_file_equal_the_model_run_directly(world, tmp_path, capsys):
    model = world / "ft-sst2" / "seed-2"
    assert predict.main(["--model", str(model), "--text", SST_TEST[0]]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows[0] == ["line", "prediction", "p(0)", "p(1)"]
    want = _direct(model, SST_TEST[:1])[0]
    np.testing.assert_allclose([float(x) for x in rows[1][2:]], want, atol=2e-6)
    assert rows[1][1] == str(int(np.argmax(want)))

    texts = [" ".join(random.Random(i).choices("the good cat dog red tree runs".split(), k=3 + i % 7))
             for i in range(23)]
    src = tmp_path / "new.jsonl"  # blank line 2: lines are the file's own
    src.write_text(json.dumps({"sentence": texts[0]}) + "\n\n"
                   + "".join(json.dumps({"id": i, "sentence": t}) + "\n" for i, t in enumerate(texts[1:])))
    out = tmp_path / "preds.tsv"
    assert predict.main(["--model", str(model / "best"), "--input", str(src), "--out", str(out),
                         "--batch-size", "4"]) == 0
    rows = _rows(out.read_text())[1:]
    assert [int(r[0]) for r in rows] == [1, *range(3, 25)]
    probs = np.array([[float(x) for x in r[2:]] for r in rows])
    np.testing.assert_allclose(probs, _direct(model, texts), atol=2e-6)  # batched, padded, sorted = one by one
    assert [r[1] for r in rows] == [str(k) for k in probs.argmax(1)]


def test_predict_regression_pair_from_tsv(world, tmp_path, capsys):
    a, b = ["good cat good", "red dog", "the tree good good"], ["good", "sits", "old new good"]
    src = tmp_path / "pairs.tsv"
    src.write_text("sentence1\tsentence2\n" + "".join(f"{x}\t{y}\n" for x, y in zip(a, b)))
    assert predict.main(["--model", str(world / "ft-stsb"), "--input", str(src)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows[0] == ["line", "score"]
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], _direct(world / "ft-stsb", a, b), atol=1e-5)


def test_submission_files_layout(world):
    sst = (world / "ft-sst2" / "seed-1" / "SST-2.tsv").read_text().splitlines()
    assert sst[0] == "index\tprediction"
    assert [r.split("\t")[0] for r in sst[1:]] == ["3", "0", "2", "1"]  # the test file's order
    probs = _direct(world / "ft-sst2" / "seed-1", SST_TEST)
    assert [r.split("\t")[1] for r in sst[1:]] == [str(k) for k in probs.argmax(1)]  # label names: 0 / 1
    sts = (world / "ft-stsb" / "STS-B.tsv").read_text().splitlines()
    assert sts[0] == "index\tprediction" and [r.split("\t")[0] for r in sts[1:]] == ["0", "1", "2"]
    raw = _direct(world / "ft-stsb", ["good good good"] * 3, ["good good", "good cat", "good red"])
    np.testing.assert_allclose([float(r.split("\t")[1]) for r in sts[1:]], np.clip(raw, 0, 5), atol=1e-3)


def test_submission_clips_scores_and_uses_glue_label_names(tmp_path):
    from electra_fast.finetune import write_submission
    from electra_fast.glue import GLUE_TASKS, Examples

    ex = Examples(Path("t"), ["a", "b"], None, [None, None], [2, 3], index=["7", "8"])
    write_submission(tmp_path / "s.tsv", GLUE_TASKS["stsb"], ex, np.array([-0.5, 6.25]))
    assert (tmp_path / "s.tsv").read_text() == "index\tprediction\n7\t0.000\n8\t5.000\n"
    write_submission(tmp_path / "m.tsv", GLUE_TASKS["mnli"], ex, np.array([[0.1, 2.0, 0.3], [3.0, 0.0, 0.0]]))
    assert (tmp_path / "m.tsv").read_text() == "index\tprediction\n7\tentailment\n8\tcontradiction\n"


def test_seeds_give_subfolders_and_their_median(world):
    res = json.loads((world / "ft-sst2" / "results.json").read_text())
    values = []
    for s in (1, 2, 3):
        one = json.loads((world / "ft-sst2" / f"seed-{s}" / "results.json").read_text())
        assert one["hyperparameters"]["seed"] == s
        values.append(one["best"]["value"])
        assert res["values"][str(s)] == one["best"]["value"]
    assert res["seeds"] == [1, 2, 3]
    assert res["median"] == sorted(values)[1] and (res["min"], res["max"]) == (min(values), max(values))
    assert f"median {res['median']:.4f}" in res["summary"]


def test_predict_errors_are_one_line(world, tmp_path, capsys):
    (tmp_path / "empty.tsv").write_text("sentence\n\n")
    (tmp_path / "cols.tsv").write_text("text\nthe cat\n")
    squad = tmp_path / "squad"
    (squad / "best").mkdir(parents=True)
    (squad / "best" / "config.json").write_text(json.dumps({"task": "squad", "head": "span", "num_outputs": 2}))
    sst = str(world / "ft-sst2" / "seed-1")
    cases = {
        "no such folder": (["--model", str(tmp_path / "nope"), "--text", "x"], "no such folder"),
        "squad output": (["--model", str(squad), "--text", "x"], "predict handles classification/regression"),
        "pre-training run": (["--model", str(world / "run"), "--text", "x"], "fine-tune it first"),
        "seeds parent": (["--model", str(world / "ft-sst2"), "--text", "x"], "seed-1"),
        "missing column": (["--model", sst, "--input", str(tmp_path / "cols.tsv")], "no text column 'sentence'"),
        "empty input": (["--model", sst, "--input", str(tmp_path / "empty.tsv")], "no examples"),
        "pair model, one text": (["--model", str(world / "ft-stsb"), "--text", "x"], "--text-b"),
    }
    for name, (argv, words) in cases.items():
        assert predict.main(argv) == 2, name
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (name, err)
