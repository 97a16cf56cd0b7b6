"""Packing examples, preparing shards, and the shuffled, masked, resumable loader."""

import json
import math
import os
import random

import numpy as np
import pytest
import torch

from electra_fast import loader as loader_mod
from electra_fast import prepare
from electra_fast.corpus import CorpusError
from electra_fast.data import (
    PretrainingDataset,
    PretrainingLoader,
    Split,
    build_examples,
    id_dtype,
    load_dataset,
    prepare_dataset,
)
from electra_fast.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer

CLS, SEP, MASK = 2, 3, 4


# ----------------------------------------------------------------------------- build_examples


def unique_token_docs(rng, n_docs, max_sentence, max_sentences=30):
    """Documents whose tokens are all distinct ids (10, 11, ...), in order: an example's tokens
    tell which document and which place in it they came from."""
    docs, next_id = [], 10
    for _ in range(n_docs):
        doc = []
        for _ in range(rng.integers(1, max_sentences + 1)):
            n = int(rng.integers(1, max_sentence + 1))
            doc.append(list(range(next_id, next_id + n)))
            next_id += n
        docs.append(doc)
    return docs, next_id


def parse(ids, seg):
    """Check the [CLS] A [SEP] (B [SEP]) layout and segment ids; return (A, B)."""
    assert ids[0] == CLS and ids[-1] == SEP and CLS not in ids[1:]
    seps = [i for i, x in enumerate(ids) if x == SEP]
    assert len(seps) in (1, 2), ids
    a = ids[1 : seps[0]]
    b = ids[seps[0] + 1 : -1] if len(seps) == 2 else []
    assert len(a) > 0 and (len(seps) == 1 or len(b) > 0)
    assert seg == [0] * (seps[0] + 1) + [1] * (len(ids) - seps[0] - 1)
    return a, b


def doc_of_token(docs, n_ids):
    owner = np.full(n_ids, -1)
    for d, doc in enumerate(docs):
        for s in doc:
            owner[s] = d
    return owner


@pytest.mark.parametrize("max_len", [5, 8, 24, 128])
def test_examples_tile_each_document_exactly(seed, max_len):
    rng = np.random.default_rng(seed)
    docs, n_ids = unique_token_docs(rng, 150, max_sentence=2 * max_len + 3)
    owner = doc_of_token(docs, n_ids)
    per_doc = {}
    last_doc = -1
    for ids, seg in build_examples(docs, max_len, cls_id=CLS, sep_id=SEP, rng=rng):
        assert len(ids) == len(seg) <= max_len
        a, b = parse(ids, seg)
        (d,) = set(owner[a + b])  # one document per example
        assert d >= last_doc  # documents in order, their examples contiguous
        last_doc = d
        per_doc.setdefault(d, []).extend(a + b)
    # every token appears exactly once, in document order: long sentences are split, not cut
    assert per_doc == {d: [t for s in doc for t in s] for d, doc in enumerate(docs)}


