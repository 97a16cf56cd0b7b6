"""Prepared shards -> shuffled, dynamically masked batches (the training side of the data).

``load_dataset`` opens a folder written by ``prepare.prepare_corpus`` as read-only memory maps
(read-ahead off: rows are read scattered). ``PretrainingLoader`` shuffles in blocks, so memory and
the per-epoch cost do not grow with the corpus: each epoch permutes blocks of BLOCK_ROWS
contiguous rows (seeded by (seed, epoch)), then shuffles rows within buffers of BUFFER_BLOCKS
blocks (seeded by (seed, epoch, buffer)); only the block permutation and one buffer's order are
ever in memory. It gives each rank its own slice, masks every batch afresh
(``masking.mask_batch``, seeded from (seed, epoch, batch, rank)), and resumes exactly from
``state_dict()``.
"""

from __future__ import annotations

import json
import mmap
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .masking import mask_batch
from .tokenizer import ElectraTokenizer, vocab_lines

if TYPE_CHECKING:  # torch is imported when the first batch is made: preparing shards never needs it
    import torch

FORMAT_VERSION = 2  # 2: content-keyed manifest (the shard layout is that of 1, still readable)
READABLE_VERSIONS = (1, 2)
SPLITS = ("train", "holdout")
BLOCK_ROWS = 256  # rows read contiguously (about 100 KB at 128 tokens)
BUFFER_BLOCKS = 256  # blocks whose rows are shuffled together (65,536 rows, 512 KB of indices)
_U64 = (1 << 64) - 1  # seeds enter numpy's SeedSequence as non-negative integers


# ----------------------------------------------------------------------------- shards on disk


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
    reused: bool = False  # prepare_corpus found matching shards and did not rebuild them

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


def _map(path: Path, dtype, shape: tuple) -> np.ndarray:
    """A read-only array over a file's memory map, with the kernel's read-ahead off
    (MADV_RANDOM): the loader reads scattered rows, and read-ahead would pull whole shards into
    the page cache for a few megabytes of rows."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mm.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(mm, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def _mmap_of(arr: np.ndarray) -> mmap.mmap | None:
    """The memory map under an array from ``_map`` (None for an in-memory array). numpy 2 puts a
    memoryview between them, whose exporter is ``.obj``, not ``.base``."""
    obj = arr
    while obj is not None and not isinstance(obj, mmap.mmap):
        obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
    return obj


def _will_need(arr: np.ndarray, rows: np.ndarray, block_rows: int) -> None:
    """Ask the kernel to read blocks of rows ahead, asynchronously (MADV_WILLNEED): with
    read-ahead off, a cold buffer would otherwise fault in one 4 KB page per row, each a
    synchronous read."""
    mm = _mmap_of(arr)
    if mm is None or not hasattr(mmap, "MADV_WILLNEED"):
        return
    row_bytes = arr.strides[0]
    for b in rows:
        start = int(b) * block_rows * row_bytes
        aligned = start - start % mmap.PAGESIZE
        length = min(block_rows * row_bytes + start - aligned, len(mm) - aligned)
        if length > 0:
            mm.madvise(mmap.MADV_WILLNEED, aligned, length)


def split_files(split: str) -> dict[str, str]:
    return {k: f"{split}_{k}.bin" for k in ("input_ids", "token_type_ids", "lengths")}


def load_dataset(path: str | os.PathLike) -> PretrainingDataset:
    """Open the shards written by ``prepare.prepare_corpus`` as read-only memory maps."""
    d = Path(path)
    try:
        m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{d} has no manifest.json; build it with python -m electra_fast.prepare") from None
    if m.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{d}: shard format {m.get('format_version')}, this code reads {FORMAT_VERSION}; rebuild it"
        )
    T, dtype = m["max_seq_length"], np.dtype(m["dtype"])
    splits = {}
    for name, n in m["num_examples"].items():
        files = split_files(name)
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
                arrays[key] = _map(d / files[key], dt, shape)
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


def shards_intact(d: Path, m: dict) -> bool:
    """Every shard file of the manifest is there with the size it must have."""
    T, itemsize = m["max_seq_length"], np.dtype(m["dtype"]).itemsize
    for name, n in m["num_examples"].items():
        sizes = {"input_ids": n * T * itemsize, "token_type_ids": n * T, "lengths": n * 4}
        for key, file in split_files(name).items():
            f = d / file
            if not f.is_file() or f.stat().st_size != sizes[key]:
                return False
    return True



# ----------------------------------------------------------------------------- batches


def _derive_seed(*parts: int) -> int:
    """A 64-bit seed from integers (SeedSequence hashing: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([_U64 & p for p in parts]).generate_state(1, np.uint64)[0])


