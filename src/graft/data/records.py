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
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, cast, get_args

from graft.errors import ConfigError, DataError

# The label of a position no loss scores (a prompt token, a sub-token after a word's first, a
# pad): transformers' and torch's cross_entropy convention, so labels carry over unchanged.
IGNORE_INDEX = -100

__all__ = [
    "Conversation",
    "Message",
    "Role",
    "TextRecord",
    "read_conversations",
    "read_labelled",
    "read_polarity",
    "stratified_split",
]

_FORMATS = ".jsonl, .json, .csv, .tsv, or label<TAB>text lines (no suffix or .txt)"
# Bytes the encoding could not decode, as `errors="surrogateescape"` leaves them in the text.
_UNDECODED = re.compile("[\udc80-\udcff]")


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


def _unknown_format(path: Path, what: str, formats: str) -> DataError:
    suffix = path.suffix.lower()
    kind = f"{suffix!r} file" if suffix else "file without a suffix"
    return DataError(f"{path}: cannot read a {kind} as {what}; graft reads {formats}")


def _decode(path: Path, encoding: str, *, check: bool = False) -> str:
    """The file's text; bytes the encoding rejects are kept as lone surrogates, to be reported
    with their record, or at once with `check` (`_check_decoded`)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
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
        f"pass encoding={other!r} (or the file's encoding)"
    )


def _check_decoded(path: Path, text: str, encoding: str) -> None:
    """Raise for the first undecodable byte, naming its line."""
    if match := _UNDECODED.search(text):
        line = text.count("\n", 0, match.start()) + 1
        raise DataError(_undecodable_error(f"{path}:{line}", match.group(), encoding))


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) for each non-blank line, without its line ending."""
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line


def _record(
    fields: dict[str, object], where: str, text_field: str, label_field: str, encoding: str
) -> TextRecord:
    """A TextRecord from one parsed record's fields, or _Invalid saying what is wrong."""
    for name, option in ((text_field, "text_field"), (label_field, "label_field")):
        if name not in fields:
            present = ", ".join(sorted(str(k) for k in fields)) or "none"
            raise _Invalid(
                f"{where}: missing field {name!r} (fields: {present}); "
                f"pass {option}=... to read another field"
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


def _jsonl_fields(path: Path, text: str) -> Iterator[_Fields]:
    for number, line in _lines(text):
        where = f"{path}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            value = _Invalid(
                f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); "
                "expected one JSON object per line"
            )
        yield where, _as_object(value, where)


def _json_fields(path: Path, text: str) -> Iterator[_Fields]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        # The whole array is one value: a syntax error leaves no records to skip to.
        raise DataError(
            f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}); "
            "expected an array of objects"
        ) from exc
    if not isinstance(value, list):
        raise DataError(
            f"{path}: expected a JSON array of objects, got a JSON {type(value).__name__}"
        )
    for index, item in enumerate(value):
        where = f"{path}#{index}"
        yield where, _as_object(item, where)


def _table_fields(
    path: Path, text: str, delimiter: str, text_field: str, label_field: str
) -> Iterator[_Fields]:
    # TSV files seldom quote and often hold stray quotes in text, so .tsv reads quotes literally
    # (as GLUE's readers do); CSV follows the csv module's dialect.
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=delimiter,
        quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL,
    )
    header: list[str] | None = None
    start = 1
    try:
        for row in reader:
            where, start = f"{path}:{start}", reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                for name, option in ((text_field, "text_field"), (label_field, "label_field")):
                    if name not in header:
                        raise DataError(
                            f"{where}: no column {name!r} in the header (columns: "
                            f"{', '.join(header)}); pass {option}=... to read another"
                        )
            elif len(row) == len(header):
                yield where, dict(zip(header, row))
            else:
                columns = f"{len(header)} fields like the header ({', '.join(header)})"
                yield where, _Invalid(f"{where}: expected {columns}, got {len(row)}")
    except csv.Error as exc:
        raise DataError(
            f"{path}:{reader.line_num}: malformed {delimiter!r}-separated line ({exc})"
        ) from exc
    if header is None:
        raise DataError(f"{path}: empty file; expected a header row naming the columns")


