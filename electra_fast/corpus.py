"""Text in: documents as lists of lines (one sentence or paragraph per line), streamed.

Two sources:
- ``read_corpus(paths)``: files and folders of
  - plain text in the official ELECTRA / BERT pre-training format (one sentence per line, a blank
    line ends a document);
  - ``.jsonl`` / ``.ndjson`` with one JSON object per document (its ``text_field``);
  - Parquet (``.parquet``) or Arrow (``.arrow``, ``.feather``; what HuggingFace ``datasets``
    writes) with one document per row in the ``text_field`` column;
  - any of the text kinds compressed with gzip, bzip2, xz or zstd (``.gz``, ``.bz2``, ``.xz``,
    ``.zst``), recognised by their first bytes and decompressed while reading.
  Nothing is held in memory beyond one document (and one Parquet row group); an over-long line
  is cut at a space into pieces of at most ``MAX_LINE_BYTES``, and a document that grows past
  ``MAX_DOCUMENT_CHARS`` is closed there and continued as the next one, so memory stays bounded
  whatever the file looks like.
- ``default_corpus()``: English prose that ships with every CPython installation (the
  ``pydoc_data.topics`` help pages, the standard library's docstrings and the comments in its
  source files), so that ``python -m electra_fast.train`` has something to learn from with no
  download.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import importlib
import importlib.util
import inspect
import io
import itertools
import json
import lzma
import os
import pkgutil
import re
import sys
import tokenize
import warnings
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

Document = list[str]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
TABLE_SUFFIXES = (".parquet", ".arrow", ".feather")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
ERROR_MODES = ("strict", "replace", "ignore")
# Files that HuggingFace ``datasets.save_to_disk`` writes beside its .arrow files: metadata, not text.
METADATA_NAMES = {"dataset_info.json", "state.json", "dataset_dict.json"}
MAX_LINE_BYTES = 1 << 20  # a longer line is read in pieces cut at a space (bounded memory, linear time)
MAX_DOCUMENT_CHARS = 8 << 20  # a longer document is closed here and continued as a new one

_MAGIC = {  # first bytes -> container; decided by content, never by the file name alone
    b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
    b"PAR1": "parquet", b"ARROW1": "arrow", b"PK\x03\x04": "zip", b"%PDF": "pdf",
}  # fmt: skip
_FLAGS_HELP = "--data reads text, .jsonl, Parquet / Arrow (--text-field) and .gz / .bz2 / .xz / .zst files"


class CorpusError(ValueError):
    """A corpus file or folder cannot be read; the message names the file and what to do."""


# ----------------------------------------------------------------------------- files on disk


def _unreadable(path: Path, why: str, skip: bool, skipped: list | None) -> None:
    """Stop with a one-line error, or (skip_unreadable) warn once and count the path."""
    if not skip:
        raise CorpusError(f"{path}: {why}; fix it, remove it from --data, or pass --skip-unreadable")
    warnings.warn(f"skipping {path}: {why}", stacklevel=3)
    if skipped is not None:
        skipped.append((str(path), why))


def corpus_files(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    skip_unreadable: bool = False,
    skipped: list | None = None,
) -> list[Path]:
    """Expand files and folders into the sorted list of files they hold.

    Folders are walked recursively in sorted order; hidden files and folders (name starting with
    ".") and HuggingFace ``datasets`` metadata files are skipped. A missing top-level path is a
    CorpusError; an unreadable folder or file and a broken link inside a folder are one too, or
    with ``skip_unreadable`` a warning, appended as ``(path, reason)`` to ``skipped``.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += _walk(p, skip_unreadable, skipped)
        elif p.is_symlink():
            _unreadable(p, "broken link (its target does not exist)", skip_unreadable, skipped)
        else:
            raise CorpusError(f"no such file or folder: {p}")
    return files


def _walk(top: Path, skip: bool, skipped: list | None) -> list[Path]:
    files: list[Path] = []

    def onerror(e: OSError) -> None:
        _unreadable(Path(e.filename or top), f"cannot list this folder ({e.strerror})", skip, skipped)

    for root, dirs, names in os.walk(top, onerror=onerror):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            f = Path(root, name)
            if name.startswith(".") or name in METADATA_NAMES:
                continue
            if f.is_file():
                files.append(f)
            elif f.is_symlink():
                why = "broken link (its target does not exist)" if not f.exists() else "link to a non-file"
                _unreadable(f, why, skip, skipped)
    return files


