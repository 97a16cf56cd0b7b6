"""Documents -> packed pre-training examples on disk -> shuffled, dynamically masked batches.

Three steps, in the order the data flows:

1. ``build_examples``: pack the sentences of one document into ``[CLS] A [SEP] B [SEP]`` examples
   (rules of the official ``build_pretraining_dataset.py``, see its docstring).
2. ``prepare_dataset``: tokenise a corpus once into fixed-width shards (numpy memmaps of ids,
   segment ids and lengths, plus ``manifest.json``), split into train / holdout by document.
   A second call with the same inputs and vocabulary reuses the shards.
3. ``PretrainingLoader``: shuffles every epoch (permutation from (seed, epoch)), gives each rank its
   own slice, masks every batch afresh (``electra_fast.masking.mask_batch``, seeded from
   (seed, epoch, batch, rank)), and resumes exactly from ``state_dict()``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .corpus import (
    CorpusError,
    Document,
    corpus_files,
    default_corpus,
    documents_fingerprint,
    files_fingerprint,
    read_corpus,
)
from .masking import mask_batch
from .tokenizer import ElectraTokenizer, vocab_lines

FORMAT_VERSION = 1
SPLITS = ("train", "holdout")
SHORT_SEQ_PROB = 0.05  # build_pretraining_dataset.py: "small chance for random-length" example
SINGLE_SEGMENT_PROB = 0.1  # build_pretraining_dataset.py: "small chance to only have one segment"
CHUNK_CHARS = 1 << 20  # documents are tokenised and packed in chunks of about 1M characters
PARALLEL_MIN_CHARS = 16 << 20  # below this a worker pool costs more than it saves
_U64 = (1 << 64) - 1  # seeds enter numpy's SeedSequence as non-negative integers


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
    it would split, so whole-word masking sees whole words.
    """
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length={max_seq_length}; it must be at least 5 ([CLS] A [SEP] B [SEP])")

    def next_shape() -> tuple[int, bool]:
        target = max_seq_length
        if rng.random() < short_seq_prob:
            target = int(rng.integers(5, max_seq_length + 1))
        return target, bool(rng.random() < single_segment_prob)

    def make(chunk: list[Sequence[int]], target: int, single: bool) -> tuple[list[int], list[int]]:
        a: list[int] = []
        b: list[int] = []
        first_target = (target - 3) // 2
        for s in chunk:
            if single or (
                not b
                and (
                    not a or len(a) + len(s) < first_target or (len(a) < first_target and rng.random() < 0.5)
                )
            ):
                a.extend(s)
            else:
                b.extend(s)
        ids = [cls_id, *a, sep_id]
        if b:
            ids += [*b, sep_id]
        return ids, [0] * (len(a) + 2) + [1] * (len(ids) - len(a) - 2)

    for doc in tokenized_docs:
        queue = deque(s for s in doc if len(s))
        chunk: list[Sequence[int]] = []
        length = 0
        target, single = next_shape()
        while queue:
            budget = target - (2 if single else 3)  # room left for [CLS] / [SEP]
            s = queue.popleft()
            full = length + len(s) >= budget
            if length + len(s) > budget:  # the overflow starts the next example
                cut = budget - length
                if word_start is not None:  # cut before the word that straddles the boundary
                    c = cut
                    while c > 0 and not word_start[s[c]]:
                        c -= 1
                    cut = c if c > 0 or chunk else cut  # a word longer than the budget is cut anyway
                queue.appendleft(s[cut:])
                s = s[:cut]
            if len(s):
                chunk.append(s)
                length += len(s)
            if full:
                yield make(chunk, target, single)
                chunk, length = [], 0
                target, single = next_shape()
        if chunk:
            yield make(chunk, target, single)


# ----------------------------------------------------------------------------- 2. shards on disk


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id: uint16 up to 65536 entries, else int32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


@dataclass
class Split:
    """Examples of one split: fixed-width rows, padded with the pad id after ``lengths[i]``."""

    input_ids: np.ndarray  # (N, T) uint16 or int32
    token_type_ids: np.ndarray  # (N, T) uint8
    lengths: np.ndarray  # (N,) int32

    def __len__(self) -> int:
        return len(self.lengths)


