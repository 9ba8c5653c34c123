"""Hostile data files: every reader of records and documents, fed random bytes, invalid UTF-8,
huge lines and empty files, gives a clean list of records, a one-line DataError naming the file,
or (with skip_invalid) counted skips; never any other exception.

Most files are near misses of their format (valid records among JSON objects with fields of the
wrong kind, rows with stray quotes, CoNLL lines with bad tags), damaged by a few inserted bytes,
so that the fuzzing reaches past the first parse error. A record longer than the size limit is
one invalid record: the limit is drawn small here so that huge lines stay cheap, and the last
test reads records past the real limit (MAX_RECORD_CHARS) and watches the memory that takes.
Source/target pairs, questions (SQuAD and flat records) and parallel corpora (two files read
together, as many lines in each most of the time) have near misses of their own, and a record
they keep must hold decoded text only (an undecodable byte makes a record invalid).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graft.data.documents import count_documents, iter_documents
from graft.data.pairs import is_pair_file, read_pairs, read_parallel
from graft.data.qa import read_qa
from graft.data.records import MAX_RECORD_CHARS, read_conversations, read_labelled, read_polarity
from graft.data.tagged import read_tagged
from graft.errors import DataError

Tally = Callable[[str, str, int], None]
# A reader under test: (file, skip_invalid, max_record_chars) -> (items, skipped).
Read = Callable[[Path, bool, int], tuple[Sequence[object], int]]
Lines = st.SearchStrategy[list[str]]
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


# A lone surrogate: what an undecodable byte becomes (surrogateescape) until its record is judged.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from _strings(item)


def _decoded(records: Sequence[object]) -> Sequence[object]:
    """`records`, each checked to hold decoded text only (its nested records too)."""
    for record in records:
        assert dataclasses.is_dataclass(record) and not isinstance(record, type)
        for text in _strings(dataclasses.astuple(record)):
            assert not _SURROGATE.search(text), f"an undecodable byte kept in {record!r}"
    return records


def _pairs(path: Path, skip: bool, limit: int) -> tuple[Sequence[object], int]:
    is_pair_file(path)  # how a file of pairs is told from chat records: it answers, never raises
    pairs, skipped = read_pairs(path, skip_invalid=skip, max_record_chars=limit)
    return _decoded(pairs), skipped


def _questions(path: Path, skip: bool, limit: int) -> tuple[Sequence[object], int]:
    questions, skipped = read_qa(path, skip_invalid=skip, max_record_chars=limit)
    for question in questions:
        for answer in question.answers:
            assert question.context[answer.start : answer.end] == answer.text, question
    return _decoded(questions), skipped


def _parallel(prefix: Path, skip: bool, limit: int) -> tuple[Sequence[object], int]:
    # PREFIX.en and PREFIX.de, each plain or gzipped.
    pairs, skipped = read_parallel(prefix, "en", "de", skip_invalid=skip, max_record_chars=limit)
    return _decoded(pairs), skipped


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
    "pairs jsonl": (".jsonl", "pairs json lines", _pairs),
    "pairs json": (".json", "pairs json array", _pairs),
    "qa jsonl": (".jsonl", "questions json lines", _questions),
    "qa json, SQuAD or records": (".json", "questions json", _questions),
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

# -- source/target pairs and questions: near misses of their own, so that the readers above are
# fed what they were before these came.

_T = TypeVar("_T")


def _mostly(valid: st.SearchStrategy[_T], miss: st.SearchStrategy[_T]) -> st.SearchStrategy[_T]:
    """`valid` two times in three, else `miss` (`valid | valid | miss` would not do: one_of drops
    the repeat and draws each of miss's own branches as often as `valid`)."""
    return st.integers(0, 2).flatmap(lambda n: valid if n else miss)


_WORDS = st.lists(_WORD, min_size=1, max_size=4)
_SENTENCE = st.builds(" ".join, _WORDS)
_VALID_PAIR = st.fixed_dictionaries({"source": _SENTENCE, "target": _SENTENCE})
# A string as an undecodable byte leaves it (a lone surrogate, once decoded with
# surrogateescape), which JSON writes as the escape of that surrogate.
_UNDECODABLE = st.builds("{}\udcff".format, _WORD)
_PAIR_FIELD = _SENTENCE | _JSON | _UNDECODABLE
# A field missing, empty, undecodable or of another kind, or another record altogether.
_PAIR_MISS = (
    st.fixed_dictionaries({}, optional={"source": _PAIR_FIELD, "target": _PAIR_FIELD}) | _RECORD
)
# What is wrong with a near miss; most often its answer, the rule that is the readers' own.
_QA_DAMAGE = ["answer moved", "answer changed", "answer moved", "answer changed"]
_QA_DAMAGE += ["field changed", "field missing", "undecodable"]
# Fields that may hold an undecodable byte; the kept ones (id, title) most often.
_QA_TEXTS = ["context", "question", "id", "title", "id", "title"]
_QA_FIELDS = ["context", "question", "answers", "id", "title", "is_impossible"]


@st.composite
def _question(
    draw: st.DrawFn, words: list[str], miss: bool, squad: bool = False
) -> dict[str, object]:
    """A question on the context `words`, answered by one of them at its answer_start, in either
    layout of `answers` (SQuAD's list, and no context of its own, in a SQuAD file); with `miss`
    one thing about it is wrong."""
    at = draw(st.integers(0, len(words) - 1))
    begin = len(" ".join(words[:at])) + (at > 0)  # in characters, not bytes ("café")
    text: object = words[at]
    start: object = begin
    damage = draw(st.sampled_from(_QA_DAMAGE)) if miss else ""
    if damage == "answer moved":
        start = draw(st.sampled_from([begin + 1, begin - 1, str(begin), True, None, 1 << 40]))
    elif damage == "answer changed":
        text = draw(_WORD | _JSON)
    context = " ".join(words)
    record: dict[str, object] = {"context": context, "question": draw(_SENTENCE) + "?"}
    if draw(st.integers(0, 4)) == 0:  # unanswerable (SQuAD v2)
        record.update(is_impossible=True, answers=[])
    elif squad or draw(st.booleans()):
        record["answers"] = [{"text": text, "answer_start": start}]
    else:  # Hugging Face datasets' layout
        record["answers"] = {"text": [text], "answer_start": [start]}
    if draw(st.booleans()):
        record["id"] = draw(st.sampled_from(["q1", "56be4db0acb8001400a502ec"]) | st.integers(0, 9))
    if not squad and draw(st.booleans()):
        record["title"] = draw(_WORD)
    if damage == "undecodable":
        record[draw(st.sampled_from(_QA_TEXTS))] = draw(_UNDECODABLE)
    elif damage in ("field changed", "field missing"):
        name = draw(st.sampled_from(_QA_FIELDS))
        if damage == "field missing":
            record.pop(name, None)
        else:
            record[name] = draw(_JSON)
    if squad and record.get("context") == context:
        del record["context"]  # the paragraph's
    return record


_QUESTION = _WORDS.flatmap(lambda words: _question(words, False))
_QUESTION_MISS = _mostly(_WORDS.flatmap(lambda words: _question(words, True)), _RECORD)


@st.composite
def _squad(draw: st.DrawFn) -> str:
    """A SQuAD file: articles of paragraphs of questions, some near misses, and one time in three
    a level of its nesting missing or of another kind."""
    articles: list[object] = []
    fields: list[tuple[dict[str, object], str]] = []  # where a field may be missing or wrong
    items: list[list[object]] = [articles]  # where an item may be of another kind
    for _ in range(draw(st.integers(1, 2))):
        paragraphs: list[object] = []
        for _ in range(draw(st.integers(1, 2))):
            words = draw(_WORDS)
            qas: list[object] = draw(
                st.lists(
                    _mostly(_question(words, False, True), _question(words, True, True)),
                    min_size=1,
                    max_size=3,
                )
            )
            paragraph: dict[str, object] = {"context": " ".join(words), "qas": qas}
            paragraphs.append(paragraph)
            fields += [(paragraph, "context"), (paragraph, "qas")]
            items.append(qas)
        title = draw(_mostly(_WORD, _UNDECODABLE))
        article: dict[str, object] = {"title": title, "paragraphs": paragraphs}
        articles.append(article)
        fields.append((article, "paragraphs"))
        items.append(paragraphs)
    document: dict[str, object] = {"version": "v2.0", "data": articles}
    fields.append((document, "data"))
    if draw(st.integers(0, 2)) == 0:
        if draw(st.booleans()):
            owner, name = draw(st.sampled_from(fields))
            if draw(st.booleans()):
                del owner[name]
            else:
                owner[name] = draw(_JSON)
        else:
            draw(st.sampled_from(items))[0] = draw(_JSON)
    return json.dumps(document)


# Files of these hold two records or more (the "empty" shape has the files with none), so that
# a file read whole meets valid records and near misses together.
def _json_lines(valid: st.SearchStrategy[object], miss: st.SearchStrategy[object]) -> Lines:
    line = _mostly(st.builds(json.dumps, valid), st.builds(json.dumps, miss) | _TEXT)
    return st.lists(line, min_size=2, max_size=8)


def _json_array(valid: st.SearchStrategy[object], miss: st.SearchStrategy[object]) -> Lines:
    items = st.lists(_mostly(valid, miss), min_size=2, max_size=5)
    return st.builds(lambda chosen: [json.dumps(chosen)], items)


# JSON that no parser of Python's takes as it is: nesting past its recursion limit, an integer
# of more digits than int() converts.
_HOSTILE_JSON = st.sampled_from(["[" * 100_000, '{"data": [' + "9" * 5000 + "]}"])
_QUESTIONS_JSON = (
    st.builds(lambda text: [text], _squad()),
    _json_array(_QUESTION, _QUESTION_MISS),
    st.builds(lambda text: [text], _HOSTILE_JSON),
)
# format -> its lines, for the formats of pairs and questions
_MORE_LINES: dict[str, Lines] = {
    "pairs json lines": _json_lines(_VALID_PAIR, _PAIR_MISS),
    "pairs json array": _json_array(_VALID_PAIR, _PAIR_MISS),
    "questions json lines": _json_lines(_QUESTION, _QUESTION_MISS),
    # SQuAD two times in five, an array of records two in five, hostile JSON one in five
    "questions json": st.sampled_from([0, 0, 1, 1, 2]).flatmap(lambda n: _QUESTIONS_JSON[n]),
}
# A huge line's record, in the fields of each format that has its own (else text and label).
_HUGE_FIELDS = {
    "pairs json lines": ("source", "target"),
    "questions json lines": ("context", "question"),
}


def _lines(kind: str) -> Lines:
    """Lines in the format `kind`, two in three valid and the others near misses."""
    if kind in _MORE_LINES:
        return _MORE_LINES[kind]
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
        text, label = _HUGE_FIELDS.get(kind, ("text", "label"))
        huge = draw(st.sampled_from([body, json.dumps({text: body, label: "a"}), "a\t" + body]))
        lines.insert(draw(st.integers(0, len(lines))), huge)
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    data = bytearray(ending.join(lines).encode("utf-8"))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(_BAD_BYTES)
    return bytes(data), shape


# -- the outcome -------------------------------------------------------------------------------


def _outcome(read: Read, path: Path, skip: bool, limit: int, files: Sequence[Path] = ()) -> str:
    """What reading gave: records, counted skips or a clear error (else an exception escapes).
    An error names `path` first, or one of `files` where the reader reads several."""
    try:
        items, skipped = read(path, skip, limit)
    except DataError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
        # The file first, then the line (file:N, file#N) where the problem has one.
        named = tuple(str(file) for file in files or [path])
        assert message.startswith(named), f"does not name the file: {message!r}"
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


# -- parallel corpora: two files read together -------------------------------------------------

# A line that no line break splits (a parallel corpus is split at "\n" alone).
_PARALLEL_LINE = _mostly(
    _SENTENCE, st.sampled_from(["", " ", "\t"]) | st.builds(lambda t: t.replace("\n", " "), _TEXT)
)
_PARALLEL_SHAPES = ["near miss", "near miss", "near miss", "huge line", *_SHAPES[2:4], "missing"]
# One file of a parallel corpus: the name after PREFIX. (a language, .gz when gzipped), and its
# bytes, or None for no such file.
ParallelFile = tuple[str, bytes | None]


@st.composite
def _parallel_corpus(
    draw: st.DrawFn, shape: str, limit: int
) -> tuple[list[ParallelFile], tuple[int, int] | None]:
    """PREFIX.en and PREFIX.de, near misses of aligned text with as many lines two times in
    three, and their numbers of lines where `shape` leaves them known; `shape` spoils one file."""
    source = draw(st.lists(_PARALLEL_LINE, max_size=6))
    same = st.lists(_PARALLEL_LINE, min_size=len(source), max_size=len(source))
    target = draw(_mostly(same, st.lists(_PARALLEL_LINE, max_size=7)))
    sides, spoilt = [source, target], draw(st.integers(0, 1))
    if shape == "huge line" and sides[spoilt]:  # in place of a line, so the counts stay
        body = draw(st.sampled_from(["x", "é", " ", "\t"])) * (limit + draw(st.integers(1, 40)))
        sides[spoilt][draw(st.integers(0, len(sides[spoilt]) - 1))] = body
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    files: list[ParallelFile] = []
    for side, (lang, lines) in enumerate(zip(("en", "de"), sides)):
        data = bytearray("".join(line + ending for line in lines).encode("utf-8"))
        for _ in range(draw(st.integers(0, 2)) if data and side == spoilt else 0):
            at = draw(st.integers(0, len(data) - 1))  # within a line: the count stays
            data[at:at] = draw(_BAD_BYTES)
        content: bytes | None = bytes(data)
        if side == spoilt and shape == "random bytes":
            content = draw(st.binary(max_size=200))  # not gzip either, when named .gz
        elif side == spoilt and shape == "empty":
            content = draw(st.sampled_from([b"", b"\n", b"\xef\xbb\xbf"]))
        elif side == spoilt and shape == "missing":
            content = None
        gzipped = draw(st.integers(0, 2)) == 0
        if gzipped and content is not None and not (side == spoilt and shape == "random bytes"):
            content = gzip.compress(content, mtime=0)
        files.append((f"{lang}.gz" if gzipped else lang, content))
    known = shape in ("near miss", "huge line")
    return files, (len(source), len(target)) if known else None


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_parallel_files_give_pairs_or_a_clear_error(data: st.DataObject, tally: Tally) -> None:
    limit = data.draw(st.sampled_from([MAX_RECORD_CHARS, 8, 64, 256]), label="limit")
    shape = data.draw(st.sampled_from(_PARALLEL_SHAPES), label="shape")
    files, counts = data.draw(_parallel_corpus(shape, min(limit, 64)), label="files")
    skip = data.draw(st.booleans(), label="skip_invalid")
    tally(FAULT, "inputs", 1)
    tally(FAULT, f"{shape} inputs", 1)
    with tempfile.TemporaryDirectory() as directory:
        prefix = Path(directory) / "corpus"
        # An error names the file at fault first (the source file for misaligned files), a
        # missing one by its plain name.
        named: list[Path] = []
        for name, content in files:
            path = Path(f"{prefix}.{name}")
            if content is None:
                path = Path(f"{prefix}.{name.removesuffix('.gz')}")
            else:
                path.write_bytes(content)
            named.append(path)
        try:
            outcome = _outcome(_parallel, prefix, skip, limit, files=named)
        except AssertionError:
            raise
        except Exception:
            tally(FAULT, "tracebacks", 1)
            raise
        if counts is not None and counts[0] != counts[1]:
            # Which lines are misaligned is unknown: nothing can be skipped, and skipping is no
            # reason to read on (undecodable bytes are then judged a line at a time, after this).
            assert outcome == "clear errors", f"files of {counts} lines read as {outcome}"
            with pytest.raises(DataError, match=f"has {counts[0]} lines but .* has {counts[1]};"):
                _parallel(prefix, True, limit)
            tally(FAULT, "misaligned parallel files refused", 1)
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
    "pairs jsonl": (".jsonl", _pairs, '{"source": [' + "[]," * (_HUGE // 3) + "[]]}"),
    "qa jsonl": (".jsonl", _questions, '{"answers": [' + "{}," * (_HUGE // 3) + "{}]}"),
}
_GOOD = {
    ".jsonl": json.dumps({"text": "fine", "label": "a", "instruction": "Hi", "output": "Hello"}),
    ".csv": "fine,a",
    ".tsv": "fine\ta",
    ".txt": "a\tfine",
    ".conll": "fine O",
}
# The good records of readers with fields of their own (else _GOOD's for the suffix).
_GOOD_RECORD = {
    "pairs jsonl": json.dumps({"source": "fine", "target": "bien"}),
    "qa jsonl": json.dumps(
        {
            "context": "fine words",
            "question": "Which?",
            "answers": [{"text": "words", "answer_start": 5}],
        }
    ),
}


@pytest.mark.parametrize("name", list(_OVERSIZED))
def test_a_record_past_the_limit_costs_no_more_than_its_characters(
    name: str, tmp_path: Path, tally: Tally
) -> None:
    suffix, read, huge = _OVERSIZED[name]
    header = {".csv": "text,label\n", ".tsv": "text\tlabel\n"}.get(suffix, "")
    end = "\n\n" if suffix == ".conll" else "\n"  # a CoNLL sentence ends at a blank line
    good = _GOOD_RECORD.get(name, _GOOD[suffix])
    path = tmp_path / f"big{suffix}"
    path.write_text(f"{header}{good}{end}{huge}{end}{good}\n", encoding="utf-8")
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


# -- undecodable bytes in the fields a question keeps ---------------------------------------------

# The fuzzing above checks that no record it gives back holds an undecodable byte, but whether
# its 60 examples read a file whole with one in a question's id or title turns on its draws
# (which shift with every literal in the modules loaded): these pin that case.
_ASKED: dict[str, object] = {
    "question": "Which?",
    "answers": [{"text": "words", "answer_start": 5}],
}
_FLAT: dict[str, object] = {"context": "fine words", **_ASKED}


def _article(title: str) -> dict[str, object]:
    return {"title": title, "paragraphs": [{"context": "fine words", "qas": [_ASKED]}]}


# name: (suffix, the file's records, one a line), "@" standing for the byte 0xff
_UNDECODABLE_FIELDS: dict[str, tuple[str, list[dict[str, object]]]] = {
    "id": (".jsonl", [_FLAT, {**_FLAT, "id": "q@"}]),
    "title": (".jsonl", [_FLAT, {**_FLAT, "title": "caf@"}]),
    "SQuAD title": (".json", [{"data": [_article("ok"), _article("caf@")]}]),
}


@pytest.mark.parametrize("name", list(_UNDECODABLE_FIELDS))
def test_a_question_with_an_undecodable_byte_is_skipped(name: str, tmp_path: Path) -> None:
    suffix, records = _UNDECODABLE_FIELDS[name]
    path = tmp_path / f"qa{suffix}"
    text = "\n".join(json.dumps(record).replace("@", "\udcff") for record in records)
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    questions, skipped = read_qa(path, skip_invalid=True)
    assert len(questions) == 1 and skipped == 1
    _decoded(questions)
    with pytest.raises(DataError, match="byte 0xff is not valid utf-8"):
        read_qa(path)
