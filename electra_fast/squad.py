"""Extractive question answering on SQuAD 1.1 and 2.0 (the paper's second benchmark).

    python -m electra_fast.finetune --checkpoint runs/tiny --task squad --data-dir squad
    python -m electra_fast.finetune --checkpoint runs/tiny --task squad_v2 --data-dir squad

Reads SQuAD's own JSON files (``train-v1.1.json`` / ``dev-v1.1.json``, ``train-v2.0.json`` /
``dev-v2.0.json``) and reads in the order the data flows:

1. ``read_squad``: the JSON -> one ``QAExample`` per question, every answer checked against the
   context at its ``answer_start``.
2. ``featurize``: [CLS] question [SEP] context-window [SEP]. A context longer than the window is
   cut into windows whose starts are ``doc_stride`` tokens apart (the official run_squad.py
   meaning of doc_stride); every context token keeps its character span in the context (the
   ``tokenizers`` offsets), and the answer's token span is the target, or [CLS] (position 0) when
   the window does not hold the whole answer or the question has none.
3. ``SpanExtractor``: the fine-tuning encoder with a linear H -> 2 layer on every token: start and
   end logits (HuggingFace's ``ElectraForQuestionAnswering.qa_outputs``); the loss is the mean of
   the start and end cross-entropies, as in BERT's run_squad.py.
4. ``postprocess``: per question, the ``n_best`` highest start and end logits of each window,
   pairs with start <= end, at most ``max_answer_length`` tokens, starting in the window where the
   start token has the most context (run_squad.py's ``_check_is_max_context``); the answer text is
   the context's characters between the pair's offsets.
5. ``squad_evaluate``: the official evaluate-v2.0.py (which scores 1.1 data the same way):
   normalised exact match and token F1, each the maximum over the gold answers.

SQuAD 2.0's no-answer: [CLS]-span scoring (BERT's run_squad.py and HuggingFace's head), not the
answerable classifier of ELECTRA's own qa_tasks.py, so that the fine-tuned model is exactly an
``ElectraForQuestionAnswering``. The null score of a question is the smallest start+end logit
at [CLS] over its windows; ``null_odds`` = null score - best span score. The prediction is ""
when null_odds > ``null_threshold`` (0 by default); the evaluation also reports the threshold
on these odds that maximises dev EM / F1 (``best_exact`` / ``best_f1``), as the official script
does with ``null_odds.json`` as its ``--na-prob-file``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
import string
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import ElectraConfig
from .glue import DataError
from .recipe import (
    Hyper,
    SequenceClassifier,
    check_finite,
    make_batch,
    make_optimizer,
    save_classifier,
    seed_all,
    train_epoch,
)
from .tokenizer import ElectraTokenizer

# --task -> (train file, dev file), SQuAD's own names
SQUAD_FILES = {"squad": ("train-v1.1.json", "dev-v1.1.json"), "squad_v2": ("train-v2.0.json", "dev-v2.0.json")}
# run_squad.py / ELECTRA's qa_tasks.py defaults
MAX_QUERY_LENGTH = 64
MAX_ANSWER_LENGTH = 30
N_BEST = 20
NO_CANDIDATE_ODDS = 1e6  # null_odds of a question whose windows hold no valid span



# ============================================================================ reading
@dataclass
class QAExample:
    """One question: its context and gold answers (empty for a SQuAD 2.0 no-answer question)."""

    qid: str
    question: str
    context: str
    answers: list[str]
    answer_starts: list[int]  # character offsets into context, one per answer

    @property
    def has_answer(self) -> bool:
        return bool(self.answers)


def _need(obj, key: str, kind, path: Path, where: str):
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {where} should be a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise DataError(f"{path}: {where} has no {key!r} key; expected SQuAD's layout "
                        "(data[].paragraphs[].context / qas[].id, question, answers[].text, answer_start)")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{path}: {where}: {key!r} should be {names}, got {type(value).__name__}")
    return value


def read_squad(path: str | Path, version2: bool) -> list[QAExample]:
    """Every question of a SQuAD JSON file, in file order. Any key missing, an answer whose text
    is not the context at its ``answer_start``, or (1.1) a no-answer question raises DataError
    naming the file and the question id."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    examples, seen = [], set()
    for a, article in enumerate(_need(raw, "data", list, path, "the top level")):
        for p, para in enumerate(_need(article, "paragraphs", list, path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = _need(para, "context", str, path, where)
            for q, qa in enumerate(_need(para, "qas", list, path, where)):
                qid = str(_need(qa, "id", (str, int), path, f"{where}.qas[{q}]"))
                at = f"question {qid!r}"
                if qid in seen:
                    raise DataError(f"{path}: {at} occurs twice; question ids must be unique")
                seen.add(qid)
                question = _need(qa, "question", str, path, at)
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise DataError(f"{path}: {at}: 'is_impossible' should be true or false, got {impossible!r}")
                answers = _need(qa, "answers", list, path, at)
                if impossible and not version2:
                    raise DataError(f"{path}: {at} is a no-answer question (is_impossible); "
                                    "SQuAD 2.0 data needs --task squad_v2")
                if impossible and answers:
                    raise DataError(f"{path}: {at} has is_impossible true and {len(answers)} answer(s)")
                if not impossible and not answers:
                    raise DataError(f"{path}: {at} has no answers"
                                    + ("" if version2 else " (SQuAD 1.1 questions all have one)"))
                texts, starts = [], []
                for k, ans in enumerate(answers):
                    text = _need(ans, "text", str, path, f"{at} answers[{k}]")
                    start = _need(ans, "answer_start", int, path, f"{at} answers[{k}]")
                    found = context[start:start + len(text)] if start >= 0 else ""
                    if found != text or not text:
                        raise DataError(f"{path}: {at}: answer {text!r} is not the context at answer_start "
                                        f"{start} (the context there reads {found!r})")
                    texts.append(text)
                    starts.append(start)
                examples.append(QAExample(qid, question, context, texts, starts))
    if not examples:
        raise DataError(f"{path}: no questions")
    return examples


# ============================================================================ windows and offsets
@dataclass
class Features:
    """One row per window: token ids ([CLS] q [SEP] window [SEP]), segment ids, the example it
    belongs to, each token's character span in the context (None outside the context), whether
    this window gives the token its most context, and the target start / end positions."""

    ids: list[list[int]]
    types: list[list[int]]
    example: list[int]
    offsets: list[list[tuple[int, int] | None]]
    max_context: list[list[bool]]
    start: np.ndarray  # (N,) int64, 0 = [CLS]: no answer in this window
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def window_spans(n_tokens: int, room: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window over ``n_tokens`` context tokens, ``room`` tokens each,
    starts ``min(length, doc_stride)`` apart until one reaches the end (run_squad.py)."""
    spans, start = [], 0
    while True:
        length = min(room, n_tokens - start)
        spans.append((start, length))
        if start + length >= n_tokens:
            return spans
        start += min(length, doc_stride)


def _max_context(spans: list[tuple[int, int]], w: int, pos: int) -> bool:
    """run_squad.py's _check_is_max_context: does window ``w`` give context token ``pos`` the
    most context (min of left and right context, ties to the longer window, then the first)?"""
    best, best_score = None, -math.inf
    for i, (start, length) in enumerate(spans):
        end = start + length - 1
        if start <= pos <= end:
            score = min(pos - start, end - pos) + 0.01 * length
            if score > best_score:
                best, best_score = i, score
    return best == w


def answer_token_span(offsets: list[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int] | None:
    """(first, last) context token covering characters [char_start, char_end), or None."""
    first = next((j for j, (_, e) in enumerate(offsets) if e > char_start), None)
    last = next((j for j in range(len(offsets) - 1, -1, -1) if offsets[j][0] < char_end), None)
    if first is None or last is None or last < first:
        return None
    return first, last


def featurize(tok: ElectraTokenizer, examples: list[QAExample], seq_len: int, doc_stride: int,
              max_query_length: int = MAX_QUERY_LENGTH, for_eval: bool = True) -> Features:
    """Windows of every example (see the module docstring). The target of a question with an
    answer is its first answer (training files hold one). ``for_eval=False`` leaves ``offsets``
    and ``max_context`` empty: training needs only ids and targets."""
    max_query_length = min(max_query_length, (seq_len - 3) // 2)  # the context always gets room
    if max_query_length < 1:
        raise DataError(f"--seq-len {seq_len} leaves no room for a question and a context")
    enc = tok.tokenizer.encode_batch([e.question for e in examples], add_special_tokens=False)
    contexts = list(dict.fromkeys(e.context for e in examples))  # SQuAD asks ~5 questions per paragraph
    encoded = dict(zip(contexts, tok.tokenizer.encode_batch(contexts, add_special_tokens=False)))
    f = Features([], [], [], [], [], [], [])
    starts, ends = [], []
    for i, (ex, q) in enumerate(zip(examples, enc)):
        q_ids = q.ids[:max_query_length]
        c = encoded[ex.context]
        c_ids, c_off = c.ids, [tuple(o) for o in c.offsets]
        room = seq_len - len(q_ids) - 3
        span = None
        if ex.has_answer:
            span = answer_token_span(c_off, ex.answer_starts[0], ex.answer_starts[0] + len(ex.answers[0]))
        spans = window_spans(len(c_ids), room, doc_stride)
        head = len(q_ids) + 2  # [CLS] q [SEP]
        for w, (s, n) in enumerate(spans):
            f.ids.append([tok.cls_id, *q_ids, tok.sep_id, *c_ids[s:s + n], tok.sep_id])
            f.types.append([0] * head + [1] * (n + 1))
            f.example.append(i)
            if for_eval:
                f.offsets.append([None] * head + c_off[s:s + n] + [None])
                f.max_context.append([False] * head + [_max_context(spans, w, s + j) for j in range(n)] + [False])
            if span is not None and s <= span[0] and span[1] < s + n:
                starts.append(head + span[0] - s)
                ends.append(head + span[1] - s)
            else:
                starts.append(0)
                ends.append(0)
    f.start, f.end = np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)
    return f


# ============================================================================ the model
class SpanExtractor(SequenceClassifier):
    """The fine-tuning encoder + a linear layer H -> 2 on every token: (start, end) logits.
    ``classifier`` is HuggingFace's ``qa_outputs``; as there (and in run_squad.py), no dropout
    between the encoder and it. The layer-wise lr groups treat it as the head."""

    def __init__(self, config: ElectraConfig, num_outputs: int = 2, dropout: float = 0.1):
        if num_outputs != 2:
            raise ValueError(f"a span head has 2 outputs (start, end), not {num_outputs}")
        super().__init__(config, 2, dropout)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):  # -> (B, T), (B, T)
        logits = self.classifier(self.hidden(input_ids, token_type_ids, attention_mask))  # (B, T, 2)
        return logits[..., 0], logits[..., 1]


def span_loss(start_logits, end_logits, mask, start, end) -> torch.Tensor:
    """Mean of the start and end cross-entropies over the real (unpadded) tokens."""
    pad = mask == 0
    s = start_logits.float().masked_fill(pad, -1e4)
    e = end_logits.float().masked_fill(pad, -1e4)
    return (F.cross_entropy(s, start) + F.cross_entropy(e, end)) / 2


@torch.no_grad()
def predict_logits(model: SpanExtractor, feats: Features, pad_id: int, device,
                   batch_size: int = 128) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start and end logits of every window, each trimmed to the window's own length."""
    model.eval()
    starts: list = [None] * len(feats)
    ends: list = [None] * len(feats)
    order = np.argsort([len(x) for x in feats.ids], kind="stable")
    for b in range(0, len(order), batch_size):
        rows = order[b:b + batch_size]
        s, e = model(*make_batch(feats, rows, pad_id, device))
        s, e = s.float().cpu().numpy(), e.float().cpu().numpy()
        for j, r in enumerate(rows):
            n = len(feats.ids[r])
            starts[r], ends[r] = s[j, :n], e[j, :n]
    return starts, ends


# ============================================================================ post-processing
def postprocess(examples: list[QAExample], feats: Features, start_logits: list[np.ndarray],
                end_logits: list[np.ndarray], *, version2: bool, n_best: int = N_BEST,
                max_answer_length: int = MAX_ANSWER_LENGTH,
                null_threshold: float = 0.0) -> tuple[dict[str, str], dict[str, float]]:
    """(predictions {qid: text}, null_odds {qid: null score - best span score}; empty for 1.1)."""
    windows = collections.defaultdict(list)
    for f, i in enumerate(feats.example):
        windows[i].append(f)
    preds, odds = {}, {}
    for i, ex in enumerate(examples):
        best, best_text, null = -math.inf, "", math.inf
        for f in windows[i]:
            s, e = start_logits[f], end_logits[f]
            null = min(null, float(s[0] + e[0]))
            off, top = feats.offsets[f], feats.max_context[f]
            si = np.argsort(-s, kind="stable")[:n_best]
            ei = np.argsort(-e, kind="stable")[:n_best]
            si = si[[off[a] is not None and top[a] for a in si]]
            ei = ei[[off[b] is not None for b in ei]]
            if not len(si) or not len(ei):
                continue
            score = s[si][:, None] + e[ei][None, :]  # (n_start, n_end)
            length = ei[None, :] - si[:, None] + 1
            score = np.where((length >= 1) & (length <= max_answer_length), score, -np.inf)
            a, b = np.unravel_index(np.argmax(score), score.shape)
            if score[a, b] > best:
                best = float(score[a, b])
                best_text = ex.context[off[si[a]][0]:off[ei[b]][1]]
        if version2:
            odds[ex.qid] = null - best if best > -math.inf else NO_CANDIDATE_ODDS
            preds[ex.qid] = "" if odds[ex.qid] > null_threshold else best_text
        else:
            preds[ex.qid] = best_text
    return preds, odds


# ============================================================================ metrics (evaluate-v2.0.py)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, drop the articles a / an / the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def f1(gold: str, pred: str) -> float:
    """Token F1 of the normalised answers; 1 when both are empty (no-answer agreed), 0 when one is."""
    g = normalize_answer(gold).split() if gold else []
    p = normalize_answer(pred).split() if pred else []
    if not g or not p:
        return float(g == p)
    same = sum((collections.Counter(g) & collections.Counter(p)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def best_threshold(preds: dict[str, str], scores: dict[str, float], na_probs: dict[str, float],
                   has_ans: dict[str, bool]) -> tuple[float, float]:
    """(best score in %, its threshold): questions with na_prob above the threshold are answered
    "no answer"; sweeping it up from "all no-answer" in na_prob order, as evaluate-v2.0.py does."""
    cur = best = sum(1 for k in has_ans if not has_ans[k])
    thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        cur += scores[qid] if has_ans[qid] else (-1 if preds[qid] else 0)
        if cur > best:
            best, thresh = cur, na_probs[qid]
    return 100.0 * best / len(scores), thresh


def squad_evaluate(examples: list[QAExample], preds: dict[str, str], na_probs: dict[str, float] | None = None,
                   na_prob_thresh: float = 1.0) -> dict[str, float]:
    """evaluate-v2.0.py: exact / f1 / total in %, HasAns_* and NoAns_* breakdowns when the data
    has such questions, and with ``na_probs`` (our null_odds) best_exact / best_f1 and their
    thresholds. A question missing from ``preds`` scores 0. Gold answers that normalise to
    nothing are dropped; a question without gold answers is right only for the prediction ""."""
    exact_raw, f1_raw, has_ans = {}, {}, {}
    for ex in examples:
        golds = [a for a in ex.answers if normalize_answer(a)] or [""]
        has_ans[ex.qid] = ex.has_answer
        if ex.qid not in preds:
            exact_raw[ex.qid] = f1_raw[ex.qid] = 0.0
            continue
        exact_raw[ex.qid] = float(max(exact_match(g, preds[ex.qid]) for g in golds))
        f1_raw[ex.qid] = max(f1(g, preds[ex.qid]) for g in golds)
    probs = na_probs if na_probs is not None else {k: 0.0 for k in preds}

    def thresholded(raw):
        return {k: float(not has_ans[k]) if probs.get(k, 0.0) > na_prob_thresh else v for k, v in raw.items()}

    exact, f1s = thresholded(exact_raw), thresholded(f1_raw)

    def summary(ids):
        n = len(ids)
        return {"exact": 100.0 * sum(exact[k] for k in ids) / n, "f1": 100.0 * sum(f1s[k] for k in ids) / n,
                "total": n}

    out = summary(list(exact))
    for name, ids in (("HasAns", [k for k in exact if has_ans[k]]), ("NoAns", [k for k in exact if not has_ans[k]])):
        if ids:
            out.update({f"{name}_{k}": v for k, v in summary(ids).items()})
    if na_probs is not None:
        full = {k: preds.get(k, "") for k in exact}
        out["best_exact"], out["best_exact_thresh"] = best_threshold(full, exact_raw, na_probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = best_threshold(full, f1_raw, na_probs, has_ans)
    return out


# ============================================================================ training
def save_span_model(model: SpanExtractor, folder: Path, meta: dict, tokenizer: ElectraTokenizer | None) -> None:
    save_classifier(model, folder, {"head": "span", **meta}, tokenizer)


def load_span_model(folder: str | Path) -> tuple[SpanExtractor, dict]:
    """A span model written by a squad run's ``best/`` (eval mode) and its config.json."""
    from safetensors.torch import load_file

    folder = Path(folder)
    info = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if info.get("head") != "span":
        raise DataError(f"{folder}: not a question-answering model (config.json has no \"head\": \"span\")")
    cfg = ElectraConfig.from_dict(info["electra_config"])
    model = SpanExtractor(cfg, dropout=cfg.dropout)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), info


@dataclass
class SquadOptions:
    version2: bool
    doc_stride: int = 128
    max_query_length: int = MAX_QUERY_LENGTH
    max_answer_length: int = MAX_ANSWER_LENGTH
    n_best: int = N_BEST
    null_threshold: float = 0.0


def evaluate(model: SpanExtractor, examples: list[QAExample], feats: Features, opts: SquadOptions, pad_id: int,
             device, batch_size: int = 128) -> tuple[dict, dict[str, str], dict[str, float]]:
    """(metrics, predictions, null_odds) of ``model`` on a split."""
    s, e = predict_logits(model, feats, pad_id, device, batch_size)
    preds, odds = postprocess(examples, feats, s, e, version2=opts.version2, n_best=opts.n_best,
                              max_answer_length=opts.max_answer_length, null_threshold=opts.null_threshold)
    return squad_evaluate(examples, preds, odds if opts.version2 else None), preds, odds


def finetune_squad(model: SpanExtractor, train: Features, dev: tuple[list[QAExample], Features], hp: Hyper,
                   opts: SquadOptions, out_dir: Path, *, pad_id: int, device="cpu",
                   tokenizer: ElectraTokenizer | None = None, progress: bool = True, log=print,
                   meta: dict | None = None) -> dict:
    """Train on the windows of ``train``; after every epoch predict the dev questions and keep the
    best epoch by F1 (1.1) or best_f1 (2.0). Writes predictions.json (and null_odds.json),
    best/ and results.json into ``out_dir``; returns the results."""
    from tqdm.auto import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    opt, sched, total, warmup = make_optimizer(model, hp, len(train))
    rng = np.random.default_rng(hp.seed)
    start_t, end_t = torch.from_numpy(train.start), torch.from_numpy(train.end)
    dev_ex, dev_feats = dev
    metric = "best_f1" if opts.version2 else "f1"
    history, best, best_value = [], None, -math.inf
    t0 = time.time()
    title = "SQuAD 2.0" if opts.version2 else "SQuAD 1.1"
    progress = progress and sys.stderr.isatty()  # no \r frames in a log file
    bar = tqdm(total=total, desc=f"fine-tuning {title}", unit="step", disable=not progress, dynamic_ncols=True)
    say = bar.write if progress else log
    try:
        for epoch in range(1, hp.epochs + 1):
            def batch_loss(rows):
                ids, types, mask = make_batch(train, rows, pad_id, device)
                s, e = model(ids, types, mask)
                return span_loss(s, e, mask, start_t[rows].to(device), end_t[rows].to(device))

            train_loss = train_epoch(model, batch_loss, rng.permutation(len(train)), hp, opt, sched, bar, epoch)
            check_finite(model, train_loss, epoch, best and best["epoch"])
            metrics, preds, odds = evaluate(model, dev_ex, dev_feats, opts, pad_id, device, hp.eval_batch_size)
            record = {"epoch": epoch, "train_loss": train_loss, "dev": metrics}
            value = -math.inf if math.isnan(record["train_loss"]) else metrics[metric]
            improved = best is None or value > best_value
            history.append(record)
            shown = ", ".join(f"{k}={v:.2f}" for k, v in metrics.items() if k in ("exact", "f1", "best_exact",
                                                                              "best_f1", "best_f1_thresh"))
            say(f"epoch {epoch}/{hp.epochs}: train loss {record['train_loss']:.4f}; dev: {shown}"
                + (" (best)" if improved else ""))
            if improved:
                best_value, best = value, record
                _write_json(out_dir / "predictions.json", preds)
                if opts.version2:
                    _write_json(out_dir / "null_odds.json", odds)
                save_span_model(model, out_dir / "best", {
                    "task": "squad_v2" if opts.version2 else "squad", "seq_len": hp.seq_len, "epoch": epoch,
                    "squad": dataclasses.asdict(opts), "dev": metrics, **(meta or {})}, tokenizer)
    finally:
        bar.close()
    results = {
        "task": "squad_v2" if opts.version2 else "squad", "metric": metric,
        "best": {"epoch": best["epoch"], "value": best_value, "dev": best["dev"]},
        "final": history[-1]["dev"], "epochs": history,
        "train_windows": len(train), "dev_questions": len(dev_ex), "dev_windows": len(dev_feats),
        "hyperparameters": {**dataclasses.asdict(hp), **dataclasses.asdict(opts), "steps": total,
                            "warmup_steps": warmup},
        "train_seconds": round(time.time() - t0, 1), **(meta or {}),
    }
    _write_json(out_dir / "results.json", results)
    return results


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_squad_data(task: str, data_dir: Path) -> tuple[list[QAExample], list[QAExample]]:
    """(train, dev) questions of ``--task squad`` / ``squad_v2`` from SQuAD's own file names."""
    train_name, dev_name = SQUAD_FILES[task]
    version2 = task == "squad_v2"
    return read_squad(data_dir / train_name, version2), read_squad(data_dir / dev_name, version2)


def run_squad(args, data: tuple[list[QAExample], list[QAExample]], pre, hp: Hyper, out: Path, device) -> dict:
    """The CLI's --task squad / squad_v2: windows, fine-tuning, and the HF export of the best epoch."""
    from .hf import save_hf_qa

    train_ex, dev_ex = data
    opts = SquadOptions(version2=args.task == "squad_v2", doc_stride=args.doc_stride,
                        max_query_length=args.max_query_length, max_answer_length=args.max_answer_length,
                        n_best=args.n_best, null_threshold=args.null_threshold)
    tok = pre.tokenizer
    train = featurize(tok, train_ex, hp.seq_len, opts.doc_stride, opts.max_query_length, for_eval=False)
    dev = featurize(tok, dev_ex, hp.seq_len, opts.doc_stride, opts.max_query_length)
    seed_all(hp.seed)
    model = SpanExtractor.from_electra(pre.model, 2, hp.dropout)
    title = "SQuAD 2.0" if opts.version2 else "SQuAD 1.1"
    print(f"{title}: {len(train_ex)} train questions in {len(train)} windows, {len(dev_ex)} dev questions in "
          f"{len(dev)} windows (seq {hp.seq_len}, doc stride {opts.doc_stride}); lr {hp.lr:g}, "
          f"layer decay {hp.layer_decay:g}, {hp.epochs} epochs, batch {hp.batch_size}")
    res = finetune_squad(model, train, (dev_ex, dev), hp, opts, out, pad_id=tok.pad_id, device=device,
                         tokenizer=tok, progress=not args.no_progress, meta={"checkpoint": pre.source})
    best_model, _ = load_span_model(out / "best")
    save_hf_qa(best_model, out / "hf", tokenizer=tok)
    m = res["best"]["dev"]
    line = f"{title} best dev (epoch {res['best']['epoch']}): EM {m['exact']:.2f}, F1 {m['f1']:.2f}"
    if opts.version2:
        line += (f"; best_exact {m['best_exact']:.2f}, best_f1 {m['best_f1']:.2f} "
                 f"(null_odds threshold {m['best_f1_thresh']:.3f})")
    print(line + f"; {out / 'predictions.json'}, {out / 'hf'} (ElectraForQuestionAnswering)")
    return res