def test_segment_and_length_statistics(seed):
    """10% single-segment examples, 5% shorter targets, A ending near the middle
    (build_pretraining_dataset.py), within binomial bounds over thousands of examples."""
    rng = np.random.default_rng(seed)
    max_len, max_sentence = 64, 12
    docs, n_ids = unique_token_docs(rng, 400, max_sentence, max_sentences=120)
    examples = list(build_examples(docs, max_len, cls_id=CLS, sep_id=SEP, rng=rng))
    owner = doc_of_token(docs, n_ids)
    first_doc = [owner[ids[1]] for ids, _ in examples]
    not_last = [i for i in range(len(examples) - 1) if first_doc[i] == first_doc[i + 1]]

    def within(k, n, p):
        return abs(k / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1 / n

    # Before a document's end an example stops at its target length (one less for a pair whose
    # chunk all went to A, as in the official code: only possible here for tiny targets).
    lengths = np.array([len(examples[i][0]) for i in not_last])
    assert lengths.min() >= 4 and lengths.max() == max_len
    p_short = 0.05 * (max_len - 5) / (max_len - 4)  # a random target of max_len looks full
    assert within(int((lengths < max_len).sum()), len(lengths), p_short), (lengths < max_len).mean()

    # Full examples: a pair when the single-segment coin says so (sentences are short, so a pair
    # chunk always has sentences left for B), and A stops within a sentence of (T - 3) // 2.
    full = [examples[i] for i in not_last if len(examples[i][0]) == max_len]
    singles = 0
    first_target = (max_len - 3) // 2
    for ids, seg in full:
        a, b = parse(ids, seg)
        if not b:
            singles += 1
        else:
            assert first_target - max_sentence <= len(a) < first_target + max_sentence
    assert within(singles, len(full), 0.1), singles / len(full)


def test_cut_moves_to_a_word_start(seed):
    rng = np.random.default_rng(seed)
    docs, n_ids = unique_token_docs(rng, 100, max_sentence=40)
    word_start = rng.random(n_ids) < 0.4
    for doc in docs:
        for s in doc:
            word_start[s[0]] = True  # a sentence starts with a word
    concat = []
    for ids, seg in build_examples(
        docs, 32, cls_id=CLS, sep_id=SEP, rng=rng, word_start=word_start, short_seq_prob=0.0
    ):
        a, b = parse(ids, seg)
        assert word_start[a[0]]  # no example starts inside a word
        concat += a + b
    assert concat == [t for doc in docs for s in doc for t in s]


def test_builder_is_deterministic_and_configurable(seed):
    docs, _ = unique_token_docs(np.random.default_rng(seed), 20, 10)

    def build(**kw):
        return list(build_examples(docs, 40, cls_id=CLS, sep_id=SEP, rng=np.random.default_rng(seed), **kw))

    assert build() == build()
    assert all(SEP not in ids[:-1] for ids, _ in build(single_segment_prob=1.0))
    with pytest.raises(ValueError, match="at least 5"):
        next(build_examples(docs, 4, cls_id=CLS, sep_id=SEP, rng=np.random.default_rng(0)))


# ----------------------------------------------------------------------------- prepare_dataset


def text_docs(rnd, n_docs):
    lexicon = ["".join(rnd.choices("abcdefghijklmnopqrst", k=rnd.randint(2, 8))) for _ in range(400)]
    return [
        [" ".join(rnd.choices(lexicon, k=rnd.randint(2, 20))) + "." for _ in range(rnd.randint(1, 12))]
        for _ in range(n_docs)
    ]


@pytest.fixture
def corpus(seed):
    docs = text_docs(random.Random(seed), 80)
    return docs, train_tokenizer(docs, 300)


def split_content(split):
    """Each example's tokens between [CLS] and the last [SEP], minus the middle [SEP]."""
    out = []
    for row, n in zip(np.asarray(split.input_ids), split.lengths):
        out += [t for t in row[1 : n - 1].tolist() if t != SEP]
    return out


def test_prepare_dataset_shards(tmp_path, corpus):
    docs, tok = corpus
    ds = prepare_dataset(docs, tok, tmp_path, 32, seed=1, holdout_fraction=0.1, progress=False)
    m = ds.manifest
    assert not ds.reused and m["num_documents"] == {"train": 72, "holdout": 8}
    assert m["vocab_hash"] == tok.vocab_hash() and m["max_seq_length"] == 32 and m["dtype"] == "uint16"
    for name, split in ds.splits.items():
        n = m["num_examples"][name]
        assert split.input_ids.shape == split.token_type_ids.shape == (n, 32) and n > 0
        assert split.input_ids.dtype == np.uint16 and split.token_type_ids.dtype == np.uint8
        ids, seg, lengths = np.asarray(split.input_ids), np.asarray(split.token_type_ids), split.lengths
        pad = np.arange(32) >= lengths[:, None]
        assert (ids[pad] == tok.pad_id).all() and (seg[pad] == 0).all()
        assert (ids[:, 0] == tok.cls_id).all() and (ids[np.arange(n), lengths - 1] == tok.sep_id).all()
        assert m["num_tokens"][name] == lengths.sum()

    # The documents, in order, are the train split and the holdout split interleaved by document.
    train, hold = split_content(ds.splits["train"]), split_content(ds.splits["holdout"])
    held = 0
    for row in tok.encode_batch([" ".join(doc) for doc in docs]):
        if train[: len(row)] == row:
            train = train[len(row) :]
        else:
            assert hold[: len(row)] == row
            hold, held = hold[len(row) :], held + 1
    assert train == hold == [] and held == 8

    counts = np.bincount(split_content(ds.splits["train"]), minlength=tok.vocab_size)
    assert m["most_frequent_token"] == counts.argmax()  # the MLM accuracy baseline, train split only
    again = load_dataset(tmp_path)
    assert np.array_equal(again.splits["train"].input_ids, ds.splits["train"].input_ids)
    assert load_tokenizer(tmp_path).vocab_hash() == tok.vocab_hash()  # the shards carry their vocab


def test_prepare_reuses_matching_shards(tmp_path, corpus, seed):
    docs, tok = corpus
    shard = tmp_path / "train_input_ids.bin"
    prepare_dataset(docs, tok, tmp_path, 32, seed=seed, progress=False)
    stamp = shard.stat().st_mtime_ns
    assert prepare_dataset(docs, tok, tmp_path, 32, seed=seed, progress=False).reused
    assert shard.stat().st_mtime_ns == stamp
    changed = [list(d) for d in docs]
    changed[-1][-1] += " extra"
    assert not prepare_dataset(changed, tok, tmp_path, 32, seed=seed, progress=False).reused
    assert not prepare_dataset(changed, tok, tmp_path, 48, seed=seed, progress=False).reused
    other = train_tokenizer(docs, 250)
    rebuilt = prepare_dataset(changed, other, tmp_path, 48, seed=seed, progress=False)
    assert not rebuilt.reused and rebuilt.manifest["vocab_hash"] == other.vocab_hash()
    assert prepare_dataset(changed, other, tmp_path, 48, seed=seed, progress=False).reused


def write_corpus(folder, docs, parts=2):
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(docs) // parts)
    for k in range(parts):
        text = "\n\n".join("\n".join(d) for d in docs[k * step : (k + 1) * step]) + "\n"
        (folder / f"part{k}.txt").write_text(text, encoding="utf-8")
    return folder


def test_prepare_from_files_tracks_content(tmp_path, corpus):
    docs, tok = corpus
    src = write_corpus(tmp_path / "corpus", docs)
    # without a holdout, streamed files and the same documents in memory give the same shards
    from_files = prepare_dataset(src, tok, tmp_path / "f0", 32, holdout_fraction=0.0, progress=False)
    from_docs = prepare_dataset(docs, tok, tmp_path / "d0", 32, holdout_fraction=0.0, progress=False)
    for key in ("input_ids", "token_type_ids", "lengths"):
        assert np.array_equal(getattr(from_files.splits["train"], key), getattr(from_docs.splits["train"], key))

    # streamed files hold out whole documents by hash: in order, each document is in one split
    ds = prepare_dataset(src, tok, tmp_path / "f", 32, holdout_fraction=0.25, progress=False)
    train, hold = split_content(ds.splits["train"]), split_content(ds.splits["holdout"])
    held = 0
    for row in tok.encode_batch([" ".join(doc) for doc in docs]):
        if hold[: len(row)] == row:
            hold, held = hold[len(row) :], held + 1
        else:
            assert train[: len(row)] == row
            train = train[len(row) :]
    assert train == hold == [] and held == ds.manifest["num_documents"]["holdout"] and 8 <= held <= 34

    assert prepare_dataset([src], tok, tmp_path / "f", 32, holdout_fraction=0.25, progress=False).reused
    with open(src / "part1.txt", "a", encoding="utf-8") as f:
        f.write("\none more document.\n")
    again = prepare_dataset(src, tok, tmp_path / "f", 32, holdout_fraction=0.25, progress=False)
    assert not again.reused and sum(again.manifest["num_documents"].values()) == len(docs) + 1


def test_touched_or_moved_corpus_reuses_its_shards(tmp_path, corpus):
    """The shards are keyed by the corpus bytes, not by paths and timestamps."""
    docs, tok = corpus
    src = write_corpus(tmp_path / "corpus", docs)
    out = tmp_path / "out"
    first = prepare_dataset(src, tok, out, 32, progress=False)
    stamp = (out / "train_input_ids.bin").stat().st_mtime_ns
    for f in src.iterdir():
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # touched
    assert prepare_dataset(src, tok, out, 32, progress=False).reused
    moved = tmp_path / "elsewhere" / "corpus"
    moved.parent.mkdir()
    src.rename(moved)
    again = prepare_dataset(moved, tok, out, 32, progress=False)
    assert again.reused and (out / "train_input_ids.bin").stat().st_mtime_ns == stamp
    assert np.array_equal(again.splits["train"].input_ids, first.splits["train"].input_ids)


def test_rebuild_swaps_in_and_refuses_foreign_folders(tmp_path, corpus, monkeypatch):
    docs, tok = corpus
    out = tmp_path / "out"
    good = prepare_dataset(docs, tok, out, 32, progress=False).manifest
    changed = [*docs[:-1], [*docs[-1], "one more line."]]

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "_swap_in", crash)  # cut short just before the swap
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(changed, tok, out, 32, progress=False)
    monkeypatch.undo()
    # the good folder is untouched and still reused; no building folder is left behind
    assert json.loads((out / "manifest.json").read_text()) == good
    assert prepare_dataset(docs, tok, out, 32, progress=False).reused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (out).rename(tmp_path / ".out.old")  # cut short between the two renames of a swap
    assert prepare_dataset(docs, tok, out, 32, progress=False).reused
    rebuilt = prepare_dataset(changed, tok, out, 32, progress=False)
    assert not rebuilt.reused and rebuilt.manifest["key"]["fingerprint"] != good["key"]["fingerprint"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CorpusError, match=r"holds other files \(notes.txt\); choose a new or empty folder"):
        prepare_dataset(docs, tok, tmp_path / "mine", 32, progress=False)


