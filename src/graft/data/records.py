"""Labelled text records for classification and instruction tuning: reading them, splitting them.

This module owns the answer to "what is one labelled example and where did it come from".
`read_labelled` reads .jsonl (one object per line), .json (an array of objects), .csv and
.tsv (a header row names the columns) and headerless `label<TAB>text` files (no suffix or
.txt, as the SMS Spam Collection ships); `read_polarity` reads the sentence-polarity pair
(one snippet per line, one file per class). Every record remembers its source, `file:line`
(`file#index` for a JSON array), so a problem found later can still be traced to its line.
`stratified_split` holds out a fraction of every label. `read_conversations` reads instruction
records (Alpaca's instruction/input/output, or chat `messages` with roles) as conversations.
Tagged sentences for token classification live in `graft.data.tagged`.

It also owns the one limit on the size of a record, `MAX_RECORD_CHARS`, which every reader of
records and documents applies (`max_record_chars`): a longer record is an invalid one.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import itertools
import json
import random
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, cast, get_args

from graft.errors import ConfigError, DataError

# The label of a position no loss scores (a prompt token, a sub-token after a word's first, a
# pad): transformers' and torch's cross_entropy convention, so labels carry over unchanged.
IGNORE_INDEX = -100

__all__ = [
    "MAX_RECORD_CHARS",
    "Conversation",
    "Message",
    "Role",
    "TextRecord",
    "read_conversations",
    "read_labelled",
    "read_polarity",
    "stratified_split",
]

#: The most characters one record may hold: its line (label<TAB>text, JSONL, a polarity snippet),
#: its row (CSV, TSV), its item of a JSON array, its sentence's lines (CoNLL) or its section of a
#: text file. Every reader treats a longer record as invalid: a DataError naming its file and
#: line, or skipped and counted with `skip_invalid`. It is measured before it is parsed, so that
#: a runaway line is never split into millions of values, except where only parsing finds its
#: end (a JSON array is parsed whole; a CSV row holding quotes is measured once csv has read
#: it). 16 Mi characters is far beyond any text a model reads whole (a text is cut to the
#: context before it is encoded, graft.data.inputs) and keeps one record near 64 MB at most.
MAX_RECORD_CHARS = 1 << 24

_FORMATS = ".jsonl, .json, .csv, .tsv, or label<TAB>text lines (no suffix or .txt)"
# How many non-blank lines of a headerless file decide whether it is label<TAB>text, so that one
# stray line (a title, a comment) is an invalid record rather than the whole file's verdict.
_SNIFF_LINES = 20
# Bytes the encoding could not decode, as `errors="surrogateescape"` leaves them in the text.
_UNDECODED = re.compile("[\udc80-\udcff]")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
# A line as the csv module splits them (with newline=""), its ending kept.
_TABLE_LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+")


@dataclass(frozen=True)
class TextRecord:
    """One labelled text; `source` is `file:line` (or `file#index` in a JSON array)."""

    text: str
    label: str
    source: str


Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    """An instruction record as turns ending with the assistant's; `source` as in TextRecord."""

    messages: tuple[Message, ...]
    source: str


class _Invalid(Exception):
    """One record is bad; its reader raises it as a DataError or skips it (`_keep_valid`)."""


_T = TypeVar("_T")
# One parsed record of a file: where it is, and its fields or what is wrong with it.
_Fields = tuple[str, dict[str, object] | _Invalid]


def _parse_each(
    fields: Iterable[_Fields], build: Callable[[dict[str, object], str], _T]
) -> Iterator[_T | _Invalid]:
    """`build(fields, where)` for each record, or the _Invalid saying what is wrong with it."""
    for where, item in fields:
        try:
            yield item if isinstance(item, _Invalid) else build(item, where)
        except _Invalid as exc:
            yield exc


def _keep_valid(
    path: Path, skip_invalid: bool, items: Iterable[_T | _Invalid], what: str
) -> tuple[list[_T], int]:
    """The valid items of one file and the number skipped. A bad item is raised at once as a
    DataError, or with `skip_invalid` counted; a file left with no valid item is refused, quoting
    the first problem."""
    kept: list[_T] = []
    problems: list[str] = []
    for item in items:
        if not isinstance(item, _Invalid):
            kept.append(item)
        elif skip_invalid:
            problems.append(str(item))
        else:
            raise DataError(str(item)) from None
    if not kept:
        first = f" ({len(problems)} invalid; the first: {problems[0]})" if problems else ""
        raise DataError(f"{path}: no valid {what}{first}")
    return kept, len(problems)


