"""Extractive question answering records: reading them, and the one path from a question and its
context to model inputs.

This module owns the answer to "what is one question, where is its answer, and which tokens of
which window hold it". `read_qa` reads SQuAD JSON (v1.1, and v2.0, whose `is_impossible`
questions have no answer) and flat records, JSONL or a .json array, with `context`, `question`
and `answers` in Hugging Face datasets' layout (`{"text": [...], "answer_start": [...]}`) or as a
list of `{"text", "answer_start"}`. Every record remembers its source:
`file:data[3].paragraphs[1].qas[0]` in SQuAD JSON, `file:line` in JSONL, `file#index` in an
array. An answer must be the context's characters at its `answer_start`, else the record is
invalid (a DataError naming it, or skipped and counted with `skip_invalid`).

`qa_windows` is the one path from (question, context) to model inputs, which fine-tuning,
`graft eval --task qa` and serving share. An encoder reads `[CLS] question [SEP] piece [SEP]`,
token types 0 up to the first [SEP] and 1 after it (as BERT and NSP's `pack_pair` lay out a
pair). A context longer than one window is read in several whose pieces overlap by `stride`
context tokens (Hugging Face's `doc_stride`), the last reaching the context's end; every context
token is in at least one window. Each position keeps the characters of the context it stands
for, from the tokenizer's offsets with surrounding whitespace stripped (byte-level BPE counts a
word's leading space as part of its first token), so a token span maps back to exactly the
context's characters. `answer_positions` points an answer at its first and last token in a
window that holds all of it, and at [CLS], position 0, in a window that holds none or only part
of it: an "unanswerable window", as BERT and transformers' examples train them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from graft.data.inputs import leading_ids
from graft.data.records import (
    _UNDECODED,
    MAX_RECORD_CHARS,
    _as_object,
    _decode,
    _Fields,
    _Invalid,
    _jsonl_fields,
    _keep_valid,
    _names,
    _oversized,
    _parse_each,
    _undecodable_error,
    _unknown_format,
)
from graft.data.tokenizer import Tokenizer
from graft.errors import ConfigError, DataError, TokenizerError

__all__ = [
    "QA_FRAMING",
    "Answer",
    "QARecord",
    "QAWindow",
    "answer_positions",
    "answer_tokens",
    "qa_windows",
    "read_qa",
]

_FORMATS = "SQuAD .json (data/paragraphs/qas), .jsonl, or a .json array of records"
#: Ids a window adds around the question and the piece: [CLS], [SEP] and [SEP].
QA_FRAMING = 3
# How much of a text an error message quotes.
_QUOTE = 40


@dataclass(frozen=True)
class Answer:
    """One gold answer: its text, which is the context's characters from `start`."""

    text: str
    start: int

    @property
    def end(self) -> int:
        """The character after the answer's last."""
        return self.start + len(self.text)


@dataclass(frozen=True)
class QARecord:
    """One question on one context with its gold answers (none: unanswerable, SQuAD v2).
    `source` says where it was read: `file:data[i].paragraphs[j].qas[k]`, `file:line` or
    `file#index`."""

    id: str
    title: str
    question: str
    context: str
    answers: tuple[Answer, ...]
    source: str


Span = tuple[int, int]


@dataclass(frozen=True)
class QAWindow:
    """One window of a question on its context: `[CLS] question [SEP] piece [SEP]`.

    `offsets[p]` is the context's [start, end) characters that position p stands for, None where
    it stands for none (the framing, the question, a whitespace-only token). The piece is the
    context tokens `first_token` .. `first_token + piece_tokens - 1`, at positions from
    `piece_start`; `spans` are every context token's characters (shared by a context's windows),
    what `answer_positions` judges whether an answer lies wholly in the window by."""

    ids: tuple[int, ...]
    token_type_ids: tuple[int, ...]
    offsets: tuple[Span | None, ...]
    piece_start: int
    first_token: int
    piece_tokens: int
    spans: tuple[Span, ...]

    def __len__(self) -> int:
        return len(self.ids)


