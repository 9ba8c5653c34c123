"""Token classification records: BIO-tagged sentences, read from CoNLL or JSONL, aligned to tokens.

This module owns the answer to "what is one tagged sentence, where did it come from, and which
token carries which tag". `read_tagged` reads CoNLL column files (.txt, .conll or no suffix: one
`token ... tag` line per word, blank lines between sentences, `-DOCSTART-` lines skipped) and
JSON records (.jsonl, or a .json array) with `tokens` and `tags` (or `ner_tags`) lists. Every
sentence remembers its source (`file:line` of its first word, `file#index` in a JSON array).
`align_tags` tokenizes a sentence and puts each word's tag on its first sub-token, the others
ignored by the loss, as transformers' token classification examples do.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from graft.data.records import (
    _UNDECODED,
    IGNORE_INDEX,
    _decode,
    _Invalid,
    _json_fields,
    _jsonl_fields,
    _keep_valid,
    _parse_each,
    _unknown_format,
)
from graft.data.tokenizer import Tokenizer
from graft.errors import ConfigError, DataError

__all__ = ["TaggedSentence", "align_tags", "read_tagged"]

_FORMATS = "CoNLL columns (.txt, .conll or no suffix), .jsonl or .json"
_BIO = re.compile(r"(?:[BI]-\S+|O)")
_DOCSTART = "-DOCSTART-"


@dataclass(frozen=True)
class TaggedSentence:
    """Words and their BIO tags (as many of each); `source` is `file:line` of the first word."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    source: str


def _check_words_and_tags(words: Sequence[str], tags: Sequence[str], wheres: Sequence[str]) -> None:
    """_Invalid for the first empty word, undecodable byte or tag that is not B-X, I-X or O."""
    for word, tag, where in zip(words, tags, wheres):
        if not word.strip():
            raise _Invalid(f"{where}: empty token")
        if (bad := _UNDECODED.search(word)) or (bad := _UNDECODED.search(tag)):
            raise _Invalid(
                f"{where}: byte 0x{ord(bad.group()) - 0xDC00:02x} "
                "is not valid in the file's encoding"
            )
        if not _BIO.fullmatch(tag):
            raise _Invalid(
                f"{where}: tag {tag!r} is not a BIO tag; expected B-<type>, I-<type> or O"
            )


def _conll_sentences(path: Path, text: str, tag_column: int) -> Iterator[TaggedSentence | _Invalid]:
    """Sentences of a CoNLL file; a sentence with a bad line comes out as one _Invalid."""
    expected: tuple[int, int] | None = None  # (fields per line, line that set it)
    words: list[str] = []
    tags: list[str] = []
    wheres: list[str] = []
    problem: _Invalid | None = None
    # The blank line added at the end finishes the last sentence like any other.
    for number, line in enumerate([*text.split("\n"), ""], start=1):
        fields = line.split()
        if not fields or fields[0] == _DOCSTART:
            # A document marker is no word; it ends a sentence just as a blank line does.
            if problem is None and words:
                try:
                    _check_words_and_tags(words, tags, wheres)
                except _Invalid as exc:
                    problem = exc
                else:
                    yield TaggedSentence(words=tuple(words), tags=tuple(tags), source=wheres[0])
            if problem is not None:
                yield problem
            words, tags, wheres, problem = [], [], [], None
            continue
        where = f"{path}:{number}"
        if expected is None:
            expected = (len(fields), number)
            column = tag_column + len(fields) if tag_column < 0 else tag_column
            if not 0 < column < len(fields):
                # Decided once for the whole file, so no sentence could be read: always raise.
                raise DataError(
                    f"{where}: tag_column={tag_column} does not name a tag column in a line of "
                    f"{len(fields)} fields (the token is column 0); expected token and tag columns"
                )
        if problem is not None:
            continue
        if len(fields) != expected[0]:
            problem = _Invalid(
                f"{where}: expected {expected[0]} fields like line {expected[1]}, got {len(fields)}"
            )
            continue
        words.append(fields[0])
        tags.append(fields[tag_column])
        wheres.append(where)


def _json_sentence(
    fields: dict[str, object], where: str, tag_names: Sequence[str] | None
) -> TaggedSentence:
    """A TaggedSentence from one JSON record, or _Invalid saying what is wrong."""
    key = "tags" if "tags" in fields else "ner_tags"
    if "tokens" not in fields or key not in fields:
        present = ", ".join(sorted(str(k) for k in fields)) or "none"
        raise _Invalid(
            f"{where}: expected fields 'tokens' and 'tags' (or 'ner_tags'), got: {present}"
        )
    words, tags = fields["tokens"], fields[key]
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise _Invalid(f"{where}: field 'tokens' must be a list of strings")
    if not isinstance(tags, list):
        raise _Invalid(f"{where}: field {key!r} must be a list of tags")
    if len(words) != len(tags):
        raise _Invalid(
            f"{where}: {len(words)} tokens but {len(tags)} {key}; expected one tag per token"
        )
    if not words:
        raise _Invalid(f"{where}: empty sentence (no tokens)")
    names: list[str] = []
    for position, tag in enumerate(tags):
        # Hugging Face datasets store tags as class ids; their names come from the dataset card.
        if isinstance(tag, int) and not isinstance(tag, bool) and tag_names is not None:
            if not 0 <= tag < len(tag_names):
                raise _Invalid(
                    f"{where}: {key}[{position}] = {tag} is not an index into the "
                    f"{len(tag_names)} tag_names"
                )
            tag = tag_names[tag]
        if not isinstance(tag, str):
            hint = "; pass tag_names=[...] to name integer tags" if isinstance(tag, int) else ""
            raise _Invalid(
                f"{where}: {key}[{position}] must be a tag string, got {type(tag).__name__}{hint}"
            )
        names.append(tag)
    _check_words_and_tags(words, names, [f"{where} token {i}" for i in range(len(words))])
    return TaggedSentence(words=tuple(words), tags=tuple(names), source=where)


