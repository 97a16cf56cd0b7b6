"""SQuAD: the official metrics against hand-computed cases, windows and offsets that give back
every gold answer's exact text, a tiny model that learns a synthetic span task through the CLI
(1.1 and 2.0), the ElectraForQuestionAnswering export, and one-line errors for bad files."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from electra_fast import checkpoint
from electra_fast.config import ElectraConfig
from electra_fast.finetune import _hyper, build_parser, main
from electra_fast.glue import DataError
from electra_fast.model import Electra
from electra_fast.squad import (
    QAExample,
    SpanExtractor,
    exact_match,
    f1,
    featurize,
    load_span_model,
    normalize_answer,
    postprocess,
    predict_logits,
    read_squad,
    squad_evaluate,
    window_spans,
)
from electra_fast.tokenizer import load_tokenizer, train_tokenizer

WORDS = "the a cat dog red blue runs sits big small tree house car green fast slow happy sad old new".split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()  # a tiny model: a second OpenMP thread costs more than it gives
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "words.txt"
    path.write_text("\n".join(SPECIALS + WORDS + ["good", "bad", "?", "what", "is", "between", "and"]) + "\n",
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, vocab) -> Path:
    """A run folder with a randomly initialised tiny model (2 layers) over a word vocabulary."""
    root = tmp_path_factory.mktemp("squad")
    tok = load_tokenizer(vocab)
    cfg = ElectraConfig.preset("tiny", vocab_size=tok.vocab_size, num_layers=2, generator_num_layers=2)
    torch.manual_seed(0)
    model = Electra(cfg)
    run = root / "run"
    tok.save(run / "vocab")
    checkpoint.save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(), "objective": "electra",
                                "vocab_hash": tok.vocab_hash(), "step": 0}, run, 0)
    return run


def squad_json(questions: list[tuple[str, str, list[tuple[str, int]]]], v2: bool = False) -> dict:
    """SQuAD's layout, one paragraph per question: (id, context, [(answer text, answer_start)])."""
    data = []
    for qid, context, answers in questions:
        qa = {"id": qid, "question": "what is between good and bad ?",
              "answers": [{"text": t, "answer_start": s} for t, s in answers]}
        if v2:
            qa["is_impossible"] = not answers
        data.append({"title": qid, "paragraphs": [{"context": context, "qas": [qa]}]})
    return {"version": "v2.0" if v2 else "1.1", "data": data}


def make_span_task(path: Path, n: int, rng: random.Random, v2: bool = False, longest: int = 3) -> None:
    """The answer is the 1 to ``longest`` words between "good" and "bad", somewhere in 20-60
    random words; for 2.0, 40% of the questions have neither marker and no answer."""
    questions = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 60))]
        answers = []
        if not v2 or rng.random() < 0.6:
            k = rng.randrange(len(words))
            ans = [rng.choice(WORDS) for _ in range(rng.randint(1, longest))]
            words[k:k] = ["good", *ans, "bad"]
            answers = [(" ".join(ans), len(" ".join(words[:k + 1])) + 1)]
        questions.append((f"q{i}", " ".join(words), answers))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(squad_json(questions, v2)), encoding="utf-8")


# ----------------------------------------------------------------------------- metrics


def test_normalisation_exact_match_and_f1_by_hand():
    assert normalize_answer("The  Cat's, (red) hat!") == "cats red hat"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theory of Atheism") == "theory of atheism"  # articles only as whole words
    assert normalize_answer("A.") == "" and normalize_answer("  ") == ""
    assert exact_match("the Eiffel Tower", "eiffel  tower.") == 1
    assert exact_match("Eiffel Tower", "Eiffel") == 0
    assert f1("red big cat", "big red dog") == pytest.approx(2 / 3)  # 2 shared of 3 and 3
    assert f1("a cat cat dog", "cat cat cat") == pytest.approx(2 / 3)  # shared counts: min(2, 3) cats
    assert f1("Denver Broncos", "the Broncos won") == pytest.approx(2 * 0.5 * 0.5 / 1.0)  # p 1/2, r 1/2
    assert f1("", "") == 1.0 and f1("cat", "") == 0.0 and f1("", "cat") == 0.0  # no-answer agreement
    assert f1("cat", "dog") == 0.0


