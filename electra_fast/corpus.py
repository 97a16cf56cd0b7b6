"""Text in: documents as lists of lines (one sentence or paragraph per line).

Two sources:
- ``read_corpus(paths)``: the official ELECTRA / BERT pre-training format (plain text, one
  sentence per line, a blank line ends a document), or ``.jsonl`` files with one JSON object per
  document (its ``"text"`` field, split into lines on newlines).
- ``default_corpus()``: English prose that ships with every CPython installation (the
  ``pydoc_data.topics`` help pages and the standard library's docstrings), so that
  ``python -m electra_fast.train`` has something to learn from with no download.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import pkgutil
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

Document = list[str]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
ERROR_MODES = ("strict", "replace", "ignore")


class CorpusError(ValueError):
    """A corpus file or folder cannot be read; the message names the file and what to do."""


# ----------------------------------------------------------------------------- files on disk


def corpus_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into the sorted list of files they hold.

    Folders are walked recursively in sorted order; hidden files and folders (name starting with
    ".") are skipped, every other regular file is read as text.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    f = Path(root, name)
                    if not name.startswith(".") and f.is_file():
                        files.append(f)
        else:
            raise CorpusError(f"no such file or folder: {p}")
    return files


def _lines(path: Path, errors: str) -> Iterator[tuple[int, str]]:
    """(line number, decoded line without its newline), with the byte offset in decode errors.

    Decoding line by line is exact for UTF-8: the newline byte never occurs inside a multi-byte
    character, so ``line_start + err.start`` is the offset of the bad byte in the file.
    """
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
                raw, offset = raw[3:], 3
            try:
                text = raw.decode("utf-8", errors=errors)
            except UnicodeDecodeError as e:
                raise CorpusError(
                    f"{path}: not valid UTF-8 at byte offset {offset + e.start}; "
                    f"re-encode it or pass --errors replace"
                ) from None
            offset += len(raw)
            yield lineno, text.rstrip("\r\n")


def _read_text_file(path: Path, errors: str) -> Iterator[Document]:
    doc: Document = []
    for _, line in _lines(path, errors):
        line = line.strip()
        if line:
            doc.append(line)
        elif doc:  # a blank line ends a document (build_pretraining_dataset.py)
            yield doc
            doc = []
    if doc:
        yield doc


def _read_jsonl_file(path: Path, errors: str, text_field: str) -> Iterator[Document]:
    for lineno, line in _lines(path, errors):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict) or text_field not in obj:
            raise CorpusError(
                f'{path}:{lineno}: no "{text_field}" field; each line must be a JSON object '
                f"holding the document text (choose the field with text_field / --text-field)"
            )
        text = obj[text_field]
        if not isinstance(text, str):
            raise CorpusError(f'{path}:{lineno}: "{text_field}" is {type(text).__name__}, expected a string')
        doc = [s for s in (x.strip() for x in text.splitlines()) if s]
        if doc:
            yield doc


def read_corpus(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    errors: str = "strict",
    text_field: str = "text",
) -> Iterator[Document]:
    """Yield the documents of text files and folders, each a list of non-blank stripped lines.

    Plain text: one sentence (or paragraph) per line, a blank line ends a document. ``.jsonl`` /
    ``.ndjson``: one JSON object per line, its ``text_field`` one document, split on newlines.
    ``errors="replace"`` substitutes U+FFFD for undecodable bytes instead of raising.
    Raises CorpusError for a missing path (at once), undecodable bytes, a bad JSON line, or no
    text at all (while iterating).
    """
    if errors not in ERROR_MODES:
        raise CorpusError(f"errors={errors!r}; expected one of {', '.join(ERROR_MODES)}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    return _read_files(corpus_files(paths), paths, errors, text_field)


def _read_files(files: list[Path], paths: list, errors: str, text_field: str) -> Iterator[Document]:
    found = False
    for f in files:
        if f.name.lower().endswith(JSONL_SUFFIXES):
            docs = _read_jsonl_file(f, errors, text_field)
        else:
            docs = _read_text_file(f, errors)
        for doc in docs:
            found = True
            yield doc
    if not found:
        where = ", ".join(map(str, paths)) or "an empty list of paths"
        raise CorpusError(f"empty corpus: no text found in {where}")


def files_fingerprint(files: Iterable[Path]) -> str:
    """sha256 over (absolute path, size, mtime) of each file: changes when any input changes."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def documents_fingerprint(documents: Iterable[Document]) -> str:
    """sha256 over the text of in-memory documents (lines and document boundaries)."""
    h = hashlib.sha256()
    for doc in documents:
        for line in doc:
            h.update(line.encode("utf-8", "surrogatepass"))
            h.update(b"\n")
        h.update(b"\0")
    return h.hexdigest()


# ----------------------------------------------------------------------------- embedded default

# Modules never imported: they act on import (print, open a browser, change the terminal or
# the readline completer), need a display, are test suites, or are deprecated shims that pull
# in third-party code.
_SKIP_MODULES = {
    "this", "antigravity", "readline", "rlcompleter", "idlelib", "tkinter", "turtle", "turtledemo",
    "test", "lib2to3", "distutils", "ensurepip", "venv", "webbrowser", "encodings", "pydoc_data",
    "site", "sitecustomize", "usercustomize",
}  # fmt: skip

