"""Collected documents: the record every data-collection step reads and writes.

`graft data collect` turns files, web pages and WARC archives into a stream of `CorpusDoc`s;
`clean`, `dedup` and `redact` read such a stream and write another. On disk a corpus is JSONL
(optionally zstd-compressed, `.jsonl.zst`), one document a line, with its provenance beside the
text, so `graft data prepare` reads a collected corpus as it is (it reads the `text` field):

    {"text": "...", "source": "html", "location": "https://example.org/a", "fetched_at":
     "2026-12-05T03:40:00Z", "sha256": "<of text>", "licence": null, "lang": "en"}

Streams stay streams: readers yield one document at a time and writers append, so a step's
memory does not grow with the corpus. Writers are atomic (a temporary sibling renamed into place
when the step ends without an error), so an interrupted step leaves the old output or none.
Bad input is counted in `Problems` by kind with its file, line or URL, and the run goes on
unless it is strict; a file whose first line is not a JSON object is not a corpus and is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from graft.atomic_files import atomic_file, check_output
from graft.errors import DataError, first_line

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "STATS_SUFFIX",
    "CorpusDoc",
    "CorpusWriter",
    "Problems",
    "DamagedFile",
    "StageStats",
    "check_corpus_output",
    "decode_utf8",
    "is_corpus_file",
    "open_corpus",
    "read_corpus",
    "text_sha256",
]

_ZST = ".zst"
# Compressed bytes handed to the decompressor at once: text inflates some 5-10 times, so one
# call's output stays small.
_ZSTD_CHUNK = 1 << 14
_UTF8_BOM = b"\xef\xbb\xbf"
# The fields every document has; any other key of a line is kept in `meta`.
_FIELDS = ("text", "source", "location", "fetched_at", "sha256", "licence", "lang")


def text_sha256(text: str) -> str:
    """The content hash a document carries: sha256 of its text as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class CorpusDoc:
    """One document and where it came from.

    source: what kind of input produced it (txt, md, rst, html, jsonl, csv, parquet, warc, url,
    or a `graft data get` recipe name); location: its path (with `:LINE` or `#ROW` where one file
    holds many documents) or URL; fetched_at: when a URL was fetched (ISO 8601, UTC), None for
    local files; sha256: of the text as it is now (writers recompute it, so a cleaned document
    never carries its raw text's hash); licence: when the source states one; lang: an ISO 639-1
    code once language identification ran."""

    text: str
    source: str
    location: str
    fetched_at: str | None = None
    sha256: str = ""
    licence: str | None = None
    lang: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        record = asdict(self)
        meta = record.pop("meta")
        record["sha256"] = text_sha256(self.text)
        return json.dumps({**record, **meta}, ensure_ascii=False)

    @classmethod
    def from_record(cls, record: dict[str, Any], where: str) -> CorpusDoc:
        text = record.get("text")
        if not isinstance(text, str):
            raise DataError(f'{where}: expected a "text" field holding a string')
        known = {k: record[k] for k in _FIELDS if k in record}
        known.setdefault("source", "jsonl")
        known.setdefault("location", where)
        meta = {k: v for k, v in record.items() if k not in _FIELDS}
        return cls(**known, meta=meta)


#: A step writing OUT also writes OUT + STATS_SUFFIX: its StageStats list, which
#: `graft data report` reads back (the statistics of every step that made the corpus). The last
#: entry names OUT's size and sha256, so a file left beside a newer OUT is not read as its own.
STATS_SUFFIX = ".stats.json"


@dataclass
class StageStats:
    """What one step did: documents and text bytes (UTF-8) in and out, its wall time, and the
    documents it dropped, counted by reason (a filter's name, "exact duplicate", ...)."""

    stage: str
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    rejected: Counter[str] = field(default_factory=Counter)
    notes: dict[str, Any] = field(default_factory=dict)  # a step's own figures (clusters...)

    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / self.seconds if self.seconds > 0 else 0.0


