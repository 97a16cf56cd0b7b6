"""WordPiece tokenisation (BERT uncased style) through the ``tokenizers`` package.

``train_tokenizer`` learns a vocabulary from documents (the embedded corpus in about a second)
through bounded word counts (``count_words``, ``WordCounts``, ``train_from_word_counts``: memory
does not grow with the corpus); ``load_tokenizer`` reads a BERT ``vocab.txt`` or a
``tokenizer.json``. Both return an ``ElectraTokenizer``: the ids of the
special tokens, batch encoding without specials (the example builder adds [CLS] / [SEP] itself),
and the word-start table that whole-word masking needs.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# [PAD] first so that padding is id 0, as in BERT's vocab.txt and the model's pad_token_id.
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CONTINUATION_PREFIX = "##"
MAX_WORDS = 500_000  # distinct words the vocabulary trainer is given at most: bounds its memory
COUNT_CHUNK_CHARS = 1 << 20  # text counted per call to count_words


class TokenizerError(ValueError):
    """A vocabulary file cannot be used; the message says what is wrong with it."""


def _bert_normalizer(lowercase: bool) -> normalizers.BertNormalizer:
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )


def _bert_pipeline(tok: Tokenizer, lowercase: bool = True) -> Tokenizer:
    """BERT's text handling: clean control characters, split CJK characters, lowercase and strip
    accents (uncased), split on whitespace and punctuation, join "##" pieces when decoding."""
    tok.normalizer = _bert_normalizer(lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    return tok


def _bert_post_processor(tok: Tokenizer) -> None:
    """[CLS] A [SEP] B [SEP] for users of the saved tokenizer.json (encode_batch adds no specials)."""
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )


class ElectraTokenizer:
    """A WordPiece ``tokenizers.Tokenizer`` with the ids and tables pre-training needs."""

    def __init__(self, tokenizer: Tokenizer, name: str = "tokenizer"):
        if not isinstance(tokenizer.model, models.WordPiece):
            raise TokenizerError(
                f"{name} holds a {type(tokenizer.model).__name__} model; expected a WordPiece vocabulary "
                f"(continuation pieces start with {CONTINUATION_PREFIX!r})"
            )
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        vocab = [tokenizer.id_to_token(i) for i in range(size)]
        if None in vocab:
            raise TokenizerError(
                f"{name} has no token for id {vocab.index(None)}; ids must run 0..{size - 1}"
            )
        expected = "expected a WordPiece vocabulary with " + " ".join(SPECIAL_TOKENS)
        if size <= len(SPECIAL_TOKENS):
            raise TokenizerError(f"{name} has {size} entries; {expected}")
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise TokenizerError(f"{name} is missing {' '.join(missing)}; {expected}")
        tokenizer.no_padding()
        tokenizer.no_truncation()
        if hasattr(tokenizer, "encode_special_tokens"):
            tokenizer.encode_special_tokens = True  # the text "[MASK]" in a corpus is not the mask id
        if tokenizer.decoder is None:
            tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
        self.tokenizer = tokenizer
        self.vocab: list[str] = vocab
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            tokenizer.token_to_id(t) for t in SPECIAL_TOKENS
        )
        self.special_ids: list[int] = [self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id]
        # (V,) bool, True unless the token is a "##" continuation: whole-word masking and packing
        self.word_start_table = np.array([not t.startswith(CONTINUATION_PREFIX) for t in vocab], dtype=bool)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"ElectraTokenizer(vocab_size={self.vocab_size}, vocab_hash={self.vocab_hash()[:12]})"

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, i: int) -> str:
        return self.vocab[i]

    def encode(self, line: str) -> list[int]:
        """Token ids of one line, no [CLS] / [SEP]."""
        return self.tokenizer.encode(line, add_special_tokens=False).ids

    def encode_batch(self, lines: Sequence[str]) -> list[list[int]]:
        """Token ids of each line, no [CLS] / [SEP]; parallel inside the tokenizers library."""
        enc = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)  # fast: no offsets
        return [e.ids for e in enc(list(lines), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def word_starts(self, ids) -> np.ndarray:
        """Boolean array shaped like ``ids``: True where a token begins a word (does not start
        with "##"). Special tokens count as word starts. Used by whole-word masking."""
        return self.word_start_table[np.asarray(ids, dtype=np.int64)]

    def vocab_hash(self) -> str:
        """sha256 of the vocabulary in id order: two tokenizers with the same hash map text to
        the same ids (for the same normalisation), so prepared shards can be reused."""
        return hashlib.sha256("\n".join(self.vocab).encode("utf-8")).hexdigest()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``vocab.txt`` (one token per line, id order) and ``tokenizer.json`` into directory."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "vocab.txt").write_text("".join(t + "\n" for t in self.vocab), encoding="utf-8")
        self.tokenizer.save(str(d / "tokenizer.json"))
        return d


def train_tokenizer(
    documents: Iterable[Sequence[str]],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    lowercase: bool = True,
    max_words: int = MAX_WORDS,
) -> ElectraTokenizer:
    """Learn a WordPiece vocabulary (BERT uncased normalisation, "##" continuations, the special
    tokens at ids 0-4) from documents given as lists of lines, read once (streamed).

    Memory is bounded: the trainer learns from word counts (``count_words``) of at most
    ``max_words`` distinct words, the most frequent (``WordCounts``); below that the result is the
    one the trainer gives when fed the text itself. Reproducible: the same documents give the same
    vocab.txt, byte for byte, in every process (``train_from_word_counts``)."""
    _check_vocab_size(vocab_size)
    counts = WordCounts(max_words)
    for lines in batched_lines((line for doc in documents for line in doc), COUNT_CHUNK_CHARS):
        counts.update(count_words(lines, lowercase))
    return train_from_word_counts(counts, vocab_size, min_frequency=min_frequency, lowercase=lowercase)


def _check_vocab_size(vocab_size: int) -> None:
    if vocab_size <= len(SPECIAL_TOKENS):
        raise TokenizerError(
            f"vocab_size={vocab_size}; it must leave room for word pieces after {len(SPECIAL_TOKENS)} specials"
        )


def batched_lines(lines: Iterable[str], chars: int) -> Iterator[list[str]]:
    """The lines in lists of about ``chars`` characters: a line goes to list k when the text
    before it holds between k * chars and (k + 1) * chars characters."""
    seen = 0

    def batch_of(line: str) -> int:
        nonlocal seen
        seen += len(line)
        return (seen - len(line)) // chars

    for _, batch in itertools.groupby(lines, key=batch_of):
        yield list(batch)


_ASCII_SPACE = re.compile("[ \t\n\r]+")  # what BERT's normaliser and pre-tokenizer treat as space in ASCII
_ASCII_CONTROL = dict.fromkeys([*range(9), 11, 12, *range(14, 32), 127])  # control characters: dropped
_ASCII_WORD = re.compile(r"[^ \t\n\r!-/:-@\[-`{-~]+|[!-/:-@\[-`{-~]")  # runs of letters / digits, or one punctuation mark



def count_words(lines: Iterable[str], lowercase: bool = True) -> Counter:
    """Each word of the lines as BERT's pipeline cuts them (clean, split CJK, lowercase and strip
    accents when uncased, split on whitespace and punctuation) and how often it occurs: what the
    WordPiece trainer learns from. Words in ASCII take a shortcut (``_ascii_words``) with the
    same result; the rest goes through the ``tokenizers`` normaliser and pre-tokenizer."""
    norm, pre = _bert_normalizer(lowercase), pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for batch in batched_lines(lines, 1 << 16):  # 64 KB at a time: the normaliser slows on long strings
        text = "\n".join(batch)
        other = ""
        if not text.isascii():  # words split at ASCII whitespace: a word is one or the other
            pieces = _ASCII_SPACE.split(text)
            text = " ".join(w for w in pieces if w.isascii())
            other = " ".join(w for w in pieces if not w.isascii())
        counts.update(_ascii_words(text, lowercase))
        if other:
            counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(other)))
    return counts


def _ascii_words(text: str, lowercase: bool) -> list[str]:
    """BERT's normaliser and pre-tokenizer on ASCII text (8x less CPU on generated English-like
    text): control characters dropped, lowercased (uncased), split at whitespace and around each
    ASCII punctuation mark."""
    text = text.translate(_ASCII_CONTROL)
    return _ASCII_WORD.findall(text.lower() if lowercase else text)


class WordCounts:
    """Word counts of a stream with at most ``2 * max_words`` words held: past that only the
    ``max_words`` most frequent so far stay (ties broken by the word), so memory is bounded
    whatever the corpus. A function of the counts and the order they come in, nothing else."""

    def __init__(self, max_words: int = MAX_WORDS):
        if max_words < 1:
            raise ValueError(f"max_words={max_words}; it must be at least 1")
        self.max_words = max_words
        self.counts: Counter = Counter()
        self.dropped = 0  # words let go when over the bound (their counts so far are lost)

    def update(self, counts: dict[str, int]) -> None:
        self.counts.update(counts)
        if len(self.counts) > 2 * self.max_words:
            self._keep_most_frequent()

    def _keep_most_frequent(self) -> None:
        kept = heapq.nlargest(self.max_words, self.counts.items(), key=lambda kv: (kv[1], kv[0]))
        self.dropped += len(self.counts) - len(kept)
        self.counts = Counter(dict(kept))

    def final(self) -> Counter:
        """The ``max_words`` most frequent words and their counts."""
        if len(self.counts) > self.max_words:
            self._keep_most_frequent()
        return self.counts


def train_from_word_counts(counts: WordCounts, vocab_size: int, *, min_frequency: int = 2,
                           lowercase: bool = True) -> ElectraTokenizer:  # fmt: skip
    """A WordPiece vocabulary learnt from word counts (``count_words``); empties ``counts``.

    The ``tokenizers`` trainer has no entry for counts, so it is fed each word as often as it
    occurs, split on whitespace only (the words are normalised and cut already). It numbers the
    "##" pieces it meets in the random order of a hash map and breaks ties between equally frequent
    merges by those numbers, so both the order and (on ties) the set of tokens would vary; here
    every "##c" is numbered up front in sorted order and the result is put in ``canonical_order``."""
    _check_vocab_size(vocab_size)
    words = counts.final()
    counts.counts = Counter()
    chars = {c for w in words for c in w}
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS + sorted(CONTINUATION_PREFIX + c for c in chars if not _splits_off(c)),
        continuing_subword_prefix=CONTINUATION_PREFIX,
        show_progress=False,
    )
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix=CONTINUATION_PREFIX))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(_repeated(words), trainer)
    vocab = canonical_order(tok.get_vocab(with_added_tokens=True))
    tok = _bert_pipeline(  # fresh: only the five specials are special tokens
        Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix=CONTINUATION_PREFIX)),
        lowercase,
    )
    tok.add_special_tokens(SPECIAL_TOKENS)
    _bert_post_processor(tok)
    return ElectraTokenizer(tok, name="trained tokenizer")


def _repeated(words: Counter) -> Iterator[str]:
    """Space-separated text holding each word as often as counted, in pieces of about 4 KB (the
    trainer's memory grows with the piece size; it buffers 256 of them), emptying ``words``."""
    piece: list[str] = []
    size = 0
    while words:
        w, k = words.popitem()
        per_piece = max(1, 4096 // (len(w) + 1))
        while k > per_piece:
            yield (w + " ") * per_piece
            k -= per_piece
        piece.append((w + " ") * k)
        size += k * (len(w) + 1)
        if size >= 4096:
            yield "".join(piece)
            piece, size = [], 0
    if piece:
        yield "".join(piece)


def _splits_off(c: str) -> bool:
    """BERT's pre-tokenizer makes these single-character words: whitespace, punctuation (ASCII
    symbols and Unicode P*), CJK ideographs. They never occur as a "##" continuation."""
    o = ord(c)
    return (
        c.isspace()
        or 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126
        or unicodedata.category(c).startswith(("P", "C"))
        or 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2FA1F or 0xF900 <= o <= 0xFAFF
    )  # fmt: skip


def canonical_order(vocab: dict[str, int] | Iterable[str]) -> dict[str, int]:
    """Token -> id with the special tokens first (ids 0-4, SPECIAL_TOKENS order), then word-start
    pieces, then "##" continuations, each group sorted by code point: a function of the token set
    alone, so equal sets give byte-identical vocab.txt files."""
    rest = [t for t in vocab if t not in SPECIAL_TOKENS]
    rest.sort(key=lambda t: (t.startswith(CONTINUATION_PREFIX), t))
    return {t: i for i, t in enumerate([*SPECIAL_TOKENS, *rest])}


def vocab_lines(text: str) -> list[str]:
    """Tokens of a vocab.txt, one per line. Only "\\n" ends a line: str.splitlines would also
    split on characters such as U+2028 or U+0085 and shift every id after them."""
    return [t.removesuffix("\r") for t in text.removesuffix("\n").split("\n")] if text else []


def _load_vocab_txt(path: Path, lowercase: bool) -> Tokenizer:
    vocab: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not valid UTF-8 at byte offset {e.start}") from None
    for lineno, token in enumerate(vocab_lines(text), 1):
        if token in vocab:
            raise TokenizerError(
                f"{path}:{lineno}: {token!r} repeats line {vocab[token] + 1}; each token must appear once"
            )
        vocab[token] = lineno - 1
    if "[UNK]" not in vocab:
        raise TokenizerError(
            f"{path.name} is missing [UNK]; expected a WordPiece vocabulary with " + " ".join(SPECIAL_TOKENS)
        )
    tok = _bert_pipeline(
        Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix=CONTINUATION_PREFIX)),
        lowercase,
    )
    present = [t for t in SPECIAL_TOKENS if t in vocab]
    tok.add_special_tokens(present)  # already in the vocab: marks them special, keeps their ids
    if "[CLS]" in vocab and "[SEP]" in vocab:
        _bert_post_processor(tok)
    return tok


def load_tokenizer(path: str | os.PathLike, *, lowercase: bool = True) -> ElectraTokenizer:
    """Load a WordPiece vocabulary: a ``vocab.txt`` (BERT format, one token per line, the line
    number is the id), a ``tokenizer.json`` (``tokenizers`` format), or a folder holding either
    (``tokenizer.json`` preferred: it records its own normalisation). ``lowercase`` applies to
    ``vocab.txt`` only (uncased BERT vocabularies need it)."""
    p = Path(path)
    if p.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise TokenizerError(f"{path} holds neither tokenizer.json nor vocab.txt")
    elif not p.is_file():
        raise TokenizerError(f"no such file or folder: {path}")
    if p.suffix == ".json":
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as e:  # the library raises a bare Exception with the serde message
            raise TokenizerError(f"{p}: not a tokenizers JSON file ({e})") from None
    else:
        tok = _load_vocab_txt(p, lowercase)
    return ElectraTokenizer(tok, name=p.name)