def test_workers_give_identical_shards(tmp_path, corpus, monkeypatch):
    docs, tok = corpus
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 1500)  # several chunks
    one = prepare_dataset(docs, tok, tmp_path / "a", 32, seed=3, num_workers=0, progress=False)
    two = prepare_dataset(docs, tok, tmp_path / "b", 32, seed=3, num_workers=2, progress=False)
    for name in ("train", "holdout"):
        for key in ("input_ids", "token_type_ids", "lengths"):
            assert np.array_equal(getattr(one.splits[name], key), getattr(two.splits[name], key))


def test_ids_above_uint16_use_int32(tmp_path, seed):
    assert id_dtype(65536) == np.uint16 and id_dtype(65537) == np.int32
    vocab = SPECIAL_TOKENS + [f"w{i}" for i in range(70_000 - len(SPECIAL_TOKENS))]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = load_tokenizer(tmp_path / "vocab.txt")
    rnd = random.Random(seed)
    words = [[f"w{rnd.randrange(69_995)}" for _ in range(rnd.randint(1, 30))] for _ in range(50)]
    ds = prepare_dataset([[" ".join(w)] for w in words], tok, tmp_path / "d", 64, holdout_fraction=0.0, progress=False)
    assert ds.splits["train"].input_ids.dtype == np.int32 and ds.num_examples["holdout"] == 0
    stored = sorted(split_content(ds.splits["train"]))
    assert stored == sorted(vocab.index(w) for ws in words for w in ws)


