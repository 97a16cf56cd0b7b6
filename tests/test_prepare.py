"""Corpora as users have them (compressed, JSON lines, Parquet / Arrow, over-long lines, unreadable
paths), the prepare command, reproducible vocabularies across processes, and training on a
prepared folder or resuming after the corpus moved. Small generated corpora only."""

import bz2
import gzip
import json
import lzma
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_helpers import SMALL, _corpus

from electra_fast import corpus as corpus_mod
from electra_fast import prepare
from electra_fast.corpus import CorpusError, read_corpus
from electra_fast.loader import load_dataset
from electra_fast.prepare import build_examples, prepare_corpus, vocabulary_sample
from electra_fast.tokenizer import load_tokenizer, train_tokenizer


def make_docs(rnd: random.Random, n: int) -> list[list[str]]:
    words = ["".join(rnd.choices("abcdefghijklmnop", k=rnd.randint(2, 7))) for _ in range(200)]
    return [[" ".join(rnd.choices(words, k=rnd.randint(3, 15))) + "." for _ in range(rnd.randint(1, 6))]
            for _ in range(n)]  # fmt: skip


def as_text(docs) -> str:
    return "\n\n".join("\n".join(d) for d in docs) + "\n"


@pytest.fixture
def docs(seed):
    return make_docs(random.Random(seed), 30)


# ----------------------------------------------------------------------------- inputs


def test_compressed_files_read_like_plain_text(tmp_path, docs):
    zstandard = pytest.importorskip("zstandard")  # the "corpora" / "test" extra

    text = as_text(docs).encode()
    jsonl = "".join(json.dumps({"body": "\n".join(d)}) + "\n" for d in docs).encode()
    # named by what they are, or misnamed: the first bytes decide
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(text))
    (tmp_path / "b.bz2").write_bytes(bz2.compress(text))
    (tmp_path / "c.txt").write_bytes(lzma.compress(text))
    (tmp_path / "d.zst").write_bytes(zstandard.ZstdCompressor().compress(text))
    (tmp_path / "e.jsonl.gz").write_bytes(gzip.compress(jsonl))
    (tmp_path / "f.jsonl.xz").write_bytes(lzma.compress(jsonl))
    for name in sorted(p.name for p in tmp_path.iterdir()):
        assert list(read_corpus(tmp_path / name, text_field="body")) == docs, name


def test_parquet_and_arrow_text_column(tmp_path, docs):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = ["\n".join(d) for d in docs]
    table = pa.table({"id": list(range(len(texts))), "content": texts})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=7)
    hf = tmp_path / "hf"  # what datasets.save_to_disk writes: streaming-format .arrow + metadata json
    hf.mkdir()
    with pa.ipc.new_stream(hf / "data-00000-of-00001.arrow", table.schema) as w:
        for batch in table.to_batches(max_chunksize=11):
            w.write_batch(batch)
    (hf / "state.json").write_text('{"_data_files": []}')
    (hf / "dataset_info.json").write_text("{}")
    with pa.ipc.new_file(tmp_path / "f.feather", table.schema) as w:
        w.write_table(table)
    for path in (tmp_path / "t.parquet", hf, tmp_path / "f.feather"):
        assert list(read_corpus(path, text_field="content")) == docs, path
    with pytest.raises(CorpusError, match=r't.parquet: no "text" column \(it has id, content\); choose one with --text-field'):
        list(read_corpus(tmp_path / "t.parquet"))


def test_binary_and_corrupt_files_get_one_line_errors(tmp_path, docs):
    rnd = np.random.default_rng(0)
    (tmp_path / "model.bin").write_bytes(rnd.integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(CorpusError) as e:
        list(read_corpus(tmp_path / "model.bin"))
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'model.bin'}: binary data, not text") and "\n" not in msg
    assert "--errors replace" not in msg and "--text-field" in msg
    (tmp_path / "cut.gz").write_bytes(gzip.compress(as_text(docs).encode())[:-40])
    with pytest.raises(CorpusError, match=r"cut.gz: truncated or corrupt \(gzip"):
        list(read_corpus(tmp_path / "cut.gz"))


