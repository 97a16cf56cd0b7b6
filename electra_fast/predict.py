"""Run a fine-tuned classifier on new text: labels and class probabilities (or a score, STS-B).

    python -m electra_fast.predict --model runs/sst2 --text "a good film"
    python -m electra_fast.predict --model runs/mrpc --text "first" --text-b "second"
    python -m electra_fast.predict --model runs/sst2 --input reviews.tsv --out preds.tsv

``--model`` is what ``finetune --out`` wrote (its ``best/`` holds the best epoch's weights, the
task, its label names, text columns, sequence length and tokenizer), or that ``best/`` folder
itself. ``--input`` is a .tsv / .csv with a header row, or .jsonl (one object per line); the text
columns are the ones the model was fine-tuned on (``sentence``; ``sentence1``, ``sentence2`` ...)
unless ``--text-cols`` names others. Output: one TSV row per example, ``line`` (the line of the
input file; 1 for --text), ``prediction`` and ``p(<label>)`` per class, or ``score`` for regression.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .cli import ArgumentParser, HelpFormatter
from .finetune import USER_ERRORS, _device, encode, predict_outputs
from .glue import GLUE_TASKS, DataError, Examples, Task, resolve_column
from .recipe import FinetuneError, SequenceClassifier, load_classifier
from .tokenizer import ElectraTokenizer, load_tokenizer


class PredictError(FinetuneError):
    """--model or the input cannot be used; the message says what to change."""


def find_classifier(path: str | Path) -> Path:
    """The ``best/`` folder of a fine-tuning output (or ``path`` itself when it is one)."""
    d = Path(path)
    if not d.is_dir():
        raise PredictError(f"--model {path}: no such folder")
    best = d if (d / "config.json").is_file() and (d / "model.safetensors").is_file() else d / "best"
    if not (best / "config.json").is_file():
        results = d / "results.json"
        info = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {}
        if "seeds" in info:
            raise PredictError(f"--model {path} holds {len(info['seeds'])} fine-tuning seeds; pass one of them, "
                               f"e.g. --model {d / info['runs'][str(info['seeds'][0])]}")
        if info.get("task") == "probe":
            raise PredictError(f"--model {path} is a probe run; predict handles classification/regression "
                               "fine-tunes (finetune --task <GLUE task> or tsv)")
        if any(d.glob("ckpt-*.pt")):
            raise PredictError(f"--model {path} is a pre-training run; fine-tune it first "
                               "(python -m electra_fast.finetune --checkpoint ... --out DIR), then --model DIR")
        raise PredictError(f"--model {path}: not a fine-tuning output (no best/config.json; finetune --out writes one)")
    info = json.loads((best / "config.json").read_text(encoding="utf-8"))
    if info.get("head") == "span" or str(info.get("task", "")).startswith("squad"):
        raise PredictError(f"--model {path} is a SQuAD (span) model; predict handles classification/regression "
                           "fine-tunes (GLUE tasks, --task tsv)")
    if "num_outputs" not in info or "task" not in info:
        raise PredictError(f"--model {path}: {best / 'config.json'} is not a fine-tuned classifier's config")
    return best


class Classifier:
    """A fine-tuned classifier with its tokenizer and task, ready for ``__call__(examples)``."""

    def __init__(self, folder: str | Path, device="cpu"):
        best = find_classifier(folder)
        self.model: SequenceClassifier
        self.model, self.info = load_classifier(best)
        self.model.to(device)
        self.device = device
        self.tokenizer: ElectraTokenizer = load_tokenizer(best)
        labels, cols = self.info.get("labels"), self.info.get("text_cols")
        if not cols and self.info["task"] in GLUE_TASKS:  # saved before text_cols was: GLUE's own columns
            glue = GLUE_TASKS[self.info["task"]]
            cols = glue.test_text_cols or glue.text_cols
        if not cols:
            raise PredictError(f"--model {folder}: {best / 'config.json'} does not say which text columns the "
                               "model reads; fine-tune it again with this version")
        self.task = Task(self.info["task"], tuple(cols), "", tuple(labels) if labels else None,
                         regression=bool(self.info.get("regression")))
        self.seq_len = int(self.info.get("seq_len", 128))

    @property
    def pair(self) -> bool:
        """Whether the model was fine-tuned on two texts per example."""
        return len(self.task.text_cols) == 2

    def __call__(self, ex: Examples, batch_size: int = 64, bar=None) -> np.ndarray:
        """(N, K) class probabilities, or (N,) scores for regression, in the order of ``ex``."""
        out = predict_outputs(self.model, encode(self.tokenizer, ex, self.task, self.seq_len), self.tokenizer.pad_id,
                              self.device, batch_size, bar=bar)
        return out if self.task.regression else torch.softmax(torch.from_numpy(out), -1).numpy()


def read_input(path: Path, cols: list[str]) -> Examples:
    """The texts of ``cols`` from a headered .tsv / .csv or a .jsonl file."""
    if not path.is_file():
        raise PredictError(f"--input {path}: no such file")
    a, b, lines = [], [] if len(cols) == 2 else None, []
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except ValueError as e:
                    raise DataError(f"{path}:{lineno}: not JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object with {', '.join(map(repr, cols))}")
                for c, dest in zip(cols, (a, b)):
                    if not isinstance(obj.get(c), str):
                        raise DataError(f"{path}:{lineno}: no text column {c!r} (keys: {', '.join(map(repr, obj))}); "
                                        "name the columns with --text-cols")
                    dest.append(obj[c])
                lines.append(lineno)
    elif path.suffix in (".tsv", ".csv", ".txt"):
        delimiter = "," if path.suffix == ".csv" else "\t"
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path} is empty: no header row and no examples")
            idx = [resolve_column(c, header, path, "text") for c in cols]
            for row in reader:
                if not row or not any(x.strip() for x in row):
                    continue
                if len(row) <= max(idx):
                    raise DataError(f"{path}:{reader.line_num}: the row has {len(row)} fields; expected {max(idx) + 1}")
                a.append(row[idx[0]])
                if b is not None:
                    b.append(row[idx[1]])
                lines.append(reader.line_num)
    else:
        raise PredictError(f"--input {path}: expected a .tsv, .csv or .jsonl file")
    if not a:
        raise DataError(f"{path}: no examples (only a header or blank lines)")
    return Examples(path, a, b, [None] * len(a), lines)


def write_rows(f, task: Task, ex: Examples, out: np.ndarray) -> None:
    if task.regression:
        f.write("line\tscore\n")
        f.writelines(f"{line}\t{float(s):.6g}\n" for line, s in zip(ex.lines, out))
        return
    f.write("line\tprediction\t" + "\t".join(f"p({lab})" for lab in task.labels) + "\n")
    for line, p in zip(ex.lines, out):
        f.write(f"{line}\t{task.labels[int(np.argmax(p))]}\t" + "\t".join(f"{x:.6f}" for x in p) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m electra_fast.predict", formatter_class=HelpFormatter,
                       description="Labels and class probabilities (or scores, for regression) from a fine-tuned "
                                   "classifier (what finetune --out wrote) for new text.")
    p.add_argument("--model", required=True, metavar="DIR", help="a finetune --out folder (or its best/)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="one text to classify")
    src.add_argument("--input", metavar="FILE", help=".tsv / .csv (header row) or .jsonl with the text columns")
    p.add_argument("--text-b", help="the second text, for a model fine-tuned on pairs (MRPC, MNLI, ...)")
    p.add_argument("--text-cols", metavar="A[,B]", help="--input's text columns, by name or 0-based index "
                   "(default: the columns the model was fine-tuned on)")
    p.add_argument("--out", metavar="FILE", help="write the predictions here (default: standard output)")
    p.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar on --input (also off when stderr is not a terminal)")
    return p


def validate_args(args) -> None:
    """Every flag, before the model is read."""
    if args.batch_size < 1:
        raise PredictError(f"--batch-size must be an integer >= 1, got {args.batch_size}")
    if args.text is not None and not args.text.strip():
        raise PredictError("--text is empty; give the text to classify")
    if args.text_b is not None and args.text is None:
        raise PredictError("--text-b goes with --text (an --input file names its columns with --text-cols)")
    if args.text_cols is not None and args.input is None:
        raise PredictError("--text-cols applies to --input only")
    if args.out is not None and Path(args.out).is_dir():
        raise PredictError(f"--out {args.out}: is a folder; give a file name (preds.tsv)")


def main(argv: list[str] | None = None) -> int:
    from tqdm.auto import tqdm

    args = build_parser().parse_args(argv)
    try:
        validate_args(args)
        device = _device(args.device)
        clf = Classifier(args.model, device)
        n_texts = len(clf.task.text_cols) or 1
        if args.text is not None:
            if clf.pair and args.text_b is None:
                raise PredictError(f"the {clf.task.name} model reads two texts; give --text-b too")
            if not clf.pair and args.text_b is not None:
                raise PredictError(f"the {clf.task.name} model reads one text; --text-b is not used by it")
            ex = Examples(Path("<--text>"), [args.text], [args.text_b] if clf.pair else None, [None], [1])
        else:
            cols = [c.strip() for c in args.text_cols.split(",")] if args.text_cols else list(clf.task.text_cols)
            if len(cols) != n_texts:
                raise PredictError(f"--text-cols names {len(cols)} columns; the {clf.task.name} model reads {n_texts}")
            ex = read_input(Path(args.input), cols)
        show = args.input is not None and not args.no_progress and sys.stderr.isatty()
        with tqdm(total=len(ex), desc="predicting", unit="ex", disable=not show, dynamic_ncols=True) as bar:
            out = clf(ex, args.batch_size, bar=bar)
        if args.out is not None:
            with open(args.out, "w", encoding="utf-8") as f:
                write_rows(f, clf.task, ex, out)
            print(f"{len(ex)} predictions ({clf.task.name}) in {args.out}", file=sys.stderr)
        else:
            write_rows(sys.stdout, clf.task, ex, out)
    except (*USER_ERRORS, OSError) as e:
        msg = str(e).strip().splitlines()
        print(f"error: {msg[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
