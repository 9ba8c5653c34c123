"""The one path from text to model inputs, shared by fine-tuning, `graft eval` and serving.

An encoder (`ModelConfig.is_encoder`: bidirectional attention) reads each text framed as
`[CLS] text [SEP]` (RoBERTa's `<s> text </s>`), as BERT-family models are pre-trained and as
transformers' tokenizers frame a text by default: its sequence classifier reads the pooled first
token, and sentence-embedding models pool over the framed sequence. A decoder reads the bare text.
A tokenizer without both a cls and a sep token frames nothing, whatever the model.

Texts are encoded without special tokens (`Tokenizer.encode`); a special-token string inside a
text still maps to its id, as it does everywhere else in graft. A text longer than the budget
loses its end, never its frame, as transformers' `truncation=True` does: a cut text still starts
with [CLS] and ends with [SEP].

Whoever turns text into ids for a model (objectives, evaluation, the server) calls
`model_inputs`, or `input_frame` where ids carry aligned labels (token tagging); nobody else
places [CLS] or [SEP] around a text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from graft.data.tokenizer import Tokenizer
from graft.errors import ConfigError

__all__ = ["Frame", "ModelInputs", "input_frame", "model_inputs", "right_padded"]


@dataclass(frozen=True)
class Frame:
    """The ids placed before and after a text's tokens: ([CLS],) and ([SEP],), or nothing."""

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
    encoder) and the tokenizer has both tokens, else none."""
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    if not framed or cls_id is None or sep_id is None:
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
    special tokens, as `Tokenizer.encode` gives them); they are cut and framed the same way."""
    frame = input_frame(tokenizer, framed=framed)
    budget = None if max_len is None else frame.budget(max_len)
    strings = [text for text in texts if isinstance(text, str)]
    encoded = iter(tokenizer.encode_batch(strings) if strings else [])
    ids: list[list[int]] = []
    truncated: list[bool] = []
    for text in texts:
        tokens = next(encoded) if isinstance(text, str) else list(text)
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
