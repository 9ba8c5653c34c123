"""Token classification records: BIO-tagged sentences, read from CoNLL or JSONL, aligned to tokens.

This module owns the answer to "what is one tagged sentence, where did it come from, and which
token carries which tag". `read_tagged` reads CoNLL column files (.txt, .conll or no suffix: one
`token ... tag` line per word, blank lines between sentences, `-DOCSTART-` lines skipped) and
JSON records (.jsonl, or a .json array) with `tokens` and `tags` (or `ner_tags`) lists. Every
sentence remembers its source (`file:line` of its first word, `file#index` in a JSON array).
`tagged_inputs` tokenizes a sentence's words and frames them for the model, marking each word's
first sub-token: there training puts the word's tag (the others ignored by the loss, as
transformers' token classification examples do), and there evaluation and `graft extract` read
the word's predicted tag. It is the one path from tagged words to model inputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from graft.data.inputs import chars_for_tokens, input_frame
from graft.data.records import (
    _UNDECODED,
    IGNORE_INDEX,
    MAX_RECORD_CHARS,
    _decode,
    _Invalid,
    _json_fields,
    _jsonl_fields,
    _keep_valid,
    _names,
    _oversized,
    _parse_each,
    _unknown_format,
)
from graft.data.tokenizer import Tokenizer
from graft.errors import ConfigError, DataError

__all__ = [
    "TaggedInputs",
    "TaggedSentence",
    "read_tagged",
    "refuse_unknown_tags",
    "tagged_inputs",
    "word_token_counts",
]

_FORMATS = "CoNLL columns (.txt, .conll or no suffix), .jsonl or .json"
_BIO = re.compile(r"(?:[BI]-\S+|O)")
_DOCSTART = "-DOCSTART-"


@dataclass(frozen=True)
class TaggedSentence:
    """Words and their BIO tags (as many of each); `source` is `file:line` of the first word."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    source: str


def refuse_unknown_tags(sentences: Iterable[TaggedSentence], known: Iterable[str]) -> None:
    """A tag the model was not trained on (in the data it is validated or evaluated on) is an
    error naming its file and line: the model could never predict it."""
    known_order = list(known)
    labels = set(known_order)
    for sentence in sentences:
        if unknown := [t for t in sentence.tags if t not in labels]:
            raise DataError(
                f"{sentence.source}: tag {unknown[0]!r} is not one of the model's tags "
                f"({', '.join(known_order)})"
            )


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