def _oversized(where: str, max_chars: int) -> _Invalid:
    return _Invalid(
        f"{where}: record longer than {max_chars:,} characters, the most one record may hold; "
        "shorten or split it"
    )


def _names(names: Iterable[str]) -> str:
    """Field or column names for a one-line message: as they are, or quoted with escapes when
    one holds a line break or another character that does not print."""
    return ", ".join(name if name.isprintable() else repr(name) for name in names) or "none"


def _file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return f"{suffix!r} file" if suffix else "file without a suffix"


def _unknown_format(path: Path, what: str, formats: str) -> DataError:
    return DataError(f"{path}: cannot read a {_file_kind(path)} as {what}; graft reads {formats}")


def _decode(path: Path, encoding: str, *, check: bool = False, gzipped: bool = False) -> str:
    """The file's text (decompressed first when `gzipped`); bytes the encoding rejects are kept as
    lone surrogates, to be reported with their record, or at once with `check`
    (`_check_decoded`)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if gzipped:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: not a valid gzip file ({exc}); expected gzip data") from None
    try:
        text = raw.decode(encoding, errors="surrogateescape")
    except LookupError:
        raise ConfigError(f"encoding {encoding!r} is not a known text encoding") from None
    text = text.removeprefix("\ufeff")
    if check:
        _check_decoded(path, text, encoding)
    return text


def _undecodable_error(where: str, bad: str, encoding: str) -> str:
    byte = ord(bad) - 0xDC00
    # Latin-1 decodes any byte, so it is the likely fix for a file that is not UTF-8.
    other = "latin-1" if codecs.lookup(encoding).name.startswith("utf-8") else "utf-8"
    return (
        f"{where}: byte 0x{byte:02x} is not valid {encoding}; "
        f"read it as {other} or as its own encoding "
        f"(--encoding {other}; graft finetune: --data.encoding={other})"
    )


def _check_decoded(path: Path, text: str, encoding: str) -> None:
    """Raise for the first undecodable byte, naming its line."""
    if match := _UNDECODED.search(text):
        line = text.count("\n", 0, match.start()) + 1
        raise DataError(_undecodable_error(f"{path}:{line}", match.group(), encoding))


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) for each non-blank line, without its line ending."""
    # Found one at a time rather than split all at once: no second copy of the whole file.
    start, number = 0, 1
    while start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        line = text[start:end].removesuffix("\r")
        if line and not line.isspace():
            yield number, line
        start, number = end + 1, number + 1


def _field_options(role: str) -> str:
    """The command-line option that chooses the `role` ("text" or "label") field: users meet
    these messages on the command line, where Python's text_field= means nothing. Every command
    that reads labelled records (graft eval, the experiments, graft finetune classify) takes
    --text-field / --label-field."""
    return f"--{role}-field NAME"


def _looks_headerless(text: str, header: list[str]) -> bool:
    """Whether a .tsv whose header lacks a column is label<TAB>text lines with no header row (the
    SMS Spam Collection saved as .tsv): two columns, lines of one tab, and its first "column
    name" a label again in the first column of the lines after it."""
    if len(header) != 2 or _not_label_tab_text(text) is not None:
        return False
    lines = itertools.islice(_lines(text), 1, _SNIFF_LINES)
    return header[0] in {line.split("\t", 1)[0].strip() for _, line in lines}


