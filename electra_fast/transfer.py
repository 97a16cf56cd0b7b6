"""Does pre-training transfer? ``python -m electra_fast.bench --transfer``.

Pre-trains ELECTRA and the MLM baseline at equal compute (model FLOPs, ``ElectraConfig.flops_per_token``:
the cheaper objective gets more steps), then fine-tunes each, and a randomly initialised control of
the same size, on real-text tasks the pre-training corpus never contains, with several seeds, next to
a bag-of-words classifier for scale.

The tasks are built offline from the docstrings of the numpy and torch installed with this package
(the default pre-training corpus is the standard library's documentation and source comments and the
docstrings of a few of torch's own requirements, never numpy's or torch's, so none of this text was
seen; ``corpus.CORPUS_PACKAGES``):

- ``topic``: which subpackage (torch.nn, torch.distributed, numpy.polynomial, ...) a passage of two
  consecutive documentation sentences comes from;
- ``order``: two consecutive sentences, as written or swapped;
- ``next``: a sentence and the one that follows it, or one from another module;
- ``words``: a sentence as written or with two neighbouring words swapped (acceptability, as CoLA).

"Consecutive" means within one docstring (:func:`source_documents`).

Every task is split by whole module file (a file's sentences are all train, all dev or all test), so
no passage of a test file was fine-tuned on. The examples depend on the installed numpy and torch
versions; results record them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import json
import multiprocessing
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import PRESETS, ElectraConfig
from .corpus import _import_quietly, _submodules, module_docstrings
from .finetune import encode, finetune, load_run
from .glue import Examples, Task
from .model import Electra
from .recipe import Hyper, SequenceClassifier, seed_all

# Subpackages with many module files each (so the split by file leaves every label in every split)
# and enough prose; a passage's label is the subpackage its module belongs to.
TOPICS = ("torch.nn", "torch.distributed", "torch.fx", "torch.utils", "torch.optim", "torch.distributions",
          "torch.onnx", "numpy.polynomial", "numpy.lib")
_SOURCE_PACKAGES = ("torch", "numpy")
_SKIP_PARTS = ("testing", "tests", "_C", "_vendor", "distutils")
_MIN_WORDS = 4
_TASKS = {
    "topic": Task("topic", ("text",), "label", TOPICS, display="topic (which subpackage)"),
    "order": Task("order", ("first", "second"), "label", ("swapped", "in_order"), display="order (sentence pair)"),
    "next": Task("next", ("first", "second"), "label", ("other", "next"), display="next (sentence pair)"),
    "words": Task("words", ("text",), "label", ("swapped", "as_written"), display="words (word order)"),
}
TASK_NAMES = tuple(_TASKS)
_SWAP_WITHIN = 12  # "words" swaps two neighbours among a sentence's first 12 words: inside a 32-token example
SPLITS = ("train", "dev", "test")
# Examples per task (train, dev, test; a task with fewer takes all it has: topic has ~6,100 training
# passages). 8,000 training pairs, not 2,000: at 2,000 every encoder stayed within a few points of
# chance on the sentence-pair tasks (dev accuracy flat over the epochs), so the benchmark measured the
# noise floor there; at 8,000 both pre-trained encoders lead random init on both (benchmarks/RESULTS.md,
# "Session 11"). All 10,544 `order` pairs do not widen ELECTRA's lead there ("Session 12").
# 2,000 test examples: the binomial sd of one accuracy is ~1.1 points, against a 3-point question.
DEFAULT_SIZES = (8000, 500, 2000)
DEFAULT_PRETRAIN_SEED = 1234  # `python -m electra_fast.train`'s own --seed default: the default run


@dataclass
class TaskData:
    task: Task
    splits: dict[str, Examples]  # train, dev, test

    def fingerprint(self) -> str:
        """A hash of every example and label: fine-tunings of other examples are never reused."""
        h = hashlib.sha256()
        for s in SPLITS:
            ex = self.splits[s]
            h.update(json.dumps([s, ex.text_a, ex.text_b, ex.labels]).encode())
        return h.hexdigest()[:16]

    def sizes(self) -> str:
        return "/".join(str(len(self.splits[s].labels)) for s in SPLITS)


def _split_of(module: str) -> str:
    """train 70% / dev 10% / test 20% of module files, by a hash of the module's name."""
    r = int(hashlib.sha256(module.encode()).hexdigest()[:8], 16) % 100
    return "train" if r < 70 else "dev" if r < 80 else "test"


