"""Turning a stream of token ids into a stream of text, optionally cut at stop strings.

A token is not a character: a byte-level token may hold half of a UTF-8 sequence, and WordPiece
or Metaspace decoders change spacing depending on the neighbours. So each step decodes the
tokens not yet printed together, and holds text back while it ends in an incomplete character.

Stop strings are a text matter (a stop string can begin in the middle of one token and end in
another), so they are checked here, on decoded text, and never in the token-level generator.
"""

from __future__ import annotations

from collections.abc import Sequence

from graft.data.tokenizer import Tokenizer

_INCOMPLETE = "\ufffd"  # what decoding half a UTF-8 sequence gives
_WINDOW = 32  # at most this many tokens are decoded together, so a step's cost stays bounded
_CONTEXT = 4  # the tokens kept before new ones: enough for a decoder to see a word go on


class StopStrings:
    """A text-to-text filter that ends the text before the first stop string.

    Text that might be the start of a stop string (the longest suffix that is a prefix of one) is
    held back until later text shows it is not, so no part of a stop string is ever emitted.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        self.stop = tuple(stop)
        self.matched: str | None = None  # the stop string that ended the text, once one has
        self._held = ""

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def push(self, text: str) -> str:
        """Text that is now known to come before any stop string (may be empty)."""
        if self.matched is not None:
            return ""
        # The held part is where a stop string may have begun, so search it together with the new
        # text.
        text = self._held + text
        hits = [(i, s) for s in self.stop if (i := text.find(s)) >= 0]
        if hits:
            end, self.matched = min(hits, key=lambda hit: hit[0])
            self._held = ""
            return text[:end]
        keep = self._partial_stop_length(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held text: at the end of generation a partial stop string is just text."""
        text, self._held = self._held, ""
        return text

    def _partial_stop_length(self, text: str) -> int:
        longest = max((len(s) for s in self.stop), default=0)
        for k in range(min(len(text), longest - 1), 0, -1):
            suffix = text[-k:]
            if any(s.startswith(suffix) for s in self.stop):
                return k
        return 0


class TextStream:
    """The text of generated tokens, as it becomes final.

    Each step decodes the tokens after a few before them (the prompt's last ones at first) and
    returns what that adds to the text those few decode to alone. A token's text depends on its
    neighbours: decoded alone, Metaspace (Llama 2, T5) and WordPiece tokens lose the space that
    opens a word, so a stream of bare tokens would run its words together."""

    def __init__(
        self, tokenizer: Tokenizer, *, stop: Sequence[str] = (), context: Sequence[int] = ()
    ) -> None:
        self.tokenizer = tokenizer
        # The tokens decoded together: the last _CONTEXT before the unprinted ones, then those.
        # A prompt's bos or end-of-text would give the first word a space it has without them.
        marks = {tokenizer.bos_id, tokenizer.eot_id}
        self._ids: list[int] = [i for i in context[-_CONTEXT:] if i not in marks]
        self._printed = tokenizer.decode(self._ids) if self._ids else ""  # their text so far
        self._stop = StopStrings(stop)

    @property
    def stopped(self) -> bool:
        """True once the text reached a stop string: the caller should stop generating."""
        return self._stop.stopped

    def push(self, token_id: int) -> str:
        """Text that became final with this token (may be empty); nothing after a stop string."""
        if self._stop.stopped:
            return ""
        self._ids.append(token_id)
        text = self.tokenizer.decode(self._ids)
        if text.endswith(_INCOMPLETE):
            return ""
        new = text[len(self._printed) :]
        self._printed = text
        if len(self._ids) > _WINDOW:  # keep decoding cost bounded on long outputs
            self._ids = self._ids[-_CONTEXT:]
            self._printed = self.tokenizer.decode(self._ids)
        return self._stop.push(new)

    def flush(self) -> str:
        text = self.tokenizer.decode(self._ids)
        new = text[len(self._printed) :]
        self._ids, self._printed = [], ""
        if self._stop.stopped:
            return ""
        # The last decode may complete a stop string, so it goes through the filter before the held
        # text.
        new = self._stop.push(new)
        return new + self._stop.flush()
