"""Hostile data files: every reader of records and documents, fed random bytes, invalid UTF-8,
huge lines and empty files, gives a clean list of records, a one-line DataError naming the file,
or (with skip_invalid) counted skips; never any other exception.

Most files are near misses of their format (valid records among JSON objects with fields of the
wrong kind, rows with stray quotes, CoNLL lines with bad tags), damaged by a few inserted bytes,
so that the fuzzing reaches past the first parse error. A record longer than the size limit is
one invalid record: the limit is drawn small here so that huge lines stay cheap, and the last
test reads records past the real limit (MAX_RECORD_CHARS) and watches the memory that takes.
"""

from __future__ import annotations

import json
import tempfile
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graft.data.documents import count_documents, iter_documents
from graft.data.records import MAX_RECORD_CHARS, read_conversations, read_labelled, read_polarity
from graft.data.tagged import read_tagged
from graft.errors import DataError

Tally = Callable[[str, str, int], None]
# A reader under test: (file, skip_invalid, max_record_chars) -> (items, skipped).
Read = Callable[[Path, bool, int], tuple[Sequence[object], int]]
FAULT = "reader fuzzing"


def _labelled(path: Path, skip: bool, limit: int) -> tuple[Sequence[object], int]:
    return read_labelled(path, skip_invalid=skip, max_record_chars=limit)


def _tagged(path: Path, skip: bool, limit: int) -> tuple[Sequence[object], int]:
    return read_tagged(path, skip_invalid=skip, max_record_chars=limit)


def _conversations(path: Path, skip: bool, limit: int) -> tuple[Sequence[object], int]:
    return read_conversations(path, skip_invalid=skip, max_record_chars=limit)


def _polarity(path: Path, skip: bool, limit: int) -> tuple[Sequence[object], int]:
    # No skip mode: every problem is an error. The one file serves as both classes.
    return read_polarity(path, path, "utf-8", limit), 0


def _documents(path: Path, skip: bool, limit: int) -> tuple[Sequence[object], int]:
    # No skip mode either. A text file is read when its pieces are asked for.
    texts = [doc.read() for doc in iter_documents([path], max_record_chars=limit)]
    assert count_documents([path]) >= len(texts)
    return texts, 0


def _sections(path: Path, skip: bool, limit: int) -> tuple[Sequence[object], int]:
    docs = iter_documents([path], split_on="^-DOCSTART-", max_record_chars=limit)
    return [doc.read() for doc in docs], 0


# name: (file suffix, the format its contents are near, reader)
READERS: dict[str, tuple[str, str, Read]] = {
    "labelled jsonl": (".jsonl", "json lines", _labelled),
    "labelled json": (".json", "json array", _labelled),
    "labelled csv": (".csv", "csv", _labelled),
    "labelled tsv": (".tsv", "tsv", _labelled),
    "label<TAB>text": (".txt", "label tab text", _labelled),
    "label<TAB>text, no suffix": ("", "label tab text", _labelled),
    "conll": (".conll", "conll", _tagged),
    "tagged jsonl": (".jsonl", "json lines", _tagged),
    "tagged json": (".json", "json array", _tagged),
    "chat and alpaca jsonl": (".jsonl", "json lines", _conversations),
    "chat and alpaca json": (".json", "json array", _conversations),
    "polarity": (".pos", "label tab text", _polarity),
    "documents txt": (".txt", "label tab text", _documents),
    "documents jsonl": (".jsonl", "json lines", _documents),
    "documents sections": (".md", "conll", _sections),
}

# -- what the files hold -----------------------------------------------------------------------