def read_tagged(
    path: Path,
    *,
    tag_column: int = -1,
    tag_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    skip_invalid: bool = False,
) -> tuple[list[TaggedSentence], int]:
    """Read the BIO-tagged sentences in `path`; returns (sentences, number of invalid ones skipped).

    CoNLL: whitespace-separated columns, the token first and the tag in `tag_column` (the last by
    default, as CoNLL-2003's `token POS chunk NER`); every line must have as many fields as the
    file's first word line. JSON: `tokens` and `tags` (or `ner_tags`) lists of equal length;
    integer tags (class ids, as Hugging Face datasets store them) are looked up in `tag_names`.
    Tags must be B-X, I-X or O (IOB1 and IOB2 alike: the order of tags is not checked). A bad
    sentence (a line with the wrong number of fields, a tag that is not BIO, an empty token,
    unequal lists, invalid JSON) raises DataError naming the file and line; with `skip_invalid`
    the whole sentence is skipped and counted.
    Problems with the file as a whole (missing, unknown format, no valid sentence) always raise.
    """
    path = Path(path)
    text = _decode(path, encoding, check=not skip_invalid)
    suffix = path.suffix.lower()
    items: Iterator[TaggedSentence | _Invalid]
    if suffix in ("", ".txt", ".conll"):
        items = _conll_sentences(path, text, tag_column)
    elif suffix in (".jsonl", ".json"):
        fields = _jsonl_fields(path, text) if suffix == ".jsonl" else _json_fields(path, text)
        items = _parse_each(fields, lambda item, where: _json_sentence(item, where, tag_names))
    else:
        raise _unknown_format(path, "tagged sentences", _FORMATS)
    return _keep_valid(path, skip_invalid, items, "tagged sentences")


def align_tags(
    tokenizer: Tokenizer,
    words: Sequence[str],
    tags: Sequence[str],
    label_ids: Mapping[str, int],
    max_len: int,
    *,
    source: str = "sentence",
) -> tuple[list[int], list[int], bool]:
    """Token ids of `words` and a label per token; returns (ids, labels, truncated).

    The words are joined by single spaces and encoded without special tokens; each token belongs
    to the word holding its first character that is not a separating space (the leading space
    of byte-level BPE's `Ġword` or Unigram's `▁word` is ignored). The first token of each word
    carries `label_ids[tag]`, the others IGNORE_INDEX, and so does a token that is only such a
    space (a lone `Ġ` or `▁`, frequent with small vocabularies): it has not seen the word yet, so
    the word's first token with some of its text is the labelled one. Character offsets rather
    than pre-tokenizer word ids decide, so byte-level BPE, WordPiece, Unigram and bytes agree.
    Ids and labels are cut to `max_len`. A word with no token of its own (one made only of
    characters the normaliser drops) or a tag missing from `label_ids` raises DataError naming
    `source` and the word.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ConfigError(f"max_len must be an integer >= 1, got {max_len!r}")
    if len(words) != len(tags):
        raise DataError(
            f"{source}: {len(words)} words but {len(tags)} tags; expected one tag per word"
        )
    owner: list[int] = []  # character -> word index, -1 for the separating spaces
    for index, text in enumerate(words):
        if index:
            owner.append(-1)
        owner.extend([index] * len(text))
    encoding = tokenizer.backend.encode(" ".join(words), add_special_tokens=False)
    # Each token's word, or -1 for a token holding only a separating space.
    token_words = [
        next((w for w in owner[start:end] if w >= 0), -1) for start, end in encoding.offsets
    ]
    present = set(token_words)
    if missing := [i for i in range(len(words)) if i not in present]:
        raise DataError(
            f"{source}: word {missing[0]} ({words[missing[0]]!r}) produced no token; "
            "expected every word to give at least one token"
        )
    labels: list[int] = []
    labelled = -1  # the last word whose tag has been placed
    for word in token_words:
        # Later pieces of a word, and lone space tokens (which know nothing of the word yet), are
        # not scored; tokens map to words in order, so `word > labelled` means a new word.
        if word <= labelled:
            labels.append(IGNORE_INDEX)
            continue
        tag = tags[word]
        if tag not in label_ids:
            raise DataError(
                f"{source}: tag {tag!r} of word {word} ({words[word]!r}) is not a known label "
                f"(labels: {', '.join(sorted(label_ids))})"
            )
        labels.append(label_ids[tag])
        labelled = word
    ids = list(encoding.ids)
    truncated = len(ids) > max_len
    return ids[:max_len], labels[:max_len], truncated
