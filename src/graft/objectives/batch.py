"""What every objective shares with the training loop: the Batch it builds, the LossSum it returns,
the running totals the loop keeps, and the Objective protocol itself.

An objective is data plus a loss, not a trainer: it builds batches (seeded), scores them with the
model and its heads, and turns summed statistics into metrics. The loop never asks which one it
runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field, fields, replace
from typing import Protocol, runtime_checkable

import torch

from graft.data.records import IGNORE_INDEX
from graft.model.transformer import Head, LanguageModel, ModelOutput


@dataclass(frozen=True)
class Batch:
    """One micro-batch. targets hold IGNORE_INDEX where a position is not scored."""

    input_ids: torch.Tensor  # (B, T)
    targets: torch.Tensor | None = None  # (B, T) token targets
    position_ids: torch.Tensor | None = None  # (B, T); None = 0..T-1
    token_type_ids: torch.Tensor | None = None  # (B, T) segment ids (NSP); None = all 0
    # bool, broadcastable to (B, 1, T, T); None = the model's default
    attention_mask: torch.Tensor | None = None
    # without a mask: causal or full attention; None = the model's default
    causal: bool | None = None
    # (B,) one label per sequence (NSP: is-next; a class)
    sequence_targets: torch.Tensor | None = None
    # (B,) real tokens per right-padded row; None = no padding, every position is real. An
    # objective that pads rows must set it: n_tokens, and every token count of the loop, read it.
    lengths: torch.Tensor | None = None
    part: str = ""  # which part of a mixture built it
    # A mixture's batch: its loss comes back as the part's mean per row times the rows (mix.py),
    # so its units are rows, not the targets its part scored.
    units_are_rows: bool = False

    def to(self, device: torch.device) -> Batch:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=True)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    @property
    def n_tokens(self) -> int:
        """Real input tokens: the positions that are not padding (every position of a packed
        window). The one count behind tokens seen, tokens/s, train.max_tokens and the token-based
        learning-rate decay."""
        if self.lengths is not None:
            return int(self.lengths.sum())
        return int(self.input_ids.numel())

    @property
    def n_targets(self) -> int:
        """Scored targets: token targets when there are any, else sequence targets."""
        if self.targets is not None:
            return int((self.targets != IGNORE_INDEX).sum())
        return 0 if self.sequence_targets is None else int(self.sequence_targets.numel())

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def units(self) -> int:
        """What the loop divides a step's summed loss by, and the count that this batch's loss
        must report: its scored targets, or its rows for a mixture's batch."""
        return self.rows if self.units_are_rows else self.n_targets


@dataclass(frozen=True)
class LossSum:
    """A loss summed over scored units, their count (the loop normalises), and additive counters
    for metrics (e.g. correct predictions), detached."""

    total: torch.Tensor
    count: int
    stats: dict[str, float] = field(default_factory=dict)
    # (B,) each record's summed loss, whose sum is `total`, where the objective can give it: what
    # DP-SGD's ghost clipping weights record by record (graft.train.privacy).
    rows: torch.Tensor | None = None
    # A second loss, summed over the batch's rows, that the loop divides by the step's rows (not
    # its units): mlm+nsp's NSP term beside the masked tokens, so that the step's loss is BERT's
    # sum of two means however the step is split into micro-batches.
    per_row: torch.Tensor | None = None


@dataclass
class LossTotals:
    """LossSums added up over many batches: what an objective turns into metrics."""

    loss: float = 0.0
    count: int = 0
    stats: Counter[str] = field(default_factory=Counter)

    def add(self, out: LossSum) -> None:
        self.loss += float(out.total.detach().item())
        if out.per_row is not None:  # in the step's non-finite check, not in any metric
            self.loss += float(out.per_row.detach().item())
        self.count += out.count
        self.stats.update(out.stats)

    def merge(self, other: LossTotals) -> None:
        self.loss += other.loss
        self.count += other.count
        self.stats.update(other.stats)

    @property
    def mean(self) -> float:
        return self.loss / max(self.count, 1)


class Objective(Protocol):
    name: str

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch: ...
    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]: ...
    def loss(self, model: LanguageModel, batch: Batch) -> LossSum: ...
    def metrics(self, totals: LossTotals, split: str) -> dict[str, float]:
        """`{split}/loss` (the figure best checkpoints and patience follow) and the objective's
        own."""
        ...


@runtime_checkable
class RecordSampled(Protocol):
    """An objective whose training data is a fixed set of records drawn by index: what DP-SGD's
    Poisson sampling needs (graft.train.privacy), the record being the unit of privacy. One whose
    rows are not its records (qa's rows are windows of a context, several for a long one) says
    why in a `rows_unlike_records` attribute, which privacy reads; without one, a row is a
    record."""

    def train_records(self) -> int: ...
    def records_batch(self, rows: list[int], generator: torch.Generator) -> Batch:
        """The batch of training records `rows` (0 <= row < train_records())."""
        ...


def run(
    model: LanguageModel, batch: Batch, heads: Collection[Head], targets: torch.Tensor | None = None
) -> ModelOutput:
    """The model called once on a batch, with every input the batch carries: the only place an
    objective (or evaluation) meets the model. A classifier reads each row at its last real
    token."""
    return model(
        batch.input_ids,
        position_ids=batch.position_ids,
        token_type_ids=batch.token_type_ids,
        attention_mask=batch.attention_mask,
        causal=batch.causal,
        heads=heads,
        targets=targets,
        last_index=None if batch.lengths is None else batch.lengths.to(batch.input_ids.device) - 1,
    )
