"""GLUE tasks as GLUE ships them: the TSV layouts, the label sets and the metrics.

Each task reads ``train.tsv`` and its dev file(s) from one folder. Headered files are read by
column *name* (the header GLUE writes), so a reordered or truncated file is reported instead
of silently read from the wrong column; CoLA has no header and is read by position. Fields are
split on tabs with no quote processing, as GLUE's own readers do (``csv.reader(quotechar=None)``):
sentences in SST-2 and MRPC contain stray quote characters.

Metrics follow the paper (Clark et al., 2020, section 3.1) and GLUE: Matthews correlation for
CoLA, Spearman (and Pearson) for STS-B, F1 and accuracy for MRPC and QQP, accuracy elsewhere.
They are plain numpy; the tests check them against scipy / hand-computed values.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Task data cannot be used; the message names the file (and line) and what is wrong."""


@dataclass(frozen=True)
class Task:
    """Where the texts and the label sit in a task's files, and how it is scored.

    ``text_cols`` / ``label_col``: header names (headered files) or 0-based positions.
    ``labels``: the label set in class-index order; None for regression, or (a user task before
    its train split is read) for "whatever labels train holds".
    """

    name: str
    text_cols: tuple[str | int, ...]
    label_col: str | int
    labels: tuple[str, ...] | None
    regression: bool = False
    metric: str = "accuracy"  # the main metric: picks the best epoch
    header: bool = True
    train_file: str = "train.tsv"
    dev_files: tuple[str, ...] = ("dev.tsv",)
    delimiter: str = "\t"
    quoting: int = csv.QUOTE_NONE
    display: str = ""
    # GLUE's unlabeled test files (headered, an index column) and the submission file of each
    test_files: tuple[str, ...] = ("test.tsv",)
    submissions: tuple[str, ...] = ()  # default: "<display>.tsv"
    test_text_cols: tuple[str, ...] = ()  # default: text_cols (CoLA's test.tsv has a header: "sentence")

    @property
    def num_outputs(self) -> int:
        return 1 if self.regression else len(self.labels or ())

    @property
    def title(self) -> str:
        return self.display or self.name


_ENTAIL = ("entailment", "not_entailment")
_BINARY = ("0", "1")

# Column positions as GLUE ships them (the header names are what the reader looks up):
#   SST-2  sentence(0) label(1)
#   CoLA   no header: source(0) label(1) original-label(2) sentence(3)
#   MRPC   Quality(0) #1 ID(1) #2 ID(2) #1 String(3) #2 String(4)
#   QQP    id(0) qid1(1) qid2(2) question1(3) question2(4) is_duplicate(5)
#   QNLI   index(0) question(1) sentence(2) label(3)
#   RTE    index(0) sentence1(1) sentence2(2) label(3)          (WNLI the same)
#   MNLI   index ... sentence1(8) sentence2(9) label1 ... gold_label(last)
#   STS-B  index genre filename year old_index source1 source2 sentence1(7) sentence2(8) score(last)
# test.tsv (no label; the submission is "index<TAB>prediction" in this index order): the same text
# columns after an "index" column (QQP: "id"); CoLA's test.tsv has a header: index sentence
GLUE_TASKS: dict[str, Task] = {
    "sst2": Task("sst2", ("sentence",), "label", _BINARY, display="SST-2"),
    "cola": Task("cola", (3,), 1, _BINARY, metric="mcc", header=False, display="CoLA", test_text_cols=("sentence",)),
    "mrpc": Task("mrpc", ("#1 String", "#2 String"), "Quality", _BINARY, metric="f1", display="MRPC"),
    "qqp": Task("qqp", ("question1", "question2"), "is_duplicate", _BINARY, metric="f1", display="QQP"),
    "qnli": Task("qnli", ("question", "sentence"), "label", _ENTAIL, display="QNLI"),
    "rte": Task("rte", ("sentence1", "sentence2"), "label", _ENTAIL, display="RTE"),
    "wnli": Task("wnli", ("sentence1", "sentence2"), "label", _BINARY, display="WNLI"),
    "mnli": Task("mnli", ("sentence1", "sentence2"), "gold_label", ("contradiction", "entailment", "neutral"),
                 dev_files=("dev_matched.tsv", "dev_mismatched.tsv"), display="MNLI",
                 test_files=("test_matched.tsv", "test_mismatched.tsv"), submissions=("MNLI-m.tsv", "MNLI-mm.tsv")),
    "stsb": Task("stsb", ("sentence1", "sentence2"), "score", None, regression=True, metric="spearman",
                 display="STS-B"),
}


