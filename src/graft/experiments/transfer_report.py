"""The transfer experiment's report: per arm and size, the mean and 95% interval over seeds of test
accuracy, macro F1 and per-label F1; per size, whether pre-trained beats scratch (paired by seed);
the learning curves; and each arm's wall-clock time and trainable parameters."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

from graft.experiments import runner
from graft.experiments.transfer_options import ARM_SETTINGS, Split, TransferOptions

__all__ = ["Cell", "RunOutcome", "plot", "report"]

ARM_DESCRIPTIONS = {
    "scratch": "the same architecture, re-initialised, all weights train",
    "full": "pre-trained, all weights train",
    "lora": "pre-trained, LoRA adapters and the head train",
    "probe": "pre-trained and frozen; the head (and final norm) train",
    "continued": "continued-pre-trained, all weights train",
}
# (better, worse, claim, title) of each pair of arms the report compares, when both ran. The
# continued checkpoint is pre-trained too (general text, then the domain's unlabelled text).
_COMPARISONS = (
    ("full", "scratch", "pre-trained beats scratch", "Pre-trained vs from scratch"),
    ("continued", "scratch", "continued beats scratch", "Continued pre-training vs from scratch"),
    ("continued", "full", "continued beats pre-trained", "Continued pre-training vs pre-trained"),
)


@dataclass(frozen=True)
class RunOutcome:
    """One (arm, size, seed) run; `error` is set (and the scores empty) when it failed."""

    arm: str
    size: int | None  # as asked; None = the whole pool
    seed: int
    run_dir: str
    train_examples: int = 0  # as sampled (stratified, so it can differ from `size` by rounding)
    accuracy: float | None = None
    macro_f1: float | None = None
    # test precision, recall, f1, support
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    best_val: float | None = None  # of train.monitor, which chose the checkpoint scored
    steps: int = 0
    examples_seen: int = 0  # steps x batch size x accumulation: the training compute in examples
    stop_reason: str = ""
    train_seconds: float = 0.0
    seconds: float = 0.0  # the whole run: loading, training and scoring the test set
    truncated: int = 0  # test texts cut to the context
    trainable_parameters: int = 0
    total_parameters: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Cell:
    """The runs of one arm at one size."""

    arm: str
    size: int | None
    runs: list[RunOutcome]

    @property
    def done(self) -> list[RunOutcome]:
        return [r for r in self.runs if r.error is None]

    def scores(self, score: Callable[[RunOutcome], float]) -> list[float]:
        return [score(r) for r in self.done]

    def by_seed(self, score: Callable[[RunOutcome], float]) -> dict[int, float]:
        return {r.seed: score(r) for r in self.done}


def size_name(size: int | None) -> str:
    return "all" if size is None else str(size)


def _f1(label: str) -> Callable[[RunOutcome], float]:
    return lambda run: run.per_class[label]["f1"]


def _accuracy(run: RunOutcome) -> float:
    return run.accuracy or 0.0


def _macro_f1(run: RunOutcome) -> float:
    return run.macro_f1 or 0.0


def _mean(values: list[float] | list[int], fmt: str) -> str:
    return fmt.format(sum(values) / len(values)) if values else "–"


def versus(cells: list[Cell], better: str, worse: str, claim: str) -> list[str]:
    """One line per size comparing two arms' test accuracy, judged paired by seed."""
    lines = []
    by_key = {(c.arm, c.size): c for c in cells}
    for size in dict.fromkeys(c.size for c in cells):
        a, b = by_key.get((better, size)), by_key.get((worse, size))
        if a is None or b is None or not a.done or not b.done:
            continue
        ours, theirs = runner.mean_text(a.scores(_accuracy)), runner.mean_text(b.scores(_accuracy))
        verdict = runner.verdict(a.by_seed(_accuracy), b.by_seed(_accuracy), claim)
        head = f"- {size_name(size)} labelled examples: {better} {ours} vs {worse} {theirs}"
        lines.append(f"{head}: {verdict}.")
    return lines