def _conll_sentences(
    path: Path, text: str, tag_column: int, max_chars: int
) -> Iterator[TaggedSentence | _Invalid]:
    """Sentences of a CoNLL file; a sentence with a bad line, or of more than `max_chars`
    characters (its lines with their line endings), comes out as one _Invalid."""
    expected: tuple[int, int] | None = None  # (fields per line, line that set it)
    words: list[str] = []
    tags: list[str] = []
    wheres: list[str] = []
    problem: _Invalid | None = None
    size = 0  # characters of the sentence so far
    # The blank line added at the end finishes the last sentence like any other.
    for number, line in enumerate([*text.split("\n"), ""], start=1):
        # The first field alone decides where sentences end; a line is split whole only once it
        # is known to fit, so a runaway line never becomes millions of strings.
        first = line.split(None, 1)[:1]
        if not first or first[0] == _DOCSTART:
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
            words, tags, wheres, problem, size = [], [], [], None, 0
            continue
        where = f"{path}:{number}"
        size += len(line) + 1
        if size > max_chars and problem is None:
            problem = _oversized(wheres[0] if wheres else where, max_chars)
        if problem is not None:
            continue
        fields = line.split()
        if expected is None:
            expected = (len(fields), number)
            column = tag_column + len(fields) if tag_column < 0 else tag_column
            if not 0 < column < len(fields):
                # Decided once for the whole file, so no sentence could be read: always raise.
                raise DataError(
                    f"{where}: tag_column={tag_column} does not name a tag column in a line of "
                    f"{len(fields)} fields (the token is column 0); expected token and tag columns"
                )
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
        present = _names(sorted(fields))
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
            # No command-line option names class ids (the CLI reads files as they are): the fix
            # is in the file; tag_names is read_tagged's, for Python callers.
            hint = (
                "; write the tag names (B-PER, O, ...) in the file: graft reads tags as strings "
                "(in Python, read_tagged(tag_names=[...]) names integer tags)"
                if isinstance(tag, int) and not isinstance(tag, bool)
                else ""
            )
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
    max_record_chars: int = MAX_RECORD_CHARS,
) -> tuple[list[TaggedSentence], int]:
    """Read the BIO-tagged sentences in `path`; returns (sentences, number of invalid ones skipped).

    CoNLL: whitespace-separated columns, the token first and the tag in `tag_column` (the last by
    default, as CoNLL-2003's `token POS chunk NER`); every line must have as many fields as the
    file's first word line. JSON: `tokens` and `tags` (or `ner_tags`) lists of equal length;
    integer tags (class ids, as Hugging Face datasets store them) are looked up in `tag_names`.
    Tags must be B-X, I-X or O (IOB1 and IOB2 alike: the order of tags is not checked). A bad
    sentence (a line with the wrong number of fields, a tag that is not BIO, an empty token,
    unequal lists, invalid JSON, more than `max_record_chars` characters) raises DataError naming
    the file and line; with `skip_invalid` the whole sentence is skipped and counted.
    Problems with the file as a whole (missing, unknown format, no valid sentence) always raise.
    """
    path = Path(path)
    text = _decode(path, encoding, check=not skip_invalid)
    suffix = path.suffix.lower()
    items: Iterator[TaggedSentence | _Invalid]
    if suffix in ("", ".txt", ".conll"):
        items = _conll_sentences(path, text, tag_column, max_record_chars)
    elif suffix in (".jsonl", ".json"):
        read = _jsonl_fields if suffix == ".jsonl" else _json_fields
        fields = read(path, text, max_record_chars)
        items = _parse_each(fields, lambda item, where: _json_sentence(item, where, tag_names))
    else:
        raise _unknown_format(path, "tagged sentences", _FORMATS)
    return _keep_valid(path, skip_invalid, items, "tagged sentences")