_TRAIN_STREAM, _EVAL_STREAM = 0, 1


class PretrainingLoader:
    """Shuffled, dynamically masked batches of a prepared dataset, resumable to the batch.

    Iterating never ends: epoch after epoch, each a fresh block-shuffled order of the split derived
    from (seed, epoch) (see the module docstring); rank r of w takes ``order[r::w]`` cut to
    ``len // w`` so every rank has the same number of batches. Every batch is masked when it is produced (masking is dynamic: docs/ARCHITECTURE.md, section 1)
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
        self._layout: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, block order, buffer ends)
        self._buffers: dict[tuple[int, int], np.ndarray] = {}  # (epoch, buffer) -> row order, two kept
        self._advised: deque[tuple[int, int]] = deque(maxlen=4)  # (epoch, buffer) whose blocks were asked for

    def __len__(self) -> int:
        return self.batches_per_epoch

    def state_dict(self) -> dict:
        """Where the next batch comes from: {"epoch", "index"}. Two integers: cheap, and safe to
        take from another thread while the iterator is suspended between batches."""
        if self.index >= self.batches_per_epoch:
            return {"epoch": self.epoch + 1, "index": 0}
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def _epoch_layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(block order, end position of each buffer) of an epoch: O(rows / BLOCK_ROWS) memory."""
        if self._layout is None or self._layout[0] != epoch:
            n = len(self.dataset.splits[self.split])
            n_blocks = -(-n // BLOCK_ROWS)
            blocks = np.random.default_rng([_U64 & self.seed, epoch]).permutation(n_blocks)
            sizes = np.minimum(BLOCK_ROWS, n - blocks * BLOCK_ROWS)  # only the last block is short
            ends = np.cumsum(sizes)[BUFFER_BLOCKS - 1 :: BUFFER_BLOCKS]
            if len(ends) == 0 or ends[-1] != n:
                ends = np.append(ends, n)
            self._layout = (epoch, blocks, ends)
        return self._layout[1], self._layout[2]

    def _buffer(self, epoch: int, g: int) -> np.ndarray:
        """Row indices of buffer g of an epoch, shuffled."""
        if (epoch, g) not in self._buffers:
            blocks, _ = self._epoch_layout(epoch)
            chosen = blocks[g * BUFFER_BLOCKS : (g + 1) * BUFFER_BLOCKS]
            rows = (chosen[:, None] * BLOCK_ROWS + np.arange(BLOCK_ROWS)).ravel()
            rows = rows[rows < len(self.dataset.splits[self.split])]
            order = np.random.default_rng([_U64 & self.seed, epoch, g]).permutation(rows)
            if len(self._buffers) >= 2:
                self._buffers.pop(next(iter(self._buffers)))
            self._buffers[(epoch, g)] = order
        return self._buffers[(epoch, g)]

    def _read_ahead(self, epoch: int, g: int) -> None:
        """Ask the kernel for the blocks of buffer g and of the next one, once each (MADV_WILLNEED):
        they arrive in large reads while earlier batches are served, instead of a synchronous 4 KB
        read for each row of a cold buffer."""
        blocks, ends = self._epoch_layout(epoch)
        split = self.dataset.splits[self.split]
        for h in (g, g + 1):
            if h < len(ends) and (epoch, h) not in self._advised:
                self._advised.append((epoch, h))
                for arr in (split.input_ids, split.token_type_ids, split.lengths):
                    _will_need(arr, blocks[h * BUFFER_BLOCKS : (h + 1) * BUFFER_BLOCKS], BLOCK_ROWS)

    def rows_at(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """The example indices at positions of an epoch's (all ranks') visiting order."""
        _, ends = self._epoch_layout(epoch)
        groups = np.searchsorted(ends, positions, side="right")
        if len(groups) and (groups == groups[0]).all():  # a batch inside one buffer: the usual case
            g = int(groups[0])
            return self._buffer(epoch, g)[positions - (ends[g - 1] if g else 0)]
        starts = np.concatenate([[0], ends])[groups]
        out = np.empty(len(positions), dtype=np.int64)
        for g in np.unique(groups):
            sel = groups == g
            out[sel] = self._buffer(epoch, int(g))[positions[sel] - starts[sel]]
        return out

    def batch_rows(self, epoch: int, b: int) -> np.ndarray:
        """This rank's example indices for batch b of an epoch: rank r of w reads positions
        r, r + w, ... of the epoch order, cut to ``per_rank``."""
        mine = np.arange(b * self.batch_size, min((b + 1) * self.batch_size, self.per_rank))
        positions = mine * self.world_size + self.rank
        _, ends = self._epoch_layout(epoch)
        self._read_ahead(epoch, int(np.searchsorted(ends, positions[0], side="right")))
        return self.rows_at(epoch, positions)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's example indices for a whole epoch, in visiting order (for inspection;
        iterating never builds it)."""
        return self.rows_at(epoch, np.arange(self.per_rank) * self.world_size + self.rank)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            if self.index >= self.batches_per_epoch:
                self.epoch, self.index = self.epoch + 1, 0
            b = self.index
            rows = self.batch_rows(self.epoch, b)
            batch = self.make_batch(
                self.split, rows, _derive_seed(self.seed, _TRAIN_STREAM, self.epoch, b, self.rank)
            )
            self.index += 1
            yield batch

    def iter_eval(
        self, batch_size: int | None = None, *, max_batches: int | None = None, split: str = "holdout",
        passes: int = 1,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """``passes`` passes over a split (the held-out documents by default) in stored order, the last
        batch of each possibly smaller, masked with fixed seeds: every call yields the same batches, and
        each pass masks the split anew (pass 0 is the same whatever ``passes``). At most
        ``max_batches`` batches in all. With several ranks, rank r reads examples r, r + w, ..."""
        if split not in self.dataset.splits:
            raise KeyError(f"no {split!r} split; the dataset has {sorted(self.dataset.splits)}")
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"passes must be an int >= 1; got {passes!r}")
        bs = batch_size or self.batch_size
        rows = np.arange(self.rank, len(self.dataset.splits[split]), self.world_size)
        n = 0
        for p in range(passes):
            for b in range(-(-len(rows) // bs)):
                if max_batches is not None and n >= max_batches:
                    return
                n += 1
                yield self.make_batch(
                    split, rows[b * bs : (b + 1) * bs], _derive_seed(self.seed, _EVAL_STREAM, p, b, self.rank)
                )

    def eval_passes(self, batch_size: int, max_batches: int, split: str = "holdout") -> int:
        """Whole passes over ``split`` that fit in ``max_batches`` batches of ``batch_size`` (at least
        one), the same on every rank: a held-out split smaller than an evaluation's batch budget is
        evaluated several times, each with other masks, for a steadier estimate."""
        per_rank = -(-len(self.dataset.splits[split]) // self.world_size)  # the largest rank's rows
        return max(1, max_batches // max(1, -(-per_rank // batch_size)))

    def make_batch(self, split: str, rows: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
        """Gather rows of a split and mask them with ``seed``."""
        import torch

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
