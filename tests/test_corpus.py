"""Reading corpora: the official one-sentence-per-line format, jsonl, errors, the embedded default."""

import json
import random
import re

import pytest

from electra_fast.corpus import (
    CorpusError,
    comment_lines,
    corpus_files,
    default_corpus,
    prose_lines,
    read_corpus,
)


@pytest.fixture
def rnd(seed):
    return random.Random(seed)


def random_docs(rnd, n_docs):
    words = ["alpha", "beta", "gamma", "delta", "été", "naïve", "x", "42", "zeta!", "œuvre"]
    return [
        [" ".join(rnd.choices(words, k=rnd.randint(1, 12))) for _ in range(rnd.randint(1, 6))]
        for _ in range(n_docs)
    ]


def write_official(path, docs, rnd, newline="\n"):
    """Documents separated by one or more blank (or whitespace-only) lines."""
    parts = []
    for doc in docs:
        parts.append(newline.join(doc))
        parts.append(newline + rnd.choice(["", "   ", "\t"]) + newline * rnd.randint(1, 2))
    path.write_bytes("".join(parts).encode("utf-8"))


def test_folder_recursive_sorted_skips_hidden(tmp_path, rnd):
    docs = random_docs(rnd, 12)
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden_dir").mkdir()
    (tmp_path / ".hidden_dir" / "x.txt").write_text("never read\n")
    (tmp_path / ".hidden.txt").write_text("never read\n")
    write_official(tmp_path / "a.txt", docs[:4], rnd)
    write_official(tmp_path / "b" / "deep" / "c.txt", docs[8:], rnd, newline="\r\n")
    write_official(tmp_path / "b" / "b.data", docs[4:8], rnd)  # any suffix is text
    assert [p.name for p in corpus_files(tmp_path)] == ["a.txt", "b.data", "c.txt"]
    assert list(read_corpus(tmp_path)) == docs
    assert list(read_corpus([tmp_path / "b", tmp_path / "a.txt"])) == docs[4:] + docs[:4]


def test_lines_are_stripped_and_file_end_closes_document(tmp_path):
    (tmp_path / "t.txt").write_text("  one.  \ntwo.\n\n\n\nthree.", encoding="utf-8")
    assert list(read_corpus(tmp_path / "t.txt")) == [["one.", "two."], ["three."]]