class Problems:
    """Bad inputs met along the way: each is counted by kind and said with where it was (file,
    line, URL), and the run goes on; strict makes the first one fatal (a DataError)."""

    def __init__(self, *, strict: bool = False, say: Callable[[str], None] | None = None) -> None:
        self.strict = strict
        self.say = say
        self.counts: Counter[str] = Counter()

    def add(self, where: str, kind: str, detail: str) -> None:
        message = f"{where}: {detail}"
        if self.strict:
            raise DataError(message)
        self.counts[kind] += 1
        if self.say is not None:
            self.say(f"skipped {message}")

    def __bool__(self) -> bool:
        return bool(self.counts)

    def summary(self) -> str:
        """One line: the count of each kind, most frequent first."""
        parts = [f"{n:,} {kind}" for kind, n in self.counts.most_common()]
        return "problems: " + (", ".join(parts) if parts else "none")


def is_corpus_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".jsonl") or name.endswith(".jsonl" + _ZST)


def check_corpus_output(path: Path) -> None:
    """A step's output is a corpus file or `-` (stdout): anything else would be read back by
    `graft data prepare` as one document of JSON text."""
    if str(path) != "-" and not is_corpus_file(Path(path)):
        raise DataError(f"{path}: the output must be a .jsonl or .jsonl.zst file (or - for stdout)")


class DamagedFile(DataError):
    """A compressed file that cannot be read to its end: not zstd at all, damaged, or cut
    short. `detail` is the message without the file, for a reader that counts it as a problem
    rather than stopping."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.detail = detail


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a zstd file, every frame of it, checked to the end.

    zstandard's stream_reader ends quietly where a truncated file ends, so a cut-off download
    would pass for a shorter corpus; here a frame left open at the end of the file, or bytes
    that are not zstd, raise DamagedFile naming the file."""

    def __init__(self, path: Path) -> None:
        import zstandard

        super().__init__()
        self._path = path
        self._file = path.open("rb")
        self._zstd = zstandard.ZstdDecompressor()
        self._frame = self._zstd.decompressobj()
        self._in_frame = False  # a frame has begun and not ended
        self._read = 0  # compressed bytes read so far
        self._out = memoryview(b"")  # decompressed bytes not yet handed out

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._out:
            chunk = self._file.read(_ZSTD_CHUNK)
            if not chunk:
                if self._in_frame:
                    raise DamagedFile(
                        self._path,
                        f"truncated zstd stream (it ends inside a frame, "
                        f"after {self._read:,} bytes)",
                    )
                return 0
            self._read += len(chunk)
            self._out = memoryview(self._decompress(chunk))
        view = memoryview(buffer).cast("B")
        size = min(len(view), len(self._out))
        view[:size] = self._out[:size]
        self._out = self._out[size:]
        return size

    def _decompress(self, chunk: bytes) -> bytes:
        import zstandard

        out = []
        try:
            while chunk:
                out.append(self._frame.decompress(chunk))
                self._in_frame = not self._frame.eof
                chunk = b""
                if not self._in_frame:
                    # A file may hold several frames (`cat a.zst b.zst`, pzstd): what follows
                    # a finished one starts the next.
                    chunk = self._frame.unused_data
                    self._frame = self._zstd.decompressobj()
        except zstandard.ZstdError as exc:
            raise DamagedFile(
                self._path, f"not zstd-compressed, or damaged ({first_line(exc)})"
            ) from exc
        return b"".join(out)

    def close(self) -> None:
        self._file.close()
        super().close()


def open_corpus(path: Path) -> BinaryIO:
    """The bytes of a corpus file, zstd undone for `.zst`, in a reader that iterates lines.
    Reading a `.zst` file that is not zstd, is damaged or ends early raises DamagedFile;
    opening it raises OSError as for any file. The one place zstd is undone for reading."""
    if path.name.lower().endswith(_ZST):
        return io.BufferedReader(_ZstdFrames(path))
    return path.open("rb")


