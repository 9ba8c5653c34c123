"""Causal language modelling: packed token windows in, next-token loss out.

Training windows are sampled at random offsets of the flat token stream (nanoGPT's recipe: every
window is full, documents are packed across the end-of-text separators). With
`mask_doc_boundaries` a token attends only to earlier tokens of its own document and positions
restart at each document, so packing never lets one document condition on another.
Validation windows are a fixed, evenly spaced set, so successive evaluations are comparable.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch

from graft.data.shards import TokenShards
from graft.model.config import AttentionKind
from graft.model.transformer import LanguageModel
from graft.objectives.base import ShardObjective, Shards, check_windows, spaced_starts
from graft.objectives.batch import Batch, LossSum, LossTotals, Objective, run


def document_masks(input_ids: torch.Tensor, eot_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids restarting after each end-of-text token, and a (B, 1, T, T) mask letting each
    token see earlier tokens of its own document only. The end-of-text token closes its document."""
    B, T = input_ids.shape
    ends = input_ids == eot_id
    # Document index of each position: the number of end-of-text tokens strictly before it.
    doc = torch.cumsum(ends.long(), dim=1) - ends.long()
    idx = torch.arange(T, device=input_ids.device).expand(B, T)
    starts = torch.ones_like(ends)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    first = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), dim=1).values
    causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
    same_doc = doc.unsqueeze(2) == doc.unsqueeze(1)  # (B, T, T)
    return idx - first, (same_doc & causal).unsqueeze(1)


def next_token_loss(model: LanguageModel, batch: Batch) -> LossSum:
    """Cross-entropy of the batch's scored targets through the fused output layer: the loss of every
    objective that predicts tokens with the LM head (clm, denoise, instruct)."""
    assert batch.targets is not None
    out = run(model, batch, ["lm"], batch.targets)
    assert out.lm_loss is not None
    return LossSum(out.lm_loss, batch.n_targets, rows=out.lm_row_loss)


class CausalLM:
    """Objective `clm`: batches of packed windows from token shards; next-token cross-entropy."""

    name = "clm"

    def __init__(
        self,
        train: TokenShards,
        val: TokenShards | None,
        seq_len: int,
        *,
        mask_doc_boundaries: bool = False,
    ) -> None:
        check_windows(seq_len + 1, train, val, what="seq_len + 1 = ")
        self.train, self.val, self.seq_len = train, val, seq_len
        self.mask_doc_boundaries = mask_doc_boundaries
        self.eot_id = train.index.eot_id

    def _batch(self, shards: TokenShards, starts: list[int]) -> Batch:
        T = self.seq_len
        windows = torch.from_numpy(
            np.stack([shards.tokens[s : s + T + 1].astype(np.int64) for s in starts])
        )
        input_ids, targets = windows[:, :-1], windows[:, 1:]
        if not self.mask_doc_boundaries:
            return Batch(input_ids, targets)
        position_ids, mask = document_masks(input_ids, self.eot_id)
        return Batch(input_ids, targets, position_ids, mask)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        # Starts run below `high`: the last leaves room for the shifted target.
        high = len(self.train) - self.seq_len
        starts = torch.randint(0, high, (batch_size,), generator=generator).tolist()
        return self._batch(self.train, starts)

    def train_records(self) -> int:
        """Disjoint windows of seq_len + 1 tokens (inputs and their shifted targets): the records
        private training samples, so no token belongs to two of them."""
        return len(self.train) // (self.seq_len + 1)

    def records_batch(self, rows: list[int], generator: torch.Generator) -> Batch:
        return self._batch(self.train, [row * (self.seq_len + 1) for row in rows])

    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]:
        if self.val is None:
            return []
        high = len(self.val) - self.seq_len - 1
        return [self._batch(self.val, s) for s in spaced_starts(high, batch_size, n_batches)]

    def loss(self, model: LanguageModel, batch: Batch) -> LossSum:
        return next_token_loss(model, batch)

    def metrics(self, totals: LossTotals, split: str) -> dict[str, float]:
        """Loss per token, perplexity, and bits per byte: the last compares runs with different
        tokenizers, because it divides by the UTF-8 bytes of text, not by tokens."""
        loss = totals.mean
        metrics = {f"{split}/loss": loss, f"{split}/ppl": math.exp(min(loss, 50.0))}
        shards = self.val if split == "val" else self.train
        if shards is not None and shards.bytes_per_token > 0:
            metrics[f"{split}/bpb"] = loss / math.log(2) / shards.bytes_per_token
        return metrics


class CLMConfig(ShardObjective):
    """clm: causal language modelling over packed token windows (no knobs of its own)."""

    attention: ClassVar[AttentionKind | None] = "causal"
    name: Literal["clm"] = "clm"

    def build(self, data: Shards) -> Objective:
        return CausalLM(
            data.train, data.val, data.seq_len, mask_doc_boundaries=data.mask_doc_boundaries
        )

    def reads_document_boundaries(self) -> bool:
        return True
