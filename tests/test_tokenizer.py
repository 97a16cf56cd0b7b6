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