# ----------------------------------------------------------------------------- loader


def toy_dataset(rng, n_train=103, n_hold=21, T=16):
    """Rows whose second token is 10 + a unique row number (train first, then holdout)."""
    vocab = 10 + n_train + n_hold + 40

    def split(n, offset):
        ids = np.zeros((n, T), np.uint16)
        seg = np.zeros((n, T), np.uint8)
        lengths = rng.integers(6, T + 1, n).astype(np.int32)
        for i, L in enumerate(lengths):
            ids[i, :L] = [CLS, 10 + offset + i, *rng.integers(10, vocab, L - 3), SEP]
            seg[i, rng.integers(2, L) : L] = 1
        return Split(ids, seg, lengths)

    splits = {"train": split(n_train, 0), "holdout": split(n_hold, n_train)}
    return PretrainingDataset(splits, vocab, 0, CLS, SEP, MASK, [0, 1, CLS, SEP, MASK], T)


def row_ids(batch):
    return (batch["original_ids"][:, 1] - 10).tolist()


def test_batch_contents(seed):
    ds = toy_dataset(np.random.default_rng(seed))
    loader = PretrainingLoader(ds, "train", 8, seed=seed, mask_prob=0.25)
    batch = next(iter(loader))
    B, T, P = 8, 16, int((0.25 + 0.005) * 16)
    expected = {
        "input_ids": (torch.int64, (B, T)), "token_type_ids": (torch.int64, (B, T)),
        "attention_mask": (torch.bool, (B, T)), "original_ids": (torch.int64, (B, T)),
        "masked_positions": (torch.int64, (B, P)), "masked_ids": (torch.int64, (B, P)),
        "masked_weights": (torch.float32, (B, P)),
    }  # fmt: skip
    assert {k: (v.dtype, tuple(v.shape)) for k, v in batch.items()} == expected
    rows = row_ids(batch)
    s = ds.splits["train"]
    assert np.array_equal(batch["original_ids"].numpy(), s.input_ids[rows].astype(np.int64))
    assert np.array_equal(batch["token_type_ids"].numpy(), s.token_type_ids[rows])
    lengths = s.lengths[rows]
    assert np.array_equal(batch["attention_mask"].numpy(), np.arange(T) < lengths[:, None])

    orig, masked = batch["original_ids"].numpy(), batch["input_ids"].numpy()
    pos, w = batch["masked_positions"].numpy(), batch["masked_weights"].numpy()
    for b in range(B):
        chosen = pos[b][w[b] == 1]
        n = max(1, min(P, round(lengths[b] * 0.25)))  # docs/ARCHITECTURE.md 1. Mask
        assert len(chosen) == len(set(chosen)) == n
        assert np.array_equal(batch["masked_ids"][b].numpy()[w[b] == 1], orig[b, chosen])
        assert not np.isin(orig[b, chosen], ds.special_ids).any()
        assert np.isin(masked[b, chosen], [MASK, *orig[b, chosen]]).all()
        rest = np.setdiff1d(np.arange(T), chosen)
        assert np.array_equal(masked[b, rest], orig[b, rest])


