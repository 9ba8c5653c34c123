"""Sequence-to-sequence fine-tuning of a decoder (translation, summarisation): the loss on the
target only, and on the end-of-turn token after it, so the model learns where a target ends.

Each source/target pair (`graft.data.pairs`) becomes a conversation of one user message, the
source, and one assistant reply, the target (`pair_conversation`), trained by instruction tuning's
machinery (`graft.objectives.instruct`): the tokenizer's chat template, graft's default set on it
when it has none so that every checkpoint of the run carries it. A seq2seq checkpoint is then
asked for a target exactly as it was trained, by `graft eval --task generate`, `graft chat` and
the server's /v1/chat/completions alike, with no prompt format of its own to remember.

The records are JSONL (or a JSON array) of `{"source": ..., "target": ...}`, or, with
`source_lang` and `target_lang`, a parallel corpus in fairseq's layout: data.train_file and
data.val_file name a PREFIX, and the pairs are the aligned lines of PREFIX.SRC and PREFIX.TGT.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from graft.data.pairs import pair_conversation, read_source_target
from graft.data.records import Conversation
from graft.data.tokenizer import Tokenizer
from graft.model.config import AttentionKind, HeadKind
from graft.objectives.base import RecordObjective, Records, TaskData
from graft.objectives.instruct import Instruct, conversation_task

# A language code names a file suffix (PREFIX.de): letters, digits, '-' and '_' (en, pt_BR,
# zh-Hans), never a path.
_LANG = r"^[A-Za-z0-9_-]+$"


class Seq2Seq(Instruct):
    """Objective `seq2seq`: instruction tuning's batches and loss over framed pairs."""

    name = "seq2seq"


class Seq2SeqConfig(RecordObjective):
    """seq2seq: translation or summarisation on a decoder, from source/target pairs."""

    attention: ClassVar[AttentionKind | None] = "causal"
    head: ClassVar[HeadKind] = "lm"
    name: Literal["seq2seq"] = "seq2seq"
    source_lang: str | None = Field(
        default=None,
        pattern=_LANG,
        description="With target_lang: data.train_file and data.val_file name a PREFIX, and the "
        "pairs are the aligned lines of PREFIX.<source_lang> and PREFIX.<target_lang> (each "
        "optionally .gz). None: the files are JSONL or a JSON array of {source, target} records.",
    )
    target_lang: str | None = Field(
        default=None, pattern=_LANG, description="The target side's suffix; see source_lang."
    )

    @model_validator(mode="after")
    def _both_langs_or_neither(self) -> Seq2SeqConfig:
        if (self.source_lang is None) != (self.target_lang is None):
            raise ValueError(
                "give both source_lang and target_lang (a parallel corpus PREFIX.SRC and "
                "PREFIX.TGT), or neither (JSONL source/target records)"
            )
        if self.source_lang is not None and self.source_lang == self.target_lang:
            raise ValueError(f"source_lang and target_lang are both {self.source_lang!r}")
        return self

    @property
    def langs(self) -> tuple[str, str] | None:
        """(source_lang, target_lang) for a parallel corpus; None for source/target records."""
        if self.source_lang is None or self.target_lang is None:
            return None
        return self.source_lang, self.target_lang

    def build(
        self, records: Records, tokenizer: Tokenizer, *, max_len: int, bidirectional: bool
    ) -> TaskData:
        def read(path: Path) -> tuple[list[Conversation], int]:
            pairs, skipped = read_source_target(
                path, self.langs, encoding=records.encoding, skip_invalid=records.skip_invalid
            )
            return [pair_conversation(pair) for pair in pairs], skipped

        return conversation_task(records, read, tokenizer, max_len, kind="pairs", objective=Seq2Seq)
