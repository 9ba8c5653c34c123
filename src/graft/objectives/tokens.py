"""Token classification (named entities): BIO-tagged words in, a tag per word out.

Each word's first sub-token carries its tag; the other sub-tokens, padding and [CLS]/[SEP] are not
scored (graft.data.tagged.tagged_inputs). Validation reports entity-level precision, recall and F1
as seqeval (conlleval) counts them: an entity is right only with its exact span and type. The counts
are additive, so the figures are exact over any number of batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from graft.data.inputs import right_padded
from graft.data.records import IGNORE_INDEX
from graft.data.tagged import TaggedSentence, read_tagged, refuse_unknown_tags, tagged_inputs
from graft.data.tokenizer import Tokenizer
from graft.errors import DataError
from graft.model.config import HeadKind
from graft.model.transformer import LanguageModel, padding_attention_mask
from graft.objectives.base import Encoded, RecordBatches, RecordObjective, Records, TaskData
from graft.objectives.batch import Batch, LossSum, LossTotals, run


def tag_set(
    sentences: Sequence[TaggedSentence], where: str, given: tuple[str, ...] | None = None
) -> tuple[str, ...]:
    """The tags in id order: `given` (objective.labels), every training tag among them, or else
    the training set's tags, "O" first, then sorted."""
    if given is not None:
        refuse_unknown_tags(sentences, given)
        return given
    tags = {tag for s in sentences for tag in s.tags}
    if not tags - {"O"}:
        raise DataError(
            f"{where}: no entity tags (only 'O'); token classification needs labelled entities"
        )
    return ("O", *sorted(tags - {"O"}))


def _entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    from seqeval.metrics.sequence_labeling import get_entities

    return {(kind, start, end) for kind, start, end in get_entities(list(tags))}


class EncodedSentences(Encoded):
    def __init__(
        self,
        sentences: Sequence[TaggedSentence],
        tokenizer: Tokenizer,
        labels: tuple[str, ...],
        max_len: int,
        *,
        frame: bool,
    ) -> None:
        index = {label: i for i, label in enumerate(labels)}
        self.ids = []
        self.labels: list[list[int]] = []
        self.truncated = 0
        refuse_unknown_tags(sentences, labels)
        for sentence in sentences:
            # The one path from words to a tagger's inputs ([CLS] ... [SEP] for encoders), which
            # `graft eval --task tokens` and `graft extract` read predictions through.
            inputs = tagged_inputs(
                tokenizer, sentence.words, framed=frame, max_len=max_len, source=sentence.source
            )
            self.truncated += inputs.truncated
            self.ids.append(inputs.ids)
            self.labels.append(inputs.labels(sentence.tags, index, source=sentence.source))


class TagTokens(RecordBatches[EncodedSentences]):
    """Objective `tokens`."""

    name = "tokens"

    def __init__(
        self,
        train: Sequence[TaggedSentence],
        val: Sequence[TaggedSentence],
        tokenizer: Tokenizer,
        labels: tuple[str, ...],
        max_len: int,
        *,
        bidirectional: bool,
    ) -> None:
        self.labels, self.bidirectional = labels, bidirectional
        self.pad_id = next(i for i in (tokenizer.pad_id, tokenizer.eot_id, 0) if i is not None)
        self.train = EncodedSentences(train, tokenizer, labels, max_len, frame=bidirectional)
        self.val = EncodedSentences(val, tokenizer, labels, max_len, frame=bidirectional)

    def batch(self, data: EncodedSentences, rows: list[int]) -> Batch:
        input_ids, lengths = right_padded([data.ids[i] for i in rows], self.pad_id)
        targets, _ = right_padded([data.labels[i] for i in rows], IGNORE_INDEX)
        real = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]
        return Batch(
            input_ids,
            targets,
            attention_mask=padding_attention_mask(real, causal=not self.bidirectional),
            lengths=lengths,
        )

    def loss(self, model: LanguageModel, batch: Batch) -> LossSum:
        assert batch.targets is not None
        logits = run(model, batch, ["classifier"]).class_logits
        assert logits is not None
        scored = batch.targets != IGNORE_INDEX
        each = F.cross_entropy(
            logits.flatten(0, 1),
            batch.targets.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        rows = each.view(batch.targets.shape).sum(1)  # unscored positions count 0
        total = rows.sum()
        predicted = logits.argmax(-1)
        stats = {"token_correct": float((predicted[scored] == batch.targets[scored]).sum())}
        stats.update(entities_true=0.0, entities_predicted=0.0, entities_correct=0.0)
        for row in range(batch.input_ids.shape[0]):
            keep = scored[row]
            true = _entities([self.labels[i] for i in batch.targets[row][keep].tolist()])
            pred = _entities([self.labels[i] for i in predicted[row][keep].tolist()])
            stats["entities_true"] += len(true)
            stats["entities_predicted"] += len(pred)
            stats["entities_correct"] += len(true & pred)
        return LossSum(total, int(scored.sum()), stats, rows=rows)

    def metrics(self, totals: LossTotals, split: str) -> dict[str, float]:
        s = totals.stats
        precision = (
            s["entities_correct"] / s["entities_predicted"] if s["entities_predicted"] else 0.0
        )
        recall = s["entities_correct"] / s["entities_true"] if s["entities_true"] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {
            f"{split}/loss": totals.mean,
            f"{split}/token_acc": s["token_correct"] / max(totals.count, 1),
            f"{split}/entity_precision": precision,
            f"{split}/entity_recall": recall,
            f"{split}/entity_f1": f1,
        }


class TokensConfig(RecordObjective):
    """tokens: a BIO tag per word (named entities), on any backbone."""

    head: ClassVar[HeadKind] = "token"
    monitor: ClassVar[str] = "val/entity_f1"
    name: Literal["tokens"] = "tokens"
    labels: tuple[str, ...] | None = Field(
        default=None,
        description="The BIO tags in id order, O and every training tag among them; unset: the "
        "training sentences' tags, O first, then sorted. Private training needs them given: a "
        "set read from the private records is published with the model.",
    )

    @field_validator("labels")
    @classmethod
    def _bio_tags(cls, labels: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if labels is None:
            return None
        bad = [t for t in labels if t != "O" and not t.startswith(("B-", "I-"))]
        if bad or "O" not in labels or len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(
                f"give distinct BIO tags, O and at least one B-X or I-X, got {list(labels)}"
            )
        return labels

    def build(
        self, records: Records, tokenizer: Tokenizer, *, max_len: int, bidirectional: bool
    ) -> TaskData:
        def read(path: Path) -> tuple[list[TaggedSentence], int]:
            return read_tagged(path, encoding=records.encoding, skip_invalid=records.skip_invalid)

        train, val, skipped = records.train_and_val(read)
        train = records.sample(train)
        tags = tag_set(train, str(records.train_file), self.labels)
        tagger = TagTokens(train, val, tokenizer, tags, max_len, bidirectional=bidirectional)
        notes = tagger.notes("sentences", skipped, max_len, f"; tags: {', '.join(tags)}")
        return TaskData(tagger, tags, notes)