def test_jsonl_documents(tmp_path, rnd):
    docs = random_docs(rnd, 7)
    rows = [json.dumps({"body": "\n\n".join(d), "id": i}) for i, d in enumerate(docs)]
    rows.insert(3, "")  # blank lines between objects are allowed
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert list(read_corpus(tmp_path / "d.jsonl", text_field="body")) == docs
    with pytest.raises(CorpusError, match=r'd\.jsonl:1: no "text" field'):
        list(read_corpus(tmp_path / "d.jsonl"))


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "fine"}\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"d\.jsonl:2: not valid JSON"):
        list(read_corpus(tmp_path / "d.jsonl"))
    (tmp_path / "e.jsonl").write_text('{"text": 3}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r'e\.jsonl:1: "text" is int'):
        list(read_corpus(tmp_path / "e.jsonl"))


def test_invalid_utf8_names_file_and_byte_offset(tmp_path, rnd):
    prefix = "".join(rnd.choice(["ab", "é", "\n", "日本", " "]) for _ in range(rnd.randint(0, 400)))
    data = prefix.encode("utf-8") + b"\xff" + b"tail\n"
    (tmp_path / "bad.txt").write_bytes(data)
    offset = len(prefix.encode("utf-8"))
    with pytest.raises(CorpusError) as e:
        list(read_corpus(tmp_path))
    msg = str(e.value)
    assert f"bad.txt: not valid UTF-8 at byte offset {offset};" in msg
    assert "--errors replace" in msg
    assert isinstance(e.value, ValueError)

    text = "".join(line.strip() for doc in read_corpus(tmp_path, errors="replace") for line in doc)
    assert text == "".join(x.strip() for x in (prefix + "\ufffdtail\n").splitlines())


def test_missing_path_and_empty_corpus(tmp_path):
    with pytest.raises(CorpusError, match=r"^no such file or folder: .*nope$"):
        read_corpus([tmp_path, tmp_path / "nope"])  # raised at the call, before reading anything
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    with pytest.raises(CorpusError, match="empty corpus"):
        list(read_corpus(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="empty corpus"):
        list(read_corpus(tmp_path / "empty"))
    with pytest.raises(CorpusError, match="errors="):
        read_corpus(tmp_path, errors="bogus")


def test_default_corpus_is_english_prose():
    docs = default_corpus()
    assert docs == default_corpus()  # deterministic, and each call gets its own copy
    docs[0].append("mutated")
    assert default_corpus()[0][-1] != "mutated"
    lines = [line for doc in docs for line in doc]
    n_bytes = sum(len(line.encode("utf-8")) + 1 for line in lines)
    assert len(docs) > 500 and n_bytes > 500_000, (len(docs), n_bytes)
    words = re.findall(r"[a-z]+", " ".join(lines).lower())
    common = {w: words.count(w) for w in ("the", "of", "and", "is", "function", "return", "object")}
    assert all(c > 200 for c in common.values()), common
    assert not any(line.startswith((">>>", "...")) for line in lines)
    assert all(doc for doc in docs)


def test_comment_lines_join_comment_runs_and_keep_only_prose():
    source = (
        "# Copyright holders say this file is theirs to keep.\n"
        "import os  # the operating system module is needed here\n"
        "\n"
        "# The cache holds one entry per key. It is cleared\n"
        "# when the process forks, so children start empty.\n"
        "#\n"
        "# A new paragraph starts after a bare comment row.\n"
        "x = '# not a comment, but a string that holds a hash sign'\n"
        "# x = compute(y, z) + 1\n"
        "# XXX\n"
        "def f():\n"
        "    # Indented comments count as well, when they read as prose.\n"
        "    return 1\n"
    )
    assert comment_lines(source) == [
        # consecutive rows: the comment after the import continues the paragraph above it
        "Copyright holders say this file is theirs to keep. the operating system module is needed here",
        "The cache holds one entry per key.",
        "It is cleared when the process forks, so children start empty.",
        "A new paragraph starts after a bare comment row.",
        "Indented comments count as well, when they read as prose.",
    ]
    # runs of comments on consecutive rows are paragraphs; a code row between them ends one
    assert comment_lines("# One run of words here\ny = 2\n# and another run of words.\n") == [
        "One run of words here", "and another run of words."]
    # source that stops tokenizing keeps what came before
    assert comment_lines('# The part that reads fine is kept.\ndef broken(:\n    """never closed\n') == [
        "The part that reads fine is kept."]
    assert comment_lines("") == []


def test_default_corpus_reads_the_standard_librarys_comments_after_its_documentation():
    import heapq  # read from its source file (os, say, is frozen into the interpreter: no file)

    import electra_fast.corpus as corpus

    documentation = default_corpus(comments=False, packages=False)
    docs = default_corpus(packages=False)
    comments = corpus._comment_documents()
    assert len(comments) > 100 and docs == documentation + comments
    # the comment documents come from the modules' own source files
    with open(heapq.__file__, encoding="utf-8") as f:
        assert comment_lines(f.read()) in comments


def test_default_corpus_ends_with_the_docstrings_of_torchs_requirements_never_numpys_or_torchs():
    """networkx and sympy come with torch (electra_fast's requirement), so they are installed wherever
    this runs; their docstrings close the default corpus. numpy's and torch's never join it: they are
    the transfer benchmark's unseen text (tests/test_transfer.py checks the tasks' sentences)."""
    import networkx
    import sympy

    import electra_fast.corpus as corpus

    installed = corpus.corpus_packages()
    assert {"networkx", "sympy"} <= set(installed) and installed["networkx"] == networkx.__version__
    before = default_corpus(packages=False)
    docs = default_corpus()
    packages = docs[len(before):]
    assert docs[: len(before)] == before and len(packages) > 500
    lines = {line for doc in packages for line in doc}
    # a class's docstring is read in the module that defines it
    for cls in (networkx.Graph, sympy.Symbol):
        assert prose_lines(cls.__doc__)[0] in lines, cls
    assert not {"numpy", "torch"} & set(corpus.CORPUS_PACKAGES)
    # a package that is not installed is left out, not an error
    assert corpus._package_documents(["no_such_package_here"]) == []


def _fake_module():
    """A module with a docstring, two functions, a short and a long class, and a re-export."""
    import types

    mod = types.ModuleType("fake_docs_module", "The module says what it is for.\n\nA second sentence here.")

    def alpha():
        """Alpha does the first thing. It does it well."""

    def beta():
        """Beta does another thing."""

    class Short:
        """A short class."""

        def run(self):
            """Run it once."""

    class Long:
        def go(self):
            """Go somewhere else entirely."""

        @property
        def size(self):
            """The size of the thing."""

    Long.__doc__ = "A long class with a long story. " + "It keeps going on and on about itself. " * 12
    for obj in (alpha, beta, Short, Long):
        obj.__module__ = mod.__name__
        setattr(mod, obj.__name__, obj)
    mod.json = json  # a module attribute defined elsewhere: read where it is defined, not here
    mod.dumps = json.dumps
    return mod


def test_module_docstrings_one_entry_per_docstring_in_reading_order():
    from electra_fast.corpus import _module_documents, module_docstrings, prose_lines

    mod = _fake_module()
    entries = module_docstrings(mod)
    assert [owner for owner, _ in entries] == [None, "Long", "Long", "Long", "Short", "Short", None, None]
    assert entries[0][1] == prose_lines(mod.__doc__)
    assert entries[-2][1] == prose_lines(mod.alpha.__doc__) and entries[-1][1] == prose_lines(mod.beta.__doc__)
    assert entries[2][1] == prose_lines(mod.Long.go.__doc__) and entries[3][1] == prose_lines(mod.Long.size.__doc__)
    # the pre-training documents group them: the long class alone, everything else into the module's
    docs = _module_documents(mod)
    long_doc = [line for owner, lines in entries if owner == "Long" for line in lines]
    head = [line for owner, lines in entries if owner != "Long" for line in lines]
    assert docs == [head, long_doc]
