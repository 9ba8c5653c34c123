"""Reading raw text inputs as a stream of documents.

This module owns the answer to "which files are read, and what is one document": `.txt` and
`.md` files are one document each, `.jsonl` files (and zstd-compressed `.jsonl.zst`, as
`graft data collect` may write them) hold one document per line in the `text` field. Folders
are walked recursively in sorted order so every run sees the same documents in the same order.
A document's text is handed out in pieces of bounded size, so a 1 GB text file never sits in
memory at once. A document that is held whole (a JSONL record, a section cut by `split_on`) is a
record: one longer than `graft.data.records.MAX_RECORD_CHARS` characters is refused, and a JSONL
line is never read whole to find that out.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import AnyStr, BinaryIO

from graft.data.corpus import open_corpus
from graft.data.records import MAX_RECORD_CHARS, _names, _oversized
from graft.errors import DataError

__all__ = [
    "PIECE_BYTES",
    "SUFFIXES",
    "Document",
    "count_documents",
    "iter_documents",
    "list_input_files",
]

#: File suffixes read as documents (compared case-insensitively).
SUFFIXES: tuple[str, ...] = (".txt", ".md", ".jsonl", ".jsonl.zst")
#: Default size of one piece of a document's text.
PIECE_BYTES: int = 1 << 20
_SUFFIX_LIST = ", ".join(SUFFIXES)

_UTF8_BOM = b"\xef\xbb\xbf"
# The tail of a piece searched for a between-words cut; bounded so cutting stays O(1).
_CUT_WINDOW = 8192
# A single space with a non-space on both sides: cutting just before that space leaves every
# pre-tokenizer we use (GPT-2 byte-level regex, BERT whitespace/punctuation split, Metaspace)
# producing exactly the tokens it would produce on the uncut text.
_WORD_GAP_STR = re.compile(r"\S \S")
_WORD_GAP_BYTES = re.compile(rb"\S \S")
_ASCII_WHITESPACE = " \t\n\r\f\v"


@dataclass(frozen=True)
class Document:
    """One document: where it came from and a way to stream its text.

    `source` is `path` for a text file and `path:LINE` (1-based) for a JSONL record. Text files
    are not read until `pieces()` is iterated; a JSONL record's text is held (its line had to be
    parsed anyway).
    """

    source: str
    path: Path
    #: Input bytes this document occupies (file size, or JSONL line length); for progress bars.
    size: int
    line: int | None = None
    _text: str | None = field(default=None, repr=False, compare=False)

    def pieces(self, piece_bytes: int = PIECE_BYTES) -> Iterator[str]:
        """Yield the text in consecutive pieces of about `piece_bytes` bytes.

        Pieces are cut between words where possible, else after a newline, else at a character
        boundary, so that encoding the pieces separately and concatenating the ids gives the
        same tokens as encoding the whole text in all but pathological cases (a line longer than
        a piece with no spaces). Newlines are normalised to `\\n`.
        """
        if piece_bytes < 16:
            raise ValueError(f"piece_bytes must be at least 16, got {piece_bytes}")
        if self._text is not None:
            yield from _cut_str(self._text, piece_bytes)
        else:
            yield from _read_text_file(self.path, piece_bytes)

    def read(self) -> str:
        """The whole text at once; for small documents and tests."""
        return "".join(self.pieces())


def normalise_newlines(text: str) -> str:
    """Windows' and old Macs' line ends as "\n": the text every document is trained on, and
    (graft.data.inputs.prompt_ids) every prompt a language model continues."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _cut_point(buf: AnyStr, gap: re.Pattern[AnyStr], newline: AnyStr) -> int:
    """Where to end a piece of `buf` (which continues past its end); 0 when no good cut."""
    # Look for the last word gap in a short tail first: prose has one within a few bytes,
    # and scanning every gap of a long window would cost a Python step per word.
    for window in (256, _CUT_WINDOW):
        last = -1
        for match in gap.finditer(buf, max(0, len(buf) - window)):
            last = match.start() + 1  # just before the space
        if last > 0:
            return last
    return buf.rfind(newline) + 1


def _cut_str(text: str, piece_chars: int) -> Iterator[str]:
    text = normalise_newlines(text)
    start = 0
    # Walk an index rather than re-slicing the remainder, which would copy a long text
    # once per piece.
    while len(text) - start > piece_chars:
        head = text[start : start + piece_chars]
        cut = _cut_point(head, _WORD_GAP_STR, "\n") or piece_chars
        yield head[:cut]
        start += cut
    if start < len(text):
        yield text[start:]


def _char_boundary(buf: bytes) -> int:
    """Index of the last UTF-8 lead byte in `buf` (cutting there never splits a character)."""
    for back in range(1, min(4, len(buf)) + 1):
        if buf[-back] & 0xC0 != 0x80:
            return len(buf) - back
    return len(buf)  # not UTF-8 anyway: let decoding report it