@dataclass
class PretrainingDataset:
    """Prepared examples and what the loader needs to mask them (no tokenizer required)."""

    splits: dict[str, Split]
    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    special_ids: list[int]
    max_seq_length: int
    word_start: np.ndarray | None = None  # (V,) bool: token does not start with "##"
    path: Path | None = None
    manifest: dict = field(default_factory=dict)
    reused: bool = False  # prepare_dataset found matching shards and did not rebuild them

    @property
    def num_examples(self) -> dict[str, int]:
        return {name: len(s) for name, s in self.splits.items()}

    @classmethod
    def from_arrays(
        cls, splits: dict[str, Split], tokenizer: ElectraTokenizer, max_seq_length: int | None = None
    ) -> PretrainingDataset:
        """An in-memory dataset (tests, notebooks) with the ids of ``tokenizer``."""
        T = max_seq_length or next(iter(splits.values())).input_ids.shape[1]
        return cls(splits, tokenizer.vocab_size, tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id,
                   tokenizer.mask_id, list(tokenizer.special_ids), T, tokenizer.word_start_table)  # fmt: skip


def _split_files(split: str) -> dict[str, str]:
    return {k: f"{split}_{k}.bin" for k in ("input_ids", "token_type_ids", "lengths")}


def load_dataset(path: str | os.PathLike) -> PretrainingDataset:
    """Open the shards written by ``prepare_dataset`` as read-only memmaps."""
    d = Path(path)
    try:
        m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{d} has no manifest.json; build it with prepare_dataset") from None
    if m.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{d}: shard format {m.get('format_version')}, this code reads {FORMAT_VERSION}; rebuild it"
        )
    T, dtype = m["max_seq_length"], np.dtype(m["dtype"])
    splits = {}
    for name, n in m["num_examples"].items():
        files = _split_files(name)
        shapes = {
            "input_ids": ((n, T), dtype),
            "token_type_ids": ((n, T), np.uint8),
            "lengths": ((n,), np.int32),
        }
        arrays = {}
        for key, (shape, dt) in shapes.items():
            if n == 0:  # mmap cannot map an empty file
                arrays[key] = np.zeros(shape, dt)
            else:
                arrays[key] = np.memmap(d / files[key], dtype=dt, mode="r", shape=shape)
        splits[name] = Split(**arrays)
    word_start = None
    vocab = d / "vocab.txt"
    if vocab.is_file():
        word_start = np.array(
            [not t.startswith("##") for t in vocab_lines(vocab.read_text(encoding="utf-8"))]
        )
    s = m["special_ids"]
    return PretrainingDataset(splits, m["vocab_size"], s["pad"], s["cls"], s["sep"], s["mask"], s["all"], T,
                              word_start, d, m)  # fmt: skip


def _shards_intact(d: Path, m: dict) -> bool:
    T, itemsize = m["max_seq_length"], np.dtype(m["dtype"]).itemsize
    for name, n in m["num_examples"].items():
        sizes = {"input_ids": n * T * itemsize, "token_type_ids": n * T, "lengths": n * 4}
        for key, file in _split_files(name).items():
            f = d / file
            if not f.is_file() or f.stat().st_size != sizes[key]:
                return False
    return True


def _resolve_source(source) -> tuple[str, str, int, Iterable[Document] | None, list[Path] | None]:
    """(description, fingerprint, size in characters or bytes, documents, files) of a source."""
    if source is None:
        docs = default_corpus()
        desc = f"default corpus (Python {sys.version.split()[0]} documentation)"
        return desc, "docs:" + documents_fingerprint(docs), sum(len(x) for d in docs for x in d), docs, None
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    source = list(source)
    if source and all(isinstance(x, (str, os.PathLike)) for x in source):
        files = corpus_files(source)
        desc = "files: " + ", ".join(str(p) for p in source)
        return desc, "files:" + files_fingerprint(files), sum(f.stat().st_size for f in files), None, files
    docs = [list(d) for d in source]
    return (
        f"{len(docs)} documents",
        "docs:" + documents_fingerprint(docs),
        sum(len(x) for d in docs for x in d),
        docs,
        None,
    )


