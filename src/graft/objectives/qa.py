"""Extractive question answering (SQuAD): a question and a context in, the answer's span out.

Every question is read in windows by `graft.data.qa.qa_windows`, the path `graft eval --task qa`
and the server share (`[CLS] question [SEP] piece [SEP]`, pieces overlapping by `stride` context
tokens). The span head gives a start and an end logit at every position; a window is trained to
point both at its answer's first and last token when it holds all of the answer, and at [CLS]
when it does not (`answer_positions`), as BERT and transformers' examples do. The loss is
cross-entropy over the window's real positions for the start and for the end; its units are
those two targets of every window, so the loop's mean is (CE(start) + CE(end)) / 2 per window,
transformers' QA loss. A question with several gold answers trains on the first.

Training draws random windows; validation walks every window and reports the share whose start
and end are both right (`span_exact`, per window: `graft eval --task qa` scores whole questions
with SQuAD's exact match and F1). Without a validation file, whole articles (by title, else by
context) are held out, never single questions: questions on one passage must not straddle the
split.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from graft.data.inputs import right_padded
from graft.data.qa import QARecord, QAWindow, answer_positions, qa_windows, read_qa
from graft.data.tokenizer import Tokenizer
from graft.errors import ConfigError, DataError
from graft.model.config import SPAN_LABELS, AttentionKind, HeadKind
from graft.model.transformer import LanguageModel, padding_attention_mask
from graft.objectives.base import Encoded, RecordBatches, RecordObjective, Records, TaskData
from graft.objectives.batch import Batch, LossSum, LossTotals, run


class EncodedWindows(Encoded):
    """The windows of a set of questions, with each window's start and end target, and how many
    questions were skipped as invalid (a question leaving no room for its context)."""

    def __init__(
        self,
        records: Sequence[QARecord],
        tokenizer: Tokenizer,
        *,
        max_len: int,
        stride: int,
        skip_invalid: bool,
    ) -> None:
        self.ids: list[list[int]] = []
        self.token_types: list[list[int]] = []
        targets: list[tuple[int, int]] = []
        self.truncated = 0  # a window never cuts its context: it reads the rest in the next one
        self.questions = self.skipped = 0
        for record in records:
            try:
                windows = qa_windows(
                    tokenizer,
                    record.question,
                    record.context,
                    max_len=max_len,
                    stride=stride,
                    source=record.source,
                )
            except DataError:
                if not skip_invalid:
                    raise
                self.skipped += 1
                continue
            self.questions += 1
            for window in windows:
                self.ids.append(list(window.ids))
                self.token_types.append(list(window.token_type_ids))
                targets.append(_targets(window, record))
        self.targets = torch.tensor(targets, dtype=torch.long).view(-1, 2)

    @property
    def unanswerable(self) -> int:
        """Windows whose target is [CLS] (the answer is elsewhere, or there is none)."""
        return int((self.targets == 0).all(dim=1).sum())


def _targets(window: QAWindow, record: QARecord) -> tuple[int, int]:
    """Where `window` should point: its first gold answer's positions, or [CLS]."""
    return answer_positions(window, record.answers[0]) if record.answers else (0, 0)