def decode_utf8(data: bytes, where: str, problems: Problems, kind: str, of: str = "") -> str | None:
    """`data` as text, or None once `problems` is told (as `kind`, at `where`) which byte is
    not UTF-8; `of` says what the byte offset counts in (" of the line")."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.add(
            where,
            kind,
            f"byte {exc.start}{of} is not valid UTF-8 ({exc.reason}); save it as UTF-8",
        )
        return None


def read_corpus(path: Path, problems: Problems | None = None) -> Generator[CorpusDoc, None, None]:
    """The documents of a corpus file (`.jsonl`, `.jsonl.zst`, or `-` for stdin), one at a time.
    A line that is not UTF-8, or not a JSON object with a text string, is a `bad line` problem
    at PATH:LINE (fatal when no `problems` collects them). A file whose first non-blank line is
    not a JSON object is not a corpus at all (a text file given by mistake): a DataError, before
    any document. A damaged `.zst` file is a DamagedFile error."""
    path = Path(path)
    # Without a collector the first bad line is an error, which a strict Problems raises.
    problems = problems if problems is not None else Problems(strict=True)
    try:
        handle = sys.stdin.buffer if str(path) == "-" else open_corpus(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    first = True
    # Lines are decoded one at a time, so a bad byte costs its line only and is named by it.
    with handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(_UTF8_BOM)
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            if first:
                _check_corpus_start(raw, path, number)
                first = False
            line = decode_utf8(raw, where, problems, "bad line", " of the line")
            if line is None:
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
                yield CorpusDoc.from_record(record, where)
            except (json.JSONDecodeError, DataError) as exc:
                detail = str(exc) if isinstance(exc, DataError) else f"not JSON ({exc.msg})"
                problems.add(where, "bad line", detail.removeprefix(f"{where}: "))


def _check_corpus_start(raw: bytes, path: Path, number: int) -> None:
    """Refuse a file whose first non-blank line (`raw`, line `number`) is not a JSON object.
    Every line of a text file would otherwise be skipped as a bad line, one message each, and
    the step would write an empty corpus; a corpus with a bad line later still reads."""
    try:
        if isinstance(json.loads(raw.decode("utf-8")), dict):
            return
        what = "not a JSON object"
    except UnicodeDecodeError:
        what = "not UTF-8"
    except json.JSONDecodeError:
        what = "not JSON"
    source = "FILES --out -" if str(path) == "-" else f"{path} --out corpus.jsonl"
    raise DataError(
        f"{path}: not a corpus (JSON lines of documents; line {number} is {what}); gather "
        f"text files with `graft data collect {source}` first"
    )


class CorpusWriter:
    """Appends documents to a corpus file, atomically: lines go to a temporary sibling that
    replaces `path` when the `with` block ends without an error (and is deleted otherwise).
    `.zst` compresses with zstd; `-` writes to stdout (not atomic: a pipe has no rename)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.count = 0
        self.bytes = 0
        self._file: contextlib.ExitStack | None = None  # the atomic_file being written
        self._raw: IO[bytes] | None = None
        self._out: io.TextIOWrapper | IO[str] | None = None

    def __enter__(self) -> CorpusWriter:
        if str(self.path) == "-":
            self._out = sys.stdout
            return self
        check_output(self.path)  # before any work: the rename at the end would refuse it
        self._file = contextlib.ExitStack()
        self._raw = self._file.enter_context(atomic_file(self.path)).open("wb")
        sink: IO[bytes] = self._raw
        if self.path.name.lower().endswith(_ZST):
            import zstandard

            sink = zstandard.ZstdCompressor(level=3).stream_writer(self._raw, closefd=False)
        self._out = io.TextIOWrapper(sink, encoding="utf-8", newline="\n", write_through=False)
        return self

    def write(self, doc: CorpusDoc) -> None:
        assert self._out is not None, "CorpusWriter is used inside a with block"
        line = doc.to_json() + "\n"
        self._out.write(line)
        self.count += 1
        self.bytes += len(doc.text.encode("utf-8"))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._file is None:  # stdout
            assert self._out is not None
            self._out.flush()
            return
        assert self._out is not None and self._raw is not None
        failed: BaseException | None = None
        try:
            assert isinstance(self._out, io.TextIOWrapper)
            self._out.flush()
            sink = self._out.detach()
            if sink is not self._raw:
                sink.close()  # ends the zstd frame; closefd=False keeps the file open
            self._raw.close()
        except BaseException as err:  # a full disk shows here too, at the last flush
            failed = err
            with contextlib.suppress(OSError):
                self._raw.close()
            if value is None:
                kind, value, trace = type(err), err, err.__traceback__
        if value is None:
            self._file.close()  # atomic_file renames the file into place
            return
        # atomic_file deletes the file; a full disk leaves as one OutputError, raised from here.
        self._file.__exit__(kind, value, trace)
        if value is failed:
            raise failed
