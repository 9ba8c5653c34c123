"""A conversation whose prompt alone fills the context has no reply token to train on: named in
one error, or, with skip_invalid, skipped and counted like any other invalid record."""

from __future__ import annotations

import pytest

from graft.data.chat import DEFAULT_CHAT_TEMPLATE
from graft.data.records import Conversation, Message
from graft.data.tokenizer import bytes_tokenizer
from graft.errors import DataError
from graft.objectives.instruct import Instruct

CONTEXT = 64


def conversation(n: int, prompt_chars: int) -> Conversation:
    return Conversation(
        (Message("user", "q" * prompt_chars), Message("assistant", "an answer")), f"c.json#{n}"
    )


def test_a_prompt_that_fills_the_context_is_named_or_skipped() -> None:
    tokenizer = bytes_tokenizer()
    fits = [conversation(i, 5) for i in range(3)]
    train = [*fits, conversation(3, 200)]
    with pytest.raises(DataError, match=r"^c\.json#3: no reply token fits in 64 tokens"):
        Instruct(train, fits, tokenizer, DEFAULT_CHAT_TEMPLATE, CONTEXT)
    objective = Instruct(train, fits, tokenizer, DEFAULT_CHAT_TEMPLATE, CONTEXT, skip_invalid=True)
    assert (len(objective.train), objective.train.skipped, objective.val.skipped) == (3, 1, 0)
    with pytest.raises(DataError, match="every validation conversation was skipped"):
        Instruct(fits, train[3:], tokenizer, DEFAULT_CHAT_TEMPLATE, CONTEXT, skip_invalid=True)