def _read_text_file(path: Path, piece_bytes: int) -> Iterator[str]:
    offset = 0  # byte offset in the file of the start of `buf`
    line = 1  # line number at the start of `buf`
    carry = b""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    with handle:
        first = True
        while True:
            chunk = handle.read(piece_bytes)
            buf = carry + chunk
            if first and buf.startswith(_UTF8_BOM):
                buf, offset = buf[len(_UTF8_BOM) :], len(_UTF8_BOM)
            first = False
            if not chunk:
                cut = len(buf)
            else:
                cut = _cut_point(buf, _WORD_GAP_BYTES, b"\n")
                if cut == 0:
                    # No space or newline at all: cut before the last character. A "\r" just
                    # before the cut cannot be half of a "\r\n", as the buffer has no "\n".
                    cut = _char_boundary(buf)
                    if cut == 0:
                        carry = buf  # a few bytes only; read more before cutting
                        continue
            piece, carry = buf[:cut], buf[cut:]
            if piece:
                try:
                    text = piece.decode("utf-8")
                except UnicodeDecodeError as exc:
                    bad_line = line + piece.count(b"\n", 0, exc.start)
                    raise DataError(
                        f"{path}: byte {offset + exc.start} (line {bad_line}) is not valid "
                        f"UTF-8 ({exc.reason}); save the file as UTF-8"
                    ) from exc
                line += piece.count(b"\n")
                offset += len(piece)
                yield normalise_newlines(text)
            if not chunk:
                return


def _is_blank_file(path: Path) -> bool:
    """True when the file holds nothing but a BOM and ASCII whitespace (read until it doesn't)."""
    with path.open("rb") as handle:
        first = True
        while chunk := handle.read(1 << 16):
            if first and chunk.startswith(_UTF8_BOM):
                chunk = chunk[len(_UTF8_BOM) :]
            first = False
            if chunk.strip():
                return False
    return True


def _as_paths(paths: Sequence[Path] | Path | str) -> list[Path]:
    # A lone str is a Sequence too; iterating it would yield characters.
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _readable(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def _is_jsonl(path: Path) -> bool:
    """A corpus of JSON lines: .jsonl, or .jsonl.zst (what `graft data collect` can write)."""
    return path.name.lower().endswith((".jsonl", ".jsonl.zst"))


def _jsonl_lines(handle: BinaryIO, max_chars: int) -> Iterator[bytes | None]:
    """Each line of a JSONL file, or None for one certainly longer than `max_chars` characters,
    read past in bounded steps rather than held whole."""
    # UTF-8 spends at most 4 bytes a character; 2 more for a line ending.
    cap = 4 * max_chars + 2
    while raw := handle.readline(cap):
        if len(raw) < cap or raw.endswith(b"\n"):
            yield raw
            continue
        while (rest := handle.readline(cap)) and not rest.endswith(b"\n"):
            pass
        yield None


def list_input_files(paths: Sequence[Path]) -> list[Path]:
    """The files `paths` stand for, in a deterministic order, each once.

    Files are taken as given (their suffix must be one of SUFFIXES); folders are walked
    recursively and their files sorted by path, skipping hidden entries (names starting with
    ".") and files with other suffixes.
    """
    paths = _as_paths(paths)
    files: dict[Path, Path] = {}  # resolved path -> the file as first met
    for path in paths:
        if path.is_dir():
            found: list[Path] = []
            for root, dirs, names in os.walk(path):
                # Pruning hidden folders skips .git, caches and our own temporary folders.
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found.extend(
                    Path(root) / name
                    for name in names
                    if not name.startswith(".") and _readable(name)
                )
            # Sorting by path components gives one order on every platform and filesystem
            # (a/y.md before a.txt before b.txt), independent of directory listing order.
            for file in sorted(found, key=lambda f: f.relative_to(path).parts):
                files.setdefault(file.resolve(), file)
        elif path.is_file():
            if not _readable(path.name):
                raise DataError(
                    f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; "
                    f"graft reads {_SUFFIX_LIST}"
                )
            files.setdefault(path.resolve(), path)
        elif path.exists():
            raise DataError(f"{path}: not a regular file or folder")
        else:
            raise DataError(f"{path}: no such file or folder")
    if not files:
        shown = ", ".join(str(p) for p in paths) or "(no inputs given)"
        raise DataError(f"{shown}: no usable files; graft reads {_SUFFIX_LIST}")
    return list(files.values())


def _jsonl_documents(path: Path, max_chars: int) -> Iterator[Document]:
    try:
        handle = open_corpus(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    with handle:
        for number, raw in enumerate(_jsonl_lines(handle, max_chars), start=1):
            where = f"{path}:{number}"
            if raw is None:
                raise DataError(str(_oversized(where, max_chars)))
            if number == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM) :]
            if not raw.strip():
                continue  # blank lines (a trailing newline, spacing) are not records
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{where}: byte {exc.start} of the line is not valid UTF-8 ({exc.reason})"
                ) from exc
            if len(line) - line.endswith("\n") - line.endswith("\r\n") > max_chars:
                raise DataError(str(_oversized(where, max_chars)))
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); "
                    'expected one JSON object per line like {"text": "..."}'
                ) from exc
            if not isinstance(record, dict):
                raise DataError(
                    f'{where}: expected a JSON object with a string "text" field, '
                    f"got a JSON {type(record).__name__}"
                )
            if "text" not in record:
                keys = _names(sorted(record))
                raise DataError(
                    f'{where}: missing the "text" field (keys: {keys}); expected {{"text": "..."}}'
                )
            text = record["text"]
            if not isinstance(text, str):
                raise DataError(f'{where}: "text" must be a string, got {type(text).__name__}')
            if not text.strip(_ASCII_WHITESPACE):
                continue
            yield Document(source=where, path=path, size=len(raw), line=number, _text=text)