class AnswerSpans(RecordBatches[EncodedWindows]):
    """Objective `qa`."""

    name = "qa"
    rows_unlike_records = (
        "trains on windows of each context (a long one gives several), not one row per question"
    )

    def __init__(
        self,
        train: Sequence[QARecord],
        val: Sequence[QARecord],
        tokenizer: Tokenizer,
        *,
        max_len: int,
        stride: int,
        skip_invalid: bool = False,
    ) -> None:
        self.pad_id = next(i for i in (tokenizer.pad_id, tokenizer.eot_id, 0) if i is not None)
        self.train, self.val = (
            EncodedWindows(
                records, tokenizer, max_len=max_len, stride=stride, skip_invalid=skip_invalid
            )
            for records in (train, val)
        )
        for split, data in (("training", self.train), ("validation", self.val)):
            if not len(data):
                raise DataError(
                    f"every {split} question was skipped ({data.skipped:,}): none leaves room "
                    f"for its context in a window of {max_len} tokens; raise train.seq_len"
                )

    def batch(self, data: EncodedWindows, rows: list[int]) -> Batch:
        input_ids, lengths = right_padded([data.ids[i] for i in rows], self.pad_id)
        token_types, _ = right_padded([data.token_types[i] for i in rows], 0)
        real = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]
        return Batch(
            input_ids,
            token_type_ids=token_types,
            attention_mask=padding_attention_mask(real, causal=False),
            sequence_targets=data.targets[rows],  # (B, 2): start, end
            lengths=lengths,
        )

    def loss(self, model: LanguageModel, batch: Batch) -> LossSum:
        assert batch.sequence_targets is not None and batch.lengths is not None
        logits = run(model, batch, ["classifier"]).class_logits
        assert logits is not None  # (B, T, 2)
        targets = batch.sequence_targets.to(logits.device)
        lengths = batch.lengths.to(logits.device)
        # Padding is no candidate: a window's loss does not depend on what it was batched with.
        pad = torch.arange(logits.shape[1], device=logits.device)[None, :] >= lengths[:, None]
        logits = logits.masked_fill(pad[..., None], float("-inf"))
        starts, ends = logits[..., 0], logits[..., 1]
        rows = F.cross_entropy(starts, targets[:, 0], reduction="none") + F.cross_entropy(
            ends, targets[:, 1], reduction="none"
        )
        right = (starts.argmax(-1) == targets[:, 0]) & (ends.argmax(-1) == targets[:, 1])
        stats = {"windows": float(targets.shape[0]), "span_exact": float(right.sum())}
        return LossSum(rows.sum(), int(targets.numel()), stats, rows=rows)

    def metrics(self, totals: LossTotals, split: str) -> dict[str, float]:
        stats = totals.stats
        return {
            f"{split}/loss": totals.mean,
            f"{split}/span_exact": stats["span_exact"] / max(stats["windows"], 1.0),
        }


def article_split(
    records: Sequence[QARecord], fraction: float, seed: int
) -> tuple[list[QARecord], list[QARecord]]:
    """(rest, held out): `fraction` of the articles held out whole, by title, or by context when
    the records have fewer than two titles; a seeded shuffle of the articles, at least one on each
    side. Both lists keep the input order."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(record.title, []).append(i)
    if len(groups) < 2:
        groups = {}
        for i, record in enumerate(records):
            groups.setdefault(record.context, []).append(i)
    if len(groups) < 2:
        raise DataError(
            f"{records[0].source}: every question is on one passage, so no passage is left to "
            "hold out for validation; give a validation file (--val)"
        )
    keys = list(groups)
    # A string seed hashes the same in every process (str hash() is salted, this is not).
    random.Random(f"{seed}/qa").shuffle(keys)
    count = min(len(keys) - 1, max(1, round(fraction * len(keys))))
    held = {i for key in keys[:count] for i in groups[key]}
    rest = [r for i, r in enumerate(records) if i not in held]
    return rest, [r for i, r in enumerate(records) if i in held]


class QAConfig(RecordObjective):
    """qa: the span of the context that answers a question (SQuAD), on an encoder."""

    head: ClassVar[HeadKind] = "span"
    attention: ClassVar[AttentionKind | None] = "bidirectional"
    name: Literal["qa"] = "qa"
    stride: int = Field(
        default=64,
        ge=0,
        description="Context tokens consecutive windows of a long context share (doc_stride).",
    )
    max_answer_tokens: int = Field(
        default=30, ge=1, description="Longest answer prediction picks, in tokens."
    )

    def build(
        self, records: Records, tokenizer: Tokenizer, *, max_len: int, bidirectional: bool
    ) -> TaskData:
        if not bidirectional:
            raise ConfigError(
                "objective qa trains an encoder: model.attention must be bidirectional"
            )
        if records.redact or records.redact_names is not None:
            raise ConfigError(
                "data.redact: qa cannot redact its records; answers are found by character "
                "offsets into the context, which redaction would move"
            )

        def read(path: Path) -> tuple[list[QARecord], int]:
            return read_qa(path, skip_invalid=records.skip_invalid, encoding=records.encoding)

        train, val, skipped = records.train_and_val(
            read, lambda rows: article_split(rows, records.val_fraction, records.seed)
        )
        spans = AnswerSpans(
            records.sample(train),
            val,
            tokenizer,
            max_len=max_len,
            stride=self.stride,
            skip_invalid=records.skip_invalid,
        )
        skipped += spans.train.skipped + spans.val.skipped
        notes = [
            f"{spans.train.questions:,} training and {spans.val.questions:,} validation "
            f"questions in {len(spans.train):,} and {len(spans.val):,} windows of {max_len} "
            f"tokens (stride {self.stride}); {spans.train.unanswerable:,} training windows "
            "point at [CLS] (no answer in them)"
        ]
        if skipped:
            notes.append(f"skipped {skipped:,} invalid questions (--data.skip_invalid)")
        return TaskData(spans, SPAN_LABELS, tuple(notes))
