"""Instruction tuning (supervised fine-tuning): conversations rendered with the tokenizer's chat
template, next-token loss on the assistant's replies and their end-of-turn token only.

Each reply's end-of-turn token is scored, so the model learns to stop; prompt tokens are scored only
with `train_on_prompt`. Conversations longer than the context are cut (the start kept) and counted;
a cut can leave the last reply without its end-of-turn token. One cut before any reply token has
nothing to train on: it is refused, or skipped and counted with `skip_invalid`. Batches are
right-padded; padding is never scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from graft.data.chat import DEFAULT_CHAT_TEMPLATE, encode_conversation, turn_end
from graft.data.inputs import right_padded
from graft.data.records import IGNORE_INDEX, Conversation, read_conversations
from graft.data.tokenizer import Tokenizer
from graft.errors import DataError
from graft.model.config import AttentionKind, HeadKind
from graft.model.transformer import LanguageModel
from graft.objectives.base import Encoded, RecordBatches, RecordObjective, Records, TaskData
from graft.objectives.batch import Batch, LossSum, LossTotals
from graft.objectives.clm import next_token_loss


class EncodedConversations(Encoded):
    def __init__(
        self,
        conversations: Sequence[Conversation],
        tokenizer: Tokenizer,
        template: str,
        max_len: int,
        *,
        train_on_prompt: bool,
        skip_invalid: bool = False,
    ) -> None:
        self.ids = []
        self.labels: list[list[int]] = []
        self.truncated = 0
        self.skipped = 0  # with skip_invalid: conversations whose prompt fills the context
        for conversation in conversations:
            # max_len + 1: inputs and targets are the sequence shifted by one.
            encoded = encode_conversation(
                tokenizer,
                template,
                conversation,
                max_len=max_len + 1,
                train_on_prompt=train_on_prompt,
            )
            if all(label == IGNORE_INDEX for label in encoded.labels[1:]):
                if skip_invalid:
                    self.skipped += 1
                    continue
                raise DataError(
                    f"{conversation.source}: no reply token fits in {max_len} tokens; "
                    "raise train.seq_len or shorten the prompt"
                )
            self.truncated += encoded.truncated
            self.ids.append(encoded.input_ids)
            self.labels.append(encoded.labels)


class Instruct(RecordBatches[EncodedConversations]):
    """Objective `instruct`."""

    name = "instruct"

    def __init__(
        self,
        train: Sequence[Conversation],
        val: Sequence[Conversation],
        tokenizer: Tokenizer,
        template: str,
        max_len: int,
        *,
        train_on_prompt: bool = False,
        skip_invalid: bool = False,
    ) -> None:
        self.pad_id = next(i for i in (tokenizer.pad_id, tokenizer.eot_id, 0) if i is not None)
        self.train, self.val = (
            EncodedConversations(
                part,
                tokenizer,
                template,
                max_len,
                train_on_prompt=train_on_prompt,
                skip_invalid=skip_invalid,
            )
            for part in (train, val)
        )
        for split, data in (("training", self.train), ("validation", self.val)):
            if not len(data):
                raise DataError(
                    f"every {split} conversation was skipped ({data.skipped:,}): no reply token "
                    f"fits in {max_len} tokens; raise train.seq_len or shorten the prompts"
                )

    def batch(self, data: EncodedConversations, rows: list[int]) -> Batch:
        # Inputs are a sequence without its last token.
        input_ids, lengths = right_padded([data.ids[i][:-1] for i in rows], self.pad_id)
        targets, _ = right_padded([data.labels[i][1:] for i in rows], IGNORE_INDEX)
        # Right padding: causal attention never reaches it.
        return Batch(input_ids, targets, causal=True, lengths=lengths)

    def loss(self, model: LanguageModel, batch: Batch) -> LossSum:
        return next_token_loss(model, batch)

    def metrics(self, totals: LossTotals, split: str) -> dict[str, float]:
        return {f"{split}/loss": totals.mean, f"{split}/ppl": math.exp(min(totals.mean, 50.0))}


class InstructConfig(RecordObjective):
    """instruct: supervised fine-tuning on conversations, on a decoder."""

    attention: ClassVar[AttentionKind | None] = "causal"
    head: ClassVar[HeadKind] = "lm"
    name: Literal["instruct"] = "instruct"
    train_on_prompt: bool = Field(
        default=False, description="Score prompt tokens too, not only responses."
    )

    def build(
        self, records: Records, tokenizer: Tokenizer, *, max_len: int, bidirectional: bool
    ) -> TaskData:
        def read(path: Path) -> tuple[list[Conversation], int]:
            return read_conversations(
                path, encoding=records.encoding, skip_invalid=records.skip_invalid
            )

        return conversation_task(
            records,
            read,
            tokenizer,
            max_len,
            kind="conversations",
            train_on_prompt=self.train_on_prompt,
        )


def conversation_task(
    records: Records,
    read: Callable[[Path], tuple[list[Conversation], int]],
    tokenizer: Tokenizer,
    max_len: int,
    *,
    kind: str,
    train_on_prompt: bool = False,
    objective: type[Instruct] = Instruct,
) -> TaskData:
    """The fine-tune of conversations `read` from the records' files (`kind` names them in the
    notes): the one path from conversations to a trained chat model, so every objective framed
    as conversations (instruct, seq2seq) trains, and is later prompted, alike."""
    train, val, skipped = records.train_and_val(read)
    train = records.sample(train)
    if tokenizer.chat_template is None:
        # saved with every checkpoint of the run
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    ends = turn_end(tokenizer, tokenizer.chat_template)
    said = []
    if ends is not None:
        # The model learns to stop on the token its template closes turns with: that token is
        # its eos from now on (saved with its checkpoints), so generation stops there too.
        said.append(
            f"the chat template closes a turn with {ends}, not the tokenizer's eos "
            f"{tokenizer.special_tokens_map.get('eos_token')}: {ends} is this model's eos"
        )
        tokenizer.set_role("eos_token", ends)
    sft = objective(
        train,
        val,
        tokenizer,
        tokenizer.chat_template,
        max_len,
        train_on_prompt=train_on_prompt,
        skip_invalid=records.skip_invalid,
    )
    skipped += sft.train.skipped + sft.val.skipped
    notes = sft.notes(kind, skipped, max_len, cut=" (kept, cut at the end)")
    return TaskData(sft, (), (*said, *notes))