def test_unreadable_paths_are_errors_or_counted_warnings(tmp_path, docs, monkeypatch):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "a.txt").write_text(as_text(docs[:10]))
    (folder / "b.txt").write_text(as_text(docs[10:]))
    (folder / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    with pytest.raises(CorpusError, match=r"c/gone.txt: broken link .*--skip-unreadable"):
        read_corpus(folder)
    skipped = []
    with pytest.warns(UserWarning, match="skipping .*gone.txt"):
        assert list(read_corpus(folder, skip_unreadable=True, skipped=skipped)) == docs
    assert [Path(p).name for p, _ in skipped] == ["gone.txt"]

    real_open = open

    def deny(path, *a, **k):  # tests run as root: chmod cannot make a file unreadable
        if str(path).endswith("b.txt"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    (folder / "gone.txt").unlink()
    with pytest.raises(CorpusError, match=r"b.txt: cannot read it \(Permission denied\)"):
        list(read_corpus(folder))
    skipped = []
    with pytest.warns(UserWarning, match="skipping .*b.txt"):
        assert list(read_corpus(folder, skip_unreadable=True, skipped=skipped)) == docs[:10]
    assert len(skipped) == 1
    # the prepare path checksums the files first: the same one-line error, or the same skip
    tok = train_tokenizer(docs, 60)
    with pytest.raises(CorpusError, match=r"b.txt: cannot read it \(Permission denied\); .*--skip-unreadable"):
        prepare_corpus(folder, tmp_path / "out", tokenizer=tok, max_seq_length=32, progress=False)
    with pytest.warns(UserWarning, match="skipping .*b.txt"):
        ds = prepare_corpus(folder, tmp_path / "out", tokenizer=tok, max_seq_length=32, progress=False,
                            skip_unreadable=True)  # fmt: skip
    assert sum(ds.manifest["num_documents"].values()) == 10 and len(ds.manifest["skipped"]) == 1


def test_over_long_line_is_cut_at_spaces_and_packed_whole(tmp_path, monkeypatch):
    """A line far longer than MAX_LINE_BYTES comes in pieces cut between words: the same tokens,
    in order, packed into full rows."""
    monkeypatch.setattr(corpus_mod, "MAX_LINE_BYTES", 4096)
    rnd = random.Random(0)
    words = [rnd.choice(["alpha", "beta", "gamma", "délta", "日本"]) for _ in range(20_000)]
    line = " ".join(words)
    (tmp_path / "long.txt").write_text("short first line.\n" + line + "\nlast line.\n", encoding="utf-8")
    [doc] = list(read_corpus(tmp_path / "long.txt"))
    assert len(doc) > 20 and max(len(x.encode()) for x in doc) <= 2 * 4096
    assert " ".join(doc) == "short first line. " + line + " last line."
    tok = train_tokenizer([doc], 60)
    ds = prepare_corpus(tmp_path / "long.txt", tmp_path / "out", tokenizer=tok, max_seq_length=64,
                        holdout_fraction=0.0, progress=False)  # fmt: skip
    rows = ds.splits["train"]
    stored = [t for r, n in zip(rows.input_ids, rows.lengths) for t in r[1:n - 1].tolist() if t != tok.sep_id]
    assert stored == [t for ids in tok.encode_batch(doc) for t in ids]
    assert np.mean(rows.lengths >= 56) > 0.9  # full rows (a cut moves back to a word start), not one per piece


def test_packing_a_huge_sentence_tiles_it_exactly():
    """One sentence of 300k tokens: cut by position (linear), every token once, in order."""
    rng = np.random.default_rng(0)
    sentence = rng.integers(10, 1000, 300_000).tolist()
    word_start = np.ones(1000, dtype=bool)
    word_start[500:] = False
    examples = list(build_examples([[sentence]], 128, cls_id=2, sep_id=3, rng=rng, word_start=word_start))
    flat = [t for ids, _ in examples for t in ids if t not in (2, 3)]
    assert flat == sentence and all(len(ids) <= 128 for ids, _ in examples)


def test_vocabulary_learns_from_bounded_word_counts(tmp_path, seed, monkeypatch):
    """The trainer's memory follows the distinct words it is given: preparation gives it at most
    MAX_WORDS (the most frequent), says so, and keys the folder by that bound."""
    rnd = random.Random(seed)
    docs = make_docs(rnd, 200)
    rare = [[" ".join(f"{w}{i}{j}" for j, w in enumerate(line.split())) for line in d] for i, d in enumerate(docs)]
    (tmp_path / "c.txt").write_text(as_text(docs + rare))  # every word of `rare` occurs once
    given = []
    real = prepare.train_from_word_counts
    monkeypatch.setattr(prepare, "train_from_word_counts", lambda c, v: given.append(len(c.final())) or real(c, v))
    monkeypatch.setattr(prepare, "MAX_WORDS", 150)  # the lexicon of make_docs has 200 words
    said = []
    ds = prepare_corpus(tmp_path / "c.txt", tmp_path / "out", vocab_size=120, max_seq_length=32, progress=False,
                        log=said.append)  # fmt: skip
    assert given == [150] and ds.manifest["vocab_spec"]["max_words"] == 150
    assert any(x.startswith("vocabulary: kept the 150 most frequent words (") for x in said)


def test_default_corpus_vocabulary_comes_from_its_documentation_and_training_reads_all_of_it(tmp_path):
    """The default run's vocabulary is learnt from the standard library's documentation in the default
    corpus (help pages and docstrings), not from its source comments or the packages' docstrings; the
    shards hold every document."""
    said = []
    ds = prepare_corpus(None, tmp_path / "out", vocab_size=512, max_seq_length=32, progress=False, log=said.append)
    documentation = corpus_mod.default_corpus(comments=False, packages=False)
    everything = corpus_mod.default_corpus()
    assert len(everything) > len(documentation) and everything[: len(documentation)] == documentation
    tok = load_tokenizer(tmp_path / "out")
    assert tok.vocab_hash() == train_tokenizer(documentation, 512).vocab_hash()
    assert tok.vocab_hash() != train_tokenizer(everything, 512).vocab_hash()  # the rest would change it
    assert sum(ds.manifest["num_documents"].values()) == len(everything)
    assert any("the standard library's documentation in the default corpus" in x for x in said), said


def test_vocabulary_sample_is_uniform_and_fixed(seed):
    docs = make_docs(random.Random(seed), 2000)
    a, b = list(vocabulary_sample(docs, 0.3)), list(vocabulary_sample(docs, 0.3))
    assert a == b and 500 < len(a) < 700
    assert list(vocabulary_sample(docs, 1.0)) == docs


# ----------------------------------------------------------------------------- the command


def _prepare_cli(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "electra_fast.prepare", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)  # fmt: skip


def test_prepare_command_is_reproducible_across_processes(tmp_path):
    """Two fresh processes, same command and seed: byte-identical vocab.txt, tokenizer.json and shards
    (the WordPiece trainer orders tokens through a randomly seeded hash map; we sort them)."""
    data = _corpus(tmp_path / "corpus", n_docs=60, seed=4)
    with gzip.open(data / "part3.txt.gz", "wt") as f:
        f.write(as_text(make_docs(random.Random(4), 40)))
    outs = []
    for name in ("one", "two"):
        res = _prepare_cli("--data", str(data), "--out", str(tmp_path / name), "--vocab-size", "150",
                           "--seq-len", "32", "--seed", "3", "--holdout", "0.1", "--no-progress")  # fmt: skip
        assert res.returncode == 0, res.stderr
        summary = res.stderr.strip().splitlines()[-1]
        assert summary.startswith(f"prepared {tmp_path / name}: 100 documents (") and "MB/s" in summary
        outs.append(tmp_path / name)
    for f in sorted(p.name for p in outs[0].iterdir()):
        if f != "manifest.json":
            assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f
    vocab = (outs[0] / "vocab.txt").read_text().split("\n")
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(vocab) == 151
    ds = load_dataset(outs[0])
    assert ds.num_examples["holdout"] > 0 and ds.manifest["num_documents"]["train"] + ds.manifest["num_documents"]["holdout"] == 100


def test_prepare_command_errors_are_one_line(tmp_path):
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 10)
    res = _prepare_cli("--data", str(tmp_path / "blob"), "--out", str(tmp_path / "o"), "--no-progress")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1:] == [f"error: {tmp_path / 'blob'}: binary data, not text (NUL bytes in its "
                                               f"first 8 KB); {corpus_mod._FLAGS_HELP}"]  # fmt: skip
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- training on it


