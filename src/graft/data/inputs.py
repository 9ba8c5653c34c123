"""The one path from text to model inputs, shared by fine-tuning, `graft eval` and serving.

An encoder (`ModelConfig.is_encoder`: bidirectional attention) reads each text framed as
`[CLS] text [SEP]` (RoBERTa's `<s> text </s>`), as BERT-family models are pre-trained and as
transformers' tokenizers frame a text by default: its sequence classifier reads the pooled first
token, and sentence-embedding models pool over the framed sequence. A decoder reads the bare text,
after the tokenizer's bos when its own post-processor opens every text with it (Llama's `<s>`,
`Tokenizer.opens_with_bos`), as the model was pre-trained. An encoder's tokenizer without both a
cls and a sep token frames nothing.

Texts are encoded without special tokens (`Tokenizer.encode`); a special-token string inside a
text still maps to its id, as it does everywhere else in graft. A text longer than the budget
loses its end, never its frame, as transformers' `truncation=True` does: a cut text still starts
with [CLS] and ends with [SEP].

Whoever turns text into ids for a model (objectives, evaluation, the server) calls
`model_inputs`, or `input_frame` where ids carry aligned labels (token tagging); nobody else
places [CLS] or [SEP] around a text.

A text is cut before it is encoded, never after: a tokenizer spends 100 to 150 bytes a character
on a text it encodes (offsets, token strings, alignments), so a 50 MB text would take 7.5 GB to
keep 512 tokens. `leading_ids` encodes no more of a text than its first tokens need, in pieces
cut between words, and gives the same ids as encoding the whole text and cutting those; it is
the rule for every text cut to a budget (`model_inputs`, and the pieces of a conversation).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from graft.data.documents import normalise_newlines
from graft.data.tokenizer import Tokenizer
from graft.errors import ConfigError

__all__ = [
    "Frame",
    "ModelInputs",
    "chars_for_tokens",
    "input_frame",
    "leading_ids",
    "model_inputs",
    "right_padded",
]

# How far back from a piece's nominal end a gap between words is looked for.
_GAP_WINDOW = 1024
# Per tokenizer: (the backend measured, its vocabulary size, its longest token in characters).
_LONGEST: weakref.WeakKeyDictionary[Tokenizer, tuple[object, int, int]] = (
    weakref.WeakKeyDictionary()
)


def _longest_token(tokenizer: Tokenizer) -> int:
    """The most characters any token's string holds, added tokens included (cached: reading a
    vocabulary of 50,000 tokens takes milliseconds, and the server cuts texts per request)."""
    backend, size = tokenizer.backend, tokenizer.vocab_size
    cached = _LONGEST.get(tokenizer)
    if cached is None or cached[0] is not backend or cached[1] != size:
        longest = max(map(len, backend.get_vocab(with_added_tokens=True)), default=1)
        cached = _LONGEST[tokenizer] = (backend, size, max(longest, 1))
    return cached[2]


def chars_for_tokens(tokenizer: Tokenizer, count: int) -> int:
    """How many characters of a text to encode to find its first `count` + 1 tokens, the one
    more telling whether the text has more than `count`.

    A token's string is at least as long as the text it stands for (byte-level and bytes: a
    character is one byte or more; WordPiece's `##` and Unigram's `▁` only add), so `count` + 1
    tokens cover at most (`count` + 1) * the longest token's characters; _GAP_WINDOW more let
    the piece end between words (`_piece_end`). Tokenizers that drop characters (WordPiece drops
    whitespace and control characters) or fold many into one token (an unknown word) can need
    more: `leading_ids` then encodes the next piece too."""
    return (count + 1) * _longest_token(tokenizer) + _GAP_WINDOW


def _piece_end(text: str, start: int, chars: int) -> int:
    """Where the piece of `text` that starts at `start` ends: all of it when fewer than `chars`
    characters are left, else just before a single space between two non-spaces within
    _GAP_WINDOW of `start + chars`. Every pre-tokenizer graft meets (GPT-2's byte-level regex,
    BERT's whitespace and punctuation split, Metaspace) splits there, so the pieces encode to the
    ids the whole text does; `graft.data.documents` cuts long documents the same way."""
    end = start + chars
    if end >= len(text):
        return len(text)
    low = max(start, end - _GAP_WINDOW) + 1
    space = text.rfind(" ", low, end)
    while space >= low:
        if not text[space - 1].isspace() and not text[space + 1].isspace():
            return space
        space = text.rfind(" ", low, space)
    # No gap nearby (a script without spaces, a long run of spaces): the cut falls inside a
    # word, where only the tokens next to it can differ, and they lie past the ones kept.
    return end


def _continue(
    tokenizer: Tokenizer, text: str, start: int, ids: list[int], count: int, chars: int
) -> list[int]:
    """`ids`, the encoding of `text[:start]`, extended piece by piece until it holds more than
    `count` ids or the text ends."""
    while len(ids) <= count and start < len(text):
        end = _piece_end(text, start, chars)
        ids += tokenizer.encode(text[start:end])
        start = end
    return ids


def leading_ids(tokenizer: Tokenizer, text: str, count: int) -> list[int]:
    """The first `count` + 1 ids of `text` (all of them when it has fewer): the ids a budget of
    `count` keeps, and one more when the text does not fit. Equal to encoding the whole text
    and cutting it, with no more of the text encoded than those ids need."""
    return _continue(tokenizer, text, 0, [], count, chars_for_tokens(tokenizer, count))[: count + 1]


@dataclass(frozen=True)
class Frame:
    """The ids placed before and after a text's tokens: ([CLS],) and ([SEP],), (bos,) alone, or
    nothing."""

    before: tuple[int, ...] = ()
    after: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        """How many ids the frame adds to a text."""
        return len(self.before) + len(self.after)

    def budget(self, max_len: int) -> int:
        """How many of a text's tokens fit in `max_len` ids once framed (at least one)."""
        if max_len - self.size < 1:
            raise ConfigError(
                f"max_len {max_len} leaves no room for text inside the {self.size} framing "
                f"tokens; give max_len >= {self.size + 1}"
            )
        return max_len - self.size

    def wrap(self, ids: Sequence[int]) -> list[int]:
        """`ids` with the frame around them."""
        return [*self.before, *ids, *self.after]

    def align(self, values: Sequence[int], fill: int) -> list[int]:
        """Per-token `values` (labels) lined up with `wrap(ids)`: `fill` at the frame's ids."""
        return [*(fill for _ in self.before), *values, *(fill for _ in self.after)]


def input_frame(tokenizer: Tokenizer, *, framed: bool) -> Frame:
    """The frame of every text given to a model: `[CLS] ... [SEP]` when `framed` (the model is an
    encoder) and the tokenizer has both tokens; for a decoder, the tokenizer's bos before the
    text when its own post-processor puts it there (`Tokenizer.opens_with_bos`: Llama), as
    its model was pre-trained and as transformers' `tokenizer(text)` gives; else none."""
    if not framed:
        bos = tokenizer.bos_id
        return Frame((bos,), ()) if bos is not None and tokenizer.opens_with_bos else Frame()
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    if cls_id is None or sep_id is None:
        return Frame()
    return Frame((cls_id,), (sep_id,))


@dataclass(frozen=True)
class ModelInputs:
    """Token ids per text, framed and cut, and whether each text lost tokens to the budget."""

    ids: list[list[int]]
    truncated: list[bool]


def model_inputs(
    tokenizer: Tokenizer,
    texts: Sequence[str | Sequence[int]],
    *,
    framed: bool,
    max_len: int | None,
) -> ModelInputs:
    """The ids a model reads for each of `texts`: encoded, cut to fit `max_len` with the frame
    (None: never cut; the caller checks the length), and framed when `framed`
    (`ModelConfig.is_encoder`). An item may be a text's token ids already (encoded without
    special tokens, as `Tokenizer.encode` gives them); they are cut and framed the same way.
    A text is cut before it is encoded (`leading_ids`), with the same result."""
    frame = input_frame(tokenizer, framed=framed)
    budget = None if max_len is None else frame.budget(max_len)
    strings = [text for text in texts if isinstance(text, str)]
    # Only texts longer than a lower bound of `chars_for_tokens` need it (and the vocabulary).
    chars = 0
    if budget is not None and any(len(s) > budget + 1 + _GAP_WINDOW for s in strings):
        chars = chars_for_tokens(tokenizer, budget)
    # Each text's first piece, all encoded at once (in parallel); few texts need a second one.
    ends = [_piece_end(s, 0, chars) if chars else len(s) for s in strings]
    heads = [s if end == len(s) else s[:end] for s, end in zip(strings, ends)]
    encoded = iter(zip(tokenizer.encode_batch(heads) if heads else [], ends))
    ids: list[list[int]] = []
    truncated: list[bool] = []
    for text in texts:
        if isinstance(text, str):
            tokens, end = next(encoded)
            if budget is not None:
                tokens = _continue(tokenizer, text, end, tokens, budget, chars)
        else:
            tokens = list(text)
        cut = budget is not None and len(tokens) > budget
        ids.append(frame.wrap(tokens[:budget] if cut else tokens))
        truncated.append(cut)
    return ModelInputs(ids, truncated)


def right_padded(rows: Sequence[Sequence[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths as one (N, T) long tensor, each row's values first and `fill`
    after them, and the lengths (N,): how every batch of whole texts is laid out, in training
    and in prediction alike."""
    lengths = torch.tensor([len(row) for row in rows])
    out = torch.full((len(rows), int(lengths.max())), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out, lengths


def prompt_ids(tokenizer: Tokenizer, text: str) -> list[int] | None:
    """The ids a language model continues for a text prompt (`graft generate`, /v1/completions),
    read as its training text was: line ends normalised as every document is, and framed as a
    decoder's every text is (a Llama tokenizer's bos first). An empty prompt is the start of a
    fresh document: that bos, or else the end-of-text id alone (None without one)."""
    frame = input_frame(tokenizer, framed=False)
    if not text:
        if frame.before:
            return list(frame.before)
        return None if tokenizer.eot_id is None else [tokenizer.eot_id]
    return frame.wrap(tokenizer.encode(normalise_newlines(text)))