def _record(
    fields: dict[str, object], where: str, text_field: str, label_field: str, encoding: str
) -> TextRecord:
    """A TextRecord from one parsed record's fields, or _Invalid saying what is wrong."""
    for name, option in ((text_field, "text"), (label_field, "label")):
        if name not in fields:
            present = _names(sorted(fields))
            raise _Invalid(
                f"{where}: missing field {name!r} (fields: {present}); "
                f"read another field with {_field_options(option)}"
            )
    text, label = fields[text_field], fields[label_field]
    if not isinstance(text, str):
        raise _Invalid(f"{where}: field {text_field!r} must be a string, got {type(text).__name__}")
    # JSON labels are often class numbers; they become their decimal strings.
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)
    if not isinstance(label, str):
        raise _Invalid(
            f"{where}: field {label_field!r} must be a string or an integer, "
            f"got {type(label).__name__}"
        )
    # Surrounding spaces in a label would make "ham " a class of its own.
    label = label.strip()
    for name, value in ((text_field, text), (label_field, label)):
        if bad := _UNDECODED.search(value):
            raise _Invalid(_undecodable_error(f"{where}: field {name!r}", bad.group(), encoding))
    if not text.strip():
        raise _Invalid(f"{where}: empty text in field {text_field!r}")
    if not label:
        raise _Invalid(f"{where}: empty label in field {label_field!r}")
    return TextRecord(text=text, label=label, source=where)


def _as_object(value: object, where: str) -> dict[str, object] | _Invalid:
    if isinstance(value, dict | _Invalid):
        return value
    return _Invalid(f"{where}: expected a JSON object, got a JSON {type(value).__name__}")


def _jsonl_fields(path: Path, text: str, max_chars: int = MAX_RECORD_CHARS) -> Iterator[_Fields]:
    for number, line in _lines(text):
        where = f"{path}:{number}"
        if len(line) > max_chars:
            yield where, _oversized(where, max_chars)
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            value = _Invalid(
                f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); "
                "expected one JSON object per line"
            )
        except (RecursionError, ValueError):  # nesting past the parser's depth, a huge integer
            value = _Invalid(f"{where}: JSON nested too deep or a number too long to read")
        yield where, _as_object(value, where)


def _after_json_space(text: str, at: int) -> int:
    match = _JSON_SPACE.match(text, at)
    return at if match is None else match.end()


def _array_item_sizes(text: str) -> Iterator[int]:
    """The characters of each item of `text`, a JSON array known to parse, in order."""
    decoder = json.JSONDecoder()
    at = _after_json_space(text, text.index("[") + 1)
    while text[at] != "]":
        _, end = decoder.raw_decode(text, at)  # the item itself is dropped at once
        yield end - at
        at = _after_json_space(text, end)
        if text[at] == ",":
            at = _after_json_space(text, at + 1)


def _json_fields(path: Path, text: str, max_chars: int = MAX_RECORD_CHARS) -> Iterator[_Fields]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        # The whole array is one value: a syntax error leaves no records to skip to.
        raise DataError(
            f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}); "
            "expected an array of objects"
        ) from exc
    except (RecursionError, ValueError):  # nesting past the parser's depth, a huge integer
        raise DataError(f"{path}: JSON nested too deep or a number too long to read") from None
    if not isinstance(value, list):
        raise DataError(
            f"{path}: expected a JSON array of objects, got a JSON {type(value).__name__}"
        )
    # An array is one JSON value, parsed whole; only a file longer than the limit can hold an
    # oversized item, so only then are the items measured (a second pass over the text).
    sizes = _array_item_sizes(text) if len(text) > max_chars else itertools.repeat(0)
    for index, (item, size) in enumerate(zip(value, sizes)):
        where = f"{path}#{index}"
        yield where, _oversized(where, max_chars) if size > max_chars else _as_object(item, where)


@contextlib.contextmanager
def _csv_fields_of_any_size(text: str) -> Iterator[None]:
    """Within it the csv module takes a field as long as `text`, so that the size of a record is
    judged by MAX_RECORD_CHARS, like every other format's, and not by csv's own limit (131,072
    characters, refused line by line with no way to skip). The limit is process-wide: restored."""
    before = csv.field_size_limit()
    csv.field_size_limit(max(before, len(text)))
    try:
        yield
    finally:
        csv.field_size_limit(before)