def _hand_examples() -> list[QAExample]:
    return [QAExample("q1", "?", "", ["Denver Broncos", "the Broncos"], [0, 0]),  # two gold answers
            QAExample("q2", "?", "", ["Carolina Panthers"], [0]),
            QAExample("q3", "?", "", [], []),  # no answer
            QAExample("q4", "?", "", [], [])]


def test_squad_evaluate_by_hand_with_several_golds_and_no_answers():
    preds = {"q1": "Broncos", "q2": "Panthers team", "q3": "", "q4": "something"}
    m = squad_evaluate(_hand_examples(), preds)
    # q1: "broncos" == normalised "the Broncos" -> EM 1, F1 1 (max over golds); q2: EM 0, F1 1/2;
    # q3: "" for no answer -> 1; q4: text for no answer -> 0
    assert m["exact"] == pytest.approx(100 * 2 / 4) and m["f1"] == pytest.approx(100 * 2.5 / 4)
    assert (m["HasAns_exact"], m["HasAns_f1"], m["HasAns_total"]) == (50.0, 75.0, 2)
    assert (m["NoAns_exact"], m["NoAns_f1"], m["NoAns_total"]) == (50.0, 50.0, 2)
    assert m["total"] == 4 and "best_f1" not in m

    odds = {"q1": -2.0, "q2": 0.5, "q3": 3.0, "q4": 1.5}
    m = squad_evaluate(_hand_examples(), preds, odds)
    # above na_prob_thresh 1.0, q3 and q4 count as "no answer": both right
    assert m["exact"] == pytest.approx(75.0) and m["f1"] == pytest.approx(100 * 3.5 / 4)
    # sweep in odds order q1, q2, q4, q3 from "all no-answer" (2 right): exact 3 (after q1), 3, 2, 2;
    # f1 3 (q1), 3.5 (q2), 2.5, 2.5: the best and the odds where it is reached
    assert (m["best_exact"], m["best_exact_thresh"]) == (pytest.approx(75.0), -2.0)
    assert (m["best_f1"], m["best_f1_thresh"]) == (pytest.approx(87.5), 0.5)
    # a question without a prediction scores 0 rather than leaving the total
    m = squad_evaluate(_hand_examples(), {"q1": "the broncos"})
    assert m["exact"] == pytest.approx(25.0) and m["total"] == 4


# ----------------------------------------------------------------------------- windows and offsets

PIECES = ["Café", "naïve", "ELECTRA", "Zürich", "model's", "(2020)", "1,024", "learns", "tokens;", "discriminator",
          "generator", "replaced", "東京", "fast-forward", "e.g.", "U.S.", "the", "a", "of", "and", "Straße", "—",
          "résumé", "x86_64", "\"quoted\"", "it", "was", "2.5%"]


def _long_context_questions(rng: random.Random, n: int) -> list[tuple[str, str, list[tuple[str, int]]]]:
    questions = []
    for i in range(n):
        parts = []
        for _ in range(rng.randint(30, 90)):
            parts.append(rng.choice(PIECES))
            parts.append(rng.choice([" ", " ", " ", "  ", "\n", " \t "]))
        context = "".join(parts).strip()
        words = [m.span() for m in re.finditer(r"\S+", context)]
        k = rng.choice([0, len(words) - 1, rng.randrange(len(words))])  # the first, last, or any word
        last = min(len(words) - 1, k + rng.randint(0, 2))
        start, end = words[k][0], words[last][1]
        questions.append((f"id{i}", context, [(context[start:end], start)]))
    return questions