def _quoted(text: str) -> str:
    """A text for a one-line message: its repr, cut to _QUOTE characters."""
    return repr(text if len(text) <= _QUOTE else text[:_QUOTE] + "...")


def _text(fields: dict[str, object], name: str, where: str, encoding: str) -> str:
    """Field `name`, a non-blank string, or _Invalid saying what is wrong."""
    if name not in fields:
        raise _Invalid(
            f"{where}: missing field {name!r} (fields: {_names(sorted(fields))}); "
            "expected context, question and answers"
        )
    value = fields[name]
    if not isinstance(value, str):
        raise _Invalid(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if bad := _UNDECODED.search(value):
        raise _Invalid(_undecodable_error(f"{where}: field {name!r}", bad.group(), encoding))
    if not value.strip():
        raise _Invalid(f"{where}: empty field {name!r}")
    return value


def _answer_items(value: object, where: str) -> list[tuple[object, object]]:
    """(text, answer_start) pairs from either layout of `answers`."""
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise _Invalid(
                f"{where}: field 'answers' must hold lists 'text' and 'answer_start' "
                "of the same length"
            )
        return list(zip(texts, starts))
    if isinstance(value, list):
        items = []
        for index, item in enumerate(value):
            if not isinstance(item, dict) or "text" not in item or "answer_start" not in item:
                raise _Invalid(
                    f"{where}: answers[{index}] must be an object with 'text' and 'answer_start'"
                )
            items.append((item["text"], item["answer_start"]))
        return items
    raise _Invalid(
        f"{where}: field 'answers' must be a list of {{text, answer_start}} objects or "
        f"{{text: [...], answer_start: [...]}}, got {type(value).__name__}"
    )


def _answers(fields: dict[str, object], context: str, where: str) -> tuple[Answer, ...]:
    impossible = fields.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise _Invalid(f"{where}: field 'is_impossible' must be true or false")
    if impossible:
        return ()  # SQuAD v2 keeps what a careless reader might answer in plausible_answers
    # A missing field is not "no answer": read so, a misspelt `answer` would train the question
    # on [CLS]. No answer is said explicitly: SQuAD v2's is_impossible, or an empty `answers`
    # (how Hugging Face's squad_v2, which has no is_impossible, writes an unanswerable question).
    if "answers" not in fields:
        raise _Invalid(
            f"{where}: missing field 'answers' (fields: {_names(sorted(fields))}); a question "
            "with no answer has empty answers or is_impossible true"
        )
    answers = []
    for index, (text, start) in enumerate(_answer_items(fields["answers"], where)):
        if not isinstance(text, str) or not text.strip():
            raise _Invalid(f"{where}: answer {index} must be a non-empty string, got {text!r}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise _Invalid(
                f"{where}: answer {index} needs an answer_start that is an integer >= 0, "
                f"got {start!r}"
            )
        found = context[start : start + len(text)]
        if found != text:
            raise _Invalid(
                f"{where}: answer {index} {_quoted(text)} is not at answer_start {start} of the "
                f"context (it holds {_quoted(found)} there); answer_start counts characters from 0"
            )
        answers.append(Answer(text, start))
    return tuple(answers)


def _qa_record(fields: dict[str, object], where: str, encoding: str, max_chars: int) -> QARecord:
    """A QARecord from one record's fields, or _Invalid saying what is wrong."""
    context = _text(fields, "context", where, encoding)
    question = _text(fields, "question", where, encoding)
    if len(context) + len(question) > max_chars:
        raise _oversized(where, max_chars)
    title = fields.get("title", "")
    if not isinstance(title, str):
        raise _Invalid(f"{where}: field 'title' must be a string, got {type(title).__name__}")
    # SQuAD's ids are strings; a JSONL file may number its records.
    given = fields.get("id")
    if given is not None and (isinstance(given, bool) or not isinstance(given, str | int)):
        raise _Invalid(f"{where}: field 'id' must be a string or an integer")
    # Kept with the record (the id is written out with predictions): decoded text, as the rest.
    for name, value in (("title", title), ("id", given)):
        if isinstance(value, str) and (bad := _UNDECODED.search(value)):
            raise _Invalid(_undecodable_error(f"{where}: field {name!r}", bad.group(), encoding))
    answers = _answers(fields, context, where)
    record_id = where if given is None else str(given)
    return QARecord(record_id, title, question, context, answers, where)


def _squad_fields(path: Path, articles: object) -> Iterator[_Fields]:
    """Each question of a SQuAD file as flat fields (title, context, and its own), named by its
    place in the file. A file whose nesting is wrong is refused as a whole."""
    if not isinstance(articles, list):
        raise DataError(f"{path}: 'data' must be a list of articles")
    for i, article in enumerate(articles):
        at = f"{path}:data[{i}]"
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(f"{at}: expected an article object with a list 'paragraphs'")
        assert isinstance(article, dict)
        title = article.get("title", "")
        for j, paragraph in enumerate(paragraphs):
            questions = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(questions, list):
                raise DataError(
                    f"{at}.paragraphs[{j}]: expected a paragraph object with 'context' and a "
                    "list 'qas'"
                )
            assert isinstance(paragraph, dict)
            shared = {"title": title}
            if "context" in paragraph:
                shared["context"] = paragraph["context"]
            for k, qa in enumerate(questions):
                where = f"{at}.paragraphs[{j}].qas[{k}]"
                if isinstance(qa, dict):
                    yield where, {**shared, **qa}
                else:
                    yield where, _Invalid(f"{where}: expected a question object")


def read_qa(
    path: Path,
    *,
    skip_invalid: bool = False,
    encoding: str = "utf-8",
    max_record_chars: int = MAX_RECORD_CHARS,
) -> tuple[list[QARecord], int]:
    """Read the questions in `path`; returns (records, number of invalid ones skipped).

    .json is SQuAD's layout (an object with `data`: articles of paragraphs of questions) or an
    array of flat records; .jsonl holds one flat record a line: `context`, `question`,
    `answers`, and optionally `id` and `title` (the module docstring gives both layouts of
    `answers`; a question with no answer has them empty, or SQuAD v2's `is_impossible` true).
    A bad record (a missing or empty context or question, no `answers` field on a question not
    is_impossible, an answer that is not the context's text at its answer_start, bytes
    `encoding` cannot decode, more than `max_record_chars` characters) raises DataError naming
    the file and the record; with `skip_invalid` it is skipped and counted instead. Problems with
    the file as a whole (missing, unknown format, JSON that does not parse, SQuAD nesting that is
    wrong, no valid record) always raise."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise _unknown_format(path, "question answering records", _FORMATS)
    text = _decode(path, encoding, check=not skip_invalid)
    fields: Iterator[_Fields]
    if suffix == ".jsonl":
        fields = _jsonl_fields(path, text, max_record_chars)
    else:
        value = _squad_value(path, text)
        if isinstance(value, dict):
            fields = _squad_fields(path, value["data"])
        else:  # parsed already; _qa_record measures each record
            fields = (
                (f"{path}#{i}", _as_object(item, f"{path}#{i}")) for i, item in enumerate(value)
            )
    records = _parse_each(
        fields, lambda item, where: _qa_record(item, where, encoding, max_record_chars)
    )
    return _keep_valid(path, skip_invalid, records, "questions")


def _squad_value(path: Path, text: str) -> dict[str, object] | list[object]:
    """A .json file's value: SQuAD's object with `data`, or an array of flat records."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}); expected "
            "SQuAD's object with 'data', or an array of records"
        ) from exc
    except (RecursionError, ValueError) as exc:
        # Valid JSON that Python's parser cannot hold: nested past its recursion limit, or an
        # integer longer than int() converts (sys.get_int_max_str_digits).
        raise DataError(f"{path}: cannot read this JSON ({exc})") from None
    if isinstance(value, dict) and "data" in value:
        return value
    if isinstance(value, list):
        return value
    raise DataError(
        f"{path}: expected SQuAD's object with 'data' (a list of articles) or an array of "
        "records, got a JSON "
        f"{type(value).__name__}{' without data' if isinstance(value, dict) else ''}"
    )