class _TableLines:
    """The lines of a table as the csv module reads them, except that a line longer than the
    limit which begins a row, and cannot open a quoted field, is handed over empty and noted
    (`dropped`): it is one oversized record, and csv never splits it into millions of cells.
    The reader sets `fresh` each time csv has given a row: the next line begins another."""

    def __init__(self, text: str, max_chars: int, quoting: int) -> None:
        # Found one at a time: io.StringIO would copy the text, at 4 bytes a character.
        self.lines = (match.group() for match in _TABLE_LINE.finditer(text))
        self.max_chars, self.quoting = max_chars, quoting
        self.fresh, self.dropped = True, False

    def __iter__(self) -> _TableLines:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        if (
            self.fresh
            and len(line) > self.max_chars
            and (self.quoting == csv.QUOTE_NONE or '"' not in line)
        ):
            line, self.dropped = "\n", True
        self.fresh = False
        return line


def _table_fields(
    path: Path, text: str, delimiter: str, text_field: str, label_field: str, max_chars: int
) -> Iterator[_Fields]:
    # TSV files seldom quote and often hold stray quotes in text, so .tsv reads quotes literally
    # (as GLUE's readers do); CSV follows the csv module's dialect.
    quoting: Literal[0, 1, 2, 3] = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    lines = _TableLines(text, max_chars, quoting)
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting)
    header: list[str] | None = None
    start = 1
    try:
        for row in reader:
            where, start = f"{path}:{start}", reader.line_num + 1
            dropped, lines.dropped, lines.fresh = lines.dropped, False, True
            if dropped and header is None:
                raise DataError(str(_oversized(where, max_chars)))
            if dropped:
                yield where, _oversized(where, max_chars)
                continue
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                for name, option in ((text_field, "text"), (label_field, "label")):
                    if name not in header:
                        missing = f"{where}: no column {name!r} in the header (columns: "
                        if delimiter == "\t" and _looks_headerless(text, header):
                            raise DataError(
                                f"{missing}{_names(header)}); {path.name} looks like "
                                "label<TAB>text lines with no header row: name it "
                                f"{path.with_suffix('.txt').name} (a .tsv file starts with a "
                                "header row naming its columns)"
                            )
                        raise DataError(
                            f"{missing}{_names(header)}); read another column with "
                            f"{_field_options(option)}"
                        )
            elif sum(map(len, row)) + len(row) - 1 > max_chars:
                # Any other row is measured once csv has found its end (a quoted field may hold
                # line breaks): a quote never closed runs to the end of the file, one oversized
                # record rather than rows read wrong.
                yield where, _oversized(where, max_chars)
            elif len(row) == len(header):
                yield where, dict(zip(header, row))
            else:
                columns = f"{len(header)} fields like the header ({_names(header)})"
                yield where, _Invalid(f"{where}: expected {columns}, got {len(row)}")
    except csv.Error as exc:
        raise DataError(
            f"{path}:{reader.line_num}: malformed {delimiter!r}-separated line ({exc})"
        ) from exc
    if header is None:
        raise DataError(f"{path}: empty file; expected a header row naming the columns")


def _label_tab_text_fields(path: Path, text: str, max_chars: int) -> Iterator[_Fields]:
    for number, line in _lines(text):
        where = f"{path}:{number}"
        # Counted, not split: a long line of tabs would otherwise become that many strings.
        tabs = line.count("\t")
        if len(line) > max_chars:
            yield where, _oversized(where, max_chars)
        elif tabs == 1:
            label, text_ = line.split("\t")
            yield where, {"label": label, "text": text_}
        else:
            problem = f"{where}: expected 2 tab-separated fields (label<TAB>text), got {tabs + 1}"
            yield where, _Invalid(problem)


def _not_label_tab_text(text: str) -> str | None:
    """Why `text` is not label<TAB>text lines, or None when it is: when at least half of its
    first _SNIFF_LINES non-blank lines hold one tab (the others are then invalid records)."""
    lines = list(itertools.islice(_lines(text), _SNIFF_LINES))
    bad = [(number, line.count("\t") + 1) for number, line in lines if line.count("\t") != 1]
    if 2 * len(bad) <= len(lines):
        return None
    number, fields = bad[0]
    return (
        f"{len(bad)} of its first {len(lines)} non-blank lines are not label<TAB>text "
        f"(line {number}: {fields} tab-separated field{'' if fields == 1 else 's'}, expected 2)"
    )