def _token_words(
    tokenizer: Tokenizer, words: Sequence[str], *, after_space: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of `words` joined by single spaces (no special tokens), and each token's word:
    the word holding its first character that is not a separating space, or -1 for a token that
    is only such a space (the leading space of byte-level BPE's `Ġword` or Unigram's `▁word` is
    ignored). Character offsets rather than pre-tokenizer word ids decide, so byte-level BPE,
    WordPiece, Unigram and bytes agree. `after_space`: the words follow earlier ones, so the
    space before the first is encoded too."""
    owner: list[int] = [-1] if after_space else []  # character -> word, -1 for the spaces
    for index, text in enumerate(words):
        if index:
            owner.append(-1)
        owner.extend([index] * len(text))
    joined = (" " if after_space else "") + " ".join(words)
    encoding = tokenizer.backend.encode(joined, add_special_tokens=False)
    token_words = [
        next((w for w in owner[start:end] if w >= 0), -1) for start, end in encoding.offsets
    ]
    return list(encoding.ids), token_words


def _leading_words(
    tokenizer: Tokenizer, words: Sequence[str], count: int
) -> tuple[list[int], list[int], int]:
    """`_token_words` of the first of `words`, encoded a run of whole words at a time until more
    than `count` tokens are found or the words end, and how many words that encoded. A run ends
    between two words, at a space, so the runs encode to the tokens of the whole sentence; words
    past the cut of a long sentence are never encoded (`graft.data.inputs.leading_ids` cuts a
    text the same way, for the same reason: encoding costs 100 bytes a character or more)."""
    chars = chars_for_tokens(tokenizer, count)
    ids: list[int] = []
    token_words: list[int] = []
    start = 0
    while start < len(words) and len(ids) <= count:
        end, size = start + 1, len(words[start])
        while end < len(words) and size + 1 + len(words[end]) <= chars:
            size += 1 + len(words[end])
            end += 1
        run, owners = _token_words(tokenizer, words[start:end], after_space=start > 0)
        ids += run
        token_words += [word + start if word >= 0 else -1 for word in owners]
        start = end
    return ids, token_words, start


def word_token_counts(tokenizer: Tokenizer, words: Sequence[str]) -> list[int]:
    """How many tokens each word takes when `words` are joined by single spaces; a token that is
    only a separating space counts toward the word after it. 0 for a word made only of characters
    the tokenizer's normaliser drops (such a word cannot be tagged: `tagged_inputs` refuses it)."""
    counts = [0] * len(words)
    pending = 0  # lone space tokens waiting for their word
    for word in _token_words(tokenizer, words)[1]:
        if word < 0:
            pending += 1
            continue
        counts[word] += 1 + pending
        pending = 0
    return counts


@dataclass(frozen=True)
class TaggedInputs:
    """One sentence as a token tagger reads it: `ids` framed and cut to the context, and for each
    id the index of the word whose tag it carries (its first token with some of the word's text),
    or -1 (later pieces of a word, lone space tokens, [CLS]/[SEP]). Word indices rise along
    `ids`; words past the cut have no position (`n_words` counts them all)."""

    ids: list[int]
    words: list[int]
    n_words: int
    truncated: bool

    def labels(
        self, tags: Sequence[str], label_ids: Mapping[str, int], *, source: str = "sentence"
    ) -> list[int]:
        """The training targets lined up with `ids`: `label_ids[tag]` of each word at its
        position, IGNORE_INDEX elsewhere. A tag missing from `label_ids` raises DataError naming
        `source` and the word."""
        if len(tags) != self.n_words:
            raise DataError(
                f"{source}: {self.n_words} words but {len(tags)} tags; expected one tag per word"
            )
        for word, tag in enumerate(tags):
            if tag not in label_ids:
                raise DataError(
                    f"{source}: tag {tag!r} of word {word} is not a known label "
                    f"(labels: {', '.join(sorted(label_ids))})"
                )
        return [label_ids[tags[w]] if w >= 0 else IGNORE_INDEX for w in self.words]


def tagged_inputs(
    tokenizer: Tokenizer,
    words: Sequence[str],
    *,
    framed: bool,
    max_len: int,
    source: str = "sentence",
) -> TaggedInputs:
    """The one path from a sentence's words to a token tagger's inputs, shared by training
    (`graft finetune tokens`), `graft eval --task tokens` and `graft extract`.

    The words are joined by single spaces and encoded without special tokens (no further than
    the budget needs); the first token of each word that holds some of its text (not a lone
    `Ġ`/`▁` space token, which has not seen the word yet) is the one whose prediction is the
    word's tag, as transformers' token classification examples do. The tokens are cut to the
    budget `max_len` leaves inside the frame (`graft.data.inputs.input_frame`: [CLS] ... [SEP]
    when `framed`, the model being an encoder), then framed. A word with no token of its own
    (one made only of characters the normaliser drops; among the words encoded) raises
    DataError naming `source` and the word."""
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ConfigError(f"max_len must be an integer >= 1, got {max_len!r}")
    frame = input_frame(tokenizer, framed=framed)
    budget = frame.budget(max_len)
    ids, token_words, encoded = _leading_words(tokenizer, words, budget)
    present = set(token_words)
    if missing := [i for i in range(encoded) if i not in present]:
        raise DataError(
            f"{source}: word {missing[0]} ({words[missing[0]]!r}) produced no token; "
            "expected every word to give at least one token"
        )
    firsts: list[int] = []
    placed = -1  # the last word whose position is taken
    for word in token_words:
        # Tokens map to words in order, so `word > placed` means a new word's first real token.
        firsts.append(word if word > placed else -1)
        placed = max(placed, word)
    truncated = len(ids) > budget
    return TaggedInputs(
        ids=frame.wrap(ids[:budget]),
        words=frame.align(firsts[:budget], -1),
        n_words=len(words),
        truncated=truncated,
    )
