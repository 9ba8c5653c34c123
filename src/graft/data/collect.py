"""`graft data collect`: files, folders, globs, web pages and WARC archives in, one stream of
`CorpusDoc`s out.

What one document is depends on the input's suffix: a .txt, .md or .rst file is one document;
an .html/.htm page is one document holding its main text (trafilatura drops menus, footers,
scripts, cookie banners and comment sections, and keeps tables); every line of a .jsonl or
.jsonl.zst file, every row of a .csv/.tsv file and of a .parquet file is one document; every
`response` record of a .warc/.warc.gz archive that holds HTML or plain text is one document.
URLs (a SOURCE starting with http:// or https://, or the lines of `--urls FILE`) are fetched
politely by `graft.data.fetch.Fetcher`.

Everything streams: big files are read a line, a row or a record batch at a time, and documents
leave as soon as they are made, in a deterministic order (sources as given, folders walked in
sorted order). HTML extraction is the slow part, so past a few pages it runs in a pool of
processes, one per core, with a bounded number of pages in flight and the output order kept.

Bad input (an unreadable or binary file, text that is not UTF-8, a page with no main text, a
line that is not JSON, a missing column, a URL that fails or that robots.txt forbids) is a
problem counted in `Problems` with its file, line or URL, and the run goes on; under strict the
first one is an error.
"""

from __future__ import annotations

import codecs
import csv
import glob
import json
import os
import re
import sys
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from graft.data.corpus import (
    CorpusDoc,
    CorpusWriter,
    DamagedFile,
    Problems,
    StageStats,
    check_corpus_output,
    decode_utf8,
    open_corpus,
)
from graft.data.fetch import (
    Fetcher,
    FetchFailed,
    FetchOptions,
    FetchResult,
    split_content_type,
)
from graft.data.stages import default_workers, ordered_map, write_stats
from graft.errors import DataError

__all__ = [
    "SUFFIXES",
    "CollectOptions",
    "collect",
    "collect_to",
    "extract_html",
    "list_sources",
]

_TEXT = (".txt", ".md", ".rst")
_HTML = (".html", ".htm")
_JSONL = (".jsonl", ".jsonl.zst")
_CSV = (".csv", ".tsv")
_PARQUET = (".parquet",)
_WARC = (".warc", ".warc.gz")
#: Input suffixes `collect` reads (compared case-insensitively); others in a folder are skipped.
SUFFIXES: tuple[str, ...] = _TEXT + _HTML + _JSONL + _CSV + _PARQUET + _WARC
_SUFFIX_LIST = ", ".join(SUFFIXES)

_UTF8_BOM = b"\xef\xbb\xbf"
_SNIFF_BYTES = 8192  # a NUL byte this early means a binary file, not text
_GLOB_CHARS = frozenset("*?[")
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_LICENCE_KEYS = ("licence", "license")
_CSV_FIELD_LIMIT = 1 << 30
_PARQUET_BATCH = 1024  # rows per record batch: memory stays flat whatever the file's size
# A charset declared inside the page, where browsers look for one (WHATWG's prescan reads the
# first 1024 bytes); trafilatura's detector honours such a declaration.
_DECLARED_CHARSET = re.compile(rb"<meta[^>]*charset|<\?xml[^>]*encoding", re.I)
_PRESCAN_BYTES = 1024
# Labels that browsers read as windows-1252 (WHATWG Encoding): pages labelled Latin-1 or ASCII
# are in practice cp1252, with its curly quotes and dashes in 0x80-0x9f.
_WINDOWS_1252_LABELS = frozenset({"cp1252", "iso8859-1", "ascii"})
# Python's cp1252 leaves 0x81, 0x8d, 0x8f, 0x90 and 0x9d undefined; browsers map them to the C1
# controls of the same value, as Latin-1 does, so no page fails to decode.
_WINDOWS_1252 = {
    byte: bytes([byte]).decode("cp1252", errors="ignore") or chr(byte) for byte in range(0x80, 0xA0)
}