def test_windows_and_offsets_give_back_every_answer(tmp_path):
    rng = random.Random(5)
    path = tmp_path / "train-v1.1.json"
    path.write_text(json.dumps(squad_json(_long_context_questions(rng, 40))), encoding="utf-8")
    examples = read_squad(path, version2=False)
    tok = train_tokenizer([[e.context for e in examples]], 120, min_frequency=1)  # small: words split
    seq_len, stride = 40, 12
    feats = featurize(tok, examples, seq_len, stride)
    assert max(len(x) for x in feats.ids) <= seq_len
    train = featurize(tok, examples, seq_len, stride, for_eval=False)  # the same windows, no offsets
    assert train.ids == feats.ids and (train.start == feats.start).all() and (train.end == feats.end).all()
    assert train.offsets == [] and train.max_context == []
    n_windows = Counter(feats.example)
    assert max(n_windows.values()) >= 4  # long contexts really are split
    for i, ex in enumerate(examples):
        full = [tuple(o) for o in tok.tokenizer.encode(ex.context, add_special_tokens=False).offsets]
        rows = [f for f in range(len(feats)) if feats.example[f] == i]
        head = feats.ids[rows[0]].index(tok.sep_id) + 1
        room = seq_len - head - 1
        # windows start `stride` tokens apart, the last reaches the end, and each context token
        # is the "max context" token of exactly one window
        covered = Counter()
        for w, f in enumerate(rows):
            ctx = feats.offsets[f][head:-1]
            assert ctx == full[w * stride: w * stride + room]
            assert feats.offsets[f][:head] == [None] * head and feats.offsets[f][-1] is None
            assert feats.types[f] == [0] * head + [1] * (len(ctx) + 1)
            covered.update(w * stride + j for j, top in enumerate(feats.max_context[f][head:-1]) if top)
        assert w * stride + len(ctx) == len(full) and covered == Counter(range(len(full)))
        # a window holding the whole answer points at it; the others point at [CLS]
        (text, start), = zip(ex.answers, ex.answer_starts)
        first = next(j for j, o in enumerate(full) if o[1] > start)
        last = max(j for j, o in enumerate(full) if o[0] < start + len(text))
        hits = 0
        for w, f in enumerate(rows):
            inside = w * stride <= first and last < w * stride + room
            s, e = feats.start[f], feats.end[f]
            if inside:
                hits += 1
                assert ex.context[feats.offsets[f][s][0]:feats.offsets[f][e][1]] == text
            else:
                assert s == e == 0
        assert hits >= 1, ex.qid  # answers are short: some window always holds one whole

    # post-processing reads the text back from logits that point at the labelled spans. It takes
    # a start only in the window where that token has the most context (run_squad.py), so the
    # windows overlap here by more than twice the longest answer (12 tokens)
    feats = featurize(tok, examples, 64, 16)
    s_logits = [np.zeros(len(x)) for x in feats.ids]
    e_logits = [np.zeros(len(x)) for x in feats.ids]
    for f in range(len(feats)):
        if feats.start[f]:
            s_logits[f][feats.start[f]] = e_logits[f][feats.end[f]] = 10.0
    preds, odds = postprocess(examples, feats, s_logits, e_logits, version2=False)
    assert preds == {ex.qid: ex.answers[0] for ex in examples} and odds == {}
    assert squad_evaluate(examples, preds)["exact"] == 100.0