def _sections(path: Path, split_on: re.Pattern[str], max_chars: int) -> Iterator[Document]:
    """The documents of one text file cut before every line matching `split_on` (a corpus that
    keeps many articles in one file, such as WikiText). The file is read whole; a section is held
    whole too, so one longer than `max_chars` characters is refused."""
    text = Document(source=str(path), path=path, size=0).read()
    starts = sorted({0, *(m.start() for m in split_on.finditer(text))})
    for begin, end in zip(starts, [*starts[1:], len(text)]):
        section = text[begin:end]
        if section.strip(_ASCII_WHITESPACE):
            line = text.count("\n", 0, begin) + 1
            if len(section) > max_chars:
                raise DataError(str(_oversized(f"{path}:{line}", max_chars)))
            yield Document(
                source=f"{path}:{line}",
                path=path,
                size=utf8_size(section),
                line=line,
                _text=section,
            )


def utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _documents(
    files: list[Path], shown: str, split_on: re.Pattern[str] | None, max_chars: int
) -> Iterator[Document]:
    produced = False
    for path in files:
        docs: Iterable[Document]
        if _is_jsonl(path):
            docs = _jsonl_documents(path, max_chars)
        elif split_on is not None:
            docs = _sections(path, split_on, max_chars)
        else:
            try:
                size = path.stat().st_size
                blank = size == 0 or _is_blank_file(path)
            except OSError as exc:
                raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
            docs = [] if blank else [Document(source=str(path), path=path, size=size)]
        for doc in docs:
            produced = True
            yield doc
    if not produced:
        raise DataError(
            f"{shown}: every document is empty; graft reads text from {_SUFFIX_LIST} files "
            '(.jsonl: one {"text": "..."} object per line)'
        )


def iter_documents(
    paths: Sequence[Path],
    *,
    split_on: str | None = None,
    max_record_chars: int = MAX_RECORD_CHARS,
) -> Iterator[Document]:
    """Stream the non-empty documents in `paths` (files and folders), in a stable order.

    With `split_on` (a regular expression), a .txt/.md file is cut into one document per section,
    each section starting at a line that matches (the text before the first match is one too).
    Missing paths and folders without usable files raise DataError right away; problems
    inside a file (bad UTF-8, a bad JSONL line) raise DataError while iterating, naming the
    file and line; so does a JSONL record or a section of more than `max_record_chars`
    characters (a text file read without `split_on` is streamed in pieces, whatever its size).
    Raises DataError at the end if every document was empty.
    """
    paths = _as_paths(paths)
    files = list_input_files(paths)
    pattern = None
    if split_on is not None:
        try:
            pattern = re.compile(split_on, re.MULTILINE)
        except re.error as exc:
            raise DataError(
                f"split_on {split_on!r}: not a valid regular expression ({exc})"
            ) from None
    return _documents(files, ", ".join(str(p) for p in paths), pattern, max_record_chars)


def count_documents(paths: Sequence[Path]) -> int:
    """Count the documents `paths` hold without reading their text.

    A text file counts as one document unless it is blank; a JSONL file counts its non-blank
    lines, without parsing them, so records with an empty `text` are counted too (an upper
    bound that is exact for clean data).
    """
    total = 0
    for path in list_input_files(paths):
        try:
            if _is_jsonl(path):
                with open_corpus(path) as handle:
                    lines = _jsonl_lines(handle, MAX_RECORD_CHARS)
                    total += sum(1 for raw in lines if raw is None or raw.strip())
            elif path.stat().st_size > 0 and not _is_blank_file(path):
                total += 1
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return total