@dataclass
class Examples:
    """One split: texts (second text None for single-sentence tasks) and raw label strings."""

    path: Path
    text_a: list[str]
    text_b: list[str] | None
    labels: list[str | None]  # None: an unlabeled split (GLUE test.tsv, new text)
    lines: list[int]  # line number of each example in its file (error messages)
    index: list[str] | None = None  # GLUE test.tsv's index column (the submission's first column)

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, texts: list[str], label: str | None, line: int) -> None:
        """Append one example: its text (and second text, for a pair task), raw label and line number."""
        self.text_a.append(texts[0])
        if self.text_b is not None:
            self.text_b.append(texts[1])
        self.labels.append(label)
        self.lines.append(line)


# ----------------------------------------------------------------------------- reading


def _rows(path: Path, task: Task):
    """(line number, fields) of every non-blank row; the header row included when there is one."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        f = open(path, encoding="utf-8-sig", newline="")  # -sig: MRPC's header carries a BOM
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        reader = csv.reader(f, delimiter=task.delimiter, quoting=task.quoting)
        try:
            for row in reader:
                if row and any(x.strip() for x in row):
                    yield reader.line_num, row
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 near line {reader.line_num + 1} ({e.reason})") from None
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: {e}") from None


def resolve_column(col: str | int, header: list[str] | None, path: Path, what: str) -> int:
    """Index of a column given by header name, or by 0-based position (an int or a digit string)."""
    if header is not None:
        names = [h.strip() for h in header]
        if isinstance(col, str) and col in names:
            return names.index(col)
        if isinstance(col, str) and col.lower() in [n.lower() for n in names]:
            return [n.lower() for n in names].index(col.lower())
    if isinstance(col, int) or (isinstance(col, str) and col.isdigit()):
        i = int(col)
        if header is not None and i >= len(header):
            raise DataError(f"{path}: no {what} column {i} (the header has {len(header)} columns)")
        return i
    shown = ", ".join(repr(h.strip()) for h in header) if header else "none"
    raise DataError(f"{path}: no {what} column {col!r} (columns: {shown})")


def read_split(path: str | Path, task: Task) -> Examples:
    """Read one split of ``task``. Raises DataError for a missing file or column, a label outside
    ``task.labels`` (or not a number, for regression) and a split without examples."""
    path = Path(path)
    rows = _rows(path, task)
    header = None
    if task.header:
        first = next(rows, None)
        if first is None:
            raise DataError(f"{path} is empty: no header row and no examples")
        header = first[1]
    text_idx = [resolve_column(c, header, path, "text") for c in task.text_cols]
    label_idx = resolve_column(task.label_col, header, path, "label")
    need = max(text_idx + [label_idx]) + 1
    labels = task.labels
    out = Examples(path, [], [] if len(text_idx) > 1 else None, [], [])
    for lineno, row in rows:
        if len(row) < need:
            col = min(c for c in text_idx + [label_idx] if c >= len(row))
            name = header[col].strip() if header is not None else f"column {col}"
            raise DataError(f"{path}:{lineno}: the row has {len(row)} fields; {name!r} (column {col}) is missing")
        label = row[label_idx].strip()
        if labels is not None and label not in labels:
            raise DataError(f"{path}:{lineno}: label {label!r} is not one of {', '.join(labels)} ({task.title})")
        if task.regression:
            try:
                ok = math.isfinite(float(label))
            except ValueError:
                ok = False
            if not ok:
                raise DataError(f"{path}:{lineno}: label {label!r} is not a number ({task.title} is a regression task)")
        out.add([row[i] for i in text_idx], label, lineno)
    if not out.labels:
        raise DataError(f"{path}: no examples (the split is empty)")
    return out


def read_test(path: str | Path, task: Task) -> Examples:
    """An unlabeled GLUE test split: a header row, the index column ("index"; QQP's "id") and the
    task's text columns by name. Labels are None."""
    path = Path(path)
    rows = _rows(path, dataclasses.replace(task, quoting=csv.QUOTE_NONE, delimiter="\t"))
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path} is empty: no header row and no examples")
    header = first[1]
    names = [h.strip().lower() for h in header]
    index_col = "id" if "id" in names and "index" not in names else "index"
    index_idx = resolve_column(index_col, header, path, "index")
    text_idx = [resolve_column(c, header, path, "text") for c in (task.test_text_cols or task.text_cols)]
    need = max(text_idx + [index_idx]) + 1
    out = Examples(path, [], [] if len(text_idx) > 1 else None, [], [], index=[])
    for lineno, row in rows:
        if len(row) < need:
            raise DataError(f"{path}:{lineno}: the row has {len(row)} fields; expected at least {need}")
        out.add([row[i] for i in text_idx], None, lineno)
        out.index.append(row[index_idx].strip())
    if not out.labels:
        raise DataError(f"{path}: no examples (the split is empty)")
    return out