@dataclass(frozen=True)
class CollectOptions:
    """How `collect` reads its sources.

    text_field: the JSONL field holding the text; text_column: the CSV/TSV/Parquet column;
    licence: the licence of every local document (a JSONL/CSV `licence` or `license` value wins
    for its own document); urls: a file of URLs, one a line, `#` starting a comment; fetch: how
    URLs are fetched; workers: processes for HTML extraction (0: one per core); chunksize: the
    documents a worker takes at once (`stages.ordered_map`: an input of fewer than chunksize x
    workers documents is read in this process, as starting the pool would cost more)."""

    text_field: str = "text"
    text_column: str = "text"
    licence: str | None = None
    urls: Path | None = None
    fetch: FetchOptions = field(default_factory=FetchOptions)
    workers: int = 0
    chunksize: int = 16


# ---- HTML ------------------------------------------------------------------------------------


def extract_html(markup: bytes | str, url: str | None = None) -> str | None:
    """The main text of an HTML page, or None when it has none: menus, headers, footers,
    scripts, styles and comment sections are dropped, tables kept (trafilatura's defaults
    otherwise, which balance precision and recall). Bytes are decoded by the page's declared
    charset; a page that declares none, as windows-1252 where that is a plausible reading (see
    `_unlabelled_html`), else by the detected charset."""
    import trafilatura

    if isinstance(markup, bytes):
        markup = _unlabelled_html(markup)
    text = trafilatura.extract(
        markup,
        url=url,
        include_comments=False,
        include_tables=True,
        favor_precision=False,
        output_format="txt",
        with_metadata=False,
        deduplicate=False,
    )
    return text if text and text.strip() else None


def _windows_1252(data: bytes) -> str:
    """`data` decoded as browsers decode windows-1252 (every byte means a character)."""
    return data.decode("latin-1").translate(_WINDOWS_1252)


def _decode_charset(data: bytes, charset: str) -> str:
    """`data` decoded by a declared charset, as a browser reads its label; LookupError for an
    unknown one, UnicodeDecodeError for bytes that are not in it."""
    name = codecs.lookup(charset).name
    return _windows_1252(data) if name in _WINDOWS_1252_LABELS else data.decode(name)


def _declares_itself(data: bytes) -> bool:
    """Whether a page's bytes say their own charset: a UTF-8 BOM, a <meta> or XML declaration
    in the first kilobyte, or bytes that are valid UTF-8."""
    if data.startswith(_UTF8_BOM) or _DECLARED_CHARSET.search(data[:_PRESCAN_BYTES]):
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _unlabelled_html(data: bytes) -> bytes | str:
    """A page's bytes decoded as windows-1252 when they declare no charset, are not UTF-8, and
    the detector counts windows-1252 among the plausible readings; else the bytes, for
    trafilatura to decode by the declaration or its detector's best guess.

    Why: in a mostly ASCII page with a few accented letters, the detector cannot tell the
    Latin single-byte charsets apart and may pick the wrong one ("naïve" in Latin-1 read as
    cp1250 "naďve"), while windows-1252 is what browsers assume for an unlabelled Western page.
    A Cyrillic or Japanese page rules windows-1252 out, so its detected charset still wins."""
    if data.startswith(_UTF8_BOM):
        return data  # trafilatura honours the BOM
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if _DECLARED_CHARSET.search(data[:_PRESCAN_BYTES]):
        return data
    from trafilatura.utils import detect_encoding

    for guess in detect_encoding(data):
        try:
            if codecs.lookup(guess).name == "cp1252":
                return _windows_1252(data)
        except LookupError:
            continue
    return data


def _extract_job(_: None, markup: bytes | str | None) -> tuple[str | None, str | None]:
    """extract_html for a worker process (`stages.ordered_map`'s job): (text, None), or
    (None, the error's one line) when the parser breaks, so one odd page cannot stop the pool
    (or the run); (None, None) for an item that is no page."""
    if markup is None:
        return None, None
    try:
        return extract_html(markup), None
    except Exception as exc:  # any parser failure is this page's problem only
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]


@dataclass
class _HtmlJob:
    """A page waiting for extraction: its markup and the document it becomes (text unset)."""

    markup: bytes | str
    doc: CorpusDoc