def source_documents() -> list[tuple[str, list[str]]]:
    """(module name, sentences) for every docstring of numpy's and torch's public modules.

    One docstring each, not the pre-training corpus's grouping of a module's docstrings into one
    document: a pair of "consecutive sentences" must not run from the end of one function's
    docstring into the start of the next one's, which the pair tasks would label as in order (or
    as following) with nothing in the text to show it."""
    names = []
    for pkg in _SOURCE_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        names += [n for n in [pkg, *_submodules(pkg + ".", list(spec.submodule_search_locations))]
                  if not any(part in n.split(".") for part in _SKIP_PARTS)]
    # every module imported before any is read: importing one can add members to another, so reading
    # while importing would make the documents depend on what the process had imported before
    modules = [(n, sys.modules.get(n) or _import_quietly(n)) for n in names]
    docs, seen = [], set()
    for name, module in modules:
        for _, doc in module_docstrings(module) if module is not None else []:
            key = "\0".join(doc)
            if doc and key not in seen:  # a docstring reached twice (aliases, inheritance) counts once
                seen.add(key)
                docs.append((name, doc))
    return docs


def _topic_of(module: str) -> str | None:
    return next((t for t in TOPICS if module == t or module.startswith(t + ".")), None)


def _pair_examples(kind: str, pairs: list[tuple[str, str, str]], n: int, rng) -> Examples:
    """``n`` of the consecutive (module, first, second) pairs, half of them kept as written (label 1)
    and half changed: "order" swaps the two sentences, "next" replaces the second by a sentence of
    another module (of the same split)."""
    negative, positive = _TASKS[kind].labels
    chosen = rng.permutation(len(pairs))[:n]
    keep = rng.permutation(len(chosen)) < (len(chosen) + 1) // 2
    ex = Examples(Path(f"<{kind}>"), [], [], [], [])
    for k, as_written in zip(chosen, keep):
        module, a, b = pairs[k]
        if not as_written and kind == "order":
            a, b = b, a
        while not as_written and kind == "next":
            other, _, b = pairs[rng.integers(len(pairs))]
            if other != module:
                break
        ex.text_a.append(a)
        ex.text_b.append(b)
        ex.labels.append(positive if as_written else negative)
        ex.lines.append(len(ex.lines))
    return ex


def _word_order_examples(pairs: list[tuple[str, str, str]], n: int, rng) -> Examples:
    """``n`` distinct sentences, half as written (label 1), half with two neighbouring words swapped."""
    sentences = sorted({a for _, a, _ in pairs})
    ex = Examples(Path("<words>"), [], None, [], [])
    for k in rng.permutation(len(sentences)):
        words = sentences[k].split()
        as_written = len(ex.labels) % 2 == 0
        if not as_written:
            j = int(rng.integers(0, min(len(words), _SWAP_WITHIN) - 1))
            if words[j] == words[j + 1]:
                continue
            words[j], words[j + 1] = words[j + 1], words[j]
        ex.text_a.append(" ".join(words))
        ex.labels.append("as_written" if as_written else "swapped")
        ex.lines.append(len(ex.lines))
        if len(ex.labels) == n:
            break
    return ex


