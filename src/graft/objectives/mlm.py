"""Masked language modelling (BERT, RoBERTa): bidirectional attention, 15% of tokens chosen,
80/10/10 mask/random/kept, the loss on chosen positions only.

Training windows are random spans of the packed token stream framed as `[CLS] ... [SEP]`
(RoBERTa's full-sentence packing: documents run on across their end-of-text separators, which
are never masked). Validation windows are evenly spaced and masked once with a fixed seed, so
successive evaluations score the same positions. Masked-token accuracy is reported next to the
unigram baseline: always guessing the most frequent token of the validation text.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from graft.data.inputs import input_frame
from graft.data.records import IGNORE_INDEX
from graft.data.shards import TokenShards
from graft.data.tokenizer import Tokenizer
from graft.errors import TokenizerError
from graft.model.config import AttentionKind
from graft.model.transformer import LanguageModel, ModelOutput
from graft.objectives.base import ShardObjective, Shards, check_windows, spaced_starts
from graft.objectives.batch import Batch, LossSum, LossTotals, Objective, run
from graft.objectives.masking import mask_tokens

EVAL_SEED = 0  # validation masks are drawn once from this seed


def special_token_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids of the tokenizer's special tokens (end-of-text, pad, mask, separators, sentinels...)."""
    return sorted(
        i for i, token in tokenizer.backend.get_added_tokens_decoder().items() if token.special
    )


def require_tokens(tokenizer: Tokenizer, objective: str, **tokens: int | None) -> None:
    """Refuse up front an objective whose special tokens the tokenizer lacks, naming them."""
    missing = [role for role, token_id in tokens.items() if token_id is None]
    if missing:
        raise TokenizerError(
            f"objective {objective} needs the tokenizer's {', '.join(missing)} token(s), which it "
            "lacks; graft-trained tokenizers have <|mask|>, <|sep|>, <|cls|> and <|pad|>: "
            "train one with `graft tokenizer train` and prepare the data with it"
        )


def masked_lm_loss(out: ModelOutput, targets: torch.Tensor) -> LossSum:
    """The LM head's cross-entropy summed over the chosen positions, and its accuracy."""
    assert out.lm_loss is not None and out.lm_correct is not None  # an mlm_head model's outputs
    count = int((targets != IGNORE_INDEX).sum())
    total = out.lm_loss
    return LossSum(
        total,
        count,
        {
            "mlm_correct": float(out.lm_correct),
            "mlm_count": float(count),
            "mlm_loss_sum": float(total.detach()),
        },
        rows=out.lm_row_loss,
    )


def mlm_metrics(totals: LossTotals, split: str) -> dict[str, float]:
    count = max(totals.stats["mlm_count"], 1)
    loss = totals.stats["mlm_loss_sum"] / count
    return {
        f"{split}/mlm_loss": loss,
        f"{split}/mlm_ppl": math.exp(min(loss, 50.0)),
        f"{split}/mlm_acc": totals.stats["mlm_correct"] / count,
    }


def unigram_accuracy(shards: TokenShards, special: list[int]) -> float:
    """Accuracy of always predicting the most frequent non-special token: the floor MLM must
    beat."""
    minlength = max(special, default=0) + 1
    counts = np.bincount(np.asarray(shards.tokens), minlength=minlength).astype(np.int64)
    counts[special] = 0
    return float(counts.max() / max(counts.sum(), 1))


