"""The canary audit's records and its report: one `RunAudit` per fine-tune, and `report.md`, which
states what each figure means beside the figure (the definitions are `graft.evaluate.audit`'s)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from graft.evaluate.audit import Exposure, OneRunBound, SecretTemplate
from graft.experiments.runner import command_section, table

if TYPE_CHECKING:
    from graft.experiments.canaries import AuditOptions


@dataclass(frozen=True)
class CanaryResult:
    tag: str
    secret: str
    repeats: int  # times in the training file; 0 for a control
    nll: float  # the reply's summed negative log-likelihood, nats
    exposure: Exposure


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass
class RunAudit:
    """What one fine-tune of the audit gave (an experiment outcome: `error` set if it failed)."""

    name: str
    run_dir: str
    private: bool  # trained with DP-SGD
    checkpoint: str  # the scored checkpoint: the run's last
    steps: int
    stop_reason: str
    val_loss: float | None  # at the scored (last) checkpoint
    best_val_loss: float | None
    accountant_epsilon: float | None  # from the checkpoint's privacy.json; None: not private
    accountant_delta: float | None
    inserted: list[CanaryResult]
    controls: list[CanaryResult]
    one_run: OneRunBound
    seconds: float
    error: str | None = None
    # Means and maxima of the sampled exposure over the inserted canaries and the controls, and of
    # the extrapolated exposure over the inserted ones (NaN when there is none).
    exposure_mean: float = field(init=False)
    exposure_max: float = field(init=False)
    control_mean: float = field(init=False)
    control_max: float = field(init=False)
    extrapolated_mean: float = field(init=False)
    extrapolated_max: float = field(init=False)

    def __post_init__(self) -> None:
        sampled = [r.exposure.sampled for r in self.inserted]
        control = [r.exposure.sampled for r in self.controls]
        extra = [r.exposure.extrapolated for r in self.inserted]
        extrapolated = [x for x in extra if x is not None]
        self.exposure_mean, self.exposure_max = _mean(sampled), max(sampled, default=math.nan)
        self.control_mean, self.control_max = _mean(control), max(control, default=math.nan)
        self.extrapolated_mean = _mean(extrapolated)
        self.extrapolated_max = max(extrapolated, default=math.nan)


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _accountant(run: RunAudit) -> str:
    if run.accountant_epsilon is None:
        return "not private"
    return f"{run.accountant_epsilon:.3f} (δ {run.accountant_delta:g})"


def _bound(bound: OneRunBound) -> str:
    return f"{bound.epsilon:.3f} ({bound.correct}/{bound.guesses} right, k = {bound.k})"


def report_markdown(
    options: AuditOptions, template: SecretTemplate, members: int, runs: list[RunAudit]
) -> str:
    bits = math.log2(template.space)
    lines = [
        "# Canary audit",
        "",
        f"Base checkpoint `{options.init}`, data `{options.data}` (as one-turn conversations: "
        f"the instruction {options.instruction!r}, the record's text as the reply), fine-tuned "
        "with objective `instruct`. Each run's **last** checkpoint is scored: the model after "
        "every step the accountant counted.",
        "",
        f"- {options.canaries} exposure canaries (`{template.text}`, |R| = {template.space:,}, "
        f"log2 |R| = {bits:.2f} bits), each inserted {options.repeats} times, and "
        f"{options.controls} controls made alike but never inserted;",
        f"- {members} membership canaries, each inserted once with probability 1/2;",
        f"- exposures ranked against {options.samples:,} candidate secrets per canary; "
        f"seed {options.seed}.",
        "",
        "## Summary",
        "",
    ]
    head = [
        "run",
        "steps",
        "val loss",
        "exposure mean / max",
        "extrapolated mean / max",
        "controls mean / max",
        f"one-run ε ≥ (at {1 - options.beta:.0%})",
        "accountant ε",
    ]
    rows = [
        [
            run.name + (" (DP)" if run.private else ""),
            f"{run.steps} ({run.stop_reason})",
            _number(run.val_loss, 4),
            f"{_number(run.exposure_mean)} / {_number(run.exposure_max)}",
            f"{_number(run.extrapolated_mean)} / {_number(run.extrapolated_max)}",
            f"{_number(run.control_mean)} / {_number(run.control_max)}",
            _bound(run.one_run),
            _accountant(run),
        ]
        for run in runs
    ]
    lines += [*table(head, rows), "", *_how_to_read(options, bits)]
    for run in runs:
        lines += _run_section(run)
    return "\n".join(lines + command_section())


def _how_to_read(options: AuditOptions, bits: float) -> list[str]:
    return [
        "## How to read this",
        "",
        "- **Exposure** (Carlini et al., *The Secret Sharer*, 2019) is log2 |R| - log2 rank, the "
        "rank being the true secret's among all |R| secrets ordered by the model's likelihood of "
        "the reply. 0 bits: the secret is no likelier than most; "
        f"{bits:.1f} bits: it is the model's first choice. A secret never trained on scores "
        "about 1.4 bits on average (the controls show this model's baseline). The sampled "
        "estimate cannot resolve more than about log2(candidates) bits (*capped* in the tables); "
        "the skew-normal extrapolation (the paper's) reaches past that, on a fitted tail.",
        "- **One-run ε ≥** (Steinke, Nasr and Jagielski, *Privacy Auditing with One (1) Training "
        "Run*, 2023): the k likeliest membership canaries are guessed in, the k least likely "
        "out; W right guesses out of r = 2k reject (ε, δ)-DP for every ε below the figure, with "
        f"probability {1 - options.beta:.0%}, δ being the run's dp.delta (the paper's "
        "approximate-DP theorem, δ term included). The best of several k is reported, each tested "
        f"at β / (number of k) (Bonferroni), so the {1 - options.beta:.0%} holds for the choice "
        "too. It is a lower bound: 0 means no evidence of leakage, not proof of privacy.",
        "- **Accountant ε** is the upper bound DP-SGD's accountant proves for one training record. "
        f"An exposure canary is {options.repeats} records, protected only as a group (about "
        f"{options.repeats} × ε), so its exposure is not bounded by the per-record ε.",
        "",
    ]


def _run_section(run: RunAudit) -> list[str]:
    lines = [
        f"## Run {run.name}" + (" (DP)" if run.private else ""),
        "",
        f"Checkpoint `{run.checkpoint}`; validation loss {_number(run.val_loss, 4)} "
        f"(best {_number(run.best_val_loss, 4)}); {run.seconds:.0f} s.",
        "",
    ]
    head = ["canary", "secret", "inserted", "NLL (nats)", "exposure", "extrapolated", "rank"]
    rows = []
    for result in run.inserted + run.controls:
        figures = result.exposure
        sampled = _number(figures.sampled) + (" (capped)" if figures.capped else "")
        rows.append(
            [
                result.tag,
                result.secret,
                f"{result.repeats}×" if result.repeats else "control",
                _number(result.nll, 3),
                sampled + (" (exact)" if figures.exhaustive else ""),
                _number(figures.extrapolated),
                f"{figures.rank:,.0f}",
            ]
        )
    bound = run.one_run
    grid = [[str(g.k), str(g.guesses), str(g.correct), f"{g.epsilon:.3f}"] for g in bound.grid]
    return [
        *lines,
        *table(head, rows),
        "",
        f"One-run audit: {bound.members} of {bound.canaries} membership canaries were in "
        f"training; δ = {bound.delta:g}; each k tested at β = {bound.beta:g} / {len(bound.grid)}.",
        "",
        *table(["k", "guesses r", "right W", "ε ≥"], grid),
        "",
    ]