# Strings that mean something to some reader, and any other short text (no lone surrogates:
# UTF-8 cannot hold them; undecodable bytes are inserted as bytes instead).
_MEANINGFUL = st.sampled_from(
    "ham spam text label O B-PER I-PER X user assistant system tool -DOCSTART-".split()
    + ["<|endoftext|>", "", " ", "\t", "\n", '"', ","]
)
_TEXT = _MEANINGFUL | st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)
_TURN = st.fixed_dictionaries({}, optional={"role": _MEANINGFUL, "content": _JSON})
# Some of the fields the readers look for, each of the right kind or not.
_FIELDS = {
    "text": _JSON,
    "label": _JSON,
    "tokens": st.lists(_TEXT, max_size=4) | _JSON,
    "tags": st.lists(_MEANINGFUL, max_size=4) | _JSON,
    "ner_tags": st.lists(st.integers(-1, 3), max_size=4),
    "messages": st.lists(_TURN, max_size=3) | _JSON,
    "instruction": _JSON,
    "input": _JSON,
    "output": _JSON,
}
_WORD = st.sampled_from(["fine", "words", "here", "Paris", "café"])
# Field names the readers do not know, some with a line break (messages quote them).
_NAME = _TEXT | st.builds("{}\n{}".format, _WORD, _WORD)
_RECORD = (
    st.fixed_dictionaries({}, optional=_FIELDS)
    | st.dictionaries(_NAME, _JSON, min_size=1, max_size=3)
    | _JSON
)
_LABEL = st.sampled_from(["ham", "spam"])
# A record every JSON reader takes: labelled text, tagged sentence, Alpaca and document at once.
_VALID_RECORD = st.builds(
    lambda words, label: {
        "text": " ".join(words),
        "label": label,
        "tokens": words,
        "tags": ["O"] * len(words),
        "instruction": " ".join(words),
        "output": label,
    },
    st.lists(_WORD, min_size=1, max_size=3),
    _LABEL,
)
_CELLS = st.lists(_TEXT, min_size=1, max_size=4)


def _lines(kind: str) -> st.SearchStrategy[list[str]]:
    """Lines in the format `kind`, two in three valid and the others near misses."""
    sep = "," if kind == "csv" else "\t"
    valid: st.SearchStrategy[str]
    miss: st.SearchStrategy[str]
    if kind == "json array":
        items = st.lists(_VALID_RECORD | _VALID_RECORD | _RECORD, max_size=5)
        return st.builds(lambda chosen: [json.dumps(chosen)], items)
    if kind == "json lines":
        valid, miss = st.builds(json.dumps, _VALID_RECORD), st.builds(json.dumps, _RECORD) | _TEXT
    elif kind == "conll":
        valid = st.builds("{} NN {}".format, _WORD, st.sampled_from(["O", "B-PER"]))
        miss = st.builds(" ".join, _CELLS) | st.sampled_from(["", "", "-DOCSTART- -X- O"])
    else:  # csv, tsv, label tab text
        valid = st.builds(sep.join, st.tuples(_WORD, _LABEL))
        miss = st.builds(sep.join, _CELLS)
    lines = st.lists(valid | valid | miss, max_size=8)
    if kind in ("csv", "tsv"):
        named = st.builds(lambda name: f'"{name}"{sep}label', _NAME)  # a quoted column name
        header = st.sampled_from([f"text{sep}label", f"text{sep}label", "text", ""]) | named
        return st.builds(lambda first, rest: [first, *rest], header, lines)
    return lines


_BAD_BYTES = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf", b"\r"])
_SHAPES = ["near miss", "near miss", "random bytes", "empty", "huge line"]


@st.composite
def _contents(draw: st.DrawFn, kind: str, limit: int) -> tuple[bytes, str]:
    """A file's bytes, and which shape of input they are."""
    shape = draw(st.sampled_from(_SHAPES))
    if shape == "random bytes":
        return draw(st.binary(max_size=200)), shape
    if shape == "empty":
        return draw(st.sampled_from([b"", b"\n", b" \r\n\t\n", b"\xef\xbb\xbf"])), shape
    lines = draw(_lines(kind))
    if shape == "huge line":
        # Just past the limit drawn for this file: bare, or the text of a record.
        body = draw(st.sampled_from(["x", "é", "\t", " ", ",", '"', "[", "w O "]))
        body *= limit + draw(st.integers(1, 40))
        huge = draw(st.sampled_from([body, json.dumps({"text": body, "label": "a"}), "a\t" + body]))
        lines.insert(draw(st.integers(0, len(lines))), huge)
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    data = bytearray(ending.join(lines).encode("utf-8"))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(_BAD_BYTES)
    return bytes(data), shape


# -- the outcome -------------------------------------------------------------------------------