def _container(path: Path, head: bytes) -> str:
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    name = path.name.lower()
    if name.endswith(TABLE_SUFFIXES):
        return "arrow" if not name.endswith(".parquet") else "parquet"
    return "plain"


def _decompressed(path: Path, kind: str, raw: io.BufferedReader):
    """A binary stream of the decompressed bytes (the file is read as it is consumed)."""
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw)
    if kind == "bzip2":
        return bz2.BZ2File(raw)
    if kind == "xz":
        return lzma.LZMAFile(raw)
    try:
        import zstandard
    except ImportError:
        raise CorpusError(f"{path}: zstd-compressed; reading it needs `pip install zstandard`") from None
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))


def _text_name(path: Path) -> str:
    """The file name without its compression suffix: d.jsonl.gz -> d.jsonl."""
    name = path.name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def _split_long(raw: bytes, carry: bytes) -> tuple[bytes, bytes]:
    """Cut a piece of an over-long line after its last space (never inside a word or a UTF-8
    character): (the piece, the rest that starts the next read)."""
    raw = carry + raw
    cut = raw.rfind(b" ") + 1
    if cut <= 0:  # a megabyte without a space: cut at the last whole UTF-8 character
        i = len(raw) - 1
        while i > 0 and (raw[i] & 0xC0) == 0x80 and len(raw) - i < 4:
            i -= 1
        need = 1 if raw[i] < 0x80 else 2 if raw[i] < 0xE0 else 3 if raw[i] < 0xF0 else 4
        cut = i if 0 < i and len(raw) - i < need else len(raw)
    return raw[:cut], raw[cut:]


def _lines(path: Path, stream, errors: str) -> Iterator[tuple[int, str]]:
    """(line number, decoded line without its newline), with the byte offset in decode errors.

    Decoding line by line is exact for UTF-8: the newline byte never occurs inside a multi-byte
    character, so ``line_start + err.start`` is the offset of the bad byte in the (decompressed)
    text. A line longer than MAX_LINE_BYTES comes in pieces (same line number) cut at spaces.
    """
    offset, lineno, carry = 0, 1, b""
    while True:
        raw = stream.readline(MAX_LINE_BYTES)
        if not raw and not carry:
            return
        if offset == 0 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
            raw, offset = raw[3:], 3
        if len(raw) < MAX_LINE_BYTES or raw.endswith(b"\n"):  # a whole line, or the end of one
            piece, carry, done = carry + raw, b"", True
        else:
            piece, carry = _split_long(raw, carry)
            done = False
        try:
            text = piece.decode("utf-8", errors=errors)
        except UnicodeDecodeError as e:
            raise CorpusError(
                f"{path}: not valid UTF-8 at byte offset {offset + e.start}; "
                f"re-encode it or pass --errors replace"
            ) from None
        offset += len(piece)
        yield lineno, text.rstrip("\r\n")
        lineno += done


def _check_text(path: Path, head: bytes, kind: str) -> None:
    if b"\x00" in head or kind in ("zip", "pdf"):
        what = {"zip": "a zip archive (unpack it first)", "pdf": "a PDF (extract its text first)"}.get(
            kind, "binary data, not text (NUL bytes in its first 8 KB)"
        )
        raise CorpusError(f"{path}: {what}; {_FLAGS_HELP}")


def _documents_from_lines(lines: Iterable[tuple[int, str]]) -> Iterator[Document]:
    doc: Document = []
    chars = 0
    for _, line in lines:
        line = line.strip()
        if line:
            doc.append(line)
            chars += len(line)
            if chars >= MAX_DOCUMENT_CHARS:  # bounded memory: the rest continues as a new document
                yield doc
                doc, chars = [], 0
        elif doc:  # a blank line ends a document (build_pretraining_dataset.py)
            yield doc
            doc, chars = [], 0
    if doc:
        yield doc


def _text_document(text: str) -> Iterator[Document]:
    """One document's text (a JSON field, a table cell) as lines, cut like a file's lines."""
    doc: Document = []
    chars = 0
    for s in text.splitlines():
        s = s.strip()
        while len(s) > MAX_LINE_BYTES:  # characters, not bytes: close enough for a bound
            cut = s.rfind(" ", 0, MAX_LINE_BYTES) + 1 or MAX_LINE_BYTES
            doc.append(s[:cut].strip())
            s = s[cut:].strip()
        if s:
            doc.append(s)
            chars += len(s)
            if chars >= MAX_DOCUMENT_CHARS:
                yield doc
                doc, chars = [], 0
    if doc:
        yield doc