def read_labelled(
    path: Path,
    *,
    text_field: str = "text",
    label_field: str = "label",
    encoding: str = "utf-8",
    skip_invalid: bool = False,
    max_record_chars: int = MAX_RECORD_CHARS,
) -> tuple[list[TextRecord], int]:
    """Read the labelled records in `path`; returns (records, number of invalid ones skipped).

    The format follows the suffix (see the module docstring); a file without one or .txt is
    label<TAB>text when at least half of its first lines are. A bad record (a missing or
    non-string field, empty text or label, a line that is not JSON, a row with the wrong
    number of fields, bytes `encoding` cannot decode, more than `max_record_chars` characters)
    raises DataError naming the file, the line and the field; with `skip_invalid` it is skipped
    and counted instead. Problems with the file as a whole (missing, unknown format, a JSON array
    that does not parse, no usable header, no valid record at all) always raise.
    """
    path = Path(path)
    text = _decode(path, encoding, check=not skip_invalid)
    suffix = path.suffix.lower()
    fields: Iterator[_Fields]
    if suffix == ".jsonl":
        fields = _jsonl_fields(path, text, max_record_chars)
    elif suffix == ".json":
        fields = _json_fields(path, text, max_record_chars)
    elif suffix in (".csv", ".tsv"):
        delimiter = "," if suffix == ".csv" else "\t"
        fields = _table_fields(path, text, delimiter, text_field, label_field, max_record_chars)
    elif suffix in ("", ".txt"):
        if problem := _not_label_tab_text(text):
            raise DataError(
                f"{path}: cannot read a {_file_kind(path)} as labelled records: {problem}; "
                "a file in another format needs its suffix (.jsonl, .json, .csv or .tsv)"
            )
        # The line's layout names the columns: other field names would be ignored, silently.
        if (text_field, label_field) != ("text", "label"):
            raise DataError(
                f"{path}: a label<TAB>text file has no named fields, so --text-field and "
                "--label-field do not apply to it; drop them"
            )
        fields = _label_tab_text_fields(path, text, max_record_chars)
    else:
        raise _unknown_format(path, "labelled records", _FORMATS)
    records = _parse_each(
        fields, lambda item, where: _record(item, where, text_field, label_field, encoding)
    )
    with _csv_fields_of_any_size(text):
        return _keep_valid(path, skip_invalid, records, "records")


def read_polarity(
    pos: Path, neg: Path, encoding: str = "latin-1", max_record_chars: int = MAX_RECORD_CHARS
) -> list[TextRecord]:
    """The sentence-polarity pair: one snippet per line, labelled "pos" and "neg" (pos first).

    The published files are Latin-1, hence the default. Blank lines are skipped; a line of more
    than `max_record_chars` characters raises DataError.
    """
    records: list[TextRecord] = []
    for path, label in ((Path(pos), "pos"), (Path(neg), "neg")):
        text = _decode(path, encoding, check=True)
        found = []
        for number, line in _lines(text):
            where = f"{path}:{number}"
            if len(line) > max_record_chars:
                raise DataError(str(_oversized(where, max_record_chars)))
            found.append(TextRecord(text=line, label=label, source=where))
        if not found:
            raise DataError(f"{path}: no snippets; expected one {label} snippet per line")
        records += found
    return records


