"""Corpus -> vocabulary -> packed example shards on disk, once, in bounded memory.

    python -m electra_fast.prepare --data CORPUS... --out DIR [--vocab vocab.txt] [--seq-len 128]
    python -m electra_fast.train --data DIR          # trains on the prepared folder

Reads top to bottom as the data flows:

1. ``build_examples``: pack the sentences of one document into ``[CLS] A [SEP] B [SEP]`` examples
   (rules of the official ``build_pretraining_dataset.py``, see its docstring), in linear time.
2. ``prepare_corpus``: stream the corpus (``corpus.read_corpus``) once to count the words of a
   deterministic uniform sample of it (``vocab_sample_bytes``) and train a WordPiece vocabulary
   on the most frequent ones (``tokenizer.MAX_WORDS``), once more to tokenise and pack it in
   chunks on worker processes into fixed-width shards (numpy arrays of ids, segment ids and
   lengths, plus ``manifest.json``), split into train / holdout by document. Nothing holds the
   corpus in memory; peak memory is a constant (chunks in flight, the tokenizer, the bounded
   word counts and the trainer's structures for them).
3. The folder is identified by a content key (a sha256 of the corpus bytes and every setting),
   not by paths or timestamps: a moved, copied or touched corpus reuses its shards, and a
   rebuild is written beside the folder and swapped in at the end, never deleting good shards
   first. ``loader.load_dataset`` opens it; ``loader.PretrainingLoader`` serves batches.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .corpus import (
    CorpusError,
    Document,
    content_fingerprint,
    corpus_files,
    corpus_packages,
    default_corpus,
    documents_fingerprint,
    read_corpus,
)
from .loader import (
    FORMAT_VERSION,
    SPLITS,
    PretrainingDataset,
    id_dtype,
    load_dataset,
    shards_intact,
    split_files,
)
from .tokenizer import (
    MAX_WORDS,
    ElectraTokenizer,
    TokenizerError,
    WordCounts,
    batched_lines,
    count_words,
    load_tokenizer,
    train_from_word_counts,
)

SHORT_SEQ_PROB = 0.05  # build_pretraining_dataset.py: "small chance for random-length" example
SINGLE_SEGMENT_PROB = 0.1  # build_pretraining_dataset.py: "small chance to only have one segment"
CHUNK_CHARS = 1 << 20  # documents are tokenised and packed in chunks of about 1M characters
PARALLEL_MIN_CHARS = 16 << 20  # below this a worker pool costs more than it saves
VOCAB_SAMPLE_BYTES = 2 << 30  # the vocabulary is learnt from a uniform sample of about this much text
_U64 = (1 << 64) - 1  # seeds enter numpy's SeedSequence as non-negative integers
_OUR_FILES = {"manifest.json", "manifest.json.tmp", "vocab.txt", "tokenizer.json", ".building",
              *(f for s in SPLITS for f in split_files(s).values())}  # fmt: skip


# ----------------------------------------------------------------------------- 1. packing


def build_examples(
    tokenized_docs: Iterable[Sequence[Sequence[int]]],
    max_seq_length: int,
    *,
    cls_id: int,
    sep_id: int,
    rng: np.random.Generator,
    short_seq_prob: float = SHORT_SEQ_PROB,
    single_segment_prob: float = SINGLE_SEGMENT_PROB,
    word_start: np.ndarray | None = None,
) -> Iterator[tuple[list[int], list[int]]]:
    """Pack tokenised documents (each a list of sentences, each a list of ids) into examples.

    Yields ``(ids, segment_ids)``: ``[CLS] A [SEP] B [SEP]`` with segment ids 0 for [CLS], A and the
    first [SEP], 1 for B and the last [SEP]; or ``[CLS] A [SEP]`` (all 0) for a single segment.

    Rules (build_pretraining_dataset.py, ExampleBuilder):
    - sentences of one document accumulate until the target length is reached; an example never
      crosses a document boundary, and the end of a document ends its last example.
    - the target is ``max_seq_length``, except with probability 0.05 a random length in
      [5, max_seq_length].
    - with probability 0.1 the example is one segment; otherwise sentences go to A while
      ``len(A) + len(sentence) < (target - 3) // 2`` (A gets at least one sentence, and the
      sentence that crosses that mark goes to A half of the time), the rest to B.
    One change: the official code truncates the sentence that overflows the target and drops its
    tail; here the tail starts the next example, so every token of the corpus is in exactly one
    example and the examples of a document, read in order, are the document. Given ``word_start``
    (a bool per vocabulary id, False for "##" pieces), the cut moves back to the start of the word
    it would split, so whole-word masking sees whole words. A sentence is cut by position (an
    offset into it, never a copy of its rest), so a line of millions of tokens packs in linear time.
    """
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length={max_seq_length}; it must be at least 5 ([CLS] A [SEP] B [SEP])")

    def next_shape() -> tuple[int, bool]:
        """(target length, single segment?) of the next example."""
        target = max_seq_length
        if rng.random() < short_seq_prob:
            target = int(rng.integers(5, max_seq_length + 1))
        return target, bool(rng.random() < single_segment_prob)

    # rng draws come in the official order: a shape, the A / B choices of that example, the next
    # shape (the generator below resumes only after the example was made)
    for doc in tokenized_docs:
        for pieces, target, single in _cut_document(doc, next_shape, word_start):
            yield _example(pieces, target, single, cls_id, sep_id, rng)


def _cut_document(
    doc: Sequence[Sequence[int]], next_shape: Callable[[], tuple[int, bool]], word_start: np.ndarray | None
) -> Iterator[tuple[list[Sequence[int]], int, bool]]:
    """The pieces of each example of one document, with its (target, single): sentences fill an
    example up to its budget; the one that overflows is cut by position and its tail starts the
    next example."""
    sentences = [s for s in doc if len(s)]
    i = start = 0  # the next tokens are sentences[i][start:]
    pieces: list[Sequence[int]] = []
    length = 0
    target, single = next_shape()
    while i < len(sentences):
        budget = target - (2 if single else 3)  # room left for [CLS] / [SEP]
        s = sentences[i]
        rest = len(s) - start
        full = length + rest >= budget
        if length + rest > budget:  # the overflow starts the next example
            cut = _cut_at_word(s, start, budget - length, word_start, first=not pieces)
            piece, start = s[start : start + cut], start + cut
        else:
            piece, i, start = (s[start:] if start else s), i + 1, 0
        if len(piece):
            pieces.append(piece)
            length += len(piece)
        if full:
            yield pieces, target, single
            pieces, length = [], 0
            target, single = next_shape()
    if pieces:
        yield pieces, target, single


def _cut_at_word(s: Sequence[int], start: int, cut: int, word_start: np.ndarray | None, first: bool) -> int:
    """How many tokens of ``s[start:]`` fit: ``cut``, moved back to the start of the word it would
    split (given ``word_start``); a word longer than a whole example (``first`` piece) is cut anyway."""
    if word_start is None:
        return cut
    c = cut
    while c > 0 and not word_start[s[start + c]]:
        c -= 1
    return c if c > 0 or not first else cut


def _example(
    pieces: list[Sequence[int]], target: int, single: bool, cls_id: int, sep_id: int, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """``[CLS] A [SEP] B [SEP]`` (or ``[CLS] A [SEP]``) and its segment ids from an example's pieces."""
    a: list[int] = []
    b: list[int] = []
    first_target = (target - 3) // 2
    for s in pieces:
        if single or (
            not b
            and (not a or len(a) + len(s) < first_target or (len(a) < first_target and rng.random() < 0.5))
        ):
            a.extend(s)
        else:
            b.extend(s)
    ids = [cls_id, *a, sep_id]
    if b:
        ids += [*b, sep_id]
    return ids, [0] * (len(a) + 2) + [1] * (len(ids) - len(a) - 2)