def build_tasks(n_train: int = DEFAULT_SIZES[0], n_dev: int = DEFAULT_SIZES[1], n_test: int = DEFAULT_SIZES[2],
                seed: int = 0) -> dict[str, TaskData]:
    """Every task, each with train/dev/test drawn from disjoint module files; deterministic for a
    given ``seed`` and installed numpy/torch. Topic examples are drawn class-balanced where a split
    has enough of a class; the two-label tasks are exactly balanced."""
    rng = np.random.default_rng(seed)
    want = {"train": n_train, "dev": n_dev, "test": n_test}
    pairs = {s: [] for s in SPLITS}  # (module, first, second)
    for module, doc in source_documents():
        lines = [line for line in doc if len(line.split()) >= _MIN_WORDS]
        pairs[_split_of(module)] += [(module, a, b) for a, b in zip(lines, lines[1:]) if a != b]
    # libraries repeat sentences across files (numpy's six polynomial classes, inherited docstrings):
    # a dev or test pair with a sentence that train also has is left out
    seen = {line for _, a, b in pairs["train"] for line in (a, b)}
    for s in ("dev", "test"):
        pairs[s] = [p for p in pairs[s] if p[1] not in seen and p[2] not in seen]
    out = {}
    # topic: one passage (two consecutive sentences) per example, round-robin over the classes
    topic = {s: Examples(Path(f"<topic {s}>"), [], None, [], []) for s in SPLITS}
    for s in SPLITS:
        by_class = {t: [] for t in TOPICS}
        for module, a, b in pairs[s]:
            t = _topic_of(module)
            if t is not None:
                by_class[t].append(f"{a} {b}")
        pools = [list(rng.permutation(len(by_class[t]))) for t in TOPICS]
        ex = topic[s]
        while len(ex.labels) < want[s] and any(pools):
            for t, pool in zip(TOPICS, pools):
                if pool and len(ex.labels) < want[s]:
                    ex.text_a.append(by_class[t][pool.pop()])
                    ex.labels.append(t)
                    ex.lines.append(len(ex.lines))
    out["topic"] = TaskData(_TASKS["topic"], topic)
    for kind in ("order", "next"):
        out[kind] = TaskData(_TASKS[kind], {s: _pair_examples(kind, pairs[s], want[s], rng) for s in SPLITS})
    out["words"] = TaskData(_TASKS["words"], {s: _word_order_examples(pairs[s], want[s], rng) for s in SPLITS})
    for name, data in out.items():
        for s in SPLITS:
            if len(set(data.splits[s].labels)) < len(data.task.labels):
                raise RuntimeError(f"transfer task {name}: the {s} split lacks a label "
                                   f"({len(data.splits[s].labels)} examples); numpy/torch too old?")
    return out


# ============================================================================ pre-training
@dataclass
class Encoder:
    """One of the compared encoders: a pre-trained run or the random-init control."""

    name: str
    electra: Electra | None  # None: the random-init control (fresh weights per fine-tuning seed)
    info: dict


def _stamp(cmd: list[str]) -> str:
    """What a finished pre-training is reused for: its command and the presets it read its defaults from
    (a changed preset default, e.g. the tiny learning rate, retrains under the same command)."""
    return shlex.join(cmd) + "\n" + json.dumps(PRESETS, sort_keys=True)


def _train(out: Path, args: list[str], log) -> None:
    """``python -m electra_fast.train`` into ``out`` (resumed when a previous call was interrupted)."""
    cmd = [sys.executable, "-m", "electra_fast.train", "--out", str(out), "--no-progress", "--log-every", "100", *args]
    done = out / "transfer-done"
    if done.is_file() and done.read_text(encoding="utf-8") == _stamp(cmd):
        log(f"  {out}: already trained by this command, reused")
        return
    if out.exists():
        cmd += ["--overwrite"]
    log("  $ " + shlex.join(cmd))
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (out / "train.log").write_text(proc.stdout, encoding="utf-8")
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-5:])
        raise RuntimeError(f"pre-training into {out} failed (exit {proc.returncode}):\n{tail}")
    summary = [line for line in proc.stdout.splitlines() if line.startswith(("done", "held-out", "eval"))]
    log(f"  {time.time() - t0:.0f} s; " + (" | ".join(summary)[-400:] if summary else "done"))
    (out / "transfer-done").write_text(_stamp(cmd[:-1] if cmd[-1] == "--overwrite" else cmd), encoding="utf-8")


def _without(args: list[str], *flags: str) -> list[str]:
    """``args`` minus the given flags and their values (``--flag V`` or ``--flag=V``)."""
    kept, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif a.split("=", 1)[0] not in flags:
            kept.append(a)
    return kept


def equal_compute_steps(cfg: ElectraConfig, electra_steps: int) -> int:
    """MLM steps with the model FLOPs of ``electra_steps`` ELECTRA steps of the same config and batch."""
    return max(1, round(electra_steps * cfg.flops_per_token() / cfg.flops_per_token(objective="mlm")))