@pytest.mark.parametrize("drop_last", [True, False])
def test_each_epoch_is_a_permutation(seed, drop_last):
    ds = toy_dataset(np.random.default_rng(seed))
    loader = PretrainingLoader(ds, "train", 10, seed=seed, drop_last=drop_last)
    assert len(loader) == (10 if drop_last else 11)
    it = iter(loader)
    epochs = [sum((row_ids(next(it)) for _ in range(len(loader))), []) for _ in range(3)]
    for rows in epochs:
        assert len(rows) == len(set(rows)) == (100 if drop_last else 103)
    assert epochs[0] != epochs[1] != epochs[2]
    assert loader.state_dict() == {"epoch": 3, "index": 0}


def test_ranks_take_disjoint_slices(seed):
    ds = toy_dataset(np.random.default_rng(seed))
    world = 3
    seen = []
    for rank in range(world):
        loader = PretrainingLoader(ds, "train", 4, seed=seed, rank=rank, world_size=world)
        assert len(loader) == 103 // world // 4
        it = iter(loader)
        seen.append(set(sum((row_ids(next(it)) for _ in range(len(loader))), [])))
        assert len(seen[-1]) == len(loader) * 4
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


def test_resume_gives_identical_batches(seed):
    ds = toy_dataset(np.random.default_rng(seed))
    kw = dict(seed=seed, rank=1, world_size=2)
    a = PretrainingLoader(ds, "train", 7, **kw)
    k = int(np.random.default_rng(seed).integers(1, 3 * len(a)))  # anywhere, epoch ends included
    it = iter(a)
    for _ in range(k):
        next(it)
    state = a.state_dict()
    assert state["epoch"] * len(a) + state["index"] == k
    expected = [next(it) for _ in range(len(a) + 2)]
    b = PretrainingLoader(ds, "train", 7, **kw)
    b.load_state_dict(state)
    got = [batch for batch, _ in zip(b, range(len(a) + 2))]
    for x, y in zip(expected, got):
        assert x.keys() == y.keys() and all(torch.equal(x[key], y[key]) for key in x)


