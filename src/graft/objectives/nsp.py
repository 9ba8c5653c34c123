"""Next-sentence prediction (BERT): `[CLS] A [SEP] B [SEP]` pairs with segment ids, where B follows
A in the same document half of the time and comes from another document otherwise; a binary head
on the pooled [CLS] state. Objective `nsp` trains that head alone; `mlm+nsp` also masks the pair's
tokens and adds the masked-LM loss, as BERT was pre-trained.

The joint loss is BERT's: mean masked-LM loss plus mean NSP loss. The loop divides the masked
tokens' summed loss by the step's masked tokens and the pairs' (`LossSum.per_row`) by the step's
pairs, so the sum of the two means holds however the step is split into micro-batches.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from graft.data.shards import TokenShards
from graft.data.tokenizer import Tokenizer
from graft.errors import ConfigError, DataError
from graft.model.config import AttentionKind, ModelConfig
from graft.model.transformer import LanguageModel, ModelOutput
from graft.objectives.base import ShardObjective, Shards
from graft.objectives.batch import Batch, LossSum, LossTotals, Objective, run
from graft.objectives.mlm import (
    EVAL_SEED,
    MaskingPolicy,
    masked_lm_loss,
    mlm_metrics,
    require_tokens,
    unigram_accuracy,
)
from graft.objectives.segments import document_spans, pack_pair, sample_pair


def nsp_loss(out: ModelOutput, labels: torch.Tensor) -> LossSum:
    """labels (B,): 0 where B follows A, 1 where B is random, as in transformers'
    BertForPreTraining, so an imported BERT's NSP head keeps its meaning here and an exported one
    keeps it there."""
    logits = out.nsp_logits
    assert logits is not None
    total = F.cross_entropy(logits, labels, reduction="sum")
    correct = float((logits.argmax(-1) == labels).sum())
    return LossSum(
        total,
        int(labels.numel()),
        {
            "nsp_correct": correct,
            "nsp_count": float(labels.numel()),
            "nsp_loss_sum": float(total.detach()),
        },
    )


class NextSentence:
    """Objectives `nsp` and `mlm+nsp`."""

    def __init__(
        self,
        train: TokenShards,
        val: TokenShards | None,
        seq_len: int,
        tokenizer: Tokenizer,
        vocab_size: int,
        *,
        with_mlm: bool,
        probability: float = 0.15,
        whole_word: bool = False,
        same_document_negatives: float = 0.0,
    ) -> None:
        self.name = "mlm+nsp" if with_mlm else "nsp"
        cls_id, sep_id, pad_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
        require_tokens(
            tokenizer, self.name, cls=cls_id, sep=sep_id, pad=pad_id, end_of_text=tokenizer.eot_id
        )
        assert cls_id is not None and sep_id is not None and pad_id is not None  # required above
        if seq_len < 8:
            raise ConfigError(
                f"objective {self.name}: train.seq_len {seq_len} is too short for two segments; "
                "use >= 8"
            )
        self.policy = (
            MaskingPolicy(tokenizer, vocab_size, probability=probability, whole_word=whole_word)
            if with_mlm
            else None
        )
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
        self.seq_len = seq_len
        self.same_document_negatives = same_document_negatives  # training batches only
        self.train, self.val = train, val
        self.train_spans = self._spans(train)
        self.val_spans = self._spans(val) if val is not None else None
        self.unigram_acc = (
            unigram_accuracy(val, self.policy.special)
            if val is not None and self.policy is not None
            else None
        )
        self._eval: list[Batch] | None = None

    def _spans(self, shards: TokenShards) -> np.ndarray:
        spans = document_spans(np.asarray(shards.tokens), shards.index.eot_id)
        if len(spans) < 2:
            raise DataError(
                f"{shards.directory}: objective {self.name} needs at least two documents in the "
                f"{shards.split} split (negatives come from another document), found {len(spans)}; "
                "add documents, or split files into documents when preparing the data"
            )
        return spans

    def _batch(
        self,
        shards: TokenShards,
        spans: np.ndarray,
        batch_size: int,
        generator: torch.Generator,
        same_document_negatives: float = 0.0,
    ) -> Batch:
        tokens = np.asarray(shards.tokens)
        ids, types, real, lengths, labels = [], [], [], [], []
        for _ in range(batch_size):
            pair = sample_pair(
                tokens,
                spans,
                self.seq_len - 3,
                generator,
                same_document_negatives=same_document_negatives,
            )
            packed, token_types, n_real = pack_pair(
                pair,
                cls_id=self.cls_id,
                sep_id=self.sep_id,
                pad_id=self.pad_id,
                seq_len=self.seq_len,
            )
            ids.append(packed)
            types.append(token_types)
            real.append(np.arange(self.seq_len) < n_real)
            lengths.append(n_real)
            # BertForPreTraining's next_sentence_label: 0 = B follows A.
            labels.append(0 if pair.is_next else 1)
        input_ids = torch.from_numpy(np.stack(ids).astype(np.int64))
        is_real = torch.from_numpy(np.stack(real))
        targets = None
        if self.policy is not None:
            input_ids, targets = self.policy.apply(input_ids, generator, maskable=is_real)
        # Keys are the real tokens only; (B, 1, 1, T) broadcasts over heads and queries.
        return Batch(
            input_ids,
            targets,
            token_type_ids=torch.from_numpy(np.stack(types).astype(np.int64)),
            attention_mask=is_real[:, None, None, :],
            sequence_targets=torch.tensor(labels),
            lengths=torch.tensor(lengths),
        )

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._batch(
            self.train, self.train_spans, batch_size, generator, self.same_document_negatives
        )

    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]:
        if self.val is None or self.val_spans is None:
            return []
        if self._eval is None:
            generator = torch.Generator().manual_seed(EVAL_SEED)
            self._eval = [
                self._batch(self.val, self.val_spans, batch_size, generator)
                for _ in range(n_batches)
            ]
        return self._eval

    def loss(self, model: LanguageModel, batch: Batch) -> LossSum:
        assert batch.sequence_targets is not None
        masked = self.policy is not None and batch.targets is not None
        out = run(model, batch, ["nsp", "masked_lm"] if masked else ["nsp"], batch.targets)
        nsp = nsp_loss(out, batch.sequence_targets)
        if not masked:
            return nsp
        assert batch.targets is not None
        mlm = masked_lm_loss(out, batch.targets)
        # BERT's sum of the two means: the loop divides NSP's sum by the step's rows (pairs).
        return LossSum(mlm.total, mlm.count, {**mlm.stats, **nsp.stats}, per_row=nsp.total)

    def metrics(self, totals: LossTotals, split: str) -> dict[str, float]:
        stats = totals.stats
        nsp_loss_mean = stats["nsp_loss_sum"] / max(stats["nsp_count"], 1)
        metrics = {
            f"{split}/nsp_loss": nsp_loss_mean,
            f"{split}/nsp_acc": stats["nsp_correct"] / max(stats["nsp_count"], 1),
        }
        if self.policy is None:
            return {f"{split}/loss": nsp_loss_mean, **metrics}
        mlm = mlm_metrics(totals, split)
        metrics = {f"{split}/loss": mlm[f"{split}/mlm_loss"] + nsp_loss_mean, **mlm, **metrics}
        if split == "val" and self.unigram_acc is not None:
            metrics["val/mlm_unigram_acc"] = self.unigram_acc
        return metrics


class NSPConfig(ShardObjective):
    """nsp: next-sentence prediction alone; mlm+nsp: BERT's pre-training, which also masks."""

    attention: ClassVar[AttentionKind | None] = "bidirectional"
    name: Literal["nsp", "mlm+nsp"] = "mlm+nsp"
    mask_probability: float = Field(
        default=0.15, gt=0, lt=1, description="mlm+nsp: fraction of tokens chosen."
    )
    whole_word_mask: bool = Field(
        default=False, description="mlm+nsp: choose whole words, not single tokens."
    )
    nsp_same_document_negatives: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of training negatives cut from a distant part of A's own document "
        "(validation keeps BERT's other-document negatives); with few long documents it stops the "
        "head from merely recognising documents.",
    )

    @model_validator(mode="after")
    def _masking_needs_mlm(self) -> NSPConfig:
        if self.name == "nsp" and self.given("mask_probability", "whole_word_mask"):
            raise ValueError(
                f"objective.{self.given('mask_probability', 'whole_word_mask')[0]}: objective nsp "
                "masks nothing; use objective mlm+nsp to mask as well"
            )
        return self

    def problems(self, model: ModelConfig) -> list[str]:
        config = model  # the model's config: its nsp_head is a flag here, not the module
        problems = super().problems(config)
        if not config.nsp_head:
            problems.append(
                f"objective {self.name} needs model.nsp_head: true (and model.pooler: true)"
            )
        if config.type_vocab_size < 2:
            problems.append(f"objective {self.name} needs segment ids: model.type_vocab_size >= 2")
        return problems

    def build(self, data: Shards) -> Objective:
        return NextSentence(
            data.train,
            data.val,
            data.seq_len,
            data.tokenizer,
            data.vocab_size,
            with_mlm=self.name == "mlm+nsp",
            probability=self.mask_probability,
            whole_word=self.whole_word_mask,
            same_document_negatives=self.nsp_same_document_negatives,
        )