def pretrain(out: Path, train_args: list[str], seed: int, log=print) -> list[Encoder]:
    """ELECTRA with ``train_args``, then the MLM baseline with the same arguments and equal model FLOPs."""
    log("pre-training ELECTRA")
    _train(out / "electra", [*train_args, "--seed", str(seed)], log)
    electra = load_run(out / "electra", log=lambda m: None)
    cfg = electra.model.config
    steps = equal_compute_steps(cfg, cfg.train_steps)
    warmup = max(0, round(cfg.warmup_steps * steps / cfg.train_steps))
    ratio = cfg.flops_per_token() / cfg.flops_per_token(objective="mlm")
    log(f"pre-training the MLM baseline at equal compute: {steps} steps ({ratio:.2f} x ELECTRA's {cfg.train_steps}: "
        f"{cfg.flops_per_token() / 1e6:.1f} vs {cfg.flops_per_token(objective='mlm') / 1e6:.1f} MFLOP per token)")
    _train(out / "mlm", [*_without(train_args, "--steps", "--warmup"), "--seed", str(seed), "--objective", "mlm",
                         "--steps", str(steps), "--warmup", str(warmup)], log)
    mlm = load_run(out / "mlm", log=lambda m: None)
    if mlm.tokenizer.vocab_hash() != electra.tokenizer.vocab_hash():
        raise RuntimeError("the ELECTRA and MLM runs trained different vocabularies; they must share one")
    encoders = [Encoder(name, pre.model, {"run": str(out / name), "source": pre.source,
                                          "weights": _weights_hash(pre.model),
                                          "flops_per_token": pre.model.config.flops_per_token(objective=pre.model.objective),
                                          "steps": pre.model.config.train_steps})
                for name, pre in (("electra", electra), ("mlm", mlm))]
    encoders.append(Encoder("random", None, {"init": "fresh weights of the ELECTRA run's config, per seed"}))
    return encoders


def _weights_hash(model: torch.nn.Module) -> str:
    """A short hash of every weight: finished fine-tunings and task results are reused only for these weights."""
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ============================================================================ fine-tuning
def _fresh_electra(cfg: ElectraConfig, seed: int) -> Electra:
    seed_all(seed + 10_000)
    return Electra(cfg)