def test_train_on_a_prepared_folder_and_resume_after_the_corpus_moved(tmp_path, capsys):
    from electra_fast.train import main

    data = _corpus(tmp_path / "corpus", n_docs=40, seed=6)
    assert prepare.main(["--data", str(data), "--out", str(tmp_path / "prep"), "--vocab-size", "120",
                         "--seq-len", "32", "--no-progress"]) == 0  # fmt: skip
    run = tmp_path / "run"
    assert main(["--data", str(tmp_path / "prep"), "--out", str(run), *SMALL, "--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert f"the prepared folder {tmp_path / 'prep'}" in err and not (run / "data").exists()
    assert load_tokenizer(run / "vocab").vocab_hash() == load_tokenizer(tmp_path / "prep").vocab_hash()
    bad = main(["--data", str(tmp_path / "prep"), "--out", str(tmp_path / "r2"), *SMALL, "--seq-len", "48"])
    assert bad == 2 and "pass --seq-len 32 or prepare it again" in capsys.readouterr().err

    # a run on the raw corpus, then the corpus moves away: --resume needs only the shards
    raw = tmp_path / "raw"
    assert main(["--data", str(data), "--out", str(raw), *SMALL, "--steps", "2", "--save-every", "1"]) == 0
    stamp = (raw / "data" / "manifest.json").stat().st_mtime_ns
    data.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["--resume", str(raw), "--steps", "3", "--no-progress"]) == 0
    assert "the corpus is not read again" in capsys.readouterr().err
    assert (raw / "data" / "manifest.json").stat().st_mtime_ns == stamp


def test_two_fresh_training_processes_log_the_same_losses(tmp_path):
    """Reproducible end to end: without --vocab each process trains its own vocabulary, and the
    vocabularies, shards and logged losses agree."""
    data = _corpus(tmp_path / "corpus", n_docs=40, seed=8)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    losses = []
    for name in ("a", "b"):
        res = subprocess.run([sys.executable, "-m", "electra_fast.train", "--data", str(data), "--out", str(tmp_path / name),
                              *SMALL, "--steps", "3", "--device", "cpu"], capture_output=True, text=True, env=env,
                             timeout=300)  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        recs = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses.append([(r["step"], r["loss"]) for r in recs if "loss" in r and "eval" not in r])
    assert len(losses[0]) == 3 and losses[0] == losses[1]
    assert (tmp_path / "a/vocab/vocab.txt").read_bytes() == (tmp_path / "b/vocab/vocab.txt").read_bytes()
    assert (tmp_path / "a/data/train_input_ids.bin").read_bytes() == (tmp_path / "b/data/train_input_ids.bin").read_bytes()