def submission_names(task: Task) -> dict[str, str]:
    """test file -> the GLUE submission file its predictions go to (SST-2.tsv, MNLI-m.tsv, ...)."""
    return dict(zip(task.test_files, task.submissions or (f"{task.title}.tsv",)))


def user_task(text_cols: list[str], label_col: str, regression: bool, delimiter: str, train_path: Path,
              dev_path: Path) -> Task:
    """A ``--task tsv`` definition: header row, columns by name or 0-based index. Its label set is
    None until the train split is read (``dataclasses.replace(task, labels=label_set_of(train))``)."""
    if not 1 <= len(text_cols) <= 2:
        raise DataError(f"--text-cols takes one or two columns, got {len(text_cols)}: {','.join(text_cols)}")
    quoting = csv.QUOTE_MINIMAL  # the user's own files: quoted fields as spreadsheets and pandas write them
    return Task("tsv", tuple(text_cols), label_col, None, regression=regression,
                metric="spearman" if regression else "accuracy", train_file=train_path.name,
                dev_files=(dev_path.name,), delimiter=delimiter, quoting=quoting, display="tsv")


def label_set_of(examples: Examples) -> tuple[str, ...]:
    """The sorted labels of a split: numerically when every label is a number."""
    seen = set(examples.labels)
    try:
        return tuple(sorted(seen, key=float))
    except ValueError:
        return tuple(sorted(seen))


# ----------------------------------------------------------------------------- metrics


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1_score(pred: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class (GLUE: label 1 = paraphrase / duplicate). 0 when undefined."""
    p, g = np.asarray(pred) == positive, np.asarray(gold) == positive
    tp = float(np.sum(p & g))
    denom = float(np.sum(p) + np.sum(g))
    return 2 * tp / denom if denom else 0.0


def matthews_corrcoef(pred: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation (multi-class form, Gorodkin 2004); 0 when a marginal is constant."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    k = int(max(pred.max(initial=0), gold.max(initial=0))) + 1
    c = np.zeros((k, k), dtype=np.float64)  # c[gold, pred]
    np.add.at(c, (gold, pred), 1)
    n, correct = c.sum(), np.trace(c)
    t, p = c.sum(axis=1), c.sum(axis=0)
    num = correct * n - t @ p
    den = math.sqrt((n * n - p @ p) * (n * n - t @ t))
    return float(num / den) if den else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float(xc @ xc) * float(yc @ yc))
    return float(xc @ yc / den) if den else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (what Spearman's rho needs)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based positions starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_ranks(x), _ranks(y))


def compute_metrics(task: Task, pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """The task's metrics; ``pred``/``gold`` are class indices, or floats for regression."""
    if task.regression:
        return {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold)}
    out = {"accuracy": accuracy(pred, gold)}
    if task.metric == "f1" or task.num_outputs == 2:
        out["f1"] = f1_score(pred, gold)
    if task.metric == "mcc":
        out["mcc"] = matthews_corrcoef(pred, gold)
    return out
