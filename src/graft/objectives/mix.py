"""A weighted mixture of objectives (UL2-style), sampled per micro-batch, each logged separately.

Also how continued pre-training replays general data: the same objective over two datasets,
`domain` and `general`, mixed 90/10, with the domain's validation loss as the run's val/loss.

Parts count different things (masked tokens, target tokens, pairs), and mixing raw sums would
weight them by how many units they happen to score rather than by the configured weights. So each
part's summed loss becomes its own mean, times the batch's rows, and a mixture's batch declares
rows as its units (`Batch.units_are_rows`): the loop's division by the step's units then gives
the average of the micro-batches' means, and a part sampled with probability w gets weight w.
A one-part mixture, or replay of an objective with itself, trains exactly as the plain objective
where its batches score equal counts (clm always does).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field, model_validator

from graft.errors import ConfigError
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel
from graft.objectives.base import ShardObjective, Shards
from graft.objectives.batch import Batch, LossSum, LossTotals, Objective
from graft.objectives.clm import CLMConfig
from graft.objectives.denoise import DenoiseConfig
from graft.objectives.mlm import MLMConfig


class Mixture:
    """Objective `mix` (and replay): parts with positive weights."""

    def __init__(
        self,
        parts: dict[str, tuple[Objective, float]],
        *,
        primary: str | None = None,
        name: str = "mix",
    ) -> None:
        weights = [w for _, w in parts.values()]
        if not parts or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(
                f"objective.mix: weights must be >= 0 and sum to a positive number, got "
                f"{ {k: w for k, (_, w) in parts.items()} }"
            )
        if primary is not None and primary not in parts:
            raise ConfigError(
                f"objective.mix: primary part {primary!r} is not one of {', '.join(parts)}"
            )
        self.name, self.primary = name, primary
        # Zero-weight parts are never sampled but still evaluated (replay at fraction 0 still scores
        # general data).
        self.parts = {k: obj for k, (obj, _) in parts.items()}
        self.weights = {k: w / sum(weights) for k, (_, w) in parts.items()}
        self._names = [k for k, w in self.weights.items() if w > 0]
        self._probs = torch.tensor([self.weights[k] for k in self._names], dtype=torch.float64)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        part = self._names[int(torch.multinomial(self._probs, 1, generator=generator))]
        return _tagged(self.parts[part].train_batch(batch_size, generator), part)

    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]:
        return [
            _tagged(b, part)
            for part, obj in self.parts.items()
            for b in obj.eval_batches(batch_size, n_batches)
        ]

    def loss(self, model: LanguageModel, batch: Batch) -> LossSum:
        part, _, inner = batch.part.partition("/")  # mixtures nest: replay of a mix is "domain/clm"
        # The part counts its own units; its mean is rescaled to this batch's rows below.
        out = self.parts[part].loss(model, replace(batch, part=inner, units_are_rows=False))
        size = batch.rows
        stats = {
            **{f"{part}/{k}": v for k, v in out.stats.items()},
            f"{part}/loss_sum": float(out.total.detach()),
            f"{part}/count": float(out.count),
            f"{part}/batches": 1.0,
        }
        mean = out.total / max(out.count, 1)
        if out.per_row is not None:  # mlm+nsp: BERT's sum of two means
            mean = mean + out.per_row / size
        return LossSum(mean * size, size, stats)

    def metrics(self, totals: LossTotals, split: str) -> dict[str, float]:
        metrics: dict[str, float] = {}
        means: dict[str, float] = {}
        for part, obj in self.parts.items():
            prefix = f"{part}/"
            if not totals.stats[prefix + "batches"]:
                continue  # not sampled in this logging window
            sub = LossTotals(totals.stats[prefix + "loss_sum"], int(totals.stats[prefix + "count"]))
            sub.stats.update(
                {k.removeprefix(prefix): v for k, v in totals.stats.items() if k.startswith(prefix)}
            )
            for key, value in obj.metrics(sub, split).items():
                metrics[f"{split}/{part}/{key.removeprefix(split + '/')}"] = value
            means[part] = metrics[f"{split}/{part}/loss"]
        if self.primary is not None and self.primary in means:
            metrics[f"{split}/loss"] = means[self.primary]
        elif means:
            # The configured mixture of the parts' mean losses (renormalised over parts seen).
            weight = sum(self.weights[p] for p in means)
            metrics[f"{split}/loss"] = (
                sum(self.weights[p] * m for p, m in means.items()) / weight
                if weight > 0
                else sum(means.values()) / len(means)
            )
        else:
            metrics[f"{split}/loss"] = totals.mean
        return dict(sorted(metrics.items(), key=lambda kv: kv[0] != f"{split}/loss"))


def _tagged(batch: Batch, part: str) -> Batch:
    return replace(batch, part=f"{part}/{batch.part}" if batch.part else part, units_are_rows=True)


def with_replay(domain: Objective, general: Objective, fraction: float) -> Objective:
    """Continued pre-training: `fraction` of the batches replay general data to limit forgetting;
    both validation sets are scored, and the domain's loss is the run's val/loss."""
    return Mixture(
        {"domain": (domain, 1.0 - fraction), "general": (general, fraction)},
        primary="domain",
        name=domain.name,
    )


class MixConfig(ShardObjective):
    """mix: a weighted mixture of shard objectives (UL2-style), one part per micro-batch. The
    parts that can be mixed are the fields below that hold a part's settings."""

    name: Literal["mix"] = "mix"
    mix: dict[str, float] = Field(
        default_factory=dict,
        description="Weight per part, e.g. {clm: 0.5, denoise: 0.25, mlm: 0.25}.",
    )
    clm: CLMConfig = Field(default_factory=CLMConfig, description="The clm part's settings.")
    mlm: MLMConfig = Field(default_factory=MLMConfig, description="The mlm part's settings.")
    denoise: DenoiseConfig = Field(
        default_factory=DenoiseConfig, description="The denoise part's settings."
    )

    @classmethod
    def mixable(cls) -> list[str]:
        return [name for name in cls.model_fields if name not in ("name", "mix")]

    @model_validator(mode="after")
    def _check_parts(self) -> MixConfig:
        mixable = self.mixable()
        unknown = [k for k in self.mix if k not in mixable]
        if unknown:
            raise ValueError(
                f"objective.mix: {', '.join(map(repr, unknown))} cannot be mixed; "
                f"choose from {', '.join(mixable)}"
            )
        if any(w < 0 for w in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError(
                f"objective.mix: weights must be >= 0 and sum to a positive number, got {self.mix}"
            )
        unused = [k for k in self.given(*mixable) if k not in self.mix]
        if unused:
            raise ValueError(
                f"objective.{unused[0]}: settings for a part not in objective.mix "
                f"({', '.join(self.mix)}); add it to the mix or drop them"
            )
        return self

    def parts(self) -> dict[str, tuple[ShardObjective, float]]:
        return {name: (getattr(self, name), weight) for name, weight in self.mix.items()}

    def reads_document_boundaries(self) -> bool:
        return any(part.reads_document_boundaries() for part, _ in self.parts().values())

    def problems(self, model: ModelConfig) -> list[str]:
        """The decoder parts' requirements (an mlm part reads both ways whatever the model)."""
        return [
            problem
            for part, weight in self.parts().values()
            if weight > 0 and part.attention == "causal"
            for problem in part.problems(model)
        ]

    def build(self, data: Shards) -> Objective:
        """Each part over the same data."""
        return Mixture(
            {name: (part.build(data), weight) for name, (part, weight) in self.parts().items()}
        )