def test_window_spans_and_answer_length_limit(vocab):
    assert window_spans(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert window_spans(10, 4, 9) == [(0, 4), (4, 4), (8, 2)]  # a stride past the window: no gap
    assert window_spans(0, 4, 2) == [(0, 0)]
    tok = load_tokenizer(vocab)
    ex = [QAExample("q", "what is between good and bad ?", "a cat red dog bad", [], [])]
    feats = featurize(tok, ex, 32, 8)
    head = feats.ids[0].index(tok.sep_id) + 1
    s, e = np.zeros(len(feats.ids[0])), np.zeros(len(feats.ids[0]))
    s[head + 1], e[head + 3] = 5.0, 5.0  # "cat red dog": 3 tokens
    e[head + 2] = 4.0  # "cat red": 2 tokens, a lower score
    assert postprocess(ex, feats, [s], [e], version2=False)[0] == {"q": "cat red dog"}
    assert postprocess(ex, feats, [s], [e], version2=False, max_answer_length=2)[0] == {"q": "cat red"}
    s[0], e[0] = 6.0, 5.0  # the [CLS] span: null score 11 vs 10 for the best span
    preds, odds = postprocess(ex, feats, [s], [e], version2=True)
    assert preds == {"q": ""} and odds == {"q": pytest.approx(1.0)}
    preds, _ = postprocess(ex, feats, [s], [e], version2=True, null_threshold=1.5)
    assert preds == {"q": "cat red dog"}


# ----------------------------------------------------------------------------- learning, end to end


def _cli(run: Path, task: str, data: Path, out: Path, *extra: str) -> dict:
    # random init: no pre-trained layers to protect, so no layer-wise decay (1.0) and a larger lr
    rc = main(["--checkpoint", str(run), "--task", task, "--data-dir", str(data), "--out", str(out),
               "--seq-len", "48", "--doc-stride", "16", "--batch-size", "16", "--lr", "2e-3",
               "--layer-decay", "1.0", "--no-progress", *extra])
    assert rc == 0
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


# The learned tasks use one-word answers: from random init the end pointer of 2-3 word answers
# takes several times more steps on this budget (EM 56-100 over seeds after 6 epochs) while the
# one-word task reaches EM 94-100 (1.1) and 90-100 (2.0) for data / training seeds 0-3; multi-token
# spans are covered by the offsets test above.
def test_tiny_model_learns_the_span_task_squad11(tmp_path, run_dir):
    rng = random.Random(0)
    make_span_task(tmp_path / "data" / "train-v1.1.json", 400, rng, longest=1)
    make_span_task(tmp_path / "data" / "dev-v1.1.json", 100, rng, longest=1)
    res = _cli(run_dir, "squad", tmp_path / "data", tmp_path / "out", "--epochs", "6", "--seed", "0")
    dev = read_squad(tmp_path / "data" / "dev-v1.1.json", version2=False)
    best = res["best"]["dev"]
    # trivial baseline: the most frequent training answer for every question
    train = read_squad(tmp_path / "data" / "train-v1.1.json", version2=False)
    common = Counter(e.answers[0] for e in train).most_common(1)[0][0]
    baseline = squad_evaluate(dev, {e.qid: common for e in dev})
    assert baseline["exact"] <= 15.0
    assert best["exact"] >= 90.0 and best["f1"] >= 90.0, res["epochs"]
    # predictions.json in the official layout gives the reported scores
    preds = json.loads((tmp_path / "out" / "predictions.json").read_text(encoding="utf-8"))
    assert set(preds) == {e.qid for e in dev} and all(isinstance(v, str) for v in preds.values())
    assert squad_evaluate(dev, preds) == pytest.approx(best)
    model, info = load_span_model(tmp_path / "out" / "best")
    assert info["epoch"] == res["best"]["epoch"] and info["task"] == "squad"
    hf_config = json.loads((tmp_path / "out" / "hf" / "config.json").read_text(encoding="utf-8"))
    assert hf_config["architectures"] == ["ElectraForQuestionAnswering"]
    try:
        import transformers
    except ImportError:
        return
    # the run's hf/ folder is the best epoch's model: same logits on dev windows
    hf = transformers.ElectraForQuestionAnswering.from_pretrained(tmp_path / "out" / "hf").eval()
    tok = load_tokenizer(tmp_path / "out" / "hf")
    feats = featurize(tok, dev[:8], 48, 16)
    s, e = predict_logits(model, feats, tok.pad_id, "cpu")
    with torch.no_grad():
        for f, ids in enumerate(feats.ids):
            out = hf(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([feats.types[f]]))
            assert np.abs(out.start_logits[0].numpy() - s[f]).max() <= 1e-5
            assert np.abs(out.end_logits[0].numpy() - e[f]).max() <= 1e-5


def test_tiny_model_learns_no_answers_squad20(tmp_path, run_dir):
    rng = random.Random(1)
    make_span_task(tmp_path / "data" / "train-v2.0.json", 400, rng, v2=True, longest=1)
    make_span_task(tmp_path / "data" / "dev-v2.0.json", 100, rng, v2=True, longest=1)
    res = _cli(run_dir, "squad_v2", tmp_path / "data", tmp_path / "out", "--epochs", "6", "--seed", "1")
    dev = read_squad(tmp_path / "data" / "dev-v2.0.json", version2=True)
    best = res["best"]["dev"]
    n_no = sum(not e.has_answer for e in dev)
    assert best["NoAns_total"] == n_no and best["HasAns_total"] == len(dev) - n_no
    # trivial baseline: "no answer" for every question scores the share of no-answer questions
    baseline = 100.0 * n_no / len(dev)
    assert 25.0 <= baseline <= 55.0
    assert best["exact"] >= 80.0 and best["best_f1"] >= 80.0, res["epochs"]
    # the files: "" exactly where null_odds exceeds the threshold (0), and the scores they give
    preds = json.loads((tmp_path / "out" / "predictions.json").read_text(encoding="utf-8"))
    odds = json.loads((tmp_path / "out" / "null_odds.json").read_text(encoding="utf-8"))
    assert set(preds) == set(odds) == {e.qid for e in dev}
    assert all((preds[q] == "") == (odds[q] > 0) for q in preds)
    assert squad_evaluate(dev, preds, odds) == pytest.approx(best)


def test_squad_seq_len_defaults_to_384_within_the_pretraining_length():
    cfg = ElectraConfig.preset("tiny", vocab_size=50, max_position_embeddings=512)
    args = build_parser().parse_args(["--checkpoint", "x", "--task", "squad"])
    assert _hyper(args, cfg, trained_len=None).seq_len == 384  # e.g. a HuggingFace checkpoint
    assert _hyper(args, cfg, trained_len=128).seq_len == 128  # our run, pre-trained at 128
    assert _hyper(args, cfg.replace(max_position_embeddings=256), trained_len=None).seq_len == 256
    args = build_parser().parse_args(["--checkpoint", "x", "--task", "squad_v2", "--seq-len", "200"])
    assert _hyper(args, cfg, trained_len=None).seq_len == 200


# ----------------------------------------------------------------------------- HuggingFace export


def test_export_loads_as_electra_for_question_answering(tmp_path, monkeypatch, vocab):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from electra_fast.hf import save_hf_qa

    cfg = ElectraConfig.preset("tiny", vocab_size=40, num_layers=2, generator_num_layers=2, embedding_size=64)
    torch.manual_seed(3)
    model = SpanExtractor.from_electra(Electra(cfg), 2)
    with torch.no_grad():  # perturb LayerNorms and biases too: constants would hide a swapped weight
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    save_hf_qa(model, tmp_path / "hf", tokenizer=load_tokenizer(vocab))
    hf, info = transformers.ElectraForQuestionAnswering.from_pretrained(tmp_path / "hf", output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = torch.randint(5, 40, (3, 19))
    ids[:, 0] = 2
    types = (torch.arange(19) >= 7).long().expand(3, 19).contiguous()
    mask = torch.ones(3, 19, dtype=torch.long)
    mask[2, 11:] = 0
    with torch.no_grad():
        s, e = model(ids, types, mask)
        out = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
    real = mask.bool()
    assert (out.start_logits - s)[real].abs().max() <= 1e-5
    assert (out.end_logits - e)[real].abs().max() <= 1e-5
    assert s.abs().max() > 1e-2  # not trivially equal


# ----------------------------------------------------------------------------- bad files


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")


def _good(v2: bool = False) -> dict:
    return squad_json([("q1", "a cat good red bad", [("red", 11)]), ("q2", "good big dog bad", [("big dog", 5)]),
                       *([("q3", "no marker here", [])] if v2 else [])], v2)


def _bad_data(tmp_path: Path) -> dict:
    cases = {}

    def case(name, train, words, task="squad", dev=None):
        d = tmp_path / re.sub(r"\W+", "_", name)
        names = ("train-v2.0.json", "dev-v2.0.json") if task == "squad_v2" else ("train-v1.1.json", "dev-v1.1.json")
        if train is not None:
            _write(d / names[0], train)
        _write(d / names[1], dev if dev is not None else _good(task == "squad_v2"))
        cases[name] = (["--task", task, "--data-dir", str(d)], words)

    no_answers = _good()
    del no_answers["data"][1]["paragraphs"][0]["qas"][0]["answers"]
    case("missing answers", no_answers, ["train-v1.1.json", "'q2'", "'answers'"])
    no_context = _good()
    del no_context["data"][0]["paragraphs"][0]["context"]
    case("missing context", no_context, ["data[0].paragraphs[0]", "'context'"])
    shifted = _good()
    shifted["data"][1]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 4
    case("answer not at answer_start", _good(), ["dev-v1.1.json", "'q2'", "'big dog'", "answer_start 4", "' big do'"],
         dev=shifted)
    case("no-answer in 1.1", _good(v2=True) | {"version": "1.1"}, ["'q3'", "is_impossible", "--task squad_v2"])
    case("missing id (2.0)", {"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "?"}]}]}]},
         ["data[0].paragraphs[0].qas[0]", "'id'"], task="squad_v2")
    case("not json", '{"data": [', ["train-v1.1.json", "not valid JSON"])
    case("no data key", {"version": "1.1"}, ["the top level", "'data'"])
    case("start not a number", json.loads(json.dumps(_good()).replace('"answer_start": 11', '"answer_start": "11"')),
         ["'q1'", "'answer_start'", "int"])
    case("missing file", None, ["train-v1.1.json", "no such file"])
    cases["no data dir"] = (["--task", "squad_v2"], ["--data-dir", "train-v2.0.json"])
    good = tmp_path / "good"
    _write(good / "train-v1.1.json", _good())
    _write(good / "dev-v1.1.json", _good())
    cases["doc stride 0"] = (["--task", "squad", "--data-dir", str(good), "--doc-stride", "0"], ["--doc-stride", "0"])
    return cases


BAD = ["missing answers", "missing context", "answer not at answer_start", "no-answer in 1.1", "missing id (2.0)",
       "not json", "no data key", "start not a number", "missing file", "no data dir", "doc stride 0"]


@pytest.mark.parametrize("case", BAD)
def test_bad_squad_files_give_one_error_line(tmp_path, run_dir, capsys, case):
    argv, words = _bad_data(tmp_path)[case]
    rc = main(["--checkpoint", str(run_dir), *argv, "--out", str(tmp_path / "out"), "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w in err[0], (w, err[0])


def test_read_squad_keeps_every_gold_answer(tmp_path):
    data = _good(v2=True)
    data["data"][0]["paragraphs"][0]["qas"][0]["answers"].append({"text": "red bad", "answer_start": 11})
    _write(tmp_path / "d.json", data)
    ex = read_squad(tmp_path / "d.json", version2=True)
    assert [(e.qid, e.answers, e.answer_starts, e.has_answer) for e in ex] == [
        ("q1", ["red", "red bad"], [11, 11], True), ("q2", ["big dog"], [5], True), ("q3", [], [], False)]
    with pytest.raises(DataError, match="'q2' occurs twice"):
        data["data"][0]["paragraphs"][0]["qas"][0]["id"] = "q2"
        _write(tmp_path / "d.json", data)
        read_squad(tmp_path / "d.json", version2=True)
