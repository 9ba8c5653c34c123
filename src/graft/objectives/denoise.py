"""Denoising on a decoder-only model: corrupt a window, then have the model write what was lost.

`t5` (span corruption): ~15% of the tokens, in spans of mean length 3, are each replaced by a
sentinel; the sequence is `corrupted input` + `sentinel_0 span_0 sentinel_1 span_1 ... sentinel_k`.
`bart` (text infilling): each span becomes one mask token and the target is the original text:
`corrupted input` [SEP] `original`. The loss covers the target part only.

Attention is causal by default, so the model stays a standard causal LM and exports as one. With
`prefix_lm` the corrupted input (the prefix) is attended bidirectionally: the model learns more
from each example, but a causal-LM runtime (transformers' *ForCausalLM, llama.cpp) cannot apply
that mask, so such a model is only used as trained inside graft (docs/objectives.md says so).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from graft.data.records import IGNORE_INDEX
from graft.data.shards import TokenShards
from graft.data.tokenizer import Tokenizer
from graft.errors import DataError, TokenizerError
from graft.model.config import AttentionKind
from graft.model.transformer import LanguageModel, prefix_attention_mask
from graft.objectives.base import ShardObjective, Shards, check_windows, spaced_starts
from graft.objectives.batch import Batch, LossSum, LossTotals, Objective
from graft.objectives.clm import next_token_loss
from graft.objectives.mlm import EVAL_SEED, require_tokens
from graft.objectives.spans import span_corruption, span_infilling

DenoiseStyle = Literal["t5", "bart"]
# Each style's usual share of dropped tokens (T5's 15%, BART's 30%).
NOISE_DENSITY: dict[str, float] = {"t5": 0.15, "bart": 0.3}


class Denoise:
    """Objective `denoise`."""

    name = "denoise"

    def __init__(
        self,
        train: TokenShards,
        val: TokenShards | None,
        seq_len: int,
        tokenizer: Tokenizer,
        *,
        style: DenoiseStyle = "t5",
        noise_density: float | None = None,
        mean_span: float = 3.0,
        prefix_lm: bool = False,
    ) -> None:
        self.style, self.prefix_lm = style, prefix_lm
        self.noise_density = noise_density if noise_density is not None else NOISE_DENSITY[style]
        self.mean_span = mean_span
        if style == "t5":
            self.sentinels = list(tokenizer.sentinel_ids)
            if len(self.sentinels) < 2:
                raise TokenizerError(
                    "objective denoise (t5) needs sentinel tokens, and the tokenizer has "
                    f"{len(self.sentinels)}; train one with `graft tokenizer train --sentinels 32` "
                    "(or use objective.denoise_style=bart, which needs only the mask token)"
                )
        else:
            # The boundary between the corrupted input and the text to write.
            mask_id = tokenizer.mask_id
            boundary_id = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eot_id
            require_tokens(tokenizer, "denoise (bart)", mask=mask_id, end_of_text=boundary_id)
            assert mask_id is not None and boundary_id is not None  # require_tokens refused None
            self.mask_id, self.boundary_id = mask_id, boundary_id
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eot_id
        self.seq_len = seq_len
        self.window = self._largest_window(seq_len + 1)
        check_windows(self.window, train, val)
        self.train, self.val = train, val
        self._eval: list[Batch] | None = None

    def corrupt(
        self, tokens: np.ndarray, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(corrupted input, target) for one window."""
        if self.style == "t5":
            return span_corruption(
                tokens,
                sentinel_ids=self.sentinels,
                noise_density=self.noise_density,
                mean_span=self.mean_span,
                generator=generator,
            )
        corrupted, original = span_infilling(
            tokens,
            mask_id=self.mask_id,
            noise_density=self.noise_density,
            mean_span=self.mean_span,
            generator=generator,
        )
        return np.concatenate([corrupted, [self.boundary_id]]), original

    def _largest_window(self, budget: int) -> int:
        """The most raw tokens whose corrupted input + target fit in `budget` (the lengths depend
        only on the window length, never on the draw)."""
        probe = np.arange(budget, dtype=np.int64) + (
            max(self.sentinels) + 1 if self.style == "t5" else 0
        )
        for length in range(budget, 1, -1):
            corrupted, target = self.corrupt(probe[:length], torch.Generator().manual_seed(0))
            if len(corrupted) + len(target) <= budget:
                return length
        raise DataError(f"train.seq_len {self.seq_len} is too short for denoising")

    def _batch(self, shards: TokenShards, starts: list[int], generator: torch.Generator) -> Batch:
        T = self.seq_len
        rows, labels, prefixes, lengths = [], [], [], []
        for s in starts:
            corrupted, target = self.corrupt(
                shards.tokens[s : s + self.window].astype(np.int64), generator
            )
            sequence = np.concatenate([corrupted, target])
            n = len(sequence)
            padded = np.full(T + 1, self.pad_id, dtype=np.int64)
            padded[:n] = sequence
            label = padded[1:].copy()
            # The corrupted input is given, not predicted.
            label[: len(corrupted) - 1] = IGNORE_INDEX
            label[n - 1 :] = IGNORE_INDEX  # padding
            rows.append(padded[:-1])
            labels.append(label)
            prefixes.append(len(corrupted))
            lengths.append(min(n, T))  # the inputs are the sequence without its last position
        input_ids, targets = torch.from_numpy(np.stack(rows)), torch.from_numpy(np.stack(labels))
        mask = prefix_attention_mask(torch.tensor(prefixes), T) if self.prefix_lm else None
        return Batch(
            input_ids, targets, attention_mask=mask, causal=True, lengths=torch.tensor(lengths)
        )

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        starts = torch.randint(
            0, len(self.train) - self.window + 1, (batch_size,), generator=generator
        ).tolist()
        return self._batch(self.train, starts, generator)

    def train_records(self) -> int:
        """Disjoint windows of the text before corruption: the records private training samples."""
        return len(self.train) // self.window

    def records_batch(self, rows: list[int], generator: torch.Generator) -> Batch:
        return self._batch(self.train, [row * self.window for row in rows], generator)

    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]:
        if self.val is None:
            return []
        if self._eval is None:
            generator = torch.Generator().manual_seed(EVAL_SEED)
            self._eval = [
                self._batch(self.val, starts, generator)
                for starts in spaced_starts(len(self.val) - self.window, batch_size, n_batches)
            ]
        return self._eval

    def loss(self, model: LanguageModel, batch: Batch) -> LossSum:
        return next_token_loss(model, batch)

    def metrics(self, totals: LossTotals, split: str) -> dict[str, float]:
        return {f"{split}/loss": totals.mean, f"{split}/ppl": math.exp(min(totals.mean, 50.0))}