def stratified_split(
    records: Sequence[TextRecord], fraction: float, seed: int
) -> tuple[list[TextRecord], list[TextRecord]]:
    """Split `records` into (rest, held out), holding out `fraction` of every label.

    Each label's records are shuffled with a generator seeded by (`seed`, label), so a label's
    split does not change when other labels come or go; `round(fraction * n)` of them are held
    out, clamped so that a label with two or more records has at least one on each side (a
    label seen once stays in the first list). Both lists keep the input order.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"fraction must be between 0 and 1 (exclusive), got {fraction}")
    by_label: dict[str, list[int]] = {}
    for position, record in enumerate(records):
        by_label.setdefault(record.label, []).append(position)
    held: set[int] = set()
    for label, positions in by_label.items():
        n = len(positions)
        count = min(n - 1, max(1, round(fraction * n))) if n >= 2 else 0
        # A string seed hashes the same in every process (str hash() is salted, this is not).
        rng = random.Random(f"{seed}/{label}")
        shuffled = positions[:]
        rng.shuffle(shuffled)
        held.update(shuffled[:count])
    rest = [r for i, r in enumerate(records) if i not in held]
    out = [r for i, r in enumerate(records) if i in held]
    return rest, out


def _content(value: object, where: str, name: str, encoding: str) -> str:
    """A non-empty string field, or _Invalid saying what is wrong."""
    if not isinstance(value, str):
        raise _Invalid(f"{where}: {name} must be a string, got {type(value).__name__}")
    if bad := _UNDECODED.search(value):
        raise _Invalid(_undecodable_error(f"{where}: {name}", bad.group(), encoding))
    if not value.strip():
        raise _Invalid(f"{where}: empty {name}")
    return value


def _alpaca(fields: dict[str, object], where: str, encoding: str) -> tuple[Message, ...]:
    if "output" not in fields:
        raise _Invalid(
            f"{where}: Alpaca record without field 'output'; expected instruction, input, output"
        )
    instruction = _content(fields["instruction"], where, "field 'instruction'", encoding)
    output = _content(fields["output"], where, "field 'output'", encoding)
    extra = fields.get("input")
    # A missing or blank input is no input; anything else must be a valid string (_content).
    if extra is not None and (not isinstance(extra, str) or extra.strip()):
        instruction += "\n\n" + _content(extra, where, "field 'input'", encoding)
    return Message("user", instruction), Message("assistant", output)


def _chat(fields: dict[str, object], where: str, encoding: str) -> tuple[Message, ...]:
    turns = fields["messages"]
    if not isinstance(turns, list) or not turns:
        raise _Invalid(
            f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects"
        )
    messages: list[Message] = []
    for index, turn in enumerate(turns):
        name = f"messages[{index}]"
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise _Invalid(f"{where}: {name} must be an object with 'role' and 'content'")
        role = turn["role"]
        if role not in ROLES:
            raise _Invalid(
                f"{where}: {name} has unknown role {role!r}; expected one of {', '.join(ROLES)}"
            )
        messages.append(
            Message(cast(Role, role), _content(turn["content"], where, f"{name} content", encoding))
        )
    if messages[-1].role != "assistant":
        # The loss is on assistant turns: a record ending elsewhere teaches nothing after its last
        # answer.
        raise _Invalid(
            f"{where}: the last message has role {messages[-1].role!r}; expected 'assistant'"
        )
    return tuple(messages)


def _conversation(fields: dict[str, object], where: str, encoding: str) -> Conversation:
    if "messages" in fields:
        messages = _chat(fields, where, encoding)
    elif "instruction" in fields:
        messages = _alpaca(fields, where, encoding)
    else:
        present = _names(sorted(fields))
        raise _Invalid(
            f"{where}: expected an Alpaca record (instruction, input, output) or a chat "
            f"record (messages), got fields: {present}"
        )
    return Conversation(messages=messages, source=where)


def read_conversations(
    path: Path,
    *,
    encoding: str = "utf-8",
    skip_invalid: bool = False,
    max_record_chars: int = MAX_RECORD_CHARS,
) -> tuple[list[Conversation], int]:
    """Read instruction records in `path` (.jsonl, or a .json array); returns (conversations,
    skipped).

    A record is Alpaca-style (`instruction`, optional `input`, `output`: one user turn holding the
    instruction, then "\\n\\n" and the input when there is one, and one assistant turn) or a chat
    (`messages`: objects with `role` (system, user or assistant) and `content`, ending with an
    assistant turn). An empty instruction, output or content, an unknown role, a record of neither
    kind, a line that is not JSON or a record of more than `max_record_chars` characters raises
    DataError naming the file and the line (or the array index); with `skip_invalid` the record
    is skipped and counted instead.
    """
    path = Path(path)
    text = _decode(path, encoding, check=not skip_invalid)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json"):
        raise _unknown_format(path, "instruction records", ".jsonl or a .json array")
    read = _jsonl_fields if suffix == ".jsonl" else _json_fields
    fields = read(path, text, max_record_chars)
    conversations = _parse_each(fields, lambda item, where: _conversation(item, where, encoding))
    return _keep_valid(path, skip_invalid, conversations, "instruction records")