def _outcome(read: Read, path: Path, skip: bool, limit: int) -> str:
    """What reading gave: records, counted skips or a clear error (else an exception escapes)."""
    try:
        items, skipped = read(path, skip, limit)
    except DataError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
        # The file first, then the line (file:N, file#N) where the problem has one.
        assert message.startswith(str(path)), f"does not name the file: {message!r}"
        return "clear errors"
    assert items, "a reader gives records or refuses the file"
    assert skipped >= 0 and (skip or skipped == 0)
    return "skips counted" if skipped else "clean records"


@pytest.mark.parametrize("name", list(READERS))
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    # `tally` only counts into a module-level table, so examples may share it.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_reader_gives_records_or_a_clear_error(
    name: str, data: st.DataObject, tally: Tally
) -> None:
    suffix, kind, read = READERS[name]
    limit = data.draw(st.sampled_from([MAX_RECORD_CHARS, 8, 64, 256]), label="limit")
    content, shape = data.draw(_contents(kind, min(limit, 64)), label="content")
    skip = data.draw(st.booleans(), label="skip_invalid")
    tally(FAULT, "inputs", 1)
    tally(FAULT, f"{shape} inputs", 1)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"data{suffix}"
        path.write_bytes(content)
        try:
            outcome = _outcome(read, path, skip, limit)
        except AssertionError:
            raise
        except Exception:
            tally(FAULT, "tracebacks", 1)
            raise
    tally(FAULT, outcome, 1)
    tally(FAULT, "tracebacks", 0)


# -- records past the real limit ----------------------------------------------------------------

# A record just over MAX_RECORD_CHARS, shaped to cost most if it were parsed: millions of JSON
# values, cells, tabs or words, each of which would become an object of tens of bytes.
_HUGE = MAX_RECORD_CHARS + 2
_OVERSIZED: dict[str, tuple[str, Read, str]] = {
    "labelled jsonl": (".jsonl", _labelled, '{"text": [' + "[]," * (_HUGE // 3) + "[]]}"),
    "labelled csv": (".csv", _labelled, "a," * (_HUGE // 2)),
    "labelled tsv": (".tsv", _labelled, "a\t" * (_HUGE // 2)),
    "label<TAB>text": (".txt", _labelled, "a\t" * (_HUGE // 2)),
    "conll": (".conll", _tagged, "w " * (_HUGE // 2) + "O"),
    "chat jsonl": (".jsonl", _conversations, '{"messages": [' + "{}," * (_HUGE // 3) + "{}]}"),
    "documents jsonl": (".jsonl", _documents, '{"text": "' + "x" * _HUGE + '"}'),
}
_GOOD = {
    ".jsonl": json.dumps({"text": "fine", "label": "a", "instruction": "Hi", "output": "Hello"}),
    ".csv": "fine,a",
    ".tsv": "fine\ta",
    ".txt": "a\tfine",
    ".conll": "fine O",
}


@pytest.mark.parametrize("name", list(_OVERSIZED))
def test_a_record_past_the_limit_costs_no_more_than_its_characters(
    name: str, tmp_path: Path, tally: Tally
) -> None:
    suffix, read, huge = _OVERSIZED[name]
    header = {".csv": "text,label\n", ".tsv": "text\tlabel\n"}.get(suffix, "")
    end = "\n\n" if suffix == ".conll" else "\n"  # a CoNLL sentence ends at a blank line
    path = tmp_path / f"big{suffix}"
    path.write_text(f"{header}{_GOOD[suffix]}{end}{huge}{end}{_GOOD[suffix]}\n", encoding="utf-8")
    size = path.stat().st_size
    line = 3 if header or suffix == ".conll" else 2
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as caught:
            read(path, False, MAX_RECORD_CHARS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected = f"{path}:{line}: record longer than {MAX_RECORD_CHARS:,} characters"
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)
    # The file is read whole (its bytes, then its text) and the record measured, never parsed:
    # parsed, it took 8 to 30 times its size.
    assert peak < 4 * size, f"reading took {peak / size:.1f} times the file's size"
    if read is not _documents:  # documents have no skip mode
        items, skipped = read(path, True, MAX_RECORD_CHARS)
        assert len(items) == 2 and skipped == 1
    tally(FAULT, "records past the real limit refused", 1)
