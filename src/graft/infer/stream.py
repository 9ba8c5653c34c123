"""Turning a stream of token ids into a stream of text.

A token is not a character: a byte-level token may hold half of a UTF-8 sequence, and WordPiece
or Metaspace decoders change spacing depending on the neighbours. So each step decodes the
tokens not yet printed together, and holds text back while it ends in an incomplete character.
"""

from __future__ import annotations

from graft.data.tokenizer import Tokenizer

_INCOMPLETE = "\ufffd"  # what decoding half a UTF-8 sequence gives


class TextStream:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._ids: list[int] = []  # tokens since the last fully printed boundary
        self._printed = ""  # text of self._ids already returned

    def push(self, token_id: int) -> str:
        """Text that became final with this token (may be empty)."""
        self._ids.append(token_id)
        text = self.tokenizer.decode(self._ids)
        if text.endswith(_INCOMPLETE):
            return ""
        new = text[len(self._printed):]
        self._printed = text
        if len(self._ids) > 32:  # keep decoding cost bounded on long outputs
            self._ids, self._printed = [], ""
        return new

    def flush(self) -> str:
        text = self.tokenizer.decode(self._ids)
        new = text[len(self._printed):]
        self._ids, self._printed = [], ""
        return new