def _chunks(
    docs: Iterable[Document], holdout: np.ndarray
) -> Iterator[tuple[int, list[Document], np.ndarray]]:
    """(chunk index, documents, holdout flags) in chunks of about CHUNK_CHARS characters."""
    chunk: list[Document] = []
    chars = start = index = 0
    for i, doc in enumerate(docs):
        chunk.append(doc)
        chars += sum(map(len, doc))
        if chars >= CHUNK_CHARS:
            yield index, chunk, _flags(holdout, start, i + 1)
            chunk, chars, start, index = [], 0, i + 1, index + 1
    if chunk:
        yield index, chunk, _flags(holdout, start, start + len(chunk))


def _flags(holdout: np.ndarray, lo: int, hi: int) -> np.ndarray:
    flags = np.zeros(hi - lo, dtype=bool)
    flags[holdout[np.searchsorted(holdout, lo) : np.searchsorted(holdout, hi)] - lo] = True
    return flags


def _in_order(pool, jobs: Iterable, window: int) -> Iterator:
    """pool.imap with at most ``window`` chunks in flight: imap would read the whole corpus ahead."""
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.apply_async(_pack_chunk, (job,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


_worker_tokenizer: ElectraTokenizer | None = None


def _init_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    from tokenizers import Tokenizer

    _worker_tokenizer = ElectraTokenizer(Tokenizer.from_str(tokenizer_json))


def _pack_chunk(job, tokenizer: ElectraTokenizer | None = None) -> tuple[int, dict]:
    """Tokenise and pack one chunk. Its random stream depends on (seed, chunk index) only, so the
    shards are the same whatever the number of workers."""
    index, docs, holdout, max_len, seed = job
    tok = tokenizer or _worker_tokenizer
    ids = tok.encode_batch([line for doc in docs for line in doc])
    tokenized, pos = [], 0
    for doc in docs:
        tokenized.append(ids[pos : pos + len(doc)])
        pos += len(doc)
    rng = np.random.default_rng([_U64 & seed, index])
    dtype = id_dtype(tok.vocab_size)
    out = {}
    for name, keep in (("train", ~holdout), ("holdout", holdout)):
        docs_in = [d for d, k in zip(tokenized, keep) if k]
        examples = list(
            build_examples(
                docs_in,
                max_len,
                cls_id=tok.cls_id,
                sep_id=tok.sep_id,
                rng=rng,
                word_start=tok.word_start_table,
            )
        )
        arr = np.full((len(examples), max_len), tok.pad_id, dtype=dtype)
        seg = np.zeros((len(examples), max_len), dtype=np.uint8)
        lengths = np.zeros(len(examples), dtype=np.int32)
        for r, (x, s) in enumerate(examples):
            arr[r, : len(x)] = x
            seg[r, : len(s)] = s
            lengths[r] = len(x)
        out[name] = {"input_ids": arr, "token_type_ids": seg, "lengths": lengths}
    counts = np.bincount(out["train"]["input_ids"].ravel(), minlength=tok.vocab_size)
    return len(docs), {**out, "counts": counts}


def prepare_dataset(
    source,
    tokenizer: ElectraTokenizer,
    out_dir: str | os.PathLike,
    max_seq_length: int = 128,
    *,
    seed: int = 0,
    holdout_fraction: float = 0.02,
    num_workers: int | None = None,
    progress: bool = True,
    errors: str = "strict",
    text_field: str = "text",
) -> PretrainingDataset:
    """Tokenise and pack a corpus into shards under ``out_dir``; return them opened.

    Args:
        source: None (the embedded default corpus), a path or list of paths (files / folders, see
            ``read_corpus``), or documents as lists of lines.
        tokenizer: its ids are written; its vocabulary hash is recorded in the manifest.
        max_seq_length: width of every example row (shorter examples are padded with [PAD]).
        seed: packing randomness (short targets, single segments) and the holdout choice.
        holdout_fraction: share of documents held out for evaluation (at least one document each
            side when there are two or more documents and the fraction is positive).
        num_workers: processes that tokenise and pack chunks of documents; None: every core for
            corpora above 16 MB, in-process below that (the tokenizer is parallel by itself).
        progress: a tqdm bar over documents.
        errors, text_field: passed to ``read_corpus`` for path sources.

    Returns the dataset; ``.reused`` is True when matching shards were already there (same inputs
    fingerprint, vocabulary hash, length, seed and fractions) and nothing was rebuilt. With
    several ranks, call this on one rank and wait at a barrier before the others load it.
    """
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction={holdout_fraction}; it must be in [0, 1)")
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length={max_seq_length}; it must be at least 5")
    out = Path(out_dir)
    desc, fingerprint, size, docs, files = _resolve_source(source)
    if files is not None:
        fingerprint += f":{errors}:{text_field}"
    key = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "vocab_hash": tokenizer.vocab_hash(),
        # the whole tokenizer (normalisation too: a cased and an uncased reading of one vocab.txt differ)
        "tokenizer_hash": hashlib.sha256(tokenizer.tokenizer.to_str().encode("utf-8")).hexdigest(),
        "max_seq_length": max_seq_length,
        "seed": seed,
        "holdout_fraction": holdout_fraction,
        "short_seq_prob": SHORT_SEQ_PROB,
        "single_segment_prob": SINGLE_SEGMENT_PROB,
    }
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        if old.get("key") == key and _shards_intact(out, old):
            ds = load_dataset(out)
            ds.reused = True
            return ds

    def documents() -> Iterable[Document]:
        return docs if docs is not None else read_corpus(files, errors=errors, text_field=text_field)

    n_docs = len(docs) if docs is not None else sum(1 for _ in documents())
    if n_docs == 0:
        raise CorpusError("empty corpus: no documents to prepare")
    n_hold = 0
    if holdout_fraction > 0 and n_docs > 1:
        n_hold = min(n_docs - 1, max(1, round(holdout_fraction * n_docs)))
    holdout = np.sort(np.random.default_rng([_U64 & seed, 1]).choice(n_docs, n_hold, replace=False))

    out.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)  # shards without a manifest are never reused
    tmp = out / ".building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    handles = {(s, k): open(tmp / f, "wb") for s in SPLITS for k, f in _split_files(s).items()}
    counts = {s: 0 for s in SPLITS}
    tokens = {s: 0 for s in SPLITS}  # real tokens, [CLS] and [SEP] included
    token_counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    jobs = ((i, chunk, flags, max_seq_length, seed) for i, chunk, flags in _chunks(documents(), holdout))
    if num_workers is None:
        num_workers = (os.cpu_count() or 1) if size >= PARALLEL_MIN_CHARS else 0

    from tqdm.auto import tqdm

    bar = tqdm(total=n_docs, desc="packing examples", unit="doc", disable=not progress, dynamic_ncols=True)
    pool = None
    try:
        if num_workers > 1:
            import multiprocessing as mp

            # fork on Linux: workers start in milliseconds and never re-run the caller's script
            # (spawn needs an `if __name__ == "__main__":` guard there). They touch only numpy and a
            # fresh tokenizer whose thread pool is off, so the parent's threads do not matter.
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # inherited at fork: no fork warning
            try:
                pool = ctx.Pool(
                    num_workers, initializer=_init_worker, initargs=(tokenizer.tokenizer.to_str(),)
                )
            finally:
                if parallelism is None:
                    del os.environ["TOKENIZERS_PARALLELISM"]
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = parallelism
            results = _in_order(pool, jobs, window=2 * num_workers)
        else:
            results = (_pack_chunk(job, tokenizer) for job in jobs)
        for n, result in results:
            for s in SPLITS:
                for k, arr in result[s].items():
                    handles[s, k].write(np.ascontiguousarray(arr).tobytes())
                counts[s] += len(result[s]["lengths"])
                tokens[s] += int(result[s]["lengths"].sum())
            token_counts += result["counts"]
            bar.update(n)
        for h in handles.values():
            h.close()
        if counts["train"] == 0:
            raise CorpusError("the corpus produced no training examples (no text left after tokenisation)")
        for s in SPLITS:
            for f in _split_files(s).values():
                os.replace(tmp / f, out / f)
    finally:
        bar.close()
        for h in handles.values():
            h.close()
        if pool is not None:
            pool.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save(out)  # vocab.txt + tokenizer.json: the shards are readable without the run folder
    token_counts[tokenizer.special_ids] = 0
    manifest = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "source": desc,
        "num_documents": {"train": n_docs - n_hold, "holdout": n_hold},
        "num_examples": counts,
        "num_tokens": tokens,
        "max_seq_length": max_seq_length,
        "dtype": id_dtype(tokenizer.vocab_size).name,
        "vocab_size": tokenizer.vocab_size,
        "vocab_hash": tokenizer.vocab_hash(),
        "special_ids": {"pad": tokenizer.pad_id, "unk": tokenizer.unk_id, "cls": tokenizer.cls_id,
                        "sep": tokenizer.sep_id, "mask": tokenizer.mask_id, "all": list(tokenizer.special_ids)},
        "most_frequent_token": int(token_counts.argmax()),
    }  # fmt: skip
    tmp_manifest = out / "manifest.json.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_manifest, manifest_path)  # last: a build cut short leaves no manifest
    return load_dataset(out)