def finetune_encoder(enc: Encoder, cfg: ElectraConfig, tok, data: TaskData, seed: int, hp: Hyper, out: Path) -> float:
    """Test accuracy of the epoch that scores best on dev, for one fine-tuning seed. A finished
    fine-tuning in ``out`` with the same encoder, examples and settings is read instead of redone."""
    hp = dataclasses.replace(hp, seed=seed)
    meta = {"encoder": enc.name, "source": enc.info.get("source", "random init"), "examples": data.fingerprint()}
    try:
        done = json.loads((out / "results.json").read_text(encoding="utf-8"))
        if all(done.get(k) == v for k, v in meta.items()) and \
                {k: done["hyperparameters"].get(k) for k in dataclasses.asdict(hp)} == dataclasses.asdict(hp):
            return float(done["best"]["test"]["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    electra = enc.electra if enc.electra is not None else _fresh_electra(cfg, seed)
    task = data.task
    encoded = {s: encode(tok, data.splits[s], task, hp.seq_len) for s in SPLITS}
    seed_all(seed)
    model = SequenceClassifier.from_electra(electra, task.num_outputs, hp.dropout)
    res = finetune(model, task, encoded["train"], {"dev": encoded["dev"]}, hp, out, pad_id=tok.pad_id,
                   progress=False, log=lambda m: None, meta=meta, test=encoded["test"])
    return float(res["best"]["test"]["accuracy"])


_WORKER_RUNS: dict = {}  # per worker process: run folder -> (model, tokenizer), loaded once


def _job(spec: tuple) -> float:
    """One (encoder, task, seed) fine-tuning in a worker process: loads the runs it needs once."""
    name, run_dir, tokenizer_run, data, seed, hp, out, threads = spec
    if threads is not None:
        torch.set_num_threads(threads)
    for d in {run_dir, tokenizer_run} - {None} - set(_WORKER_RUNS):
        pre = load_run(d, log=lambda m: None)
        # a retrained run never reuses fine-tunings of the old weights
        _WORKER_RUNS[d] = (pre.model, pre.tokenizer, f"{pre.source}, weights {_weights_hash(pre.model)}")
    cfg_model, tok, _ = _WORKER_RUNS[tokenizer_run]
    model, info = (None, {})
    if run_dir is not None:
        model, _, source = _WORKER_RUNS[run_dir]
        info = {"source": source}
    return finetune_encoder(Encoder(name, model, info), cfg_model.config, tok, data, seed, hp, out)


# ============================================================================ bag of words
_WORDS = re.compile(r"[a-z]+|\d+|[^\sa-z\d]")
_BOW_DIM = 1 << 18


def _bow_ids(text: str, prefix: str) -> list[int]:
    words = _WORDS.findall(text.lower())
    grams = words + [a + " " + b for a, b in zip(words, words[1:])]
    return [int.from_bytes(hashlib.blake2b((prefix + g).encode(), digest_size=4).digest(), "little") % _BOW_DIM
            for g in grams]


def _bow_features(ex: Examples) -> tuple[torch.Tensor, torch.Tensor]:
    """Hashed unigram + bigram counts of each example (first and second text hashed apart)."""
    rows = [_bow_ids(a, "a:") + (_bow_ids(ex.text_b[i], "b:") if ex.text_b is not None else [])
            for i, a in enumerate(ex.text_a)]
    offsets = torch.tensor([0] + [len(r) for r in rows[:-1]]).cumsum(0)
    return torch.tensor([t for r in rows for t in r], dtype=torch.long), offsets


def bag_of_words(data: TaskData, seed: int, epochs: int = 10) -> float:
    """Logistic regression on hashed unigram + bigram counts (AdamW, weight decay, best dev epoch): test accuracy."""
    task = data.task
    index = {label: i for i, label in enumerate(task.labels)}
    feats = {s: _bow_features(data.splits[s]) for s in SPLITS}
    gold = {s: torch.tensor([index[v] for v in data.splits[s].labels]) for s in SPLITS}
    seed_all(seed)
    model = torch.nn.EmbeddingBag(_BOW_DIM, len(task.labels), mode="sum")
    torch.nn.init.zeros_(model.weight)
    bias = torch.nn.Parameter(torch.zeros(len(task.labels)))
    opt = torch.optim.AdamW([model.weight, bias], lr=0.05, weight_decay=0.01)
    n = len(gold["train"])
    ids, offsets = feats["train"]
    lengths = torch.diff(torch.cat([offsets, torch.tensor([len(ids)])]))
    best_dev, best_test = -1.0, 0.0
    g = torch.Generator().manual_seed(seed)

    def accuracy(s: str) -> float:
        with torch.no_grad():
            return float(((model(*feats[s]) + bias).argmax(-1) == gold[s]).float().mean())

    for _ in range(epochs):
        for rows in torch.randperm(n, generator=g).split(64):
            sub = torch.cat([ids[offsets[r]:offsets[r] + lengths[r]] for r in rows.tolist()])
            sub_off = torch.cat([torch.zeros(1, dtype=torch.long), lengths[rows].cumsum(0)[:-1]])
            loss = F.cross_entropy(model(sub, sub_off) + bias, gold["train"][rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        dev = accuracy("dev")
        if dev > best_dev:
            best_dev, best_test = dev, accuracy("test")
    return best_test


# ============================================================================ the benchmark
def _stats(xs: list[float]) -> dict:
    a = np.array(xs, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "values": [float(x) for x in a]}


def format_table(results: dict) -> str:
    tasks = list(results["tasks"])
    names = list(results["tasks"][tasks[0]]["scores"])
    head = f"{'encoder':<34}" + "".join(f"{t + ' (test acc.)':>30}" for t in tasks) + f"{'mean over tasks':>17}"
    lines = [head, "-" * len(head)]
    for name in names:
        cells = [results["tasks"][t]["scores"][name] for t in tasks]
        row = f"{results['labels'][name]:<34}" + "".join(
            f"{c['mean']:>12.3f} +- {c['std']:.3f} [{c['min']:.3f}-{c['max']:.3f}]" for c in cells)
        lines.append(row + f"{np.mean([c['mean'] for c in cells]):>17.3f}")
    return "\n".join(lines)


def _previous(path: Path, results: dict) -> dict:
    """Tasks a previous call wrote into ``path`` with the same seeds, pre-training arguments, encoders
    (their runs, weights and steps) and fine-tuning settings (an interrupted or extended benchmark keeps
    what it finished; a retrained encoder redoes every task)."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    same = all(old.get(k) == results[k] for k in ("seeds", "train_args", "hyperparameters", "encoders"))
    return old.get("tasks", {}) if same and isinstance(old.get("tasks"), dict) else {}


def run(out: Path, seeds: list[int], train_args: list[str], pretrain_seed: int = DEFAULT_PRETRAIN_SEED, log=print,
        sizes: tuple[int, int, int] = DEFAULT_SIZES, epochs: int = 10,
        task_names: tuple[str, ...] = TASK_NAMES, workers: int = 1) -> dict:
    """Pre-train, fine-tune every encoder on every task with every seed, and the bag of words; write and
    return the results (``out/transfer.json``, rewritten after each task; a task that file already
    holds with the same settings is reused). ``sizes``: train/dev/test examples per task (at most: a task
    with fewer takes all it has); ``workers``: fine-tuning processes (spawned, each with
    cpu_count // workers torch threads; 1: in this process)."""
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    log(f"transfer benchmark into {out}: tasks from the docstrings of numpy {np.__version__} and torch "
        f"{torch.__version__}")
    tasks = {k: v for k, v in build_tasks(*sizes).items() if k in task_names}
    for data in tasks.values():
        log(f"  task {data.task.title}: {data.sizes()} train/dev/test examples, {len(data.task.labels)} labels")
    encoders = pretrain(out / "pretrain", train_args, pretrain_seed, log)
    cfg = encoders[0].electra.config
    hp = Hyper(epochs=epochs, lr=1e-3, layer_decay=0.8, batch_size=32, seq_len=cfg.max_seq_length)
    labels = {"electra": "ELECTRA", "mlm": "MLM (equal FLOPs)", "random": "random init (same size)",
              "bow": "bag of words (uni+bigrams)"}
    results = {"tasks": {}, "labels": labels, "seeds": seeds, "pretrain_seed": pretrain_seed, "train_args": train_args,
               "hyperparameters": dataclasses.asdict(hp), "encoders": {e.name: e.info for e in encoders},
               "versions": {"numpy": np.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}}
    previous = _previous(out / "transfer.json", results)
    # reused only for the very same examples (numpy, torch or the task construction may have changed)
    todo = {k: v for k, v in tasks.items() if previous.get(k, {}).get("examples") != v.fingerprint()}
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    specs = {(name, enc.name): [(enc.name, enc.info.get("run"), encoders[0].info["run"], data, seed, hp,
                                 out / "finetune" / name / enc.name / str(seed), threads) for seed in seeds]
             for name, data in todo.items() for enc in encoders}
    pool = None
    if workers > 1 and specs:
        log(f"  fine-tuning in {workers} worker processes of {threads} torch thread(s)")
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        futures = {k: [pool.submit(_job, spec) for spec in v] for k, v in specs.items()}
    try:
        for name, data in tasks.items():
            if name not in todo:
                results["tasks"][name] = previous[name]
                log(f"  {name}: reused from {out / 'transfer.json'}")
                continue
            t_task, scores = time.time(), {}
            for enc in encoders:
                key = (name, enc.name)
                accs = [f.result() for f in futures[key]] if pool else [_job(spec) for spec in specs[key]]
                scores[enc.name] = _stats(accs)
                log(f"  {name} / {labels[enc.name]}: " + " ".join(f"{a:.3f}" for a in accs))
            scores["bow"] = _stats([bag_of_words(data, seed) for seed in seeds])
            log(f"  {name} / {labels['bow']}: " + " ".join(f"{a:.3f}" for a in scores["bow"]["values"]))
            results["tasks"][name] = {"labels": list(data.task.labels), "sizes": data.sizes(),
                                      "examples": data.fingerprint(), "scores": scores,
                                      "seconds": round(time.time() - t_task)}
            (out / "transfer.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    results["seconds"] = round(time.time() - t0)
    (out / "transfer.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results