# ----------------------------------------------------------------------------- 2. the corpus, streamed


class Source:
    """What to prepare: the embedded default corpus, documents in memory, or files and folders.

    In-memory documents (their number is known) hold out an exact share drawn from the seed, as
    before (``finetune.pretraining_holdout`` re-draws it for the default corpus); streamed files
    hold out each document whose hash falls under the share, decided while reading (no counting
    pass over tens of gigabytes).
    """

    def __init__(self, source, *, errors: str = "strict", text_field: str = "text",
                 skip_unreadable: bool = False, known: dict | None = None):  # fmt: skip
        self.errors, self.text_field, self.skip_unreadable = errors, text_field, skip_unreadable
        self.skipped: list[tuple[str, str]] = []
        self.docs: list[Document] | None = None
        self.files: list[Path] | None = None
        self.records: list[dict] = []
        self.vocab_docs: list[Document] | None = None  # what the vocabulary learns from, if not all of it
        if source is None:
            self.docs = default_corpus()
            self.vocab_docs = default_corpus(comments=False, packages=False)
            extra = ", ".join(f"{k} {v}" for k, v in corpus_packages().items())
            self.desc = (f"default corpus (Python {sys.version.split()[0]} documentation and source comments"
                         + (f"; docstrings of {extra})" if extra else ")"))
        elif isinstance(source, (str, os.PathLike)) or (
            isinstance(source, (list, tuple)) and source and all(isinstance(x, (str, os.PathLike)) for x in source)
        ):
            paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
            self.files = corpus_files(paths, skip_unreadable=skip_unreadable, skipped=self.skipped)
            self.desc = "files: " + ", ".join(str(p) for p in paths)
        else:
            self.docs = [list(d) for d in source]
            self.desc = f"{len(self.docs)} documents"
        if self.docs is not None:
            self.fingerprint = "docs:" + documents_fingerprint(self.docs)
            self.size = sum(len(x) for d in self.docs for x in d)
        else:
            digest, self.records = content_fingerprint(self.files, known, skip_unreadable=skip_unreadable,
                                                       skipped=self.skipped)  # fmt: skip
            readable = {r["path"] for r in self.records}
            self.files = [f for f in self.files if str(f.resolve()) in readable]
            self.fingerprint = f"content:{digest}:{errors}:{text_field}"
            self.size = sum(r["size"] for r in self.records)

    def documents(self) -> Iterator[Document]:
        if self.docs is not None:
            return iter(self.docs)
        return read_corpus(self.files, errors=self.errors, text_field=self.text_field,
                           skip_unreadable=self.skip_unreadable, skipped=self.skipped)  # fmt: skip

    def vocabulary_documents(self) -> tuple[Iterator[Document], int, str]:
        """(documents, their size in characters, what they are) that a trained vocabulary learns
        from: all of them, except for the default corpus, whose vocabulary comes from its
        documentation part (``corpus.default_corpus``)."""
        if self.vocab_docs is not None:
            return (iter(self.vocab_docs), sum(len(x) for d in self.vocab_docs for x in d),
                    "the standard library's documentation in the default corpus (not its comments or packages)")
        return self.documents(), self.size, "the corpus"

    def holdout_rule(self, fraction: float, seed: int) -> Callable[[int, Document], bool]:
        """(document index, document) -> held out?"""
        if self.docs is not None:
            n = len(self.docs)
            n_hold = min(n - 1, max(1, round(fraction * n))) if fraction > 0 and n > 1 else 0
            chosen = set(np.random.default_rng([_U64 & seed, 1]).choice(n, n_hold, replace=False).tolist())
            return lambda i, doc: i in chosen
        bound = int(fraction * (1 << 64))
        salt = (_U64 & seed).to_bytes(8, "little")
        return lambda i, doc: _doc_hash(doc, salt) < bound