def test_masking_is_redone_every_epoch(seed):
    ds = toy_dataset(np.random.default_rng(seed))
    loader = PretrainingLoader(ds, "train", 103, seed=seed)  # one batch = the whole split
    it = iter(loader)
    first, second = next(it), next(it)
    order1, order2 = np.argsort(row_ids(first)), np.argsort(row_ids(second))
    assert torch.equal(first["original_ids"][order1], second["original_ids"][order2])
    assert not torch.equal(first["masked_positions"][order1], second["masked_positions"][order2])


def test_eval_pass_is_fixed(seed):
    ds = toy_dataset(np.random.default_rng(seed))
    loader = PretrainingLoader(ds, "train", 8, seed=seed)
    runs = [list(loader.iter_eval(5)) for _ in range(2)]
    assert [len(b["input_ids"]) for b in runs[0]] == [5, 5, 5, 5, 1]
    assert sum((row_ids(b) for b in runs[0]), []) == list(range(103, 124))
    for x, y in zip(*runs):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert len(list(loader.iter_eval(5, max_batches=2))) == 2
    ranks = [PretrainingLoader(ds, "train", 8, rank=r, world_size=2).iter_eval(4) for r in range(2)]
    assert sorted(sum((row_ids(b) for it in ranks for b in it), [])) == list(range(103, 124))


def test_eval_passes_remask_the_same_rows_and_fit_the_batch_budget(seed):
    """Several passes over a small held-out split: each pass reads the same rows in the same order,
    pass 0 is the single pass, later passes mask anew, ``max_batches`` caps the total, and
    ``eval_passes`` counts the whole passes that fit a budget, equally on every rank."""
    ds = toy_dataset(np.random.default_rng(seed))  # 21 held-out rows (103-123)
    loader = PretrainingLoader(ds, "train", 8, seed=seed)
    one = list(loader.iter_eval(5))
    three = list(loader.iter_eval(5, passes=3))
    assert len(three) == 15
    passes = [three[k * 5:(k + 1) * 5] for k in range(3)]
    for x, y in zip(one, passes[0]):
        assert all(torch.equal(x[k], y[k]) for k in x)
    for p in passes[1:]:
        assert [row_ids(b) for b in p] == [row_ids(b) for b in one]
        assert any(not torch.equal(x["masked_positions"], y["masked_positions"]) for x, y in zip(one, p))
    assert len(list(loader.iter_eval(5, passes=3, max_batches=7))) == 7
    assert [loader.eval_passes(5, n) for n in (1, 4, 5, 9, 10, 20)] == [1, 1, 1, 1, 2, 4]
    assert loader.eval_passes(64, 20) == 20  # one batch per pass
    ranks = [PretrainingLoader(ds, "train", 8, rank=r, world_size=2) for r in range(2)]
    assert {r.eval_passes(5, 12) for r in ranks} == {4}  # 11 and 10 rows: 3 batches a pass on both
    with pytest.raises(ValueError, match="passes"):
        next(loader.iter_eval(5, passes=0))


def test_loader_errors(seed):
    ds = toy_dataset(np.random.default_rng(seed))
    with pytest.raises(ValueError, match="fewer than one batch"):
        PretrainingLoader(ds, "train", 104)
    with pytest.raises(KeyError, match="no 'dev' split"):
        PretrainingLoader(ds, "dev", 4)
    with pytest.raises(ValueError, match="rank=2"):
        PretrainingLoader(ds, "train", 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="whole_word"):
        PretrainingLoader(ds, "train", 4, whole_word=True)


