"""WordPiece training, loading and saving; the special-token checks."""

import json
import random

import numpy as np
import pytest

from electra_fast.tokenizer import SPECIAL_TOKENS, TokenizerError, load_tokenizer, train_tokenizer


@pytest.fixture
def rnd(seed):
    return random.Random(seed)


def synthetic_docs(rnd, n_docs=60):
    """Random lowercase words from a Zipf-ish lexicon, so frequent words become whole tokens and
    rare ones split into pieces."""
    lexicon = ["".join(rnd.choices("abcdefghijklmnop", k=rnd.randint(2, 9))) for _ in range(300)]
    weights = [1 / (i + 1) for i in range(len(lexicon))]
    return [
        [" ".join(rnd.choices(lexicon, weights, k=rnd.randint(3, 15))) + "." for _ in range(rnd.randint(1, 8))]
        for _ in range(n_docs)
    ]


@pytest.fixture
def trained(rnd):
    docs = synthetic_docs(rnd)
    return docs, train_tokenizer(docs, 400)


def test_trained_vocabulary_and_round_trip(trained):
    docs, tok = trained
    assert tok.vocab[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.special_ids == [0, 1, 2, 3, 4]
    assert tok.vocab_size == len(tok.vocab) <= 400
    lines = [line for doc in docs for line in doc]
    ids = tok.encode_batch(lines)
    for line, row in zip(lines, ids):
        assert row == tok.encode(line)
        assert tok.unk_id not in row and tok.cls_id not in row  # no specials added, every char known
        assert tok.decode(row) == line  # "##" pieces joined, the space before "." cleaned up
        pieces = [tok.id_to_token(i) for i in row]
        assert tok.word_starts(row).tolist() == [not p.startswith("##") for p in pieces]
        assert [tok.token_to_id(p) for p in pieces] == row
    assert any(p.startswith("##") for p in tok.vocab)


def test_bert_normalisation_and_special_text(trained):
    _, tok = trained
    assert tok.decode(tok.encode("ABBA Ébène")) == tok.decode(tok.encode("abba ebene"))
    ids = tok.encode("[MASK] [CLS]")  # text that looks like a special token is ordinary text
    assert not set(ids) & set(tok.special_ids) - {tok.unk_id}


def test_save_and_load_round_trip(tmp_path, trained):
    docs, tok = trained
    tok.save(tmp_path / "vocab")
    vocab_lines = (tmp_path / "vocab" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab_lines == tok.vocab
    assert json.loads((tmp_path / "vocab" / "tokenizer.json").read_text())["model"]["type"] == "WordPiece"
    lines = [line for doc in docs for line in doc]
    for path in ("vocab", "vocab/vocab.txt", "vocab/tokenizer.json"):
        loaded = load_tokenizer(tmp_path / path)
        assert loaded.vocab_hash() == tok.vocab_hash()
        assert loaded.encode_batch(lines) == tok.encode_batch(lines)
        assert loaded.special_ids == tok.special_ids


def test_vocab_hash_tracks_the_vocabulary(tmp_path, trained, rnd):
    _, tok = trained
    vocab = list(tok.vocab)
    i = rnd.randrange(len(SPECIAL_TOKENS), len(vocab))
    vocab[i] = vocab[i] + "zz"
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    other = load_tokenizer(tmp_path / "vocab.txt")
    assert other.vocab == vocab and other.vocab_hash() != tok.vocab_hash()


def test_bert_style_vocab_txt(tmp_path, rnd):
    """BERT's layout: [PAD] 0, [unused] slots, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103."""
    words = sorted({"".join(rnd.choices("qrstuvwxyz", k=rnd.randint(3, 6))) for _ in range(50)})
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += words + ["##" + c for c in "qrstuvwxyz"] + list("qrstuvwxyz")
    newline = rnd.choice(["\n", "\r\n"])  # a vocabulary saved on Windows reads the same
    (tmp_path / "vocab.txt").write_bytes((newline.join(vocab) + newline).encode("utf-8"))
    tok = load_tokenizer(tmp_path)
    assert tok.vocab == vocab
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    w = rnd.choice(words)
    assert tok.encode(w.upper() + " " + w) == [vocab.index(w)] * 2
    assert tok.word_starts([vocab.index("##q"), vocab.index(w)]).tolist() == [False, True]
    unknown = tok.encode("hello")  # 'h' is not in the vocabulary
    assert unknown == [tok.unk_id]


def test_special_token_errors(tmp_path, rnd):
    (tmp_path / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS) + "\n")
    with pytest.raises(TokenizerError, match=r"^vocab\.txt has 5 entries; expected a WordPiece vocabulary "
                                             r"with \[PAD\] \[UNK\] \[CLS\] \[SEP\] \[MASK\]"):  # fmt: skip
        load_tokenizer(tmp_path / "vocab.txt")
    missing = rnd.choice([t for t in SPECIAL_TOKENS if t != "[UNK]"])
    vocab = [t for t in SPECIAL_TOKENS if t != missing] + ["a", "b", "##a"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    with pytest.raises(TokenizerError, match=rf"^vocab\.txt is missing \[{missing[1:-1]}\]; expected"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + ["a", "b", "a"]) + "\n")
    with pytest.raises(TokenizerError, match=r"vocab\.txt:8: 'a' repeats line 6"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="no such file or folder"):
        load_tokenizer(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="neither tokenizer.json nor vocab.txt"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a tokenizers JSON file"):
        load_tokenizer(tmp_path / "tokenizer.json")
    assert issubclass(TokenizerError, ValueError)


def test_non_wordpiece_tokenizer_json_is_refused(tmp_path):
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + ["a", "b"])}
    Tokenizer(models.BPE(vocab, [], unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="BPE model; expected a WordPiece vocabulary"):
        load_tokenizer(tmp_path)


def test_word_starts_keeps_shape(trained):
    _, tok = trained
    ids = np.random.default_rng(0).integers(0, tok.vocab_size, (3, 7))
    ws = tok.word_starts(ids)
    assert ws.shape == (3, 7) and ws.dtype == bool
    assert ws.tolist() == [[not tok.id_to_token(i).startswith("##") for i in row] for row in ids.tolist()]


# ----------------------------------------------------------------------------- training from word counts


def trained_on_text(lines, vocab_size, lowercase=True):
    """The reference: the tokenizers trainer fed the lines themselves through BERT's pipeline (what
    train_tokenizer did before it counted words), "##c" numbered up front from the raw characters."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    from electra_fast.tokenizer import _splits_off, canonical_order

    norm = normalizers.BertNormalizer(strip_accents=lowercase, lowercase=lowercase)
    chars = {c for r in set("".join(lines)) for c in norm.normalize_str(r)}
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=2, continuing_subword_prefix="##", show_progress=False,
        special_tokens=SPECIAL_TOKENS + sorted("##" + c for c in chars if not _splits_off(c)),
    )  # fmt: skip
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer, tok.pre_tokenizer = norm, pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(lines, trainer)
    return list(canonical_order(tok.get_vocab(with_added_tokens=True)))


ASCII_TEXT = "abcdefghijklmnopqrsABCDEZ0123456789" + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" + "\x00\x07\x0b\x0c\x1c\x7f"


def multilingual_docs(rnd, n_docs=80, ascii_only=False):
    """Cased words with accents, Greek (final sigma), Turkish dotted I, CJK, emoji, digits,
    punctuation, tabs, control and combining characters (or only ASCII ones)."""
    alphabet = ASCII_TEXT + ("" if ascii_only else "ÉéÜüñçΣσςİıДжКк中文字日本語😀٣’\u0301\u0308\u0085\u3000")
    lexicon = ["".join(rnd.choices(alphabet, k=rnd.randint(1, 8))) for _ in range(400)]
    weights = [1 / (i + 1) for i in range(len(lexicon))]
    seps = [" "] * 12 + ["\t", "  ", "\r", " \x07 "] + ([] if ascii_only else ["\u00a0"])
    return [["".join(w + rnd.choice(seps) for w in rnd.choices(lexicon, weights, k=rnd.randint(3, 20))).strip()
             for _ in range(rnd.randint(1, 6))] for _ in range(n_docs)]  # fmt: skip


@pytest.mark.parametrize("ascii_only", [True, False])
@pytest.mark.parametrize("lowercase", [True, False])
def test_word_counts_give_the_vocabulary_the_text_gives(rnd, lowercase, ascii_only):
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    from electra_fast.tokenizer import count_words

    docs = multilingual_docs(rnd, ascii_only=ascii_only)
    lines = [line for doc in docs for line in doc]
    norm, pre = normalizers.BertNormalizer(strip_accents=lowercase, lowercase=lowercase), pre_tokenizers.BertPreTokenizer()
    per_line = Counter(w for line in lines for w, _ in pre.pre_tokenize_str(norm.normalize_str(line)))
    assert count_words(lines, lowercase) == per_line
    for vocab_size in (rnd.randint(120, 300), 2000):
        tok = train_tokenizer(docs, vocab_size, lowercase=lowercase)
        assert tok.vocab == trained_on_text(lines, vocab_size, lowercase), vocab_size


def test_the_trainer_is_given_only_the_most_frequent_words(rnd):
    """max_words bounds what the trainer holds (its memory): it learns from the max_words most
    frequent words exactly as from a text holding only those."""
    from collections import Counter

    from electra_fast.tokenizer import WordCounts

    docs = synthetic_docs(rnd, n_docs=200)  # lowercase words and "." : str.split cuts them as BERT does
    lines = [line.replace(".", " .") for doc in docs for line in doc]
    counts = Counter(w for line in lines for w in line.split())
    m = rnd.randint(len(counts) // 2 + 1, len(counts) - 1)  # pruned once, at the end: exactly the top m
    top = {w for w, _ in sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:m]}  # ties: by word
    only_top = [" ".join(w for w in line.split() if w in top) for line in lines]
    assert train_tokenizer([[x] for x in lines], 300, max_words=m).vocab == trained_on_text(only_top, 300)

    bounded = WordCounts(max_words=50)  # a stream of new words never holds more than 2 x max_words
    for i in range(40):
        bounded.update({"the": 1000, **{f"w{i}x{j}": 1 for j in range(30)}})
        assert len(bounded.counts) <= 100
    assert bounded.dropped > 1000 and bounded.final()["the"] == 40_000 and len(bounded.final()) == 50
