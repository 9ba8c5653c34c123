"""The transfer experiment: what a pre-trained checkpoint is worth on one labelled task.

This module owns `graft experiment transfer`. One labelled set is split once (seeded, stratified,
exact-duplicate texts removed first so no text is on both sides) into a test set, a fixed
validation set for early stopping and a training pool, written to `out_dir/data/`. Then every arm
fine-tunes at every labelled-set size with every seed, each run a plain `finetune` under the same
budget (steps and/or minutes) into `out_dir/runs/<arm>/n<size>/s<seed>`:

- scratch: the pre-trained checkpoint's architecture and tokenizer, weights re-initialised;
- full: every weight of the pre-trained checkpoint trains;
- lora: PEFT LoRA adapters on the attention projections, plus the new head;
- probe: the backbone frozen, only the new head (and the final norm) trains: a linear probe;
- continued: full fine-tuning from a continued-pre-trained checkpoint, when one is given.

Each run's best checkpoint (by validation macro F1) is scored on the test set. The report gives
the mean and 95% confidence interval over seeds (Student's t) of accuracy, macro F1 and per-label
F1 for every arm and size, says per size whether pre-trained beats scratch, draws the learning
curves and lists each arm's wall-clock time and trainable parameters. A run that fails is
reported and the others go on; `resume` finishes an interrupted experiment, keeping its
finished runs.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from graft.adapt import apply_adaptation, trainable_parameters
from graft.atomic_files import write_atomic
from graft.checkpoint import load_model, resolve
from graft.config import RunConfig, load_finetune_config
from graft.data.records import TextRecord, read_labelled, read_polarity, stratified_split
from graft.data.tokenizer import Tokenizer
from graft.device import resolve_device
from graft.errors import ConfigError, GraftError
from graft.evaluate.metrics import ClassificationMetrics, classification_metrics, mean_ci95
from graft.model.transformer import LanguageModel
from graft.objectives.classify import Classify, sample_records
from graft.train.finetune import finetune

__all__ = ["ARMS", "ARM_SETTINGS", "RunOutcome", "TransferOptions", "parse_sizes", "run_transfer"]

ARMS: tuple[str, ...] = ("scratch", "full", "lora", "probe", "continued")
# Applied after the fine-tuning defaults and before the user's overrides, so `optim.lr=...` given
# for every arm wins and `lora:optim.lr=...` changes one arm. A frozen backbone's head and LoRA's
# small adapters learn slowly at full fine-tuning's 1e-4; training from scratch is given the rate
# graft pre-trains micro models with, so the baseline is not handicapped by a fine-tuning rate.
ARM_SETTINGS: dict[str, tuple[str, ...]] = {
    "scratch": ("adapt.method=full", "adapt.from_scratch=true", "optim.lr=1e-3"),
    "full": ("adapt.method=full",),
    "lora": ("adapt.method=lora", "optim.lr=1e-3"),
    "probe": ("adapt.method=freeze", "adapt.trainable_blocks=0", "optim.lr=1e-3"),
    "continued": ("adapt.method=full",),
}
ARM_DESCRIPTIONS = {
    "scratch": "the same architecture, re-initialised, all weights train",
    "full": "pre-trained, all weights train",
    "lora": "pre-trained, LoRA adapters and the head train",
    "probe": "pre-trained and frozen; the head (and final norm) train",
    "continued": "continued-pre-trained, all weights train",
}
DEFAULT_SIZES: tuple[int | None, ...] = (50, 200, 1000, None)  # None: the whole training pool
# Settings every run of the experiment must share or that the experiment sets per run.
_OWNED = (
    "train.init",
    "train.out_dir",
    "train.seed",
    "train.max_steps",
    "train.max_minutes",
    "objective.name",
    "data.train_file",
    "data.val_file",
    "data.max_train_examples",
    "data.text_field",
    "data.label_field",
    "data.encoding",
    "adapt.method",
    "adapt.from_scratch",
    "adapt.trainable_blocks",
)
_DATA_FILES = ("train.jsonl", "val.jsonl", "test.jsonl")
_OUTCOME_FILE = "transfer_outcome.json"


@dataclass(frozen=True)
class TransferOptions:
    # the pre-trained checkpoint (graft checkpoint, run directory or Hugging Face directory)
    init: Path
    labelled: tuple[Path, ...]  # one labelled file, or the (pos, neg) sentence-polarity pair
    out_dir: Path
    continued: Path | None = None  # a continued-pre-trained checkpoint: adds the `continued` arm
    text_field: str = "text"
    label_field: str = "label"
    encoding: str | None = None  # None: utf-8 for a labelled file, latin-1 for the polarity pair
    arms: tuple[str, ...] | None = (
        None  # None: scratch, full, lora, probe, and continued when given
    )
    sizes: tuple[int | None, ...] = DEFAULT_SIZES  # labelled training examples per run; None = all
    seeds: tuple[int, ...] = (0, 1, 2)
    test_fraction: float = 0.2
    val_size: int = 200
    split_seed: int = 0
    max_steps: int | None = 500  # the budget of every run: whichever limit comes first
    max_minutes: float | None = None
    overrides: tuple[
        str, ...
    ] = ()  # `section.key=value` for every run, `arm:section.key=value` for one arm
    resume: bool = False
    progress: bool = True

    @property
    def arm_names(self) -> tuple[str, ...]:
        if self.arms is not None:
            return self.arms
        return ARMS if self.continued is not None else ARMS[:-1]


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
    per_class: dict[str, dict[str, float]] = field(
        default_factory=dict
    )  # test precision, recall, f1, support
    confusion: list[list[int]] = field(default_factory=list)
    best_val: float | None = None  # of train.monitor, which chose the checkpoint scored
    steps: int = 0
    examples_seen: int = 0  # steps x batch size x accumulation: the training compute in examples
    stop_reason: str = ""
    train_seconds: float = 0.0
    seconds: float = 0.0  # the whole run: loading, training and scoring the test set
    trainable_parameters: int = 0
    total_parameters: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Split:
    """The one split every run shares."""

    pool: list[TextRecord]
    val: list[TextRecord]
    test: list[TextRecord]
    labels: tuple[str, ...]
    minority: str  # the pool's least frequent label: the one whose F1 the report leads with
    duplicates: int  # texts dropped because an identical text came earlier
    conflicting: int  # of those, how many carried another label than the first
    majority_accuracy: float  # test accuracy of always answering the pool's most frequent label


@dataclass(frozen=True)
class Cell:
    """The runs of one arm at one size, summarised."""

    arm: str
    size: int | None
    runs: list[RunOutcome]

    @property
    def done(self) -> list[RunOutcome]:
        return [r for r in self.runs if r.error is None]

    def ci(self, score: Callable[[RunOutcome], float]) -> tuple[float, float, float] | None:
        """(mean, low, high) over the finished runs; the interval is clipped to [0, 1], where every
        score here lies (with few seeds Student's t reaches past it)."""
        if not self.done:
            return None
        mean, low, high = mean_ci95([score(r) for r in self.done])
        return mean, max(low, 0.0), min(high, 1.0)


def run_transfer(options: TransferOptions, echo: Callable[[str], None] = lambda _: None) -> Path:
    """Run every arm x size x seed into options.out_dir; returns the path of report.md.

    Everything that would fail every run (options, overrides, data, checkpoints, a size the data
    cannot give) is refused before any training.
    """
    _check_options(options)
    split = _split(options)
    sizes = _effective_sizes(options, split, echo)
    for path in filter(None, (options.init, options.continued)):
        load_model(path)  # a missing or corrupt checkpoint is one error now, not one per run
    plan = [
        (arm, size, seed) for seed in options.seeds for size in sizes for arm in options.arm_names
    ]
    configs = {key: _run_config(options, *key) for key in plan}
    for _, size, seed in plan:
        sample_records(
            split.pool, size, seed
        )  # a sample holding a single label fails now, not mid-experiment
    _write_data(options, split)

    outcomes: dict[tuple[str, int | None, int], RunOutcome] = {}
    counts: dict[str, tuple[int, int]] = {}
    try:
        for i, key in enumerate(plan, start=1):
            arm, size, seed = key
            where = f"[{i}/{len(plan)}] {arm}, {_size_name(size)} examples, seed {seed}"
            kept = _finished(configs[key].train.out_dir, options.resume)
            if kept is not None:
                outcomes[key] = kept
                echo(f"{where}: kept from the earlier run")
                continue
            echo(f"{where}: training")
            outcomes[key] = outcome = _one_run(
                configs[key], key, split, counts, lambda m: echo(f"  {m}")
            )
            echo(
                f"{where}: failed: {outcome.error}"
                if outcome.error is not None
                else f"{where}: test accuracy {outcome.accuracy:.3f}, macro F1 "
                f"{outcome.macro_f1:.3f}, F1 {split.minority} "
                f"{outcome.per_class[split.minority]['f1']:.3f} ({outcome.seconds:.0f} s)"
            )
            _write_results(options, split, list(outcomes.values()))
    except KeyboardInterrupt:
        _write_results(
            options, split, list(outcomes.values())
        )  # what finished stays readable; --resume goes on
        raise
    runs = [outcomes[key] for key in plan]
    _write_results(options, split, runs)
    cells = [
        Cell(arm, size, [outcomes[(arm, size, seed)] for seed in options.seeds])
        for size in sizes
        for arm in options.arm_names
    ]
    _plot(cells, split, options.out_dir / "learning_curve.png")
    return write_atomic(options.out_dir / "report.md", _report(options, split, cells))


# -- options and data --------------------------------------------------------------------------


def _check_options(options: TransferOptions) -> None:
    arms = options.arm_names
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ConfigError(
            f"arms: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(ARMS)}"
        )
    if not arms or len(set(arms)) < len(arms):
        raise ConfigError(
            f"arms: got {list(arms)}; name one or more, each once, from {', '.join(ARMS)}"
        )
    if "continued" in arms and options.continued is None:
        raise ConfigError(
            "arms: the continued arm needs a continued-pre-trained checkpoint (--continued)"
        )
    if not options.sizes or any(
        s is not None and (isinstance(s, bool) or s < 1) for s in options.sizes
    ):
        raise ConfigError(
            f"sizes: got {list(options.sizes)}; give labelled-set sizes of 1 or more, or 'all'"
        )
    if len(set(options.sizes)) < len(options.sizes):
        raise ConfigError(f"sizes: {list(options.sizes)} repeats a size; give each once")
    if not options.seeds or len(set(options.seeds)) < len(options.seeds):
        raise ConfigError(
            f"seeds: got {list(options.seeds)}; give one or more distinct seeds "
            "(3 or more for useful CIs)"
        )
    if not 0 < options.test_fraction < 1:
        raise ConfigError(f"test_fraction must be between 0 and 1, got {options.test_fraction}")
    if options.val_size < 2:
        raise ConfigError(f"val_size must be at least 2 (one per label), got {options.val_size}")
    if options.max_steps is None and options.max_minutes is None:
        raise ConfigError(
            "the budget is unset; give max_steps or max_minutes (--max-steps / --max-minutes)"
        )
    if (options.max_steps or 1) < 1 or (options.max_minutes or 1) <= 0:
        raise ConfigError(
            f"max_steps and max_minutes must be positive, got {options.max_steps} and "
            f"{options.max_minutes}"
        )
    if len(options.labelled) not in (1, 2):
        raise ConfigError(
            f"labelled: give one labelled file or the pos and neg polarity files, "
            f"got {len(options.labelled)}"
        )
    for item in options.overrides:
        arm, _, key = _override_key(item)
        if arm and arm not in ARMS:
            raise ConfigError(
                f"override {item!r}: unknown arm {arm!r}; write ARM:section.key=value with ARM one "
                f"of {', '.join(ARMS)}"
            )
        if key in _OWNED:
            raise ConfigError(
                f"override {item!r}: the experiment sets {key} itself; use the experiment's "
                "options (--init, --sizes, --seeds, --max-steps, --max-minutes, --arms) instead"
            )
    runs = options.out_dir / "runs"
    if not options.resume and runs.exists() and any(runs.iterdir()):
        raise ConfigError(
            f"{runs} already holds runs; pass --resume to finish that experiment, "
            "or choose another --out"
        )
    stored = options.out_dir / "experiment.json"
    if options.resume and runs.exists() and not stored.is_file():
        raise ConfigError(
            f"{stored}: missing, so the runs in {runs} cannot be matched to these options; "
            "choose another --out"
        )
    if options.resume and stored.is_file():
        before = json.loads(stored.read_text(encoding="utf-8"))
        now = _plain_options(options)
        # A run depends on its arm, size and seed and on the shared options, so more (or fewer) of
        # those leave the finished runs meaning what they did: resuming may add seeds to a cell.
        # out_dir is where `before` was read from, however it is spelled now.
        changed = [
            k
            for k in now
            if k not in ("arms", "sizes", "seeds", "out_dir")
            and _absolute(k, before.get(k)) != _absolute(k, now[k])
        ]
        if changed:
            raise ConfigError(
                f"{stored}: the experiment there ran with another {changed[0]} "
                f"({before.get(changed[0])!r}, now {now[changed[0]]!r}); resume with the same "
                "options (seeds, sizes and arms may change) or choose another --out"
            )


def _absolute(key: str, value: Any) -> Any:
    """A stored option as compared on resume: paths made absolute, so `../data/x` and the same file
    by its full path agree."""
    if key not in ("init", "continued", "labelled") or value is None:
        return value
    return (
        [os.path.abspath(v) for v in value] if isinstance(value, list) else os.path.abspath(value)
    )


def _override_key(item: str) -> tuple[str, str, str]:
    """(arm or '', the `section.key=value` part, its key) of one override."""
    head, _, _ = item.partition("=")
    arm, colon, rest = head.partition(":")
    if not colon:
        arm, rest = "", head
    setting = item[len(arm) + 1 :] if arm else item
    return arm, setting, rest.removeprefix("--")


def _read(options: TransferOptions) -> list[TextRecord]:
    if len(options.labelled) == 2:
        pos, neg = options.labelled
        return read_polarity(pos, neg, encoding=options.encoding or "latin-1")
    records, _ = read_labelled(
        options.labelled[0],
        text_field=options.text_field,
        label_field=options.label_field,
        encoding=options.encoding or "utf-8",
    )
    return records


def _split(options: TransferOptions) -> Split:
    unique: dict[str, TextRecord] = {}
    duplicates = conflicting = 0
    for record in _read(options):
        # Whitespace-normalised identity: a repeated SMS in train and test would inflate test
        # scores.
        key = " ".join(record.text.split())
        first = unique.setdefault(key, record)
        if first is not record:
            duplicates += 1
            conflicting += first.label != record.label
    records = list(unique.values())
    labels = tuple(sorted({r.label for r in records}))
    where = " and ".join(map(str, options.labelled))
    if len(labels) < 2:
        raise ConfigError(
            f"{where}: classification needs at least two labels, found {list(labels)}"
        )
    rest, test = stratified_split(records, options.test_fraction, options.split_seed)
    if options.val_size >= len(rest) - len(labels):
        raise ConfigError(
            f"val_size {options.val_size} leaves no training pool ({len(rest)} texts after the "
            "test set); lower --val-size"
        )
    pool, val = stratified_split(rest, options.val_size / len(rest), options.split_seed + 1)
    counts = Counter(r.label for r in pool)
    majority = max(labels, key=lambda label: counts[label])
    return Split(
        pool,
        val,
        test,
        labels,
        minority=min(labels, key=lambda label: counts[label]),
        duplicates=duplicates,
        conflicting=conflicting,
        majority_accuracy=sum(r.label == majority for r in test) / len(test),
    )


def _effective_sizes(
    options: TransferOptions, split: Split, echo: Callable[[str], None]
) -> list[int | None]:
    """The sizes to run: one at or past the pool's size is 'all' (run once, not twice)."""
    sizes: list[int | None] = []
    for size in options.sizes:
        if size is not None and size < len(split.labels):
            raise ConfigError(
                f"sizes: {size} examples cannot hold each of the {len(split.labels)} labels; "
                f"give sizes of {len(split.labels)} or more"
            )
        if size is not None and size >= len(split.pool):
            echo(
                f"size {size} is at least the training pool ({len(split.pool):,} texts): "
                "run as 'all'"
            )
            size = None
        if size not in sizes:
            sizes.append(size)
    return sizes


def _examples(jsonl: str) -> list[tuple[str, str]]:
    return [(record["text"], record["label"]) for record in map(json.loads, jsonl.splitlines())]


def _write_data(options: TransferOptions, split: Split) -> None:
    directory = options.out_dir / "data"
    for name, records in zip(_DATA_FILES, (split.pool, split.val, split.test)):
        text = "".join(
            json.dumps({"text": r.text, "label": r.label, "source": r.source}, ensure_ascii=False)
            + "\n"
            for r in records
        )
        path = directory / name
        # Texts and labels decide the runs; `source` spells the file as this command did.
        if (
            options.resume
            and path.is_file()
            and _examples(path.read_text(encoding="utf-8")) != _examples(text)
        ):
            raise ConfigError(
                f"{path}: the labelled data differ from the experiment's split; resume with the "
                "same file or choose another --out"
            )
        write_atomic(path, text)
    write_atomic(
        options.out_dir / "experiment.json", json.dumps(_plain_options(options), indent=2) + "\n"
    )


# -- runs ----------------------------------------------------------------------------------------


def _run_dir(options: TransferOptions, arm: str, size: int | None, seed: int) -> Path:
    return options.out_dir / "runs" / arm / f"n{_size_name(size)}" / f"s{seed}"


def _run_config(options: TransferOptions, arm: str, size: int | None, seed: int) -> RunConfig:
    data = options.out_dir / "data"
    settings = [
        f"train.init={_quoted(options.continued if arm == 'continued' else options.init)}",
        f"train.out_dir={_quoted(_run_dir(options, arm, size, seed))}",
        f"data.train_file={_quoted(data / _DATA_FILES[0])}",
        f"data.val_file={_quoted(data / _DATA_FILES[1])}",
        f"train.seed={seed}",
        f"train.progress={str(options.progress).lower()}",
        f"train.max_steps={options.max_steps or ''}",
        f"train.max_minutes={options.max_minutes or ''}",
        *ARM_SETTINGS[arm],
    ]
    if size is not None:
        settings.append(f"data.max_train_examples={size}")
    scoped = [_override_key(item) for item in options.overrides]
    settings += [setting for scope, setting, _ in scoped if not scope]
    settings += [
        setting for scope, setting, _ in scoped if scope == arm
    ]  # last: one arm's setting wins
    return load_finetune_config("classify", None, settings)


def _quoted(path: Path | None) -> str:
    """A path as a single-quoted YAML string: overrides are read as YAML, and a path may hold ': '
    or '#'."""
    return "'" + str(path).replace("'", "''") + "'"


def _finished(run_dir: Path, resume: bool) -> RunOutcome | None:
    """A finished run's outcome when resuming; an unfinished or failed run's directory is
    cleared."""
    if not resume or not run_dir.exists():
        return None
    path = run_dir / _OUTCOME_FILE
    if path.is_file():
        outcome = RunOutcome(**json.loads(path.read_text(encoding="utf-8")))
        if outcome.error is None:
            return outcome
    shutil.rmtree(
        run_dir
    )  # our own run directory, interrupted or failed: it is run again from the start
    return None


def _one_run(
    config: RunConfig,
    key: tuple[str, int | None, int],
    split: Split,
    counts: dict[str, tuple[int, int]],
    echo: Callable[[str], None],
) -> RunOutcome:
    arm, size, seed = key
    run_dir = config.train.out_dir
    start = time.perf_counter()
    train_examples = len(sample_records(split.pool, size, seed))
    try:
        config = resolve(config)  # the model that runs (and is scored): train.init's
        result = finetune(config, echo=echo)
        if (
            result.stop_reason == "interrupted"
        ):  # Ctrl-C ends the whole experiment, not just this run
            raise KeyboardInterrupt
        model, tokenizer = load_model(
            run_dir / "checkpoints" / "best", device=resolve_device(config.train.device)
        )
        if arm not in counts:  # the same for every size and seed of an arm
            counts[arm] = _parameter_counts(model, config)
        metrics = _score(model, tokenizer, config, split)
    except GraftError as err:  # one run's failure is part of the results; the others go on
        outcome = RunOutcome(
            arm,
            size,
            seed,
            str(run_dir),
            train_examples,
            error=str(err),
            seconds=time.perf_counter() - start,
        )
    else:
        steps = result.step
        outcome = RunOutcome(
            arm,
            size,
            seed,
            str(run_dir),
            train_examples,
            accuracy=metrics.accuracy,
            macro_f1=metrics.macro_f1,
            per_class=metrics.per_class,
            confusion=metrics.confusion,
            best_val=result.best_metric,
            steps=steps,
            examples_seen=steps * config.train.batch_size * config.train.grad_accum,
            stop_reason=result.stop_reason,
            train_seconds=result.elapsed_s,
            seconds=time.perf_counter() - start,
            trainable_parameters=counts[arm][0],
            total_parameters=counts[arm][1],
        )
    if run_dir.is_dir():
        write_atomic(run_dir / _OUTCOME_FILE, json.dumps(asdict(outcome), indent=2) + "\n")
    return outcome


def _parameter_counts(model: LanguageModel, config: RunConfig) -> tuple[int, int]:
    """(trainable, total) as the run trained them: a fresh model of the checkpoint's shape, adapted
    the same way (the loaded checkpoint no longer knows what was frozen, and a LoRA one carries its
    adapters already)."""
    fresh = LanguageModel(model.config)
    apply_adaptation(fresh, config.adapt)
    return trainable_parameters(fresh)


@torch.no_grad()
def _score(
    model: LanguageModel, tokenizer: Tokenizer, config: RunConfig, split: Split
) -> ClassificationMetrics:
    """Classification metrics of `model` on the test set, texts framed and cut as in training."""
    max_len = config.seq_len  # resolved by _one_run
    labels = tuple(model.config.labels)
    objective = Classify(
        (),
        split.test,
        tokenizer,
        labels,
        max_len,
        bidirectional=model.config.is_encoder,
    )
    device = next(model.parameters()).device
    predicted: list[str] = []
    for batch in objective.eval_batches(64, 0):
        predicted += [
            labels[i] for i in objective.logits(model, batch.to(device)).argmax(-1).tolist()
        ]
    return classification_metrics([r.label for r in split.test], predicted, labels=split.labels)


# -- results and report --------------------------------------------------------------------------


def _size_name(size: int | None) -> str:
    return "all" if size is None else str(size)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _plain_options(options: TransferOptions) -> dict[str, Any]:
    """The options that decide the results (not how they are shown or whether this is a resume)."""
    return {
        f.name: _plain(getattr(options, f.name))
        for f in fields(options)
        if f.name not in ("progress", "resume")
    }


def _write_results(options: TransferOptions, split: Split, runs: list[RunOutcome]) -> None:
    summary = {
        "options": _plain_options(options),
        "command": _command_line(options),
        "arm_settings": {arm: list(ARM_SETTINGS[arm]) for arm in options.arm_names},
        "split": {
            "labels": list(split.labels),
            "minority": split.minority,
            "pool": len(split.pool),
            "val": len(split.val),
            "test": len(split.test),
            "duplicates_dropped": split.duplicates,
            "conflicting_duplicates": split.conflicting,
            "majority_accuracy": split.majority_accuracy,
            "test_counts": dict(sorted(Counter(r.label for r in split.test).items())),
        },
        "runs": [asdict(run) for run in runs],
    }
    write_atomic(options.out_dir / "results.json", json.dumps(summary, indent=2) + "\n")


def _command_line(options: TransferOptions) -> str:
    """The `graft` command that reproduces these options."""
    words = ["graft", "experiment", "transfer", "--init", str(options.init)]
    if options.continued is not None:
        words += ["--continued", str(options.continued)]
    words += ["--labelled", *map(str, options.labelled)]
    if len(options.labelled) == 1:
        words += ["--text-field", options.text_field, "--label-field", options.label_field]
    if options.encoding is not None:
        words += ["--encoding", options.encoding]
    words += [
        "--arms",
        ",".join(options.arm_names),
        "--sizes",
        ",".join(map(_size_name, options.sizes)),
        "--seeds",
        str(len(options.seeds)),
        "--test-fraction",
        str(options.test_fraction),
        "--val-size",
        str(options.val_size),
    ]
    if options.max_steps is not None:
        words += ["--max-steps", str(options.max_steps)]
    if options.max_minutes is not None:
        words += ["--max-minutes", str(options.max_minutes)]
    words += ["--out", str(options.out_dir), *(f"--{item}" for item in options.overrides)]
    words += [] if options.progress else ["--no-progress"]
    command = " ".join(shlex.quote(w) for w in words)
    if options.seeds != tuple(range(len(options.seeds))) or options.split_seed != 0:
        command += f"  # Python API: seeds={list(options.seeds)}, split_seed={options.split_seed}"
    return command


def _f1(label: str) -> Callable[[RunOutcome], float]:
    return lambda run: run.per_class[label]["f1"]


def _accuracy(run: RunOutcome) -> float:
    return run.accuracy or 0.0


def _macro_f1(run: RunOutcome) -> float:
    return run.macro_f1 or 0.0


def _fmt(cell: Cell, score: Callable[[RunOutcome], float]) -> tuple[str, str]:
    """The mean and its interval as table cells; one finished run has no interval."""
    ci = cell.ci(score)
    if ci is None:
        return "–", "–"
    mean, low, high = ci
    return f"{mean:.3f}", f"[{low:.3f}, {high:.3f}]" if len(cell.done) > 1 else "– (1 run)"


def _mean(values: list[float] | list[int], fmt: str) -> str:
    return fmt.format(sum(values) / len(values)) if values else "–"


def _versus(cells: list[Cell], better: str, worse: str, claim: str) -> list[str]:
    """One line per size comparing two arms' test accuracy, judged paired by seed.

    A seed draws the same training sample for every arm, and which sample was drawn moves every
    arm's score together (an easy sample lifts both). Separate intervals count that shared spread
    twice; the per-seed differences cancel it, so the verdict rests on their mean and 95% interval
    (a paired t interval): a winner only when that interval excludes 0.
    """
    lines = []
    by_key = {(c.arm, c.size): c for c in cells}
    for size in dict.fromkeys(c.size for c in cells):
        a, b = by_key.get((better, size)), by_key.get((worse, size))
        if a is None or b is None:
            continue
        ca, cb = a.ci(_accuracy), b.ci(_accuracy)
        if ca is None or cb is None:
            continue
        head = (
            f"- {_size_name(size)} labelled examples: {better} {ca[0]:.3f} [{ca[1]:.3f}, "
            f"{ca[2]:.3f}] vs {worse} {cb[0]:.3f} [{cb[1]:.3f}, {cb[2]:.3f}]"
        )
        theirs = {r.seed: _accuracy(r) for r in b.done}
        differences = [_accuracy(r) - theirs[r.seed] for r in a.done if r.seed in theirs]
        if len(differences) < 2:
            lines.append(
                f"{head}: fewer than two seeds finished both arms, so this is no evidence "
                "either way."
            )
            continue
        mean, low, high = mean_ci95(differences)
        paired = (
            f"paired by seed ({len(differences)} seeds, each training both arms on the same "
            f"sample), the difference is {mean:+.3f} [{low:+.3f}, {high:+.3f}]"
        )
        if low > 0:
            verdict = f"**{claim}**; {paired}, which excludes 0"
        elif high < 0:
            verdict = (
                f"{claim.replace('beats', 'does not beat')}: it is worse; {paired}, "
                "which excludes 0"
            )
        else:
            verdict = f"no clear winner; {paired}, which includes 0 at this many seeds"
        lines.append(f"{head}: {verdict}.")
    return lines


def _report(options: TransferOptions, split: Split, cells: list[Cell]) -> str:
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
    for label in f1_labels:
        head += [f"F1 {label}", "95% CI"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells:
        done = cell.done
        examples = f"{round(sum(r.train_examples for r in done) / len(done)):,}" if done else "–"
        row = [
            f"{_size_name(cell.size)} ({examples})",
            cell.arm,
            f"{len(done)}/{len(cell.runs)}",
            *_fmt(cell, _accuracy),
            *_fmt(cell, _macro_f1),
        ]
        for label in f1_labels:
            row += _fmt(cell, _f1(label))
        lines.append("| " + " | ".join(row) + " |")
    arms = options.arm_names
    comparisons: list[str] = []
    if "full" in arms and "scratch" in arms:
        comparisons += [
            "",
            "## Pre-trained vs from scratch (test accuracy)",
            "",
            *_versus(cells, "full", "scratch", "pre-trained beats scratch"),
        ]
    if "continued" in arms and "scratch" in arms:
        # The continued checkpoint is pre-trained too (general text, then the domain's unlabelled
        # text).
        comparisons += [
            "",
            "## Continued pre-training vs from scratch (test accuracy)",
            "",
            *_versus(cells, "continued", "scratch", "continued beats scratch"),
        ]
    if "continued" in arms and "full" in arms:
        comparisons += [
            "",
            "## Continued pre-training vs pre-trained (test accuracy)",
            "",
            *_versus(cells, "continued", "full", "continued beats pre-trained"),
        ]
    lines += comparisons
    lines += [
        "",
        "![learning curves](learning_curve.png)",
        "",
        "## Compute per arm",
        "",
        "| arm | what trains | trainable parameters | runs | mean s per run | total min | "
        "mean steps | mean examples seen | stops | settings |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        runs = [r for c in cells if c.arm == arm for r in c.runs]
        done = [r for r in runs if r.error is None]
        params = (
            f"{done[0].trainable_parameters:,} of {done[0].total_parameters:,} "
            f"({done[0].trainable_parameters / max(done[0].total_parameters, 1):.2%})"
            if done
            else "–"
        )
        stops = ", ".join(
            f"{reason} {n}" for reason, n in Counter(r.stop_reason for r in done).most_common()
        )
        settings = ", ".join(f"`{s}`" for s in ARM_SETTINGS[arm])
        lines.append(
            f"| {arm} | {ARM_DESCRIPTIONS[arm]} | {params} | {len(done)}/{len(runs)} | "
            f"{_mean([r.seconds for r in done], '{:,.1f}')} | "
            f"{sum(r.seconds for r in runs) / 60:.1f} | "
            f"{_mean([r.steps for r in done], '{:,.0f}')} | "
            f"{_mean([r.examples_seen for r in done], '{:,.0f}')} | {stops or '–'} | {settings} |"
        )
    failed = [r for c in cells for r in c.runs if r.error is not None]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [
            f"- {r.arm}, {_size_name(r.size)} examples, seed {r.seed}: "
            f"{(r.error or '').replace(chr(10), ' ')} (`{r.run_dir}`)"
            for r in failed
        ]
    lines += [
        "",
        "Seconds include loading the checkpoint and scoring the test set; examples seen are steps "
        "x batch size, the training compute each arm spent (a frozen backbone's step is cheaper).",
        "",
        *(
            [
                "Overrides (`ARM:` ones for that arm only): "
                f"{', '.join(f'`{o}`' for o in options.overrides)}.",
                "",
            ]
            if options.overrides
            else []
        ),
        "## Command",
        "",
        "```",
        _command_line(options),
        "```",
        "",
        "Each run (config, metrics, checkpoints, its test scores in `transfer_outcome.json`) is in "
        "`runs/<arm>/n<size>/s<seed>`; the split is in `data/`; every number above is in "
        "`results.json`.",
        "",
    ]
    return "\n".join(lines)


def _plot(cells: list[Cell], split: Split, out: Path) -> Path:
    """Test accuracy and the minority label's F1 against labelled examples (log x), one line per
    arm."""
    # Figure + the Agg canvas directly, not pyplot: no global backend switch, no figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    panels = (
        (fig.add_subplot(1, 2, 1), _accuracy, "test accuracy"),
        (fig.add_subplot(1, 2, 2), _f1(split.minority), f"test F1 of {split.minority}"),
    )
    arms = list(dict.fromkeys(c.arm for c in cells))
    for ax, score, title in panels:
        for index, arm in enumerate(arms):
            points = []
            for cell in (c for c in cells if c.arm == arm and c.done):
                ci = cell.ci(score)
                assert ci is not None
                points.append((sum(r.train_examples for r in cell.done) / len(cell.done), *ci))
            points.sort()
            if not points:
                continue
            xs, means, lows, highs = zip(*points)
            ax.plot(xs, means, marker="o", markersize=4, color=f"C{index}", label=arm)
            ax.fill_between(xs, lows, highs, color=f"C{index}", alpha=0.15, linewidth=0)
        if score is _accuracy:
            ax.axhline(
                split.majority_accuracy,
                color="black",
                linestyle="--",
                linewidth=1,
                label=f"majority label {split.majority_accuracy:.3f}",
            )
        ax.set_xscale("log")
        ax.set_xlabel("labelled training examples")
        ax.set_ylabel(title)
        ax.set_title(f"{title} (mean, 95% CI)")
        ax.grid(alpha=0.3, which="both")
        ax.set_ylim(max(0.0, ax.get_ylim()[0]), 1.02)
    panels[0][0].legend(loc="lower right", framealpha=0.9, fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_atomic(out, buffer.getvalue())


def parse_sizes(text: str) -> tuple[int | None, ...]:
    """`50,200,1000,all` as sizes (None for all); a word that is neither a number nor 'all' is
    refused."""
    sizes: list[int | None] = []
    for word in filter(None, (w.strip() for w in text.split(","))):
        if word.lower() == "all":
            sizes.append(None)
        elif word.isdigit():
            sizes.append(int(word))
        else:
            raise ConfigError(
                f"--sizes: {word!r} is not a number of examples; write e.g. 50,200,1000,all"
            )
    return tuple(sizes)
