"""Chat messages to prompt token ids, shared by the HTTP API and `graft chat`.

The tokenizer's own chat template is used when it has one, else graft's default (the one
`graft finetune instruct` trains with), rendered in the sandbox of `graft.data.chat` and encoded
piece by piece exactly as fine-tuning encodes it (`encode_prompt`): some tokenizers (unigram,
SentencePiece) give other ids for a text encoded whole than in pieces, and a served model must read
the ids it was trained on. Only a template that does not append turn by turn (which graft could not
have trained with) is encoded whole, as transformers' apply_chat_template does. A message
whose text holds the end-of-turn token itself is refused: it would encode as the real token and
let a user forge a turn boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

from graft.data.chat import DEFAULT_CHAT_TEMPLATE, NotAppendedError, encode_prompt, render_chat
from graft.data.records import Message
from graft.data.tokenizer import Tokenizer
from graft.errors import DataError

# What encode_prompt puts before its messages; taken off again, since each caller names the
# conversation its own way (the HTTP API as its field, `graft chat` not at all).
_WHERE = "messages"


class PromptError(DataError):
    """A conversation that cannot become a prompt; `index` is the offending message, if one is."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def chat_prompt_ids(tokenizer: Tokenizer, messages: Sequence[Message]) -> list[int]:
    """The ids a model reads before writing the next assistant turn of `messages`."""
    eos = tokenizer.special_tokens_map.get("eos_token")
    for i, message in enumerate(messages):
        if eos and eos in message.content:
            raise PromptError(
                f"message {i} ({message.role}) contains the end-of-turn token {eos!r}", i
            )
    template = tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
    try:
        if eos:
            try:
                return encode_prompt(tokenizer, template, messages, where=_WHERE)
            except NotAppendedError:
                pass
        tokens = tokenizer.special_tokens_map
        text = render_chat(template, messages, add_generation_prompt=True, special_tokens=tokens)
    except DataError as err:
        raise PromptError(str(err).removeprefix(f"{_WHERE}: ")) from None
    return tokenizer.encode(text)