_Item = CorpusDoc | _HtmlJob


# ---- the sources -----------------------------------------------------------------------------


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _kind(path: Path) -> str | None:
    """The format of a file by its suffix (case-insensitive), None for an unsupported one."""
    name = path.name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):  # .jsonl.zst before .zst, .warc.gz
        if name.endswith(suffix):
            return suffix
    return None


def _walk(folder: Path) -> list[Path]:
    """The readable files under `folder`, sorted by path components so every platform and
    filesystem gives one order; hidden entries (.git, caches, temporary files) are skipped."""
    found: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(
            Path(root) / name
            for name in names
            if not name.startswith(".") and _kind(Path(name)) is not None
        )
    return sorted(found, key=lambda f: f.relative_to(folder).parts)


def list_sources(
    sources: Iterable[str | Path], problems: Problems, *, exclude: Iterable[Path] = ()
) -> Iterator[str | Path]:
    """The files and URLs `sources` stand for, in order, each file once: files as given,
    folders walked (sorted), globs expanded (sorted), URLs as they are; never a file in
    `exclude` (the output, which may sit in a folder being collected). A missing path, a glob
    matching nothing or an unsupported file type is a problem."""
    seen: set[Path] = {Path(p).resolve() for p in exclude}

    def once(path: Path) -> Iterator[Path]:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            yield path

    for source in sources:
        text = str(source)
        if _is_url(text):
            yield text
            continue
        path = Path(text)
        if path.is_dir():
            for file in _walk(path):
                yield from once(file)
        elif path.is_file():
            if _kind(path) is None:
                problems.add(
                    text,
                    "unsupported",
                    f"unsupported file type {path.suffix or '(no suffix)'!r}; "
                    f"collect reads {_SUFFIX_LIST}",
                )
            else:
                yield from once(path)
        elif not path.exists() and _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file() and _kind(Path(m))]
            if not files:
                problems.add(text, "missing", f"the pattern matches no {_SUFFIX_LIST} file")
            for file in files:
                yield from once(file)
        elif path.exists():
            problems.add(text, "unreadable", "not a regular file or folder")
        else:
            problems.add(text, "missing", "no such file or folder")