def test_loader_on_prepared_shards_whole_word(tmp_path, corpus, seed):
    docs, tok = corpus
    prepare_dataset(docs, tok, tmp_path, 32, seed=seed, progress=False)
    with pytest.raises(ValueError, match="another vocabulary"):
        PretrainingLoader(tmp_path, "train", 4, tokenizer=train_tokenizer(docs, 200))
    loader = PretrainingLoader(tmp_path, "train", 16, tokenizer=tok, seed=seed, whole_word=True)
    in_memory = PretrainingDataset.from_arrays(load_dataset(tmp_path).splits, tok)
    twin = PretrainingLoader(in_memory, "train", 16, seed=seed, whole_word=True)
    assert all(torch.equal(x, y) for x, y in zip(next(iter(loader)).values(), next(iter(twin)).values()))
    loader.load_state_dict({"epoch": 0, "index": 0})
    for batch, _ in zip(loader, range(5)):
        ids, pos, w = batch["original_ids"].numpy(), batch["masked_positions"].numpy(), batch["masked_weights"]
        # a word: a "##" run after its first piece; a run right after [CLS] / [SEP] starts a word
        # (a short example may begin inside a word longer than its budget)
        after_special = np.isin(np.roll(ids, 1, axis=1), tok.special_ids)
        starts = tok.word_starts(ids) | after_special
        for b in range(len(ids)):
            chosen = set(pos[b][w[b].numpy() == 1].tolist())
            words = np.cumsum(starts[b])  # word number of each position
            for p in chosen:  # a word is masked whole or not at all
                assert set(np.flatnonzero(words == words[p]).tolist()) <= chosen


def test_block_shuffle_reads_whole_blocks_per_buffer(seed, monkeypatch):
    """An epoch visits buffers of BUFFER_BLOCKS blocks of BLOCK_ROWS contiguous rows: the first
    buffer's positions hold exactly the rows of whole blocks, and only one buffer's order exists."""
    monkeypatch.setattr(loader_mod, "BLOCK_ROWS", 4)
    monkeypatch.setattr(loader_mod, "BUFFER_BLOCKS", 3)
    ds = toy_dataset(np.random.default_rng(seed))  # 103 rows: 26 blocks, the last one of 3 rows
    loader = PretrainingLoader(ds, "train", 5, seed=seed)
    order = loader.epoch_order(0)
    assert sorted(order.tolist()) == list(range(103))  # one rank: every row once
    first = order[: loader._epoch_layout(0)[1][0]]  # 12 rows, 11 when the short last block is among them
    blocks = set((first // 4).tolist())
    assert len(blocks) == 3 and sorted(first.tolist()) == sorted(r for b in blocks for r in range(4 * b, min(4 * b + 4, 103)))
    assert not np.array_equal(order, loader.epoch_order(1))
    assert len(loader._buffers) <= 2  # bounded: never the whole epoch's order


def test_loader_reads_each_buffer_ahead_once(tmp_path, corpus, seed, monkeypatch):
    """Iterating asks the kernel for the blocks of the current and the next buffer, each buffer
    once, on the shards' memory maps (a cold buffer then arrives in large reads, not one 4 KB
    fault per row); inspecting the order (epoch_order) reads nothing ahead."""
    docs, tok = corpus
    prepare_dataset(docs, tok, tmp_path, 16, seed=seed, progress=False)
    ds = load_dataset(tmp_path)
    s = ds.splits["train"]
    assert all(isinstance(loader_mod._mmap_of(a), loader_mod.mmap.mmap) for a in (s.input_ids, s.token_type_ids))
    assert loader_mod._mmap_of(np.zeros(3)) is None
    monkeypatch.setattr(loader_mod, "BLOCK_ROWS", 4)
    monkeypatch.setattr(loader_mod, "BUFFER_BLOCKS", 3)
    asked = []
    monkeypatch.setattr(loader_mod, "_will_need", lambda arr, blocks, rows: asked.append((arr, blocks.tolist())))
    loader = PretrainingLoader(ds, "train", 5, seed=seed)
    loader.epoch_order(0)
    assert asked == []
    it = iter(loader)
    blocks, ends = loader._epoch_layout(0)
    n_batches = int(ends[2]) // 5  # the batches inside the first three buffers
    for _ in range(n_batches):
        next(it)
    want = [blocks[h * 3 : (h + 1) * 3].tolist() for h in range(4)]  # buffers 0-2 and the one after
    assert [b for arr, b in asked if arr is s.input_ids] == want
    assert len(asked) == 3 * len(want)  # ids, segment ids and lengths of each