def _jsonl_documents(path: Path, lines, text_field: str) -> Iterator[Document]:
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            cut = " (the line is longer than 1 MB: it was read in pieces)" if len(line) >= MAX_LINE_BYTES - 8 else ""
            raise CorpusError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}){cut}") from None
        if not isinstance(obj, dict) or text_field not in obj:
            raise CorpusError(
                f'{path}:{lineno}: no "{text_field}" field; each line must be a JSON object '
                f"holding the document text (choose the field with --text-field)"
            )
        text = obj[text_field]
        if not isinstance(text, str):
            raise CorpusError(f'{path}:{lineno}: "{text_field}" is {type(text).__name__}, expected a string')
        yield from _text_document(text)


def _table_documents(path: Path, kind: str, text_field: str) -> Iterator[Document]:
    """Rows of a Parquet or Arrow file (one record batch at a time), the text column only."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CorpusError(f"{path}: a {kind} file; reading it needs `pip install pyarrow`") from None
    try:
        if kind == "parquet":
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            batches = pf.iter_batches(columns=[text_field]) if text_field in names else None
        else:
            source = pa.memory_map(str(path))
            try:
                reader = pa.ipc.open_file(source)
                names = reader.schema.names
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:  # datasets writes the streaming format
                source.seek(0)
                reader = pa.ipc.open_stream(source)
                names = reader.schema.names
                batches = iter(reader)
        if batches is None or text_field not in names:
            raise CorpusError(
                f'{path}: no "{text_field}" column (it has {", ".join(names)}); choose one with --text-field'
            )
        for batch in batches:
            column = batch.column(batch.schema.get_field_index(text_field))
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                raise CorpusError(f'{path}: column "{text_field}" holds {column.type}, expected strings')
            for text in column.to_pylist():
                if text:
                    yield from _text_document(text)
    except (pa.ArrowException, OSError) as e:
        raise CorpusError(f"{path}: not a readable {kind} file ({str(e).splitlines()[0]})") from None


def read_file(path: Path, *, errors: str = "strict", text_field: str = "text") -> Iterator[Document]:
    """The documents of one file, whatever its kind (see the module docstring)."""
    try:
        raw = open(path, "rb")
    except OSError as e:
        raise CorpusError(f"{path}: cannot read it ({e.strerror}); fix it or pass --skip-unreadable") from None
    with raw:
        kind = _container(path, raw.peek(8)[:8])
        if kind in ("parquet", "arrow"):
            yield from _table_documents(path, kind, text_field)
            return
        stream = _decompressed(path, kind, raw) if kind in ("gzip", "bzip2", "xz", "zstd") else raw
        try:
            with stream:
                head = stream.peek(8192)[:8192] if hasattr(stream, "peek") else b""
                _check_text(path, head, kind)
                lines = _lines(path, stream, errors)
                if _text_name(path).endswith(JSONL_SUFFIXES):
                    yield from _jsonl_documents(path, lines, text_field)
                else:
                    yield from _documents_from_lines(lines)
        except (EOFError, zlib.error, lzma.LZMAError, OSError) as e:
            what = "truncated or corrupt" if kind != "plain" else "cannot read it"
            raise CorpusError(f"{path}: {what} ({kind}: {e})") from None


def read_corpus(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    errors: str = "strict",
    text_field: str = "text",
    skip_unreadable: bool = False,
    skipped: list | None = None,
) -> Iterator[Document]:
    """Yield the documents of files and folders, each a list of non-blank stripped lines.

    Plain text: one sentence (or paragraph) per line, a blank line ends a document. ``.jsonl`` /
    ``.ndjson``: one JSON object per line, its ``text_field`` one document, split on newlines.
    Parquet / Arrow: one row per document, the ``text_field`` column. Compressed files are
    recognised by their first bytes. ``errors="replace"`` substitutes U+FFFD for undecodable
    bytes instead of raising. Raises CorpusError for a missing path (at once), an unreadable one
    (unless ``skip_unreadable``: warned and appended to ``skipped``), undecodable bytes, binary
    data, a bad JSON line or column, or no text at all (while iterating).
    """
    if errors not in ERROR_MODES:
        raise CorpusError(f"errors={errors!r}; expected one of {', '.join(ERROR_MODES)}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    files = corpus_files(paths, skip_unreadable=skip_unreadable, skipped=skipped)
    return _read_files(files, paths, errors, text_field, skip_unreadable, skipped)


def _read_files(
    files: list[Path], paths: list, errors: str, text_field: str, skip: bool = False, skipped=None
) -> Iterator[Document]:
    found = False
    for f in files:
        try:
            for doc in read_file(f, errors=errors, text_field=text_field):
                found = True
                yield doc
        except CorpusError as e:
            if not (skip and "cannot read it" in str(e)):
                raise
            _unreadable(f, str(e).split(": ", 1)[1].split(";")[0], skip, skipped)
    if not found:
        where = ", ".join(map(str, paths)) or "an empty list of paths"
        raise CorpusError(f"empty corpus: no text found in {where}")


def content_fingerprint(
    files: Iterable[Path], known: dict | None = None, *, skip_unreadable: bool = False, skipped: list | None = None
) -> tuple[str, list[dict]]:
    """sha256 over the bytes of the files in order, and a record per file.

    Paths and timestamps do not enter the fingerprint: a corpus that was moved, copied or touched
    keeps it. ``known`` (a previous call's records) lets a file whose absolute path, size and
    modification time are unchanged skip re-hashing, so re-checking a large corpus costs a stat
    per file. Returns (hex digest, records [{path, size, mtime_ns, sha256}]); an unreadable file is
    a CorpusError, or with ``skip_unreadable`` left out of both (a warning, appended to ``skipped``).
    """
    cache = {(r["path"], r["size"], r["mtime_ns"]): r["sha256"] for r in (known or {}).get("files", [])}
    h = hashlib.sha256()
    records = []
    for f in files:
        st = f.stat()
        path = str(f.resolve())
        digest = cache.get((path, st.st_size, st.st_mtime_ns))
        if digest is None:
            try:
                with open(f, "rb") as fh:
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()
            except OSError as e:
                _unreadable(f, f"cannot read it ({e.strerror})", skip_unreadable, skipped)
                continue
        records.append({"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest})
        h.update(f"{st.st_size}:{digest}\n".encode())
    return h.hexdigest(), records


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


def module_docstrings(module) -> list[tuple[str | None, list[str]]]:
    """Every docstring the corpus reads from ``module``, one entry each in reading order, as (owning
    class's name or None, prose lines): the module's own, then its public members sorted by name: a
    function's, or a class's own followed by its methods' and properties'. Members re-exported from
    another module are read where they are defined."""
    name = module.__name__
    out: list[tuple[str | None, list[str]]] = []
    if isinstance(module.__doc__, str):
        out.append((None, prose_lines(module.__doc__)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        members = sorted((k, v) for k, v in vars(module).items() if not k.startswith("_"))
        for key, obj in members:
            if getattr(obj, "__module__", None) != name:
                continue  # re-exported from elsewhere: read it where it is defined
            if inspect.isfunction(obj) or inspect.isbuiltin(obj):
                if isinstance(obj.__doc__, str):
                    out.append((None, prose_lines(obj.__doc__)))
            elif inspect.isclass(obj):
                if isinstance(obj.__doc__, str):
                    out.append((key, prose_lines(obj.__doc__)))
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
                            out.append((key, prose_lines(doc)))
    return out


def _module_documents(module) -> list[Document]:
    """One document for the module (its docstring, its functions' and its short classes'), one
    per longer public class (the class docstring and its methods'). A docstring alone is usually
    one or two sentences: grouping them keeps examples full instead of mostly padding."""
    head: list[str] = []
    docs: list[Document] = []
    for owner, group in itertools.groupby(module_docstrings(module), key=lambda entry: entry[0]):
        lines = [line for _, doc in group for line in doc]
        if owner is not None and sum(map(len, lines)) >= _MIN_DOCUMENT_CHARS:
            docs.append(lines)
        else:  # functions, and a short class, read on as part of the module's document
            head += lines
    if head:
        docs.insert(0, head)
    return docs


def comment_lines(source: str) -> list[str]:
    """Prose sentences from the comments of Python source text.

    Comments on consecutive rows form one paragraph (a comment after code included); a bare ``#``
    row, or a row without a comment, ends it. Each paragraph goes through ``prose_lines``, so commented-out code, ASCII
    art and short tags ("XXX", "noqa") are dropped. Source that does not tokenize is read up to
    where it stops.
    """
    paragraphs: list[list[str]] = []
    current: list[str] = []
    last_row = -2
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            row, text = tok.start[0], tok.string.lstrip("#").strip()
            if current and (row != last_row + 1 or not text):
                paragraphs.append(current)
                current = []
            if text:
                current.append(text)
            last_row = row
    except (tokenize.TokenError, SyntaxError):
        pass
    if current:
        paragraphs.append(current)
    return [line for para in paragraphs for line in prose_lines("\n".join(para))]


def _comment_documents() -> list[Document]:
    """One document per standard-library source file: the prose of its comments (files with at
    least two such sentences; each file once, in the order of ``_stdlib_modules``)."""
    docs: list[Document] = []
    seen: set[str] = set()
    for name in _stdlib_modules():
        try:
            spec = importlib.util.find_spec(name)
        except (Exception, SystemExit):  # a parent package that fails to import
            continue
        origin = getattr(spec, "origin", None)
        if not origin or not origin.endswith(".py") or origin in seen or not os.path.isfile(origin):
            continue
        seen.add(origin)
        with open(origin, encoding="utf-8", errors="replace") as f:
            lines = comment_lines(f.read())
        if len(lines) >= 2:
            docs.append(lines)
    return docs


# Third-party packages whose docstrings join the default corpus where they are installed: torch's
# own requirements (mpmath: sympy's), so they come with every installation of electra_fast. Never
# numpy or torch: their docstrings are the transfer benchmark's unseen text (electra_fast.transfer).
CORPUS_PACKAGES = ("jinja2", "mpmath", "networkx", "sympy")
_SKIP_PACKAGE_PARTS = ("tests", "testing", "benchmarks")


def _docstring_documents(modules: Iterable) -> list[Document]:
    """``_module_documents`` of each module in turn (None: one that failed to import, skipped); a
    document reached twice (aliases, re-exports) counts once."""
    docs: list[Document] = []
    seen: set[str] = set()
    for module in modules:
        for doc in _module_documents(module) if module is not None else []:
            key = doc[0] + "\0" + doc[-1]
            if key not in seen:
                seen.add(key)
                docs.append(doc)
    return docs


def _package_documents(packages: Iterable[str]) -> list[Document]:
    """The docstrings of every public module of ``packages`` that are installed (documents as in
    ``_module_documents``). Every module is imported before any is read: importing one can add
    members to another, and the documents must not depend on the order."""
    names: list[str] = []
    for pkg in packages:
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        names += [n for n in [pkg, *_submodules(pkg + ".", list(spec.submodule_search_locations))]
                  if not any(part in _SKIP_PACKAGE_PARTS for part in n.split("."))]
    return _docstring_documents([sys.modules.get(n) or _import_quietly(n) for n in names])


def corpus_packages() -> dict[str, str]:
    """{package: version} of the CORPUS_PACKAGES installed here: the ones ``default_corpus`` reads."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in CORPUS_PACKAGES:
        try:
            if importlib.util.find_spec(pkg) is not None:
                found[pkg] = version(pkg)
        except (ImportError, ValueError, PackageNotFoundError):
            continue
    return found


_DOCUMENTATION: list[Document] | None = None
_COMMENTS: list[Document] | None = None
_PACKAGES: list[Document] | None = None


def default_corpus(*, comments: bool = True, packages: bool = True) -> list[Document]:
    """English prose that comes with the running Python and electra_fast's own requirements.

    ``pydoc_data.topics`` (the language reference pages behind ``help()``, one document each), the
    docstrings of the standard library (a document per module and per class), then the comments
    in its source files (a document per file; left out with ``comments=False``), then the
    docstrings of the CORPUS_PACKAGES that are installed (left out with ``packages=False``).
    Nothing is downloaded; the result depends only on the Python installation and those packages'
    versions. About 6 MB of text (2 MB without the packages).

    The default run learns its vocabulary from the standard library's documentation alone
    (``comments=False, packages=False``) and pre-trains on all of it: the comments' share of code
    words and jargon, and the packages' mathematics, are text to learn from, but not what the
    vocabulary should be spent on (benchmarks/RESULTS.md, sessions 14-15 and 17).
    """
    global _DOCUMENTATION, _COMMENTS, _PACKAGES
    if _DOCUMENTATION is None:
        from pydoc_data.topics import topics

        docs: list[Document] = []
        for key in sorted(topics):
            lines = prose_lines(topics[key])
            if lines:
                docs.append(lines)
        docs += _docstring_documents(sys.modules.get(name) or _import_quietly(name) for name in _stdlib_modules())
        _DOCUMENTATION = docs
    if comments and _COMMENTS is None:
        _COMMENTS = _comment_documents()
    if packages and _PACKAGES is None:
        _PACKAGES = _package_documents(CORPUS_PACKAGES)
    parts = _DOCUMENTATION + (_COMMENTS if comments else []) + (_PACKAGES if packages else [])
    return [list(doc) for doc in parts]