def _url_lines(path: Path, problems: Problems) -> Iterator[str]:
    """The URLs of a --urls file, read a line at a time: blank lines and `#` comments skipped,
    anything but an http(s) URL a problem at FILE:LINE."""
    try:
        handle = path.open(encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the URL list ({exc.strerror or exc})") from exc
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                url = line.split(" #", 1)[0].strip()
                if not url or url.startswith("#"):
                    continue
                if _is_url(url):
                    yield url
                else:
                    problems.add(f"{path}:{number}", "bad url", f"not an http(s) URL: {url!r}")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: the URL list is not UTF-8 ({exc.reason})") from exc


# ---- the collector ---------------------------------------------------------------------------


class _Collector:
    """Reads sources into documents; counts the input bytes it read (for MB/s) and the
    blank documents it skipped."""

    def __init__(
        self, options: CollectOptions, problems: Problems, exclude: Sequence[Path] = ()
    ) -> None:
        self.options = options
        self.problems = problems
        self.exclude = exclude
        self.bytes_read = 0
        self.empty = 0
        self.fetcher: Fetcher | None = None

    def documents(self, sources: Iterable[str | Path]) -> Iterator[CorpusDoc]:
        try:
            yield from self._in_order(self._items(sources))
        finally:
            if self.fetcher is not None:
                self.fetcher.close()

    def _items(self, sources: Iterable[str | Path]) -> Iterator[_Item]:
        for source in list_sources(sources, self.problems, exclude=self.exclude):
            if isinstance(source, str):
                yield from self._url(source)
            else:
                yield from self._file(source)
        if self.options.urls is not None:
            for url in _url_lines(self.options.urls, self.problems):
                yield from self._url(url)

    # ---- local files -------------------------------------------------------------------

    def _file(self, path: Path) -> Iterator[_Item]:
        kind = _kind(path)
        try:
            if kind in _TEXT or kind in _HTML:
                yield from self._whole_file(path, kind or "")
            elif kind in _JSONL:
                yield from self._jsonl(path)
            elif kind in _CSV:
                yield from self._csv(path, "\t" if kind == ".tsv" else ",")
            elif kind in _PARQUET:
                yield from self._parquet(path)
            elif kind in _WARC:
                yield from self._warc(path)
        except OSError as exc:
            self.problems.add(str(path), "unreadable", f"cannot read ({exc.strerror or exc})")
        except DamagedFile as exc:  # a .jsonl.zst that is not zstd, or damaged, or cut short
            self.problems.add(str(path), "unreadable", exc.detail)

    def _whole_file(self, path: Path, kind: str) -> Iterator[_Item]:
        data = path.read_bytes()
        self.bytes_read += len(data)
        where = str(path)
        if b"\0" in data[:_SNIFF_BYTES]:
            self.problems.add(where, "binary", "a binary file (NUL bytes), not text")
            return
        data = data.removeprefix(_UTF8_BOM)
        source = "html" if kind in _HTML else kind.lstrip(".")
        doc = CorpusDoc(text="", source=source, location=where, licence=self.options.licence)
        if kind in _HTML:
            # A page in another charset states it in a <meta> tag: trafilatura decodes the
            # bytes by it, so only UTF-8 pages are decoded here (extract_html, in the worker
            # processes, decides how to read a page that states no charset).
            try:
                markup: bytes | str = data.decode("utf-8")
            except UnicodeDecodeError:
                markup = data
            yield _HtmlJob(markup, doc)
            return
        text = decode_utf8(data, where, self.problems, "not utf-8")
        if text is not None:
            yield from self._with_text(doc, text)

    def _with_text(self, doc: CorpusDoc, text: str) -> Iterator[CorpusDoc]:
        """`doc` holding `text` with its line ends made `\\n`; a blank text is counted, not kept."""
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if not text.strip():
            self.empty += 1
            return
        doc.text = text
        yield doc

    def _licence(self, record: dict[str, Any]) -> str | None:
        for key in _LICENCE_KEYS:
            value = record.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
        return self.options.licence

    def _jsonl(self, path: Path) -> Iterator[_Item]:
        field_name = self.options.text_field
        with open_corpus(path) as handle:
            for number, raw in enumerate(handle, start=1):
                self.bytes_read += len(raw)
                where = f"{path}:{number}"
                if number == 1:
                    if b"\0" in raw[:_SNIFF_BYTES]:
                        self.problems.add(str(path), "binary", "a binary file (NUL bytes)")
                        return
                    raw = raw.removeprefix(_UTF8_BOM)
                if not raw.strip():
                    continue
                line = decode_utf8(raw, where, self.problems, "not utf-8", " of the line")
                if line is None:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    self.problems.add(
                        where, "bad line", f"not JSON ({exc.msg} at column {exc.colno})"
                    )
                    continue
                if not isinstance(record, dict):
                    self.problems.add(
                        where, "bad line", f"expected a JSON object, got {type(record).__name__}"
                    )
                    continue
                text = record.get(field_name)
                if not isinstance(text, str):
                    keys = ", ".join(sorted(record)) or "none"
                    detail = (
                        f'no "{field_name}" field (keys: {keys}); set --text-field'
                        if field_name not in record
                        else f'"{field_name}" is a {type(text).__name__}, not a string'
                    )
                    self.problems.add(where, "bad line", detail)
                    continue
                if not text.strip():
                    self.empty += 1
                    continue
                yield CorpusDoc(
                    text=text, source="jsonl", location=where, licence=self._licence(record)
                )

    def _csv(self, path: Path, delimiter: str) -> Iterator[_Item]:
        column = self.options.text_column
        # The csv module refuses fields over 128 KiB by default; a document can be longer.
        csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
        with path.open("rb") as handle:
            lines = _Utf8Lines(handle)
            # Strict: a quote never closed is an error, not a field that swallows the rest of
            # the file, and so is text after a closing quote.
            reader = csv.reader(lines, delimiter=delimiter, strict=True)
            try:
                header = next(reader, None)
                if header is None:
                    self.empty += 1
                    return
                if column not in header:
                    self._missing_column(path, column, header)
                    return
                at = header.index(column)
                licence_at = next((header.index(k) for k in _LICENCE_KEYS if k in header), None)
                for row_number, row in enumerate(_csv_rows(reader), start=1):
                    where = f"{path}#{row_number}"
                    if isinstance(row, csv.Error):
                        self.problems.add(where, "bad line", f"broken CSV ({row})")
                        continue
                    if len(row) > len(header):
                        # A stray delimiter or quote: which field is the text is anyone's guess.
                        detail = f"{len(row)} fields where the header has {len(header)}"
                        self.problems.add(where, "bad line", detail)
                        continue
                    text = row[at] if at < len(row) else ""
                    if not text.strip():
                        self.empty += 1
                        continue
                    licence = ""
                    if licence_at is not None and licence_at < len(row):
                        licence = row[licence_at].strip()
                    yield CorpusDoc(
                        text=text,
                        source=path.suffix.lower().lstrip("."),
                        location=where,
                        licence=licence or self.options.licence,
                    )
            except _BinaryFile:
                self.problems.add(str(path), "binary", "a binary file (NUL bytes), not text")
            except UnicodeDecodeError as exc:
                self.problems.add(
                    str(path),
                    "not utf-8",
                    f"byte {lines.offset + exc.start} is not valid UTF-8 ({exc.reason}); "
                    "the rest of the file is skipped",
                )
            except csv.Error as exc:  # only the header: a broken row is a row's problem
                self.problems.add(str(path), "bad line", f"broken CSV header ({exc})")
            finally:
                self.bytes_read += lines.offset

    def _missing_column(self, path: Path, column: str, names: Sequence[str]) -> None:
        shown = ", ".join(repr(n) for n in names) or "none"
        detail = f'no "{column}" column (columns: {shown}); set --text-column'
        self.problems.add(str(path), "missing column", detail)

    def _parquet(self, path: Path) -> Iterator[_Item]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        column = self.options.text_column
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, ValueError) as exc:
            self.problems.add(str(path), "unreadable", f"not a Parquet file ({exc})")
            return
        with parquet:
            names = parquet.schema_arrow.names
            if column not in names:
                self._missing_column(path, column, names)
                return
            licence_column = next((k for k in _LICENCE_KEYS if k in names), None)
            wanted = [column] + ([licence_column] if licence_column else [])
            row = 0
            try:
                for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH, columns=wanted):
                    texts = batch.column(column).to_pylist()
                    licences = (
                        batch.column(licence_column).to_pylist()
                        if licence_column
                        else [None] * len(texts)
                    )
                    for text, licence in zip(texts, licences):
                        row += 1
                        if not isinstance(text, str) or not text.strip():
                            self.empty += 1
                            continue
                        self.bytes_read += len(text.encode("utf-8"))
                        yield CorpusDoc(
                            text=text,
                            source="parquet",
                            location=f"{path}#{row}",
                            licence=licence
                            if isinstance(licence, str) and licence
                            else self.options.licence,
                        )
            except (pa.ArrowException, ValueError) as exc:
                self.problems.add(f"{path}#{row + 1}", "unreadable", f"cannot read ({exc})")

    def _warc(self, path: Path) -> Iterator[_Item]:
        from warcio.archiveiterator import ArchiveIterator
        from warcio.exceptions import ArchiveLoadFailed

        cap = self.options.fetch.max_bytes
        records = 0
        with path.open("rb") as handle:
            try:
                for record in ArchiveIterator(handle):
                    records += 1
                    if record.format != "warc":
                        # warcio also reads the older ARC format, and takes almost any line of
                        # five words for an ARC header: a .warc file must hold WARC records.
                        raise ArchiveLoadFailed(f"an {record.format} record")
                    if record.rec_type != "response" or record.http_headers is None:
                        continue
                    status = record.http_headers.get_statuscode()
                    if not str(status).startswith("2"):
                        continue  # an archived error page or redirect is no document
                    content_type, charset = split_content_type(
                        record.http_headers.get_header("Content-Type") or ""
                    )
                    if content_type not in _HTML_TYPES and content_type != "text/plain":
                        continue  # images, scripts, styles: an archive is full of them
                    url = record.rec_headers.get_header("WARC-Target-URI") or str(path)
                    body = record.content_stream().read(cap + 1)
                    self.bytes_read += len(body)
                    if len(body) > cap:
                        self.problems.add(
                            url, "too large", f"record larger than {cap:,} bytes (in {path})"
                        )
                        continue
                    doc = CorpusDoc(
                        text="",
                        source="warc",
                        location=url,
                        fetched_at=record.rec_headers.get_header("WARC-Date"),
                        licence=self.options.licence,
                    )
                    yield from self._body(body, content_type, charset, doc)
            except (ArchiveLoadFailed, EOFError, zlib.error) as exc:
                # warcio's own message quotes the raw bytes it choked on: not worth printing.
                where = f"after {records - 1} records" if records > 1 else "at its start"
                self.problems.add(
                    str(path),
                    "unreadable",
                    f"not a WARC archive, or damaged {where} ({type(exc).__name__})",
                )

    def _body(
        self, body: bytes, content_type: str, charset: str | None, doc: CorpusDoc
    ) -> Iterator[_Item]:
        """A web page's body as a document: HTML to extraction, plain text decoded."""
        if content_type in _HTML_TYPES:
            markup: bytes | str = body
            # The HTTP header's charset is all a page without a <meta> one states, and
            # trafilatura never sees the header: decode by it here. A page's own declaration,
            # a UTF-8 BOM or bytes that are valid UTF-8 win (servers often send a default
            # charset the page contradicts); an unknown label or bytes not in it leave the
            # bytes to the detector.
            if charset and not _declares_itself(body):
                try:
                    markup = _decode_charset(body, charset)
                except (LookupError, UnicodeDecodeError):
                    pass
            yield _HtmlJob(markup, doc)
            return
        if content_type != "text/plain":
            shown = content_type or "none"
            self.problems.add(
                doc.location, "content type", f"content type {shown}, not HTML or plain text"
            )
            return
        encoding = charset or "utf-8"
        try:
            codecs.lookup(encoding)
        except LookupError:
            encoding = "utf-8"
        try:
            text = body.removeprefix(_UTF8_BOM).decode(encoding)
        except UnicodeDecodeError as exc:
            self.problems.add(
                doc.location,
                "not utf-8" if encoding == "utf-8" else "bad encoding",
                f"byte {exc.start} is not valid {encoding} ({exc.reason})",
            )
            return
        yield from self._with_text(doc, text)

    # ---- URLs ----------------------------------------------------------------------------

    def _url(self, url: str) -> Iterator[_Item]:
        if self.fetcher is None:
            self.fetcher = Fetcher(self.options.fetch)
        try:
            result: FetchResult = self.fetcher.fetch(url)
        except FetchFailed as exc:
            self.problems.add(url, exc.kind, exc.detail)
            return
        self.bytes_read += len(result.body)
        doc = CorpusDoc(text="", source="url", location=url, fetched_at=result.fetched_at)
        if result.final_url != url:
            doc.meta["final_url"] = result.final_url
        yield from self._body(result.body, result.content_type, result.charset, doc)

    # ---- HTML extraction, in order ---------------------------------------------------------

    def _finish(self, job: _HtmlJob, text: str | None, error: str | None) -> CorpusDoc | None:
        if text is None:
            detail = f"cannot parse the HTML ({error})" if error else "no main text in the HTML"
            self.problems.add(job.doc.location, "no text", detail)
            return None
        return replace(job.doc, text=text)

    def _in_order(self, items: Iterator[_Item]) -> Iterator[CorpusDoc]:
        """Documents in input order, HTML pages extracted in a process pool (ready documents
        pass through the pool's queue as empty jobs, which keeps the order)."""
        workers = default_workers(self.options.workers)
        for item, (text, error) in ordered_map(
            _extract_job, None, items, _markup, workers=workers, chunksize=self.options.chunksize
        ):
            doc = item if isinstance(item, CorpusDoc) else self._finish(item, text, error)
            if doc is not None:
                yield doc