# ----------------------------------------------------------------------------- 3. batches


def _derive_seed(*parts: int) -> int:
    """A 64-bit seed from integers (SeedSequence hashing: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([_U64 & p for p in parts]).generate_state(1, np.uint64)[0])


_TRAIN_STREAM, _EVAL_STREAM = 0, 1


class PretrainingLoader:
    """Shuffled, dynamically masked batches of a prepared dataset, resumable to the batch.

    Iterating never ends: epoch after epoch, each a fresh permutation of the split derived from
    (seed, epoch); rank r of w takes ``perm[r::w]`` cut to ``len // w`` so every rank has the same
    number of batches. Every batch is masked when it is produced (DESIGN.md: masking is dynamic)
    with a seed derived from (seed, epoch, batch index, rank), so an interrupted run restored with
    ``load_state_dict(state_dict())`` yields exactly the batches an uninterrupted one would.

    Each batch is a dict of CPU tensors:
        input_ids (B, T) int64 after masking; original_ids (B, T) int64; token_type_ids (B, T) int64;
        attention_mask (B, T) bool, True at real tokens; masked_positions, masked_ids (B, P) int64;
        masked_weights (B, P) float32, 0 in the padding slots (P = max_predictions).
    """

    def __init__(
        self,
        data: str | os.PathLike | PretrainingDataset,
        split: str = "train",
        batch_size: int = 128,
        *,
        tokenizer: ElectraTokenizer | None = None,
        seed: int = 0,
        mask_prob: float = 0.15,
        max_predictions: int | None = None,
        mask_replace_prob: float = 0.85,
        random_replace_prob: float = 0.0,
        whole_word: bool = False,
        mask_backend: str = "cpp",
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        self.dataset = data if isinstance(data, PretrainingDataset) else load_dataset(data)
        ds = self.dataset
        if split not in ds.splits:
            raise KeyError(f"no {split!r} split; the dataset has {sorted(ds.splits)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be positive")
        if tokenizer is not None:
            expected = ds.manifest.get("vocab_hash")
            if expected is not None and expected != tokenizer.vocab_hash():
                raise ValueError(f"{ds.path}: the shards were written with another vocabulary; rebuild them")
        self.word_start = tokenizer.word_start_table if tokenizer is not None else ds.word_start
        if whole_word and self.word_start is None:
            raise ValueError(
                "whole_word=True needs the vocabulary: pass tokenizer= or a dataset with vocab.txt"
            )
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self.whole_word = whole_word
        self.mask_kw = dict(
            vocab_size=ds.vocab_size, mask_token_id=ds.mask_id, special_ids=ds.special_ids, pad_token_id=ds.pad_id,
            mask_prob=mask_prob, max_predictions=max_predictions, mask_replace_prob=mask_replace_prob,
            random_replace_prob=random_replace_prob, backend=mask_backend,
        )  # fmt: skip
        n = len(ds.splits[split])
        self.per_rank = n // world_size
        full, rest = divmod(self.per_rank, batch_size)
        self.batches_per_epoch = full + (0 if drop_last or rest == 0 else 1)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the {split} split has {n} examples ({self.per_rank} per rank), fewer than one batch of "
                f"{batch_size}: lower the batch size, pass drop_last=False, or give it more text"
            )
        self.epoch = 0
        self.index = 0  # next batch within the epoch
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def state_dict(self) -> dict:
        """Where the next batch comes from: {"epoch", "index"}."""
        if self.index >= self.batches_per_epoch:
            return {"epoch": self.epoch + 1, "index": 0}
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's example indices for an epoch, in visiting order."""
        if epoch != self._order_epoch:
            n = len(self.dataset.splits[self.split])
            perm = np.random.default_rng([_U64 & self.seed, epoch]).permutation(n)
            self._order = perm[self.rank :: self.world_size][: self.per_rank]
            self._order_epoch = epoch
        return self._order

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            if self.index >= self.batches_per_epoch:
                self.epoch, self.index = self.epoch + 1, 0
            b = self.index
            rows = self.epoch_order(self.epoch)[b * self.batch_size : (b + 1) * self.batch_size]
            batch = self.make_batch(
                self.split, rows, _derive_seed(self.seed, _TRAIN_STREAM, self.epoch, b, self.rank)
            )
            self.index += 1
            yield batch

    def iter_eval(
        self, batch_size: int | None = None, *, max_batches: int | None = None, split: str = "holdout"
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over a split (the held-out documents by default) in stored order, the last batch
        possibly smaller, masked with fixed seeds: every call yields the same batches. With several
        ranks, rank r reads examples r, r + w, ..."""
        if split not in self.dataset.splits:
            raise KeyError(f"no {split!r} split; the dataset has {sorted(self.dataset.splits)}")
        bs = batch_size or self.batch_size
        rows = np.arange(self.rank, len(self.dataset.splits[split]), self.world_size)
        for b in range(-(-len(rows) // bs)):
            if max_batches is not None and b >= max_batches:
                return
            yield self.make_batch(
                split, rows[b * bs : (b + 1) * bs], _derive_seed(self.seed, _EVAL_STREAM, 0, b, self.rank)
            )

    def make_batch(self, split: str, rows: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
        """Gather rows of a split and mask them with ``seed``."""
        s = self.dataset.splits[split]
        ids = np.asarray(s.input_ids[rows], dtype=np.int64)  # (B, T)
        word_starts = self.word_start[ids] if self.whole_word else None
        m = mask_batch(ids, word_starts=word_starts, seed=seed, **self.mask_kw)
        T = ids.shape[1]
        return {
            "input_ids": torch.from_numpy(np.asarray(m.input_ids, dtype=np.int64)),
            "token_type_ids": torch.from_numpy(s.token_type_ids[rows].astype(np.int64)),
            "attention_mask": torch.from_numpy(np.arange(T) < s.lengths[rows][:, None]),
            "masked_positions": torch.from_numpy(m.masked_positions),
            "masked_ids": torch.from_numpy(m.masked_ids),
            "masked_weights": torch.from_numpy(m.masked_weights),
            "original_ids": torch.from_numpy(ids),
        }

    def most_frequent_token(self) -> int:
        """The most frequent non-special id of the training split (the MLM accuracy baseline)."""
        mft = self.dataset.manifest.get("most_frequent_token")
        if mft is not None:
            return int(mft)
        ids = np.asarray(self.dataset.splits["train"].input_ids[:100_000]).ravel()
        counts = np.bincount(ids, minlength=self.dataset.vocab_size)
        counts[self.dataset.special_ids] = 0
        return int(counts.argmax())