def _label_tab_text_fields(path: Path, text: str) -> Iterator[_Fields]:
    for number, line in _lines(text):
        where = f"{path}:{number}"
        parts = line.split("\t")
        if len(parts) == 2:
            yield where, {"label": parts[0], "text": parts[1]}
        else:
            problem = f"{where}: expected 2 tab-separated fields (label<TAB>text), got {len(parts)}"
            yield where, _Invalid(problem)


def _is_label_tab_text(text: str) -> bool:
    first = next(_lines(text), None)
    return first is not None and len(first[1].split("\t")) == 2


def read_labelled(
    path: Path,
    *,
    text_field: str = "text",
    label_field: str = "label",
    encoding: str = "utf-8",
    skip_invalid: bool = False,
) -> tuple[list[TextRecord], int]:
    """Read the labelled records in `path`; returns (records, number of invalid ones skipped).

    The format follows the suffix (see the module docstring). A bad record (a missing or
    non-string field, empty text or label, a line that is not JSON, a row with the wrong
    number of fields, bytes `encoding` cannot decode) raises DataError naming the file, the
    line and the field; with `skip_invalid` it is skipped and counted instead. Problems with
    the file as a whole (missing, unknown format, a JSON array that does not parse, no usable
    header, no valid record at all) always raise.
    """
    path = Path(path)
    text = _decode(path, encoding, check=not skip_invalid)
    suffix = path.suffix.lower()
    fields: Iterator[_Fields]
    if suffix == ".jsonl":
        fields = _jsonl_fields(path, text)
    elif suffix == ".json":
        fields = _json_fields(path, text)
    elif suffix in (".csv", ".tsv"):
        fields = _table_fields(
            path, text, "," if suffix == ".csv" else "\t", text_field, label_field
        )
    elif suffix in ("", ".txt") and _is_label_tab_text(text):
        fields = _label_tab_text_fields(path, text)
        # The line names the columns; the caller's field names do not apply.
        text_field, label_field = "text", "label"
    else:
        raise _unknown_format(path, "labelled records", _FORMATS)
    records = _parse_each(
        fields, lambda item, where: _record(item, where, text_field, label_field, encoding)
    )
    return _keep_valid(path, skip_invalid, records, "records")


def read_polarity(pos: Path, neg: Path, encoding: str = "latin-1") -> list[TextRecord]:
    """The sentence-polarity pair: one snippet per line, labelled "pos" and "neg" (pos first).

    The published files are Latin-1, hence the default. Blank lines are skipped.
    """
    records: list[TextRecord] = []
    for path, label in ((Path(pos), "pos"), (Path(neg), "neg")):
        text = _decode(path, encoding, check=True)
        found = [
            TextRecord(text=line, label=label, source=f"{path}:{number}")
            for number, line in _lines(text)
        ]
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
        present = ", ".join(sorted(str(k) for k in fields)) or "none"
        raise _Invalid(
            f"{where}: expected an Alpaca record (instruction, input, output) or a chat "
            f"record (messages), got fields: {present}"
        )
    return Conversation(messages=messages, source=where)


def read_conversations(
    path: Path, *, encoding: str = "utf-8", skip_invalid: bool = False
) -> tuple[list[Conversation], int]:
    """Read instruction records in `path` (.jsonl, or a .json array); returns (conversations,
    skipped).

    A record is Alpaca-style (`instruction`, optional `input`, `output`: one user turn holding the
    instruction, then "\\n\\n" and the input when there is one, and one assistant turn) or a chat
    (`messages`: objects with `role` (system, user or assistant) and `content`, ending with an
    assistant turn). An empty instruction, output or content, an unknown role, a record of neither
    kind or a line that is not JSON raises DataError naming the file and the line (or the array
    index); with `skip_invalid` the record is skipped and counted instead.
    """
    path = Path(path)
    text = _decode(path, encoding, check=not skip_invalid)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json"):
        raise _unknown_format(path, "instruction records", ".jsonl or a .json array")
    fields = _jsonl_fields(path, text) if suffix == ".jsonl" else _json_fields(path, text)
    conversations = _parse_each(fields, lambda item, where: _conversation(item, where, encoding))
    return _keep_valid(path, skip_invalid, conversations, "instruction records")
