"""Sequence classification (spam, sentiment): labelled texts in, one label per text out.

Texts are encoded once by `graft.data.inputs.model_inputs`, the path `graft eval` and the server
share (`[CLS] text [SEP]` for encoders, which classify from the pooled first token; decoders
classify from their last real token, the only one that has seen the whole text), truncated to the
context and right-padded per batch. Training draws random examples; validation walks
every example in order. Class weights ("balanced": n / (classes * count)) can counter imbalanced
labels; they average 1 over the training set, so the loss keeps its scale. Accuracy and F1 come
from additive per-class counts, so they are exact over any number of batches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from graft.data.inputs import model_inputs, right_padded
from graft.data.records import TextRecord, read_labelled, stratified_split
from graft.data.tokenizer import Tokenizer
from graft.errors import DataError
from graft.model.config import HeadKind
from graft.model.transformer import LanguageModel, padding_attention_mask
from graft.objectives.base import Encoded, RecordBatches, RecordObjective, Records, TaskData
from graft.objectives.batch import Batch, LossSum, LossTotals, run


def label_set(
    records: Sequence[TextRecord], where: str, given: tuple[str, ...] | None = None
) -> tuple[str, ...]:
    """The labels in id order: `given` (objective.labels), every training label among them, or
    else the sorted labels of the training set (at least two)."""
    if given is not None:
        check_labels(records, given)
        return given
    labels = tuple(sorted({r.label for r in records}))
    if len(labels) < 2:
        raise DataError(f"{where}: classification needs at least two labels, found {list(labels)}")
    return labels


def check_labels(records: Sequence[TextRecord], labels: tuple[str, ...]) -> None:
    """Every label of `records` must be one of the model's (the training data's, or those
    objective.labels gives)."""
    known = set(labels)
    for record in records:
        if record.label not in known:
            raise DataError(
                f"{record.source}: label {record.label!r} is not one of the model's labels "
                f"({', '.join(labels)})"
            )


class EncodedTexts(Encoded):
    """Token ids, true lengths and label ids of a set of records, encoded once."""

    def __init__(
        self,
        records: Sequence[TextRecord],
        tokenizer: Tokenizer,
        labels: tuple[str, ...],
        max_len: int,
        *,
        frame: bool,
    ) -> None:
        index = {label: i for i, label in enumerate(labels)}
        # The one text -> ids path, which graft eval and the server share.
        inputs = model_inputs(tokenizer, [r.text for r in records], framed=frame, max_len=max_len)
        self.ids = inputs.ids
        self.truncated = sum(inputs.truncated)
        self.labels = torch.tensor([index[r.label] for r in records], dtype=torch.long)
        for ids, record in zip(self.ids, records):
            if not ids:
                raise DataError(f"{record.source}: the text encodes to no tokens")


class Classify(RecordBatches[EncodedTexts]):
    """Objective `classify`."""

    name = "classify"

    def __init__(
        self,
        train: Sequence[TextRecord],
        val: Sequence[TextRecord],
        tokenizer: Tokenizer,
        labels: tuple[str, ...],
        max_len: int,
        *,
        bidirectional: bool,
        class_weights: bool = False,
    ) -> None:
        check_labels(val, labels)
        self.labels, self.bidirectional = labels, bidirectional
        self.pad_id = next(i for i in (tokenizer.pad_id, tokenizer.eot_id, 0) if i is not None)
        self.train = EncodedTexts(train, tokenizer, labels, max_len, frame=bidirectional)
        self.val = EncodedTexts(val, tokenizer, labels, max_len, frame=bidirectional)
        self.weights: torch.Tensor | None = None
        if class_weights:
            counts = Counter(self.train.labels.tolist())
            self.weights = torch.tensor(
                [len(self.train) / (len(labels) * max(counts[i], 1)) for i in range(len(labels))]
            )

    def batch(self, texts: EncodedTexts, rows: list[int]) -> Batch:
        input_ids, lengths = right_padded([texts.ids[i] for i in rows], self.pad_id)
        real = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]
        mask = padding_attention_mask(real, causal=not self.bidirectional)
        return Batch(
            input_ids, attention_mask=mask, sequence_targets=texts.labels[rows], lengths=lengths
        )

    def loss(self, model: LanguageModel, batch: Batch) -> LossSum:
        assert batch.sequence_targets is not None
        logits = run(model, batch, ["classifier"]).class_logits
        assert logits is not None
        targets = batch.sequence_targets
        weight = None if self.weights is None else self.weights.to(logits.device)
        rows = F.cross_entropy(logits, targets, weight=weight, reduction="none")
        total = rows.sum()
        predicted = logits.argmax(-1)
        stats: dict[str, float] = {}
        for i, label in enumerate(self.labels):
            stats[f"tp/{label}"] = float(((predicted == i) & (targets == i)).sum())
            stats[f"fp/{label}"] = float(((predicted == i) & (targets != i)).sum())
            stats[f"fn/{label}"] = float(((predicted != i) & (targets == i)).sum())
        return LossSum(total, int(targets.numel()), stats, rows=rows)

    def metrics(self, totals: LossTotals, split: str) -> dict[str, float]:
        stats = totals.stats
        correct = sum(stats[f"tp/{label}"] for label in self.labels)
        metrics = {f"{split}/loss": totals.mean, f"{split}/acc": correct / max(totals.count, 1)}
        f1s = []
        for label in self.labels:
            tp, fp, fn = stats[f"tp/{label}"], stats[f"fp/{label}"], stats[f"fn/{label}"]
            f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
            metrics[f"{split}/f1/{label}"] = f1
            f1s.append(f1)
        metrics[f"{split}/macro_f1"] = sum(f1s) / len(f1s)
        return metrics


def sample_records(records: list[TextRecord], limit: int | None, seed: int) -> list[TextRecord]:
    """A stratified sample of `limit` records (all of them when None or when there are fewer)."""
    if limit is None or limit >= len(records):
        return records
    _, sample = stratified_split(records, limit / len(records), seed)
    if len({r.label for r in sample}) < 2:
        raise DataError(
            f"data.max_train_examples {limit}: the sample holds fewer than two labels; raise it"
        )
    return sample


class ClassifyConfig(RecordObjective):
    """classify: one label per text (spam, sentiment), on any backbone."""

    head: ClassVar[HeadKind] = "sequence"
    monitor: ClassVar[str] = "val/macro_f1"
    data_fields: ClassVar[tuple[str, ...]] = ("text_field", "label_field")
    name: Literal["classify"] = "classify"
    class_weights: bool = Field(default=False, description="Weight classes by inverse frequency.")
    labels: tuple[str, ...] | None = Field(
        default=None,
        description="The labels in id order, every training label among them; unset: the "
        "training records' labels, sorted. Private training needs them given: a set read from "
        "the private records is published with the model.",
    )

    @field_validator("labels")
    @classmethod
    def _two_distinct(cls, labels: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if labels is not None and (len(set(labels)) != len(labels) or len(labels) < 2):
            raise ValueError(f"give two or more distinct labels, got {list(labels)}")
        return labels

    def build(
        self, records: Records, tokenizer: Tokenizer, *, max_len: int, bidirectional: bool
    ) -> TaskData:
        def read(path: Path) -> tuple[list[TextRecord], int]:
            return read_labelled(
                path,
                text_field=records.text_field,
                label_field=records.label_field,
                encoding=records.encoding,
                skip_invalid=records.skip_invalid,
            )

        train, val, skipped = records.train_and_val(
            read, lambda rows: stratified_split(rows, records.val_fraction, records.seed)
        )
        train = sample_records(train, records.max_train_examples, records.seed)
        labels = label_set(train, str(records.train_file), self.labels)
        classify = Classify(
            train,
            val,
            tokenizer,
            labels,
            max_len,
            bidirectional=bidirectional,
            class_weights=self.class_weights,
        )
        notes = classify.notes("texts", skipped, max_len, f"; labels: {', '.join(labels)}")
        return TaskData(classify, labels, notes)