_MIN_DOCUMENT_CHARS = 400  # about 80 tokens: shorter class documentation joins its module's
_WORD = re.compile(r"[A-Za-z][a-z]*(?:'[a-z]+)?[.,;:!?)]?$")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]\"'][.!?])\s+(?=[A-Z\"'(])")
_UNDERLINE = re.compile(r"^\s*([*=\-~^#+])\1{2,}\s*$")


def _is_prose(text: str) -> bool:
    """Mostly English words: at least 3 words, and 60% of the tokens look like plain words."""
    if text.startswith((">>>", "...", "$ ", "%")):
        return False
    tokens = text.split()
    if len(tokens) < 3:
        return False
    words = sum(1 for t in tokens if _WORD.match(t.strip("\"'(*")))
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return words >= 0.6 * len(tokens) and letters >= 0.8 * len(text)


def prose_lines(text: str) -> list[str]:
    """Split documentation text into sentence lines, dropping code, tables and markup.

    Paragraphs (runs of non-blank lines) are joined, split into sentences after ". " (and "!"
    "?") before a capital, and each sentence kept only if it reads as prose.
    """
    lines: list[str] = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(text)):
        rows = [r for r in para.splitlines() if not _UNDERLINE.match(r)]
        if not rows or rows[0].lstrip().startswith((">>>", "...")):
            continue  # doctest block
        joined = " ".join(r.strip() for r in rows)
        joined = re.sub(r"^[*\-+•]\s+|^\d+\.\s+", "", joined)  # bullet / numbered-list marker
        for sentence in _SENTENCE_END.split(joined):
            sentence = sentence.strip()
            if _is_prose(sentence):
                lines.append(sentence)
    return lines


def _submodules(prefix: str, locations: list[str]) -> Iterator[str]:
    """Public submodules of a package, found on disk without importing anything."""
    for info in sorted(pkgutil.iter_modules(locations), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in ("test", "tests"):
            continue
        yield prefix + info.name
        if info.ispkg:
            yield from _submodules(
                prefix + info.name + ".", [os.path.join(loc, info.name) for loc in locations]
            )


def _stdlib_modules() -> list[str]:
    """Standard-library modules worth reading: the public top-level names and the public
    submodules of packages, minus _SKIP_MODULES. Sorted, so the order is fixed."""
    names: list[str] = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in _SKIP_MODULES:
            continue
        names.append(top)
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.submodule_search_locations:
            names += _submodules(top + ".", list(spec.submodule_search_locations))
    return names


def _import_quietly(name: str):
    """Import a module with stdout/stderr captured and warnings silenced; None if it fails."""
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except (Exception, SystemExit):  # ImportError, OSError, a platform check calling sys.exit, ...
        return None


def _module_documents(module) -> list[Document]:
    """One document for the module (its docstring, its functions' and its short classes'), one
    per longer public class (the class docstring and its methods'). A docstring alone is usually
    one or two sentences: grouping them keeps examples full instead of mostly padding."""
    name = module.__name__
    docs: list[Document] = []
    head = prose_lines(module.__doc__) if isinstance(module.__doc__, str) else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        members = sorted((k, v) for k, v in vars(module).items() if not k.startswith("_"))
        for _, obj in members:
            if getattr(obj, "__module__", None) != name:
                continue  # re-exported from elsewhere: read it where it is defined
            if inspect.isfunction(obj) or inspect.isbuiltin(obj):
                if isinstance(obj.__doc__, str):
                    head += prose_lines(obj.__doc__)
            elif inspect.isclass(obj):
                body = prose_lines(obj.__doc__) if isinstance(obj.__doc__, str) else []
                for attr, member in sorted(vars(obj).items()):
                    if attr.startswith("_") and not (attr == "__init__" and inspect.isfunction(member)):
                        continue  # slot wrappers repeat "Initialize self. See help(type(self))..."
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    if (
                        inspect.isfunction(member)
                        or inspect.ismethoddescriptor(member)
                        or isinstance(member, property)
                    ):
                        doc = getattr(member, "__doc__", None)
                        if isinstance(doc, str):
                            body += prose_lines(doc)
                if sum(map(len, body)) >= _MIN_DOCUMENT_CHARS:
                    docs.append(body)
                else:  # a short class reads on as part of its module's document
                    head += body
    if head:
        docs.insert(0, head)
    return docs


_DEFAULT: list[Document] | None = None


def default_corpus() -> list[Document]:
    """English prose from the running Python's own documentation, extracted at run time.

    ``pydoc_data.topics`` (the language reference pages behind ``help()``, one document each) and
    the docstrings of the standard library (a document per module and per class). Nothing is
    downloaded; the result depends only on the Python installation. About 1-3 MB of text.
    """
    global _DEFAULT
    if _DEFAULT is None:
        from pydoc_data.topics import topics

        docs: list[Document] = []
        for key in sorted(topics):
            lines = prose_lines(topics[key])
            if lines:
                docs.append(lines)
        seen: set[str] = set()  # the same docstring reached twice (aliases) counts once
        for name in _stdlib_modules():
            module = sys.modules.get(name) or _import_quietly(name)
            if module is None:
                continue
            for doc in _module_documents(module):
                key = doc[0] + "\0" + doc[-1]
                if key not in seen:
                    seen.add(key)
                    docs.append(doc)
        _DEFAULT = docs
    return [list(doc) for doc in _DEFAULT]