def _doc_hash(doc: Document, salt: bytes) -> int:
    """A uniform 64-bit number from a document's text (and a salt): deterministic everywhere."""
    h = hashlib.blake2b(salt, digest_size=8)
    for line in doc:
        h.update(line.encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return int.from_bytes(h.digest(), "little")


def vocabulary_sample(docs: Iterable[Document], rate: float) -> Iterator[Document]:
    """The documents whose hash falls under ``rate``: a uniform sample, the same on every run."""
    if rate >= 1.0:
        yield from docs
        return
    bound = int(rate * (1 << 64))
    for doc in docs:
        if _doc_hash(doc, b"vocab") < bound:
            yield doc


def train_vocabulary(src: Source, vocab_size: int, sample_bytes: int, log: Callable[[str], None],
                     progress: bool = False, pool=None, num_workers: int = 0) -> ElectraTokenizer:  # fmt: skip
    """A WordPiece vocabulary learnt from a uniform sample of about ``sample_bytes`` of the
    corpus, chosen by document hash (all of it when smaller), read once: the words of each chunk
    are counted (on the worker processes when there are some) into bounded counts
    (``tokenizer.WordCounts``: the MAX_WORDS most frequent), which the trainer learns from. Its
    memory grows with the distinct words it is given, so that bound is what keeps a large corpus
    (whose rare words never stop coming) within a constant."""
    if vocab_size < 16:
        raise TokenizerError(f"--vocab-size {vocab_size} is too small; use at least 16")
    from tqdm.auto import tqdm

    documents, size, what = src.vocabulary_documents()
    rate = min(1.0, sample_bytes / max(1, size))
    share = what if rate >= 1 else f"a {rate:.1%} sample of {what} (--vocab-sample)"
    log(f"training a WordPiece vocabulary of {vocab_size} on {share}")
    counts = WordCounts(MAX_WORDS)
    with tqdm(total=size, desc="vocabulary: counting words", unit="B", unit_scale=True, disable=not progress,
              dynamic_ncols=True) as bar:  # fmt: skip

        def read() -> Iterator[Document]:
            for doc in documents:
                bar.update(sum(map(len, doc)))
                yield doc

        lines = (line for doc in vocabulary_sample(read(), rate) for line in doc)
        batches = batched_lines(lines, CHUNK_CHARS)
        for c in _in_order(pool, count_words, batches, 2 * num_workers) if pool else map(count_words, batches):
            counts.update(c)
    if counts.dropped:
        log(f"vocabulary: kept the {MAX_WORDS:,} most frequent words ({counts.dropped:,} rarer ones left out)")
    return train_from_word_counts(counts, vocab_size)


# ----------------------------------------------------------------------------- 3. tokenise + pack on workers


def _chunks(src: Source, is_held: Callable[[int, Document], bool], holdout: bool) -> Iterator[tuple[int, list[Document], np.ndarray]]:
    """(chunk index, documents, holdout flags) in chunks of about CHUNK_CHARS characters.

    With a positive holdout share and no document held out by the time the corpus ends (a small
    corpus and the hash rule), its last document is held out, so evaluation always has text."""
    chunk: list[Document] = []
    flags: list[bool] = []
    chars = index = 0
    any_held = False
    docs = src.documents()
    doc = next(docs, None)
    i = 0
    while doc is not None:
        following = next(docs, None)
        held = is_held(i, doc) or (holdout and following is None and not any_held and i > 0)
        any_held |= held
        chunk.append(doc)
        flags.append(held)
        chars += sum(map(len, doc))
        if chars >= CHUNK_CHARS or following is None:
            yield index, chunk, np.array(flags, dtype=bool)
            chunk, flags, chars, index = [], [], 0, index + 1
        doc, i = following, i + 1


_worker_tokenizer: tuple[str, ElectraTokenizer] | None = None


def _tokenizer_at(path: str) -> ElectraTokenizer:
    """Workers start before the vocabulary exists (nothing large is in the parent yet when they
    fork); they read it from the building folder on their first chunk."""
    global _worker_tokenizer
    if _worker_tokenizer is None or _worker_tokenizer[0] != path:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
        _worker_tokenizer = (path, load_tokenizer(path))
    return _worker_tokenizer[1]


def _pack_chunk(job, tokenizer: ElectraTokenizer | None = None) -> tuple[int, int, dict]:
    """Tokenise and pack one chunk. Its random stream depends on (seed, chunk index) only, so the
    shards are the same whatever the number of workers. Returns (documents, characters, arrays)."""
    index, docs, holdout, max_len, seed, tok_path = job
    tok = tokenizer or _tokenizer_at(tok_path)
    ids = tok.encode_batch([line for doc in docs for line in doc])
    tokenized, pos = [], 0
    for doc in docs:
        tokenized.append(ids[pos : pos + len(doc)])
        pos += len(doc)
    rng = np.random.default_rng([_U64 & seed, index])
    out = {}
    for name, keep in (("train", ~holdout), ("holdout", holdout)):
        docs_in = [d for d, k in zip(tokenized, keep) if k]
        examples = list(build_examples(docs_in, max_len, cls_id=tok.cls_id, sep_id=tok.sep_id, rng=rng,
                                       word_start=tok.word_start_table))  # fmt: skip
        out[name] = _rows(examples, max_len, tok.pad_id, id_dtype(tok.vocab_size))
    counts = np.bincount(out["train"]["input_ids"].ravel(), minlength=tok.vocab_size)
    docs_held = int(holdout.sum())
    chars = sum(len(x) for d in docs for x in d)
    return len(docs), chars, {**out, "counts": counts, "docs": {"train": len(docs) - docs_held, "holdout": docs_held}}


def _rows(examples: list, max_len: int, pad_id: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    arr = np.full((len(examples), max_len), pad_id, dtype=dtype)
    seg = np.zeros((len(examples), max_len), dtype=np.uint8)
    lengths = np.zeros(len(examples), dtype=np.int32)
    for r, (x, s) in enumerate(examples):
        arr[r, : len(x)] = x
        seg[r, : len(s)] = s
        lengths[r] = len(x)
    return {"input_ids": arr, "token_type_ids": seg, "lengths": lengths}


def _in_order(pool, fn: Callable, jobs: Iterable, window: int) -> Iterator:
    """pool.imap(fn, jobs) with at most ``window`` jobs in flight: imap would read the whole corpus ahead."""
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.apply_async(fn, (job,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _start_pool(num_workers: int):
    """A fork pool (Linux: workers start in milliseconds and never re-run the caller's script),
    started while the parent is still small. Workers touch only numpy and their own tokenizer,
    whose thread pool is off."""
    import multiprocessing as mp

    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # inherited at fork: no fork warning
    try:
        return ctx.Pool(num_workers)
    finally:
        if parallelism is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism


class _Shards:
    """Append-only shard files of both splits in the building folder, with running totals."""

    def __init__(self, folder: Path, vocab_size: int):
        self.handles = {(s, k): open(folder / f, "wb") for s in SPLITS for k, f in split_files(s).items()}
        self.examples = dict.fromkeys(SPLITS, 0)
        self.tokens = dict.fromkeys(SPLITS, 0)  # real tokens, [CLS] and [SEP] included
        self.docs = dict.fromkeys(SPLITS, 0)
        self.token_counts = np.zeros(vocab_size, dtype=np.int64)

    def write(self, result: dict) -> None:
        for s in SPLITS:
            for k, arr in result[s].items():
                self.handles[s, k].write(np.ascontiguousarray(arr).tobytes())
            self.examples[s] += len(result[s]["lengths"])
            self.tokens[s] += int(result[s]["lengths"].sum())
            self.docs[s] += result["docs"][s]
        self.token_counts += result["counts"]

    def close(self) -> None:
        for h in self.handles.values():
            h.close()


def _pack(src: Source, tok: ElectraTokenizer, folder: Path, max_seq_length: int, seed: int,
          holdout_fraction: float, pool, num_workers: int, progress: bool) -> _Shards:  # fmt: skip
    """Tokenise and pack the corpus into shards in ``folder``, with a progress bar."""
    from tqdm.auto import tqdm

    is_held = src.holdout_rule(holdout_fraction, seed)
    jobs = ((i, chunk, flags, max_seq_length, seed, str(folder / "tokenizer.json"))
            for i, chunk, flags in _chunks(src, is_held, holdout_fraction > 0))  # fmt: skip
    results = _in_order(pool, _pack_chunk, jobs, 2 * num_workers) if pool is not None else (_pack_chunk(j, tok) for j in jobs)
    shards = _Shards(folder, tok.vocab_size)
    bar = tqdm(total=src.size, desc="tokenising + packing", unit="B", unit_scale=True, disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    try:
        for _, chars, result in results:
            shards.write(result)
            bar.update(chars)  # characters of text (file bytes for ASCII; compressed files run past the total)
            bar.set_postfix(docs=sum(shards.docs.values()), tokens=sum(shards.tokens.values()), refresh=False)
    finally:
        bar.close()
        shards.close()
    if shards.examples["train"] == 0:
        raise CorpusError("the corpus produced no training examples (no text left after tokenisation)")
    return shards


# ----------------------------------------------------------------------------- 4. the folder: key, reuse, swap


def _settings_key(src: Source, max_seq_length: int, seed: int, holdout_fraction: float) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": src.fingerprint,
        "max_seq_length": max_seq_length,
        "seed": seed,
        "holdout_fraction": holdout_fraction,
        "short_seq_prob": SHORT_SEQ_PROB,
        "single_segment_prob": SINGLE_SEGMENT_PROB,
    }


def tokenizer_hash(tok: ElectraTokenizer) -> str:
    """sha256 of the whole tokenizer (normalisation too: a cased and an uncased reading of one
    vocab.txt give different ids)."""
    return hashlib.sha256(tok.tokenizer.to_str().encode("utf-8")).hexdigest()


def read_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _reusable(m: dict, folder: Path, key: dict, tok: ElectraTokenizer | None, vocab_spec: dict) -> bool:
    """The folder holds shards of the same content and settings, with the same tokenizer (given)
    or a vocabulary trained the same way (none given)."""
    if not m or m.get("key") != key or not shards_intact(folder, m):
        return False
    if tok is not None:
        return m.get("tokenizer_hash") == tokenizer_hash(tok)
    return m.get("vocab_spec") == vocab_spec


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that holds anything but prepared shards."""
    if out.exists():
        if not out.is_dir():
            raise CorpusError(f"--out {out} is a file; pass a folder")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OUR_FILES)
        if foreign:
            raise CorpusError(f"--out {out} holds other files ({', '.join(foreign[:3])}); choose a new or empty folder")


def _return_freed_memory() -> None:
    """Hand the memory the vocabulary trainer freed back to the system (glibc keeps it for reuse
    otherwise, and the process would hold the trainer's peak for the hours of packing)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _swap_in(building: Path, out: Path) -> None:
    """Replace ``out`` by the finished ``building`` folder; the old shards go only after the new
    ones are in place (a crash in between leaves them in ``.NAME.old``)."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(building, out)
    shutil.rmtree(old, ignore_errors=True)


def prepare_corpus(
    source,
    out_dir: str | os.PathLike,
    *,
    tokenizer: ElectraTokenizer | None = None,
    vocab_size: int = 30522,
    vocab_sample_bytes: int = VOCAB_SAMPLE_BYTES,
    max_seq_length: int = 128,
    seed: int = 0,
    holdout_fraction: float = 0.02,
    num_workers: int | None = None,
    progress: bool = True,
    errors: str = "strict",
    text_field: str = "text",
    skip_unreadable: bool = False,
    log: Callable[[str], None] | None = None,
) -> PretrainingDataset:
    """Build (or reuse) the vocabulary and the shards of a corpus in ``out_dir``; return them opened.

    Args:
        source: None (the embedded default corpus), a path or list of paths (files / folders, see
            ``corpus.read_corpus``), or documents as lists of lines.
        tokenizer: the vocabulary to write ids with; None trains a WordPiece vocabulary of
            ``vocab_size`` on the corpus (or a uniform sample of ``vocab_sample_bytes`` of it).
        max_seq_length: width of every example row (shorter examples are padded with [PAD]).
        seed: packing randomness (short targets, single segments) and the holdout choice.
        holdout_fraction: share of documents held out for evaluation.
        num_workers: processes that tokenise and pack chunks of documents; None: every core for
            corpora above 16 MB, in-process below that (the tokenizer is parallel by itself).
        progress: a progress bar (text read, documents, tokens, ETA).
        errors, text_field, skip_unreadable: how files are read (``corpus.read_corpus``).
        log: called with the summary lines (None: quiet).

    Returns the dataset; ``.reused`` is True when the folder already held shards of the same
    corpus content and settings. The folder holds ``vocab.txt`` and ``tokenizer.json`` too, so it
    is all that training needs. With several ranks, call this on one rank only.
    """
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction={holdout_fraction}; it must be in [0, 1)")
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length={max_seq_length}; it must be at least 5")
    log = log or (lambda msg: None)
    t0 = time.time()
    out = Path(out_dir).absolute()
    old = _existing_manifest(out)
    src = Source(source, errors=errors, text_field=text_field, skip_unreadable=skip_unreadable, known=old)
    key = _settings_key(src, max_seq_length, seed, holdout_fraction)
    vocab_spec = {"vocab_size": vocab_size, "sample_bytes": vocab_sample_bytes, "min_frequency": 2,
                  "max_words": MAX_WORDS}  # fmt: skip
    if _reusable(old, out, key, tokenizer, vocab_spec):
        ds = load_dataset(out)
        ds.reused = True
        log(f"data: reusing the shards in {out} (same corpus content and settings)")
        return ds
    _check_out(out)
    if num_workers is None:
        num_workers = (os.cpu_count() or 1) if src.size >= PARALLEL_MIN_CHARS else 0
    manifest = _build(src, out, key, tokenizer, vocab_spec, vocab_size=vocab_size,
                      vocab_sample_bytes=vocab_sample_bytes, max_seq_length=max_seq_length, seed=seed,
                      holdout_fraction=holdout_fraction, num_workers=num_workers, progress=progress, log=log)  # fmt: skip
    _summary(manifest, out, time.time() - t0, src, log)
    return load_dataset(out)


def _existing_manifest(out: Path) -> dict:
    """The manifest of the shards already in ``out`` ({} if none), after finishing a swap that
    was cut short (the old folder, whole, is still parked beside it)."""
    parked = out.with_name(f".{out.name}.old")
    if not out.exists() and (parked / "manifest.json").is_file():
        os.replace(parked, out)
    return read_manifest(out)


def _build(src: Source, out: Path, key: dict, tokenizer: ElectraTokenizer | None, vocab_spec: dict, *,
           vocab_size: int, vocab_sample_bytes: int, max_seq_length: int, seed: int, holdout_fraction: float,
           num_workers: int, progress: bool, log: Callable[[str], None]) -> dict:  # fmt: skip
    """Vocabulary (unless given), shards and manifest in a building folder beside ``out``, swapped
    in when complete; returns the manifest."""
    building = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    pool = _start_pool(num_workers) if num_workers > 1 else None  # before anything large exists
    try:
        tok = tokenizer
        if tok is None:
            t_vocab = time.time()
            tok = train_vocabulary(src, vocab_size, vocab_sample_bytes, log, progress, pool, num_workers)
            log(f"vocabulary: {tok.vocab_size} tokens in {time.time() - t_vocab:.1f} s")
            _return_freed_memory()
        tok.save(building)  # vocab.txt + tokenizer.json: the folder is readable on its own
        shards = _pack(src, tok, building, max_seq_length, seed, holdout_fraction, pool, num_workers, progress)
        manifest = _manifest(src, key, tok, tokenizer is None and vocab_spec, shards, max_seq_length)
        (building / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _swap_in(building, out)
    finally:
        if pool is not None:
            pool.terminate()
        shutil.rmtree(building, ignore_errors=True)
    return manifest


def _manifest(src: Source, key: dict, tok: ElectraTokenizer, vocab_spec, shards: _Shards, T: int) -> dict:
    counts = shards.token_counts
    counts[tok.special_ids] = 0
    return {
        "format_version": FORMAT_VERSION,
        "key": key,
        "tokenizer_hash": tokenizer_hash(tok),
        "vocab_spec": vocab_spec or None,  # None: the vocabulary was given
        "source": src.desc,
        "files": src.records,  # path, size, mtime, sha256: re-checking an unchanged corpus only stats it
        "skipped": [list(s) for s in src.skipped],
        "num_documents": shards.docs,
        "num_examples": shards.examples,
        "num_tokens": shards.tokens,
        "max_seq_length": T,
        "dtype": id_dtype(tok.vocab_size).name,
        "vocab_size": tok.vocab_size,
        "vocab_hash": tok.vocab_hash(),
        "special_ids": {"pad": tok.pad_id, "unk": tok.unk_id, "cls": tok.cls_id,
                        "sep": tok.sep_id, "mask": tok.mask_id, "all": list(tok.special_ids)},
        "most_frequent_token": int(counts.argmax()),
    }  # fmt: skip


def _summary(m: dict, out: Path, seconds: float, src: Source, log: Callable[[str], None]) -> None:
    docs, tokens = m["num_documents"], m["num_tokens"]
    n_docs = sum(docs.values())
    shard_bytes = sum((out / f).stat().st_size for s in SPLITS for f in split_files(s).values())
    log(f"prepared {out}: {n_docs:,} documents ({docs['holdout']:,} held out, {docs['holdout'] / max(1, n_docs):.1%}), "
        f"{sum(tokens.values()):,} tokens in {sum(m['num_examples'].values()):,} examples of <= {m['max_seq_length']}, "
        f"shards {shard_bytes / 1e6:,.1f} MB, {seconds:.1f} s ({src.size / 1e6 / max(seconds, 1e-9):.2f} MB/s)")  # fmt: skip
    if src.skipped:
        log(f"warning: skipped {len(src.skipped)} unreadable path(s), e.g. {src.skipped[0][0]}")


def prepare_dataset(
    source,
    tokenizer: ElectraTokenizer,
    out_dir: str | os.PathLike,
    max_seq_length: int = 128,
    **kwargs,
) -> PretrainingDataset:
    """``prepare_corpus`` with a given vocabulary (the earlier API; see there for the arguments)."""
    return prepare_corpus(source, out_dir, tokenizer=tokenizer, max_seq_length=max_seq_length, **kwargs)


def is_prepared(path: str | os.PathLike) -> bool:
    """A folder written by ``prepare_corpus`` (``train --data FOLDER`` uses it as it is)."""
    return (Path(path) / "manifest.json").is_file()


def _run_shards_ok(data_dir: Path, tok: ElectraTokenizer) -> bool:
    m = read_manifest(data_dir)
    return bool(m) and m.get("vocab_hash") == tok.vocab_hash() and shards_intact(data_dir, m)


def prepare_for_run(data: list[str] | None, run_dir: Path, *, vocab: str | None, vocab_size: int,
                    max_seq_length: int, seed: int, resumed: bool, log: Callable[[str], None],
                    **read_kw) -> tuple[ElectraTokenizer, Path]:  # fmt: skip
    """The training run's data: (tokenizer, shard folder). The tokenizer is also saved in
    ``run_dir/vocab`` so that checkpoints describe themselves.

    - ``data`` is one prepared folder: used as it is (its sequence length must match).
    - a resumed run whose ``run_dir/data`` shards are intact uses them without reading the corpus
      (it may have been moved or deleted since).
    - otherwise ``prepare_corpus`` builds or reuses ``run_dir/data`` (``read_kw``: workers,
      progress, errors, text_field, skip_unreadable).
    """
    vocab_dir, data_dir = run_dir / "vocab", run_dir / "data"
    run_tok = load_tokenizer(vocab_dir) if (vocab_dir / "vocab.txt").is_file() else None
    if data and len(data) == 1 and is_prepared(data[0]):
        data_dir = Path(data[0])
        m = read_manifest(data_dir)
        if m.get("max_seq_length") != max_seq_length:
            raise CorpusError(f"--data {data_dir} holds examples of {m.get('max_seq_length')} tokens, this run uses "
                              f"{max_seq_length}: pass --seq-len {m.get('max_seq_length')} or prepare it again")  # fmt: skip
        tok = load_tokenizer(data_dir)
        if vocab and load_tokenizer(vocab).vocab_hash() != tok.vocab_hash():
            raise CorpusError(f"--vocab {vocab} is not the vocabulary {data_dir} was prepared with; drop --vocab")
        log(f"data: the prepared folder {data_dir} ({m['num_examples']} examples)")
    elif resumed and run_tok is not None and _run_shards_ok(data_dir, run_tok):
        tok = run_tok
        log(f"data: resuming on the shards in {data_dir} (the corpus is not read again)")
    else:
        given = run_tok or (load_tokenizer(vocab) if vocab else None)
        ds = prepare_corpus(data or None, data_dir, tokenizer=given, vocab_size=vocab_size, max_seq_length=max_seq_length,
                            seed=seed, log=log, **read_kw)  # fmt: skip
        tok = given or load_tokenizer(data_dir)
        log(f"data: {ds.num_examples} examples of <= {max_seq_length} tokens in {data_dir}" + (" (reused)" if ds.reused else ""))
    if run_tok is not None and run_tok.vocab_hash() != tok.vocab_hash():
        raise CorpusError(f"{data_dir} was written with another vocabulary than the run's {vocab_dir}; "
                          "use a new --out folder")  # fmt: skip
    if run_tok is None:
        tok.save(vocab_dir)
    return tok, data_dir


# ----------------------------------------------------------------------------- 5. the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m electra_fast.prepare",
        description="Prepare a corpus once: WordPiece vocabulary + packed example shards in one folder, "
        "then `python -m electra_fast.train --data FOLDER` trains on it (any number of runs).",
    )
    p.add_argument("--data", nargs="+", metavar="PATH",
                   help="text files / folders (one sentence per line, blank line between documents), .jsonl, "
                        "Parquet / Arrow, optionally .gz/.bz2/.xz/.zst; default: the embedded corpus")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="folder for vocab.txt, tokenizer.json and shards")
    p.add_argument("--vocab", metavar="PATH", help="vocab.txt or tokenizer.json to use instead of training one")
    p.add_argument("--vocab-size", type=int, default=30522, help="size of the trained vocabulary (default 30522)")
    p.add_argument("--vocab-sample", type=float, default=VOCAB_SAMPLE_BYTES / 2**30, metavar="GB",
                   help="learn the vocabulary from a uniform sample of about this many GB (default 2)")
    p.add_argument("--seq-len", type=int, default=128, help="example length in tokens (default 128)")
    p.add_argument("--seed", type=int, default=0, help="packing randomness and the held-out choice")
    p.add_argument("--holdout", type=float, default=0.02, help="share of documents held out (default 0.02)")
    p.add_argument("--workers", type=int, help="tokenising processes (default: all cores above 16 MB)")
    p.add_argument("--errors", default="strict", choices=["strict", "replace"],
                   help="undecodable bytes: stop with an error, or replace them with U+FFFD")
    p.add_argument("--text-field", default="text", help="JSON field / Parquet column holding the text")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="skip unreadable files, folders and broken links with a counted warning")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)
    try:
        tok = load_tokenizer(args.vocab) if args.vocab else None
        prepare_corpus(
            [str(Path(p).expanduser()) for p in args.data] if args.data else None, args.out, tokenizer=tok,
            vocab_size=args.vocab_size, vocab_sample_bytes=int(args.vocab_sample * 2**30),
            max_seq_length=args.seq_len, seed=args.seed, holdout_fraction=args.holdout,
            num_workers=args.workers, progress=not args.no_progress, errors=args.errors,
            text_field=args.text_field, skip_unreadable=args.skip_unreadable, log=say,
        )  # fmt: skip
    except ValueError as e:  # CorpusError, TokenizerError, bad settings: one line, no traceback
        say(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        say("interrupted; the output folder was left as it was")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