class DenoiseConfig(ShardObjective):
    """denoise: span corruption (t5) or text infilling (bart) on a decoder."""

    attention: ClassVar[AttentionKind | None] = "causal"
    name: Literal["denoise"] = "denoise"
    denoise_style: DenoiseStyle = Field(
        default="t5",
        description=(
            "t5: spans -> sentinels, target = the spans; "
            "bart: spans -> one mask, target = the text."
        ),
    )
    noise_density: float = Field(
        default=NOISE_DENSITY["t5"],
        gt=0,
        lt=1,
        description="Fraction of tokens dropped; unset or null = 0.15 (t5) or 0.3 (bart).",
    )
    mean_span: float = Field(default=3.0, ge=1, description="Mean length of a dropped span.")
    prefix_lm: bool = Field(
        default=False,
        description=(
            "Attend bidirectionally over the corrupted input (not exportable as a causal LM)."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _density_by_style(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("noise_density") is None:
            style = data.get("denoise_style", "t5")
            data = {key: value for key, value in data.items() if key != "noise_density"}
            if isinstance(style, str) and style in NOISE_DENSITY:
                data["noise_density"] = NOISE_DENSITY[style]
        return data

    def build(self, data: Shards) -> Objective:
        return Denoise(
            data.train,
            data.val,
            data.seq_len,
            data.tokenizer,
            style=self.denoise_style,
            noise_density=self.noise_density,
            mean_span=self.mean_span,
            prefix_lm=self.prefix_lm,
        )