# -- windows -------------------------------------------------------------------------------


def _stripped(context: str, start: int, end: int) -> Span:
    """A token's characters without the whitespace around them (empty for a token of spaces)."""
    while start < end and context[start].isspace():
        start += 1
    while end > start and context[end - 1].isspace():
        end -= 1
    return start, end


def qa_windows(
    tokenizer: Tokenizer,
    question: str,
    context: str,
    *,
    max_len: int,
    stride: int,
    source: str = "",
) -> list[QAWindow]:
    """The windows of at most `max_len` ids a model reads `question` on `context` in (see the
    module docstring). Consecutive windows share `stride` context tokens, or half a window's
    piece when that is fewer, so that each window moves on by at least half its piece.

    A question that leaves no room for context in `max_len` (question tokens + 3 >= max_len), or
    a question or context that encodes to no tokens, is a DataError naming `source`; a tokenizer
    without cls and sep tokens a TokenizerError."""
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    if cls_id is None or sep_id is None:
        raise TokenizerError(
            "question answering reads [CLS] question [SEP] context [SEP]: the tokenizer needs "
            "cls and sep tokens (an encoder's tokenizer, e.g. bert-micro's)"
        )
    if stride < 0:
        raise ConfigError(f"stride must be >= 0, got {stride}")
    where = f"{source}: " if source else ""
    budget = max_len - QA_FRAMING
    question_ids = leading_ids(tokenizer, question, budget)  # never more than budget + 1
    if not question_ids:
        raise DataError(f"{where}the question encodes to no tokens")
    room = budget - len(question_ids)
    if room < 1:
        more = "+" if len(question_ids) > budget else ""
        raise DataError(
            f"{where}the question has {len(question_ids)}{more} tokens, leaving no room for the "
            f"context in a window of {max_len} ([CLS] question [SEP] context [SEP]); shorten the "
            "question or raise the context length (train.seq_len)"
        )
    encoding = tokenizer.backend.encode(context, add_special_tokens=False)
    context_ids = encoding.ids
    if not context_ids:
        raise DataError(f"{where}the context encodes to no tokens")
    spans = tuple(_stripped(context, start, end) for start, end in encoding.offsets)
    overlap = min(stride, room // 2)
    head = (cls_id, *question_ids, sep_id)
    windows: list[QAWindow] = []
    first = 0
    while True:
        last = min(first + room, len(context_ids))
        piece = context_ids[first:last]
        offsets = tuple(span if span[0] < span[1] else None for span in spans[first:last])
        windows.append(
            QAWindow(
                ids=(*head, *piece, sep_id),
                token_type_ids=(0,) * len(head) + (1,) * (len(piece) + 1),
                offsets=(None,) * len(head) + offsets + (None,),
                piece_start=len(head),
                first_token=first,
                piece_tokens=len(piece),
                spans=spans,
            )
        )
        if last == len(context_ids):
            return windows
        first = last - overlap


def answer_tokens(spans: tuple[Span, ...], answer: Answer) -> Span | None:
    """The first and last context token (indices into `spans`) holding characters of `answer`,
    or None when no token does (an answer of characters the tokenizer drops)."""
    touched = [
        i
        for i, (start, end) in enumerate(spans)
        if start < end and start < answer.end and end > answer.start
    ]
    return (touched[0], touched[-1]) if touched else None


def answer_positions(window: QAWindow, answer: Answer) -> Span:
    """The positions in `window` of the answer's first and last token when the window's piece
    holds every token of it; else (0, 0), the [CLS] position: the answer is not (wholly) in this
    window."""
    tokens = answer_tokens(window.spans, answer)
    if tokens is None:
        return 0, 0
    first, last = tokens
    if first < window.first_token or last >= window.first_token + window.piece_tokens:
        return 0, 0
    shift = window.piece_start - window.first_token
    return first + shift, last + shift
