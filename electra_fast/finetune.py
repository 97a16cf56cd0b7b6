"""Fine-tuning: the pre-trained discriminator on GLUE, a user's TSV, SQuAD, or the offline probe.

    python -m electra_fast.finetune --checkpoint runs/tiny --task sst2 --data-dir glue/SST-2
    python -m electra_fast.finetune --checkpoint runs/tiny --task squad --data-dir squad
    python -m electra_fast.finetune --checkpoint runs/tiny --task probe

SQuAD 1.1 / 2.0 (``--task squad`` / ``squad_v2``) live in ``squad.py``: the same optimiser,
layer-wise decay and schedule, a span head instead of the [CLS] classifier. What the tasks share
(the classifier, optimiser, epoch loop, ``best/`` folder) is in ``recipe.py``.

The recipe is the paper's (Clark et al., 2020, section 3.1 and Table 7): the encoder's [CLS]
vector -> dropout -> one linear layer; AdamW (eps 1e-6, weight decay 0.01 except LayerNorm and
biases, global-norm clipping 1.0); 10% warmup and linear decay; layer-wise learning-rate decay
0.8 (0.9 for Large); 3 epochs, batch 32; peak lr 3e-4 / 1e-4 / 5e-5 for Small / Base / Large
(1e-3 for our tiny preset). Layer-wise decay is done right: the head gets lr, the top encoder
layer lr*d, each layer below one more factor d, the embeddings one factor below the lowest
layer (the official run_finetuning.py is off by one and gives the top layer lr*d^2).

``--checkpoint`` is one of our training run folders (its newest readable ckpt-*.pt and its
vocab/) or a HuggingFace ELECTRA discriminator folder on disk (config.json, model.safetensors
or pytorch_model.bin, vocab.txt). Writes ``results.json``, the dev predictions and the best
epoch's model (``best/``, read back by ``load_classifier`` and ``predict.py``) into ``--out``.
``--predict-test`` also writes GLUE's submission files for the task's test.tsv; ``--seeds 1,2,3``
runs once per seed into ``--out/seed-S`` and reports the median, min and max (``run_seeds``).

``--task probe`` needs no data: line pairs from documents of the embedded corpus that the run
held out of pre-training, fine-tuned twice with the same recipe, once from the checkpoint and
once from a randomly initialised encoder of the same config; one line compares the two.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint, load_latest
from .cli import ArgumentParser, HelpFormatter
from .config import ElectraConfig
from .glue import (
    GLUE_TASKS,
    DataError,
    Examples,
    Task,
    compute_metrics,
    label_set_of,
    read_split,
    read_test,
    submission_names,
    user_task,
)
from .hf import HFFormatError, load_hf
from .model import Electra
from .recipe import (
    FinetuneError,
    Hyper,
    SequenceClassifier,
    check_finite,
    load_classifier,
    make_batch,
    make_optimizer,
    save_classifier,
    seed_all,
    train_epoch,
)
from .runfolder import RunFolderError, claim
from .squad import SQUAD_FILES, load_squad_data, run_squad
from .tokenizer import ElectraTokenizer, TokenizerError, load_tokenizer

USER_ERRORS = (FinetuneError, DataError, CheckpointError, TokenizerError, HFFormatError, RunFolderError)

# Table 7 of the paper (tiny is ours: a 128-wide model learns faster with a larger step).
DEFAULT_LR = {"tiny": 1e-3, "small": 3e-4, "base": 1e-4, "large": 5e-5}
DEFAULT_LAYER_DECAY = {"tiny": 0.8, "small": 0.8, "base": 0.8, "large": 0.9}


def model_size(cfg: ElectraConfig) -> str:
    """The preset a config is closest to, by width (picks the default lr and layer decay)."""
    h = cfg.hidden_size
    return "tiny" if h <= 128 else "small" if h <= 256 else "base" if h <= 768 else "large"


# ============================================================================ loading
@dataclass
class Pretrained:
    model: Electra
    tokenizer: ElectraTokenizer
    source: str  # what was loaded, for logs and results.json
    run_dir: Path | None = None  # our run folder (the probe looks for its pre-training holdout)


def load_run(run_dir: str | Path, log=print, checkpoint: str | Path | None = None) -> Pretrained:
    """Our training run folder: the newest readable checkpoint (or exactly ``checkpoint``, one
    ckpt-*.pt of it) and the vocabulary in ``vocab/``."""
    d = Path(run_dir)
    if checkpoint is not None:
        path = Path(checkpoint)
        state = load_checkpoint(path)
    else:
        state, path = load_latest(d, log=log)
    try:
        cfg = ElectraConfig.from_dict(state["config"])
        model = Electra(cfg, state.get("objective", "electra"))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FinetuneError(f"{path}: cannot rebuild the model from this checkpoint ({first[:200]})") from None
    vocab = d / "vocab"
    if not vocab.is_dir():
        raise FinetuneError(f"{d}: no vocab/ folder; the run's vocab.txt / tokenizer.json are needed")
    tok = load_tokenizer(vocab)
    _check_vocab(cfg, tok, f"checkpoint {path}", vocab)
    if state.get("vocab_hash") not in (None, tok.vocab_hash()):
        raise FinetuneError(f"{vocab} does not match the vocabulary checkpoint {path} was trained with "
                            "(same size, different tokens)")
    return Pretrained(model, tok, f"{path} (step {state.get('step')}, objective {model.objective})", d)


def _check_vocab(cfg: ElectraConfig, tok: ElectraTokenizer, what: str, vocab_path: Path) -> None:
    if cfg.vocab_size != tok.vocab_size:
        raise FinetuneError(f"{what} has a {cfg.vocab_size}-token vocabulary but {vocab_path} has "
                            f"{tok.vocab_size} tokens; use the vocabulary the model was trained with")


def load_pretrained(path: str | Path, log=print) -> Pretrained:
    """Our run folder (or one ckpt-*.pt in it), or a HuggingFace ELECTRA discriminator folder."""
    p = Path(path)
    if p.is_file() and p.suffix == ".pt":  # exactly this checkpoint, not the run's newest
        return load_run(p.parent, log=log, checkpoint=p)
    if not p.is_dir():
        raise FinetuneError(f"--checkpoint {path}: no such folder")
    hf_weights = (p / "model.safetensors").is_file() or (p / "pytorch_model.bin").is_file()
    if (p / "config.json").is_file() and hf_weights and not list_checkpoints(p):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model = load_hf(p)
            except KeyError as e:
                raise FinetuneError(f"{p}: missing weight {e.args[0]!r}; not an ELECTRA discriminator") from None
            except RuntimeError as e:
                raise FinetuneError(f"{p}: weights do not fit config.json ({str(e).splitlines()[0][:200]})") from None
        for w in caught:  # the discriminator head is not needed for fine-tuning
            if "discriminator_predictions" not in str(w.message):
                log(f"warning: {w.message}")
        lowercase = True
        tc = p / "tokenizer_config.json"
        if tc.is_file():
            lowercase = bool(json.loads(tc.read_text(encoding="utf-8")).get("do_lower_case", True))
        tok = load_tokenizer(p, lowercase=lowercase)
        _check_vocab(model.config, tok, f"{p / 'config.json'}", p)
        return Pretrained(model, tok, f"{p} (HuggingFace)")
    if list_checkpoints(p):
        return load_run(p, log=log)
    raise FinetuneError(f"--checkpoint {path}: neither a training run folder (ckpt-*.pt + vocab/) nor a "
                        "HuggingFace ELECTRA folder (config.json + model.safetensors + vocab.txt)")


# ============================================================================ data -> tensors
@dataclass
class Encoded:
    """Token ids per example ([CLS] a [SEP] (b [SEP])), segment ids and targets."""

    ids: list[list[int]]
    types: list[list[int]]
    targets: np.ndarray | None  # (N,) int64 class index, float32 for regression; None: unlabeled
    examples: Examples

    def __len__(self) -> int:
        return len(self.ids)


def _pair_lengths(la: int, lb: int, budget: int) -> tuple[int, int]:
    """Longest-first truncation (BERT's _truncate_seq_pair) in closed form."""
    if la + lb <= budget:
        return la, lb
    if la <= lb:
        ka = min(la, (budget + 1) // 2)
        return ka, budget - ka
    kb = min(lb, budget // 2)
    return budget - kb, kb


def encode(tok: ElectraTokenizer, ex: Examples, task: Task, seq_len: int) -> Encoded:
    a = tok.encode_batch(ex.text_a)
    b = tok.encode_batch(ex.text_b) if ex.text_b is not None else None
    ids, types = [], []
    for i, x in enumerate(a):
        if b is None:
            x = x[: seq_len - 2]
            ids.append([tok.cls_id, *x, tok.sep_id])
            types.append([0] * (len(x) + 2))
        else:
            ka, kb = _pair_lengths(len(x), len(b[i]), seq_len - 3)
            ids.append([tok.cls_id, *x[:ka], tok.sep_id, *b[i][:kb], tok.sep_id])
            types.append([0] * (ka + 2) + [1] * (kb + 1))
    if any(v is None for v in ex.labels):  # a test split or new text
        targets = None
    elif task.regression:
        targets = np.array([float(v) for v in ex.labels], dtype=np.float32)
    else:
        index = {label: i for i, label in enumerate(task.labels)}
        targets = np.array([index[v] for v in ex.labels], dtype=np.int64)
    return Encoded(ids, types, targets, ex)


# ============================================================================ training
@torch.no_grad()
def predict_outputs(model: SequenceClassifier, data: Encoded, pad_id: int, device, batch_size: int = 128,
                    bar=None) -> np.ndarray:
    """The model's outputs for every example, in order: (N, K) logits, or (N,) scores for
    regression. ``bar``: a tqdm bar advanced by examples."""
    model.eval()
    out = []
    order = np.argsort([len(x) for x in data.ids], kind="stable")  # similar lengths: less padding
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        out.append(model(*make_batch(data, rows, pad_id, device)).float().cpu().numpy())
        if bar is not None:
            bar.update(len(rows))
    pred = np.concatenate(out)
    result = np.empty_like(pred)
    result[order] = pred
    return result


def predict(model: SequenceClassifier, data: Encoded, pad_id: int, device, batch_size: int = 128) -> np.ndarray:
    """Class indices (or scores for regression) for every example, in order."""
    out = predict_outputs(model, data, pad_id, device, batch_size)
    return out if model.num_outputs == 1 else out.argmax(-1)


def write_predictions(path: Path, task: Task, data: Encoded, pred: np.ndarray) -> None:
    """line (in the dev file), prediction, gold label: one row per dev example."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("line\tprediction\tlabel\n")
        for line, p, gold in zip(data.examples.lines, pred, data.examples.labels):
            shown = f"{float(p):.6g}" if task.regression else task.labels[int(p)]
            f.write(f"{line}\t{shown}\t{gold}\n")


def finetune(model: SequenceClassifier, task: Task, train: Encoded, devs: dict[str, Encoded],
             hp: Hyper, out_dir: Path, *, pad_id: int, device="cpu", tokenizer: ElectraTokenizer | None = None,
             progress: bool = True, log=print, meta: dict | None = None, test: Encoded | None = None) -> dict:
    """Train ``model`` on ``train``, evaluate every epoch on each dev split, keep the best epoch
    (by ``task.metric`` on the first dev split). ``test``: labelled examples read once, after training,
    with the best epoch's weights (``results["best"]["test"]``, ``test_predictions.tsv``). Writes
    results.json, ``<dev>_predictions.tsv`` and ``best/`` into ``out_dir``; returns the results."""
    from tqdm.auto import tqdm

    if test is not None and test.targets is None:
        raise ValueError("finetune(test=...) scores the test split, so it needs labelled examples")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    opt, sched, total, warmup = make_optimizer(model, hp, len(train))
    rng = np.random.default_rng(hp.seed)
    targets = torch.from_numpy(train.targets)
    main_dev = next(iter(devs))
    history, best, best_value = [], None, -math.inf
    t0 = time.time()
    progress = progress and sys.stderr.isatty()  # no \r frames in a log file
    bar = tqdm(total=total, desc=f"fine-tuning {task.title}", unit="step", disable=not progress,
               dynamic_ncols=True)
    say = bar.write if progress else log  # above the live bar, not through it
    try:
        for epoch in range(1, hp.epochs + 1):
            def batch_loss(rows):
                out = model(*make_batch(train, rows, pad_id, device))
                y = targets[rows].to(device)
                return F.mse_loss(out.float(), y) if task.regression else F.cross_entropy(out.float(), y)

            train_loss = train_epoch(model, batch_loss, rng.permutation(len(train)), hp, opt, sched, bar, epoch)
            record = {"epoch": epoch, "train_loss": train_loss, "dev": {}}
            check_finite(model, record["train_loss"], epoch, best and best["epoch"])
            preds = {}
            for name, data in devs.items():
                preds[name] = predict(model, data, pad_id, device, hp.eval_batch_size)
                record["dev"][name] = compute_metrics(task, preds[name], data.targets)
            value = record["dev"][main_dev][task.metric]
            value = -math.inf if math.isnan(value) else value  # a diverged epoch is never the best
            improved = best is None or value > best_value
            history.append(record)
            shown = ", ".join(f"{k}={v:.4f}" for k, v in record["dev"][main_dev].items())
            say(f"epoch {epoch}/{hp.epochs}: train loss {record['train_loss']:.4f}; {main_dev}: {shown}"
                + (" (best)" if improved else ""))
            if improved:
                best_value, best = value, record
                for name, data in devs.items():
                    write_predictions(out_dir / f"{name}_predictions.tsv", task, data, preds[name])
                save_classifier(model, out_dir / "best", {
                    "task": task.name, "labels": list(task.labels) if task.labels else None,
                    "regression": task.regression, "seq_len": hp.seq_len, "epoch": epoch,
                    "text_cols": list(task.test_text_cols or task.text_cols),
                    "dev": record["dev"], **(meta or {})}, tokenizer)
    finally:
        bar.close()
    best_record = {"epoch": best["epoch"], "value": best_value, "dev": best["dev"]}
    if test is not None:  # the best epoch's model as best/ keeps it, like run_task's --predict-test
        best_model, _ = load_classifier(out_dir / "best")
        pred = predict(best_model.to(device), test, pad_id, device, hp.eval_batch_size)
        best_record["test"] = compute_metrics(task, pred, test.targets)
        write_predictions(out_dir / "test_predictions.tsv", task, test, pred)
    results = {
        "task": task.name, "metric": task.metric, "main_dev": main_dev, "best": best_record,
        "final": history[-1]["dev"], "epochs": history,
        "train_examples": len(train), "dev_examples": {k: len(v) for k, v in devs.items()},
        "hyperparameters": {**dataclasses.asdict(hp), "steps": total, "warmup_steps": warmup},
        "train_seconds": round(time.time() - t0, 1), **(meta or {}),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


# ============================================================================ GLUE / TSV runs
def load_task_data(args) -> tuple[Task, Examples, dict[str, Examples], dict[str, Examples]]:
    """The task definition and its train / dev (and with --predict-test, test) examples from
    ``--data-dir``."""
    if args.data_dir is None:
        files = " and ".join(SQUAD_FILES[args.task]) if args.task in SQUAD_FILES else "train.tsv and dev.tsv"
        raise FinetuneError(f"--task {args.task} needs --data-dir (a folder with {files})")
    d = Path(args.data_dir)
    if not d.is_dir():
        raise FinetuneError(f"--data-dir {d}: no such folder")
    if args.task in SQUAD_FILES:
        return load_squad_data(args.task, d)
    if args.task == "tsv":
        if not args.text_cols or args.label_col is None:
            raise FinetuneError("--task tsv needs --text-cols A[,B] and --label-col C (header names or 0-based indices)")
        train_path = next((d / f"train{s}" for s in (".tsv", ".csv") if (d / f"train{s}").is_file()), d / "train.tsv")
        dev_path = next((d / f"dev{s}" for s in (".tsv", ".csv") if (d / f"dev{s}").is_file()), d / "dev.tsv")
        delimiter = args.delimiter or ("," if train_path.suffix == ".csv" else "\t")
        if delimiter in ("\\t", "tab"):
            delimiter = "\t"
        if len(delimiter) != 1:
            raise FinetuneError(f"--delimiter must be one character, got {delimiter!r}")
        task = user_task([c.strip() for c in args.text_cols.split(",")], args.label_col.strip(), args.regression,
                         delimiter, train_path, dev_path)
        train = read_split(train_path, task)
        if not task.regression:
            task = dataclasses.replace(task, labels=label_set_of(train))
            if len(task.labels) < 2:
                raise DataError(f"{train_path}: every label is {task.labels[0]!r}; a classifier needs two or more "
                                "(numeric targets: add --regression)")
    else:
        task = GLUE_TASKS[args.task]
        train = read_split(d / task.train_file, task)
    devs = {Path(f).stem: read_split(d / f, task) for f in task.dev_files}
    tests = {f: read_test(d / f, task) for f in task.test_files} if args.predict_test else {}
    return task, train, devs, tests


def write_submission(path: Path, task: Task, ex: Examples, out: np.ndarray) -> None:
    """GLUE's submission layout: ``index<TAB>prediction`` in the test file's order; label names as
    GLUE's train files spell them, STS-B scores clipped to GLUE's [0, 5]."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("index\tprediction\n")
        for index, o in zip(ex.index, out):
            shown = f"{min(5.0, max(0.0, float(o))):.3f}" if task.regression else task.labels[int(np.argmax(o))]
            f.write(f"{index}\t{shown}\n")


def run_task(args, data: tuple[Task, Examples, dict[str, Examples], dict[str, Examples]], pre: Pretrained,
             hp: Hyper, out: Path, device) -> dict:
    task, train_ex, dev_ex, test_ex = data
    tok = pre.tokenizer
    train = encode(tok, train_ex, task, hp.seq_len)
    devs = {k: encode(tok, v, task, hp.seq_len) for k, v in dev_ex.items()}
    seed_all(hp.seed)
    model = SequenceClassifier.from_electra(pre.model, task.num_outputs, hp.dropout)
    print(f"{task.title}: {len(train)} train examples, "
          + ", ".join(f"{len(v)} {k}" for k, v in devs.items())
          + f"; lr {hp.lr:g}, layer decay {hp.layer_decay:g}, {hp.epochs} epochs, batch {hp.batch_size}")
    res = finetune(model, task, train, devs, hp, out, pad_id=tok.pad_id, device=device, tokenizer=tok,
                   progress=not args.no_progress, meta={"checkpoint": pre.source})
    best = res["best"]
    print(f"{task.title} best dev {task.metric} = {best['value']:.4f} (epoch {best['epoch']}); "
          f"results in {out / 'results.json'}")
    if test_ex:  # --predict-test: the best epoch's model, as dev reports it
        model, _ = load_classifier(out / "best")
        model.to(device)
        for name, ex in test_ex.items():
            outputs = predict_outputs(model, encode(tok, ex, task, hp.seq_len), tok.pad_id, device, hp.eval_batch_size)
            path = out / submission_names(task)[name]
            write_submission(path, task, ex, outputs)
            print(f"{task.title} test predictions ({len(ex)} rows of {name}): {path}")
    return res


# ============================================================================ the probe
# Pairs of lines from held-out documents of the embedded corpus. "next" (the default): is the
# second line the one that follows the first, or a line of another document? "order": were two
# consecutive lines swapped? Label 1 is the document's own order.
PROBE_TASKS = {
    "next": Task("probe", ("first", "second"), "label", ("other", "next"), display="probe (next line)"),
    "order": Task("probe", ("first", "second"), "label", ("swapped", "in_order"), display="probe (line order)"),
}
PROBE_MIN_WORDS = 3


def _doc_tokens(tok: ElectraTokenizer, docs: list[list[str]]) -> list[list[int]]:
    ids = tok.encode_batch([line for doc in docs for line in doc])
    out, pos = [], 0
    for doc in docs:
        out.append([t for line in ids[pos:pos + len(doc)] for t in line])
        pos += len(doc)
    return out


def pretraining_holdout(run_dir: Path | None, docs: list[list[str]], tok: ElectraTokenizer) -> list[int] | None:
    """Indices of the default-corpus documents the run held out of pre-training, or None.

    Rebuilt from the run's data/manifest.json (same corpus fingerprint, seed and holdout count as
    ``data.prepare_dataset``'s draw) and then verified against the holdout shard itself: the
    opening tokens of its examples must occur in the rebuilt documents. Anything that does not
    match gives None (and the probe falls back to a hash split)."""
    if run_dir is None or not (run_dir / "data" / "manifest.json").is_file():
        return None
    from .corpus import documents_fingerprint
    from .data import load_dataset

    try:
        m = json.loads((run_dir / "data" / "manifest.json").read_text(encoding="utf-8"))
        key, n_hold = m["key"], int(m["num_documents"]["holdout"])
        if key["fingerprint"] != "docs:" + documents_fingerprint(docs) or not 0 < n_hold < len(docs):
            return None
        idx = np.sort(np.random.default_rng([key["seed"], 1]).choice(len(docs), n_hold, replace=False))
        holdout = load_dataset(run_dir / "data").splits["holdout"]
    except (OSError, KeyError, ValueError, TypeError):
        return None
    n = 6
    grams = set()
    for stream in _doc_tokens(tok, [docs[i] for i in idx]):
        grams.update(tuple(stream[j:j + n]) for j in range(len(stream) - n + 1))
    checked = found = 0
    for r in range(min(len(holdout), 50)):
        row = [int(t) for t in holdout.input_ids[r, 1:int(holdout.lengths[r])]]
        seg = row[:row.index(tok.sep_id)] if tok.sep_id in row else row
        if len(seg) >= n:
            checked += 1
            found += tuple(seg[:n]) in grams
    return [int(i) for i in idx] if checked and found >= 0.9 * checked else None


def probe_data(pre: Pretrained, n_train: int, n_dev: int, kind: str = "next") -> tuple[Examples, Examples, dict]:
    """The probe's examples from the embedded default corpus (see PROBE_TASKS for ``kind``).

    Split by document: dev documents are the run's pre-training holdout when it can be recovered,
    else a fixed hash split (15%); dev lines found in any other document are left out. Train:
    ``n_train`` pairs, each with a random label. Dev: up to ``n_dev // 2`` pairs, each giving one
    example of either label (exactly balanced). Deterministic: the same examples on every call."""
    from .corpus import default_corpus

    docs = default_corpus()
    held = pretraining_holdout(pre.run_dir, docs, pre.tokenizer)
    if held is not None:
        dev_docs = set(held)
        how = f"the {len(held)} documents held out of pre-training"
    else:
        dev_docs = {i for i, d in enumerate(docs)
                    if int(hashlib.sha256("\n".join(d).encode()).hexdigest()[:8], 16) % 100 < 15}
        how = f"{len(dev_docs)} documents by hash (pre-training may have seen them)"
    # the corpus repeats passages across documents (overlapping help topics, inherited
    # docstrings): a dev line that also occurs in any other document is not used
    outside = {line for i, doc in enumerate(docs) if i not in dev_docs for line in doc}
    doc_lines = [set(doc) for doc in docs]

    def usable(line: str, dev: bool) -> bool:
        return len(line.split()) >= PROBE_MIN_WORDS and not (dev and line in outside)

    def split(which: list[int], dev: bool):  # consecutive pairs and the lines negatives come from
        pairs = [(i, a, b) for i in which for a, b in zip(docs[i], docs[i][1:])
                 if a != b and usable(a, dev) and usable(b, dev)]
        pool = [(i, line) for i in which for line in docs[i] if usable(line, dev)]
        return pairs, pool

    labels = PROBE_TASKS[kind].labels
    rng = np.random.default_rng(20200101)  # fixed: the probe data never depends on --seed

    def example(ex: Examples, pair, keep: bool, pool) -> None:
        """keep: the two lines as the document has them (label 1); else swapped / replaced (0)."""
        _, first, second = pair
        if not keep and kind == "order":
            first, second = second, first
        elif not keep:  # a line of another document of the same split, one without the first line
            while True:  # (the corpus repeats lines: that document could hold the two as a real pair;
                other_doc, second = pool[rng.integers(len(pool))]  # the pair's own document holds it)
                if first not in doc_lines[other_doc]:
                    break
        ex.add([first, second], labels[1] if keep else labels[0], len(ex.lines))

    train_pairs, train_pool = split([i for i in range(len(docs)) if i not in dev_docs], dev=False)
    dev_pairs, dev_pool = split(sorted(dev_docs), dev=True)
    if not train_pairs or not dev_pairs or len({d for d, _ in dev_pool}) < 2:
        raise FinetuneError("the probe found too few sentence pairs in the default corpus")
    train = Examples(Path("<probe train>"), [], [], [], [])
    for k in rng.permutation(len(train_pairs))[:n_train]:
        example(train, train_pairs[k], bool(rng.random() < 0.5), train_pool)
    dev = Examples(Path("<probe dev>"), [], [], [], [])
    chosen = np.sort(rng.permutation(len(dev_pairs))[:max(1, n_dev // 2)])
    for k in chosen:
        example(dev, dev_pairs[k], True, dev_pool)
        example(dev, dev_pairs[k], False, dev_pool)
    info = {"probe": kind, "dev_documents": how, "train_pairs": len(train), "dev_examples": len(dev),
            "dev_pairs": len(chosen)}
    return train, dev, info


def run_probe(args, pre: Pretrained, hp: Hyper, out: Path, device) -> dict:
    task = PROBE_TASKS[args.probe]
    train_ex, dev_ex, info = probe_data(pre, args.probe_train, args.probe_dev, args.probe)
    tok = pre.tokenizer
    train = encode(tok, train_ex, task, hp.seq_len)
    devs = {"dev": encode(tok, dev_ex, task, hp.seq_len)}
    question = ("does the second line follow the first, or come from another document?" if args.probe == "next"
                else "were two consecutive lines swapped?")
    print(f"{task.title}: {question} {info['train_pairs']} train pairs; {info['dev_examples']} dev examples "
          f"({info['dev_pairs']} pairs x both labels) from {info['dev_documents']}; "
          f"lr {hp.lr:g}, layer decay {hp.layer_decay:g}, {hp.epochs} epochs, seq {hp.seq_len}")
    scores = {}
    for name in ("pretrained", "random"):
        if name == "pretrained":
            electra = pre.model
        else:
            seed_all(hp.seed + 1)
            electra = Electra(pre.model.config, pre.model.objective, pre.model.backend)  # the same config, fresh weights
        seed_all(hp.seed)  # same head initialisation and batch order for both encoders
        model = SequenceClassifier.from_electra(electra, task.num_outputs, hp.dropout)
        print(f"--- {name} encoder")
        res = finetune(model, task, train, devs, hp, out / name, pad_id=tok.pad_id, device=device,
                       tokenizer=tok, progress=not args.no_progress,
                       meta={"checkpoint": pre.source, "encoder": name})
        scores[name] = res
    pt, rd = scores["pretrained"]["best"]["value"], scores["random"]["best"]["value"]
    line = (f"probe ({args.probe}) dev accuracy on {info['dev_examples']} examples: pre-trained {pt:.4f} "
            f"vs random init {rd:.4f} ({pt - rd:+.4f})")
    results = {"task": "probe", "metric": "accuracy", "pretrained": pt, "random": rd, "difference": pt - rd,
               "summary": line, "checkpoint": pre.source, **info,
               "hyperparameters": scores["pretrained"]["hyperparameters"],
               "runs": {k: {"best": v["best"], "epochs": v["epochs"], "train_seconds": v["train_seconds"]}
                        for k, v in scores.items()}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(line)
    return results


# ============================================================================ several seeds
def run_one(args, data, pre: Pretrained, hp: Hyper, out: Path, device) -> dict:
    if args.task in SQUAD_FILES:
        return run_squad(args, data, pre, hp, out, device)
    return run_task(args, data, pre, hp, out, device)


def run_seeds(args, data, pre: Pretrained, hp: Hyper, out: Path, device) -> dict:
    """The paper's protocol: one fine-tuning run per seed (--out/seed-S each), then each seed's best
    dev metric, their median, min and max in --out/results.json and one summary line."""
    per_seed = {}
    for seed in args.seed_list:
        print(f"=== seed {seed}")
        res = run_one(args, data, pre, dataclasses.replace(hp, seed=seed), out / f"seed-{seed}", device)
        per_seed[seed] = res
    values = [r["best"]["value"] for r in per_seed.values()]
    first = next(iter(per_seed.values()))
    metric, title = first["metric"], (data[0].title if args.task not in SQUAD_FILES else args.task)
    median = float(np.median(values))
    line = (f"{title} dev {metric} over {len(values)} seeds: median {median:.4f} (min {min(values):.4f}, "
            f"max {max(values):.4f}); " + ", ".join(f"seed {s} {r['best']['value']:.4f}" for s, r in per_seed.items()))
    results = {"task": first["task"], "metric": metric, "seeds": list(per_seed),
               "values": {str(s): r["best"]["value"] for s, r in per_seed.items()},
               "median": median, "min": min(values), "max": max(values), "spread": max(values) - min(values),
               "summary": line, "runs": {str(s): f"seed-{s}" for s in per_seed},
               "hyperparameters": {k: v for k, v in first["hyperparameters"].items() if k != "seed"},
               "checkpoint": pre.source}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(line)
    return results


# ============================================================================ CLI
TASKS = (*GLUE_TASKS, "tsv", *SQUAD_FILES, "probe")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m electra_fast.finetune",
        description="Fine-tune a pre-trained ELECTRA discriminator on a GLUE task, your own TSV/CSV, "
                    "SQuAD 1.1 / 2.0, or the offline probe (pre-trained vs randomly initialised encoder).",
        formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a training run folder (newest good ckpt-*.pt, vocab/) or a HuggingFace ELECTRA folder")
    p.add_argument("--task", required=True, metavar="TASK", help=f"one of: {', '.join(TASKS)}")
    p.add_argument("--data-dir", metavar="DIR", help="folder with train.tsv and dev.tsv in GLUE's layout "
                   "(MNLI: dev_matched.tsv and dev_mismatched.tsv; squad: train-v1.1.json and dev-v1.1.json; "
                   "squad_v2: train-v2.0.json and dev-v2.0.json); not needed for --task probe")
    p.add_argument("--out", metavar="DIR", help="results, dev predictions and best/ (default: runs/finetune-TASK)")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training set")
    p.add_argument("--lr", type=float, help="peak lr (default by model size: tiny 1e-3, small 3e-4, "
                   "base 1e-4, large 5e-5)")
    p.add_argument("--layer-decay", type=float, help="layer-wise lr decay (default 0.8; 0.9 for large)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per optimizer step")
    p.add_argument("--seq-len", type=int, help="maximum tokens per example (default 128; probe 64; squad 384; "
                   "for our own runs at most the run's pre-training length)")
    p.add_argument("--seed", type=int, default=42, help="random seed (head initialisation, batch order)")
    p.add_argument("--seeds", metavar="S1,S2,...", help="fine-tune once per seed (instead of --seed), each into "
                   "--out/seed-S; results.json reports every seed's dev metric, their median, min and max "
                   "(the paper reports the median of 10)")
    p.add_argument("--predict-test", action="store_true",
                   help="GLUE tasks: after training, predict data-dir/test.tsv (MNLI: test_matched.tsv, "
                        "test_mismatched.tsv) with the best epoch and write GLUE's submission files "
                        "(SST-2.tsv, MNLI-m.tsv, ...: index<TAB>prediction) into --out")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout in the encoder and before the head")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (not on LayerNorm, biases)")
    p.add_argument("--warmup-fraction", type=float, default=0.1, help="share of the steps with linear warmup")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true",
                   help="no live progress bar (also off when stderr is not a terminal)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out folder that holds results or other files (results, predictions and "
                        "best/ are replaced; other files are kept)")
    g = p.add_argument_group("--task tsv (your own file: data-dir/train.tsv|csv and dev.tsv|csv, header row)")
    g.add_argument("--text-cols", metavar="A[,B]", help="one or two text columns, by header name or 0-based index")
    g.add_argument("--label-col", metavar="C", help="label column, by header name or 0-based index")
    g.add_argument("--regression", action="store_true", help="numeric labels: one output, MSE loss")
    g.add_argument("--delimiter", help="field separator (default: tab; ',' for .csv files)")
    g = p.add_argument_group("--task squad / squad_v2 (SQuAD's JSON files; writes predictions.json, "
                             "null_odds.json for 2.0, and hf/ for ElectraForQuestionAnswering)")
    g.add_argument("--doc-stride", type=int, default=128, metavar="N",
                   help="tokens between the starts of consecutive windows of a long context")
    g.add_argument("--max-query-length", type=int, default=64, metavar="N", help="question tokens kept")
    g.add_argument("--max-answer-length", type=int, default=30, metavar="N",
                   help="longest predicted answer, in tokens")
    g.add_argument("--n-best", type=int, default=20, metavar="N",
                   help="start and end candidates per window in post-processing")
    g.add_argument("--null-threshold", type=float, default=0.0, metavar="X",
                   help="squad_v2: answer \"\" when null_odds (null score - best span score) exceeds X")
    g = p.add_argument_group("--task probe (line pairs from held-out documents of the embedded corpus)")
    g.add_argument("--probe", default="next", choices=list(PROBE_TASKS),
                   help="next: next line or another document's line; order: swapped or not")
    g.add_argument("--probe-train", type=int, default=3000, metavar="N", help="training pairs")
    g.add_argument("--probe-dev", type=int, default=1000, metavar="N", help="at most N dev examples")
    return p


def _hyper(args, cfg: ElectraConfig, trained_len: int | None = None) -> Hyper:
    """Fine-tuning hyper-parameters from the flags; ``trained_len``: the pre-training sequence
    length when known (our own runs), to say when fine-tuning reaches untrained positions."""
    size = model_size(cfg)
    # the task's usual length (run_squad.py's 384 for SQuAD), within the positions the encoder was trained on
    default_len = min(384 if args.task in SQUAD_FILES else 64 if args.task == "probe" else 128,
                      cfg.max_position_embeddings)
    if args.seq_len is None and trained_len is not None and trained_len < default_len:
        default_len = trained_len
        print(f"note: --seq-len defaults to {trained_len}, the run's pre-training length (positions beyond it "
              "were never trained; pass --seq-len to choose)", file=sys.stderr)
    hp = Hyper(epochs=args.epochs, lr=args.lr if args.lr is not None else DEFAULT_LR[size],
               layer_decay=args.layer_decay if args.layer_decay is not None else DEFAULT_LAYER_DECAY[size],
               batch_size=args.batch_size, seq_len=args.seq_len or default_len,
               seed=args.seed, weight_decay=args.weight_decay, warmup_fraction=args.warmup_fraction,
               dropout=args.dropout)
    squad_counts = ("doc_stride", "max_query_length", "max_answer_length", "n_best")
    for name, value in [(n, getattr(hp, n)) for n in ("epochs", "batch_size", "seq_len")] + [
            (n, getattr(args, n)) for n in squad_counts]:
        if value < 1:
            raise FinetuneError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if hp.seq_len < 4:
        raise FinetuneError(f"--seq-len {hp.seq_len} leaves no room for text after [CLS] and [SEP]")
    if hp.seq_len > cfg.max_position_embeddings:
        raise FinetuneError(f"--seq-len {hp.seq_len} exceeds the model's {cfg.max_position_embeddings} positions")
    if trained_len is not None and hp.seq_len > trained_len:
        print(f"warning: --seq-len {hp.seq_len} is longer than the run's pre-training length ({trained_len}): "
              f"position embeddings {trained_len}-{hp.seq_len - 1} start from their initial values",
              file=sys.stderr)
    if not hp.lr > 0 or not 0 < hp.layer_decay <= 1 or not 0 <= hp.dropout < 1:
        raise FinetuneError("--lr must be > 0, --layer-decay in (0, 1] and --dropout in [0, 1)")
    return hp


def validate_args(args) -> None:
    """Every flag's type, range and finiteness, before any data or checkpoint is read."""
    if args.task not in TASKS:
        raise FinetuneError(f"--task {args.task!r}: unknown; choose one of {', '.join(TASKS)}")
    if args.task != "tsv" and (args.text_cols or args.label_col or args.regression or args.delimiter):
        raise FinetuneError("--text-cols / --label-col / --regression / --delimiter apply to --task tsv only")
    ints = {"epochs": 1, "batch_size": 1, "seq_len": 4, "seed": 0, "doc_stride": 1, "max_query_length": 1,
            "max_answer_length": 1, "n_best": 1, "probe_train": 1, "probe_dev": 2}
    for dest, lo in ints.items():
        v = getattr(args, dest)
        if v is not None and v < lo:
            raise FinetuneError(f"--{dest.replace('_', '-')} must be an integer >= {lo}, got {v}")
    floats = {"lr": ("> 0", lambda v: v > 0), "layer_decay": ("in (0, 1]", lambda v: 0 < v <= 1),
              "dropout": ("in [0, 1)", lambda v: 0 <= v < 1), "weight_decay": (">= 0", lambda v: v >= 0),
              "warmup_fraction": ("in [0, 1]", lambda v: 0 <= v <= 1), "null_threshold": ("", lambda v: True)}
    for dest, (what, ok) in floats.items():
        v = getattr(args, dest)
        if v is not None and not (math.isfinite(v) and ok(v)):
            raise FinetuneError(f"--{dest.replace('_', '-')} must be a finite number {what}".rstrip()
                                + f", got {v}")
    if args.seed >= 2**32:
        raise FinetuneError(f"--seed must be an integer in [0, {2**32 - 1}], got {args.seed}")
    if args.seeds is not None:
        args.seed_list = parse_seeds(args.seeds)
        if args.task == "probe":
            raise FinetuneError("--seeds applies to GLUE, --task tsv and SQuAD (the probe has its own fixed runs)")
    if args.predict_test and args.task not in GLUE_TASKS:
        raise FinetuneError(f"--predict-test writes GLUE submission files; it applies to the GLUE tasks "
                            f"({', '.join(GLUE_TASKS)}), not --task {args.task}")


def parse_seeds(text: str) -> list[int]:
    """--seeds "1,2,3" -> [1, 2, 3]: distinct integers in [0, 2^32)."""
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or any(not 0 <= x < 2**32 for x in seeds) or len(set(seeds)) != len(seeds):
        raise FinetuneError(f"--seeds must be distinct comma-separated integers in [0, {2**32 - 1}], got {text!r}")
    return seeds


# what a fine-tuning run writes into --out (--overwrite deletes these, nothing else); WORK: what
# shows it got somewhere (without them, the folder of a run that stopped early is reused)
FINETUNE_FILES = ("results.json", "*_predictions.tsv", "predictions.json", "null_odds.json", "best", "hf",
                  "pretrained", "random", "seed-*",
                  *sorted({n for t in GLUE_TASKS.values() for n in submission_names(t).values()}))
FINETUNE_WORK = ("results.json", "best", "pretrained", "random", "seed-*")


def _device(flag: str | None) -> torch.device:
    if flag is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(flag)
    except RuntimeError:
        raise FinetuneError(f"--device {flag!r}: not a device (cpu, cuda, cuda:0 ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FinetuneError(f"--device {flag}: CUDA is not available on this machine")
    return dev


def _check_out(out: Path, args) -> None:
    """--out refused before any work: a file, a run (of any kind) or a user's non-empty folder
    without --overwrite, or the --checkpoint run's own folder."""
    src = Path(args.checkpoint)
    src = src.parent if src.suffix == ".pt" else src
    if src.exists() and out.resolve() == src.resolve():
        raise FinetuneError(f"--out {out} is the --checkpoint folder; write fine-tuning results elsewhere")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        claim(out, "fine-tuning", "--out", False, FINETUNE_FILES, work=FINETUNE_WORK)  # raises: names what is there
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out}: is a file, not a folder")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        validate_args(args)
        device = _device(args.device)
        out = Path(args.out or f"runs/finetune-{args.task}")
        _check_out(out, args)
        data = None if args.task == "probe" else load_task_data(args)  # bad data: reported before loading
        pre = load_pretrained(args.checkpoint, log=lambda m: print(m, file=sys.stderr))
        hp = _hyper(args, pre.model.config, pre.model.config.max_seq_length if pre.run_dir is not None else None)
        claim(out, "fine-tuning", "--out", args.overwrite, FINETUNE_FILES, work=FINETUNE_WORK)
        print(f"encoder: {pre.source}; {model_size(pre.model.config)}-sized, "
              f"{pre.model.config.num_layers} layers; device {device}")
        if args.task == "probe":
            run_probe(args, pre, hp, out, device)
        elif args.seeds is not None:
            run_seeds(args, data, pre, hp, out, device)
        else:
            run_one(args, data, pre, hp, out, device)
    except USER_ERRORS as e:
        msg = str(e).strip().splitlines()
        print(f"error: {msg[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
