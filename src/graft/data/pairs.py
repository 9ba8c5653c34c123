"""Source/target pairs for sequence-to-sequence tasks (translation, summarisation): reading them,
and the one framing of a pair as a conversation.

This module owns what one pair is and where it came from. `read_pairs` reads JSONL (one object per
line) or a JSON array of `{"source": ..., "target": ...}` records; `read_parallel` reads a parallel
corpus in fairseq's layout, the aligned lines of PREFIX.SRC and PREFIX.TGT (each plain or gzip
when named *.gz). Every pair remembers its `source` location, `file:line` (`file#index` in a JSON
array; the source file's line for a parallel corpus, whose target is the same line of the other
file). `pair_conversation` is how a pair is framed for a decoder: one user message (the source)
and one assistant message (the target), so that fine-tuning (`graft.objectives.seq2seq`),
`graft eval --task generate`, `graft chat` and the server all read a pair through the same chat
template.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from graft.data.records import (
    MAX_RECORD_CHARS,
    Conversation,
    Message,
    _content,
    _decode,
    _Fields,
    _Invalid,
    _json_fields,
    _jsonl_fields,
    _keep_valid,
    _oversized,
    _parse_each,
    _unknown_format,
)
from graft.errors import DataError

__all__ = [
    "TextPair",
    "is_pair_file",
    "pair_conversation",
    "parallel_paths",
    "read_pairs",
    "read_parallel",
    "read_source_target",
]

_PAIR_FIELDS = '{"source": ..., "target": ...}'


@dataclass(frozen=True)
class TextPair:
    """One source text and the target text it should become; `source` is where it is,
    `file:line` (or `file#index` in a JSON array), as for every record graft reads."""

    source_text: str
    target_text: str
    source: str


def pair_conversation(pair: TextPair) -> Conversation:
    """The pair as training, evaluation and serving frame it: the source as the user's message, the
    target as the assistant's reply (the chat template and the end-of-turn token come from the
    tokenizer, `graft.data.chat`)."""
    return Conversation(
        messages=(Message("user", pair.source_text), Message("assistant", pair.target_text)),
        source=pair.source,
    )


# -- source/target records -------------------------------------------------------------------


def _record_fields(path: Path, encoding: str) -> Iterator[_Fields]:
    text = _decode(path, encoding)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_fields(path, text)
    if suffix == ".json":
        return _json_fields(path, text)
    raise _unknown_format(path, "source/target records", ".jsonl or a .json array")


def is_pair_file(path: Path, encoding: str = "utf-8") -> bool:
    """Whether the first record of a .jsonl or .json file is a source/target pair (and not an
    instruction or chat record). Any problem reading it answers False: the caller's reader of the
    other kind then reports it."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json"):
        return False
    try:
        _, first = next(_record_fields(path, encoding))
    except (StopIteration, DataError):
        return False
    keys = set(first) if isinstance(first, dict) else set()
    return {"source", "target"} <= keys and not {"messages", "instruction"} & keys


def _pair(fields: dict[str, object], where: str, encoding: str) -> TextPair:
    """A TextPair from one record's fields, or _Invalid saying what is wrong."""
    for name in ("source", "target"):
        if name not in fields:
            raise _Invalid(f"{where}: missing field {name!r}; expected {_PAIR_FIELDS}")
    return TextPair(
        source_text=_content(fields["source"], where, "field 'source'", encoding),
        target_text=_content(fields["target"], where, "field 'target'", encoding),
        source=where,
    )