def report(options: TransferOptions, split: Split, cells: list[Cell]) -> str:
    # Every label's F1 when there are few (spam and ham); only the rarest label's past that.
    f1_labels = list(split.labels) if len(split.labels) <= 4 else [split.minority]
    f1_labels.sort(key=lambda label: label != split.minority)
    limits = [
        f"{options.max_steps:,} steps" if options.max_steps else "",
        f"{options.max_minutes:g} minutes" if options.max_minutes else "",
    ]
    budget = " or ".join(filter(None, limits)) + (", whichever comes first" if all(limits) else "")
    source = " + ".join(f"`{p}`" for p in options.labelled)
    seeds = f"{len(options.seeds)} seed{'s' if len(options.seeds) > 1 else ''}"
    duplicates = (
        f"; {split.duplicates:,} repeated texts dropped first ({split.conflicting:,} with another "
        "label), so no text is in two parts"
        if split.duplicates
        else ""
    )
    lines = [
        "# Transfer: pre-trained vs from scratch",
        "",
        f"Task: {source}, labels {', '.join(split.labels)}. One seeded stratified "
        f"split{duplicates}: {len(split.test):,} test texts, {len(split.val):,} validation texts "
        "(early stopping and checkpoint choice on validation macro F1) and a training pool of "
        f"{len(split.pool):,}, from which each run draws a stratified sample of its size. Every "
        f"run has the same budget ({budget}); {seeds} per cell (the seed draws the sample, the "
        "initialisation of new weights and the batch order). Scores are on the test set, of each "
        "run's best checkpoint: mean over seeds and its 95% confidence interval (Student's t, "
        "clipped to [0, 1]). Always answering the majority label scores "
        f"**{split.majority_accuracy:.3f}** accuracy.",
        "",
    ]
    head = ["examples", "arm", "runs", "accuracy", "95% CI", "macro F1", "95% CI"]
    rows = []
    for cell in cells:
        done = cell.done
        examples = f"{round(fmean(r.train_examples for r in done)):,}" if done else "–"
        row = [f"{size_name(cell.size)} ({examples})", cell.arm, f"{len(done)}/{len(cell.runs)}"]
        for score in (_accuracy, _macro_f1, *map(_f1, f1_labels)):
            row += runner.with_interval(cell.scores(score))
        rows.append(row)
    head += [w for label in f1_labels for w in (f"F1 {label}", "95% CI")]
    lines += runner.table(head, rows)
    arms = options.arm_names
    for better, worse, claim, title in _COMPARISONS:
        if better in arms and worse in arms:
            lines += ["", f"## {title} (test accuracy)", "", *versus(cells, better, worse, claim)]
    lines += ["", "![learning curves](learning_curve.png)", "", "## Compute per arm", ""]
    head = ["arm", "what trains", "trainable parameters", "runs", "mean s per run", "total min"]
    head += ["mean steps", "mean examples seen", "stops", "settings"]
    rows = []
    for arm in arms:
        runs = [r for c in cells if c.arm == arm for r in c.runs]
        done = [r for r in runs if r.error is None]
        params = "–"
        if done:
            trainable, total = done[0].trainable_parameters, done[0].total_parameters
            params = f"{trainable:,} of {total:,} ({trainable / max(total, 1):.2%})"
        stops = Counter(r.stop_reason for r in done).most_common()
        row = [
            arm,
            ARM_DESCRIPTIONS[arm],
            params,
            f"{len(done)}/{len(runs)}",
            _mean([r.seconds for r in done], "{:,.1f}"),
            f"{sum(r.seconds for r in runs) / 60:.1f}",
            _mean([r.steps for r in done], "{:,.0f}"),
            _mean([r.examples_seen for r in done], "{:,.0f}"),
            ", ".join(f"{reason} {n}" for reason, n in stops) or "–",
            ", ".join(f"`{s}`" for s in ARM_SETTINGS[arm]),
        ]
        rows.append(row)
    lines += runner.table(head, rows)
    failed = [r for c in cells for r in c.runs if r.error is not None]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [
            f"- {r.arm}, {size_name(r.size)} examples, seed {r.seed}: "
            f"{(r.error or '').replace(chr(10), ' ')} (`{r.run_dir}`)"
            for r in failed
        ]
    truncated = max((r.truncated for c in cells for r in c.done), default=0)
    lines += [
        "",
        "Seconds include loading the checkpoint and scoring the test set; examples seen are steps "
        "x batch size, the training compute each arm spent (a frozen backbone's step is cheaper)."
        + (f" {truncated:,} test texts were cut to the context." if truncated else ""),
        "",
    ]
    if options.overrides:
        overrides = ", ".join(f"`{o}`" for o in options.overrides)
        lines += [f"Overrides (`ARM:` ones for that arm only): {overrides}.", ""]
    lines += runner.command_section()
    lines += [
        "Each run (config, metrics, checkpoints, its test scores in `outcome.json`) is in "
        "`runs/<arm>/n<size>/s<seed>`; the split is in `data/`; every number above is in "
        "`results.json`.",
        "",
    ]
    return "\n".join(lines)


def plot(cells: list[Cell], split: Split, out: Path) -> Path:
    """Test accuracy and the minority label's F1 against labelled examples (log x), one line per
    arm with its 95% interval as a band."""
    fig, axes = runner.figure(11, 4.2, panels=2)
    panels = ((_accuracy, "test accuracy"), (_f1(split.minority), f"test F1 of {split.minority}"))
    arms = list(dict.fromkeys(c.arm for c in cells))
    for ax, (score, title) in zip(axes, panels):
        for index, arm in enumerate(arms):
            done = [c for c in cells if c.arm == arm and c.done]
            if not done:
                continue
            points = sorted(
                (fmean(r.train_examples for r in c.done), *runner.interval(c.scores(score)))
                for c in done
            )
            xs, means, lows, highs = zip(*points)
            ax.plot(xs, means, marker="o", markersize=4, color=f"C{index}", label=arm)
            ax.fill_between(xs, lows, highs, color=f"C{index}", alpha=0.15, linewidth=0)
        if score is _accuracy:
            majority = split.majority_accuracy
            label = f"majority label {majority:.3f}"
            ax.axhline(majority, color="black", linestyle="--", linewidth=1, label=label)
        ax.set(xscale="log", xlabel="labelled training examples", ylabel=title)
        ax.set_title(f"{title} (mean, 95% CI)")
        ax.grid(alpha=0.3, which="both")
        ax.set_ylim(max(0.0, ax.get_ylim()[0]), 1.02)
    axes[0].legend(loc="lower right", framealpha=0.9, fontsize=8)
    return runner.save_png(fig, out)