def _markup(item: _Item) -> bytes | str | None:
    return item.markup if isinstance(item, _HtmlJob) else None


class _BinaryFile(Exception):
    """A NUL byte in the first bytes of a text file."""


class _Utf8Lines:
    """The lines of a binary file decoded as UTF-8, one at a time, knowing the byte offset
    reached, so a decoding error can name its byte; a NUL early on raises _BinaryFile."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.offset = 0  # bytes of the file before the line being decoded

    def __iter__(self) -> Iterator[str]:
        for raw in self._handle:
            if self.offset < _SNIFF_BYTES and b"\0" in raw[: _SNIFF_BYTES - self.offset]:
                raise _BinaryFile
            line = raw.removeprefix(_UTF8_BOM) if self.offset == 0 else raw
            yield line.decode("utf-8")
            self.offset += len(raw)


def _csv_rows(reader: Iterator[list[str]]) -> Iterator[list[str] | csv.Error]:
    """The rows of a strict csv.reader, a broken one as its csv.Error: the reader starts
    afresh on the next line, so one broken row costs that row only (an unclosed quote runs to
    the end of the file, so there it is the last)."""
    while True:
        try:
            row = next(reader, None)
        except csv.Error as exc:
            yield exc
            continue
        if row is None:
            return
        yield row


def collect(
    sources: Sequence[str | Path], *, problems: Problems, options: CollectOptions | None = None
) -> Iterator[CorpusDoc]:
    """The documents of `sources` (files, folders, globs, http(s) URLs) and of
    `options.urls`, one at a time, in a deterministic order; bad inputs go to `problems`.
    A plain generator, so later steps (clean, dedup) can chain on it."""
    yield from _Collector(options or CollectOptions(), problems).documents(sources)


def collect_to(
    sources: Sequence[str | Path],
    out: Path,
    options: CollectOptions | None = None,
    *,
    problems: Problems | None = None,
    progress: bool = False,
) -> StageStats:
    """Collect `sources` into the corpus file `out` (.jsonl or .jsonl.zst, written atomically)
    and its statistics into `out` + STATS_SUFFIX; returns those statistics (problems by kind
    in `rejected`). A strict `problems` makes the first bad input a DataError, leaving no
    output behind."""
    out = Path(out)
    options = options or CollectOptions()
    problems = problems if problems is not None else Problems()
    check_corpus_output(out)
    if not sources and options.urls is None:
        raise DataError("nothing to collect: give files, folders, globs, URLs or --urls FILE")
    if options.urls is not None and not options.urls.is_file():
        raise DataError(f"{options.urls}: no such URL list (--urls expects a file, one URL a line)")
    collector = _Collector(options, problems, exclude=[] if str(out) == "-" else [out])
    stats = StageStats("collect")
    start = time.perf_counter()
    with CorpusWriter(out) as writer:
        docs: Iterable[CorpusDoc] = collector.documents(sources)
        if progress:
            from tqdm import tqdm

            docs = tqdm(docs, desc="collect", unit=" docs", file=sys.stderr, dynamic_ncols=True)
        for doc in docs:
            writer.write(doc)
        if writer.count == 0:  # an empty corpus would only fail later, in prepare or training
            raise DataError(
                f"nothing collected: every source failed or was empty ({problems.summary()})"
            )
    stats.seconds = time.perf_counter() - start
    stats.docs_out = writer.count
    stats.bytes_out = writer.bytes
    stats.bytes_in = collector.bytes_read
    stats.rejected.update(problems.counts)
    stats.docs_in = stats.docs_out + sum(problems.counts.values())
    stats.notes["empty"] = collector.empty
    if collector.fetcher is not None:
        stats.notes["requests"] = collector.fetcher.counts.requests
        stats.notes["from_cache"] = collector.fetcher.counts.from_cache
    if str(out) != "-":
        write_stats(out, [], stats)
    return stats