class MaskingPolicy:
    """What may be masked and what a random replacement may be, for one tokenizer."""

    def __init__(
        self, tokenizer: Tokenizer, vocab_size: int, *, probability: float, whole_word: bool
    ) -> None:
        mask_id = tokenizer.mask_id
        require_tokens(tokenizer, "mlm", mask=mask_id)
        assert mask_id is not None  # require_tokens refused None
        self.mask_id = mask_id
        self.special = special_token_ids(tokenizer)
        is_special = torch.zeros(vocab_size, dtype=torch.bool)
        is_special[self.special] = True
        # Embedding rows past the tokenizer are never real tokens.
        is_special[tokenizer.vocab_size :] = True
        self.is_special = is_special
        self.replacement_ids = (~is_special).nonzero().squeeze(1)
        self.word_starts = torch.from_numpy(tokenizer.word_start_ids()) if whole_word else None
        self.probability = probability

    def apply(
        self,
        input_ids: torch.Tensor,
        generator: torch.Generator,
        maskable: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        can_mask = ~self.is_special[input_ids]
        if maskable is not None:
            can_mask &= maskable
        starts = None
        if self.word_starts is not None:
            starts = self.word_starts[input_ids.clamp_max(self.word_starts.numel() - 1)]
        return mask_tokens(
            input_ids,
            maskable=can_mask,
            mask_id=self.mask_id,
            replacement_ids=self.replacement_ids,
            generator=generator,
            probability=self.probability,
            word_starts=starts,
        )


class MaskedLM:
    """Objective `mlm`."""

    name = "mlm"

    def __init__(
        self,
        train: TokenShards,
        val: TokenShards | None,
        seq_len: int,
        tokenizer: Tokenizer,
        vocab_size: int,
        *,
        probability: float = 0.15,
        whole_word: bool = False,
    ) -> None:
        self.policy = MaskingPolicy(
            tokenizer, vocab_size, probability=probability, whole_word=whole_word
        )
        # Each window framed as every text given to an encoder is: [CLS] ... [SEP], when the
        # tokenizer has them (a bytes tokenizer's windows stay bare).
        self.frame = input_frame(tokenizer, framed=True)
        self.content_len = seq_len - self.frame.size
        check_windows(self.content_len, train, val)
        self.train, self.val = train, val
        self.unigram_acc = unigram_accuracy(val, self.policy.special) if val is not None else None
        self._eval: list[Batch] | None = None

    def _windows(self, shards: TokenShards, starts: list[int]) -> torch.Tensor:
        L = self.content_len
        ids = torch.from_numpy(
            np.stack([shards.tokens[s : s + L].astype(np.int64) for s in starts])
        )
        if self.frame.size:
            rows = ids.shape[0]
            before = torch.tensor(self.frame.before).expand(rows, -1)
            after = torch.tensor(self.frame.after).expand(rows, -1)
            ids = torch.cat([before, ids, after], dim=1)
        return ids

    def _batch(self, ids: torch.Tensor, generator: torch.Generator) -> Batch:
        corrupted, targets = self.policy.apply(ids, generator)
        return Batch(corrupted, targets, causal=False)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        starts = torch.randint(
            0, len(self.train) - self.content_len + 1, (batch_size,), generator=generator
        ).tolist()
        return self._batch(self._windows(self.train, starts), generator)

    def train_records(self) -> int:
        """Disjoint windows of content tokens: the records private training samples."""
        return len(self.train) // self.content_len

    def records_batch(self, rows: list[int], generator: torch.Generator) -> Batch:
        starts = [row * self.content_len for row in rows]
        return self._batch(self._windows(self.train, starts), generator)

    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]:
        if self.val is None:
            return []
        if self._eval is None:
            generator = torch.Generator().manual_seed(EVAL_SEED)
            high = len(self.val) - self.content_len
            self._eval = [
                self._batch(self._windows(self.val, starts), generator)
                for starts in spaced_starts(high, batch_size, n_batches)
            ]
        return self._eval

    def loss(self, model: LanguageModel, batch: Batch) -> LossSum:
        assert batch.targets is not None
        return masked_lm_loss(run(model, batch, ["masked_lm"], batch.targets), batch.targets)

    def metrics(self, totals: LossTotals, split: str) -> dict[str, float]:
        metrics = {f"{split}/loss": totals.mean, **mlm_metrics(totals, split)}
        if split == "val" and self.unigram_acc is not None:
            metrics["val/mlm_unigram_acc"] = self.unigram_acc
        return metrics


class MLMConfig(ShardObjective):
    """mlm: masked language modelling (BERT, RoBERTa) on an encoder."""

    attention: ClassVar[AttentionKind | None] = "bidirectional"
    name: Literal["mlm"] = "mlm"
    mask_probability: float = Field(
        default=0.15, gt=0, lt=1, description="Fraction of tokens chosen."
    )
    whole_word_mask: bool = Field(
        default=False, description="Choose whole words, not single tokens."
    )

    def build(self, data: Shards) -> Objective:
        return MaskedLM(
            data.train,
            data.val,
            data.seq_len,
            data.tokenizer,
            data.vocab_size,
            probability=self.mask_probability,
            whole_word=self.whole_word_mask,
        )