def read_pairs(
    path: Path,
    *,
    encoding: str = "utf-8",
    skip_invalid: bool = False,
    max_record_chars: int = MAX_RECORD_CHARS,
) -> tuple[list[TextPair], int]:
    """Read source/target records in `path` (.jsonl, or a .json array); returns (pairs, skipped).

    A record without `source` or `target`, with a field that is not a string or is empty (or
    whitespace only), a line that is not JSON or a record of more than `max_record_chars`
    characters raises DataError naming the file and the line (or the array index); with
    `skip_invalid` the record is skipped and counted instead. A file with no valid pair raises.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json"):
        raise _unknown_format(path, "source/target records", ".jsonl or a .json array")
    text = _decode(path, encoding, check=not skip_invalid)
    read = _jsonl_fields if suffix == ".jsonl" else _json_fields
    pairs = _parse_each(
        read(path, text, max_record_chars), lambda item, where: _pair(item, where, encoding)
    )
    return _keep_valid(path, skip_invalid, pairs, "source/target records")


# -- parallel files ----------------------------------------------------------------------------


def parallel_paths(prefix: Path, source_lang: str, target_lang: str) -> tuple[Path, Path]:
    """PREFIX.SRC and PREFIX.TGT, each the plain file when there is one, else its .gz."""
    found: list[Path] = []
    for lang in (source_lang, target_lang):
        plain = Path(f"{prefix}.{lang}")
        packed = Path(f"{plain}.gz")
        if not plain.is_file() and not packed.is_file():
            raise DataError(
                f"{plain}: no such file (nor {packed.name}); a parallel corpus is "
                f"PREFIX.{source_lang} and PREFIX.{target_lang}, one text per line, each "
                "optionally gzipped (.gz)"
            )
        found.append(plain if plain.is_file() else packed)
    return found[0], found[1]


def _every_line(text: str) -> list[str]:
    """Every line, blank ones too (a parallel corpus aligns by line number), without its line
    ending; a final line ending starts no line of its own."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _parallel_pair(
    number: int,
    lines: tuple[str, str],
    paths: tuple[Path, Path],
    encoding: str,
    max_chars: int,
) -> TextPair:
    """The pair on line `number` of both files, or _Invalid naming the file and line at fault."""
    texts: list[str] = []
    for side, (line, path, other) in enumerate(zip(lines, paths, reversed(paths))):
        where = f"{path}:{number}"
        if len(line) > max_chars:
            raise _oversized(where, max_chars)
        name = ("source", "target")[side]
        if not line.strip():
            raise _Invalid(f"{where}: empty {name} line (its pair is {other}:{number})")
        texts.append(_content(line, where, f"{name} line", encoding))
    return TextPair(source_text=texts[0], target_text=texts[1], source=f"{paths[0]}:{number}")


def read_parallel(
    prefix: Path,
    source_lang: str,
    target_lang: str,
    *,
    encoding: str = "utf-8",
    skip_invalid: bool = False,
    max_record_chars: int = MAX_RECORD_CHARS,
) -> tuple[list[TextPair], int]:
    """Read the aligned lines of PREFIX.SRC and PREFIX.TGT (`parallel_paths`) as pairs; returns
    (pairs, skipped).

    Line n of one file is the translation of line n of the other, so blank lines count. Files
    with different numbers of lines raise DataError naming both files and both counts (nothing
    can be skipped then: which lines are misaligned is unknown). An empty (or whitespace-only)
    source or target line, bytes `encoding` cannot decode, or a line of more than
    `max_record_chars` characters raises DataError naming its file and line; with
    `skip_invalid` that pair is skipped and counted instead.
    """
    paths = parallel_paths(Path(prefix), source_lang, target_lang)
    source_path, target_path = paths
    sides = [
        _every_line(
            _decode(path, encoding, check=not skip_invalid, gzipped=path.suffix.lower() == ".gz")
        )
        for path in paths
    ]
    if len(sides[0]) != len(sides[1]):
        raise DataError(
            f"{source_path} has {len(sides[0]):,} lines but {target_path} has "
            f"{len(sides[1]):,}; parallel files must be aligned line by line"
        )

    def pairs() -> Iterator[TextPair | _Invalid]:
        for number, lines in enumerate(zip(*sides), start=1):
            try:
                yield _parallel_pair(number, lines, paths, encoding, max_record_chars)
            except _Invalid as exc:
                yield exc

    return _keep_valid(source_path, skip_invalid, pairs(), f"pairs with {target_path}")


def read_source_target(
    path: Path,
    langs: tuple[str, str] | None = None,
    *,
    encoding: str = "utf-8",
    skip_invalid: bool = False,
    max_record_chars: int = MAX_RECORD_CHARS,
) -> tuple[list[TextPair], int]:
    """Pairs from `path`: with `langs` (source, target), the parallel corpus of which `path` is the
    prefix (`read_parallel`); without, source/target records (`read_pairs`)."""
    if langs is not None:
        return read_parallel(
            path,
            *langs,
            encoding=encoding,
            skip_invalid=skip_invalid,
            max_record_chars=max_record_chars,
        )
    return read_pairs(
        path, encoding=encoding, skip_invalid=skip_invalid, max_record_chars=max_record_chars
    )
