"""What a transfer experiment is asked to do, checked before anything runs, and the one split of
its labelled set that every run shares.

The labelled set is split once (seeded, stratified, exact-duplicate texts removed first so no text
is on both sides) into a test set, a fixed validation set for early stopping and a training pool,
written to `out_dir/data/`; each run draws a stratified sample of its size from the pool.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from graft.atomic_files import write_atomic
from graft.data.records import TextRecord, read_labelled, read_polarity, stratified_split
from graft.errors import ConfigError
from graft.experiments.runner import check_distinct, check_out_dir, record_options

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
DEFAULT_SIZES: tuple[int | None, ...] = (50, 200, 1000, None)  # None: the whole training pool
# Settings every run of the experiment must share or that the experiment sets per run.
_OWNED = frozenset(
    "train.init train.out_dir train.seed train.max_steps train.max_minutes objective.name "
    "data.train_file data.val_file data.max_train_examples data.text_field data.label_field "
    "data.encoding adapt.method adapt.from_scratch adapt.trainable_blocks".split()
)
DATA_FILES = ("train.jsonl", "val.jsonl", "test.jsonl")


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
    # None: scratch, full, lora, probe, and continued when given
    arms: tuple[str, ...] | None = None
    sizes: tuple[int | None, ...] = DEFAULT_SIZES  # labelled training examples per run; None = all
    seeds: tuple[int, ...] = (0, 1, 2)
    test_fraction: float = 0.2
    val_size: int = 200
    split_seed: int = 0
    max_steps: int | None = 500  # the budget of every run: whichever limit comes first
    max_minutes: float | None = None
    # `section.key=value` for every run, `arm:section.key=value` for one arm
    overrides: tuple[str, ...] = ()
    resume: bool = False
    progress: bool = True

    @property
    def arm_names(self) -> tuple[str, ...]:
        if self.arms is not None:
            return self.arms
        return ARMS if self.continued is not None else ARMS[:-1]


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

    def summary(self) -> dict[str, object]:
        """What results.json says of the split: its counts, not its texts."""
        counts = {name: len(getattr(self, name)) for name in ("pool", "val", "test")}
        plain = {k: v for k, v in vars(self).items() if not isinstance(v, list)}
        test_counts = dict(sorted(Counter(r.label for r in self.test).items()))
        return plain | counts | {"test_counts": test_counts}


def check_options(options: TransferOptions) -> None:
    arms, sizes = options.arm_names, options.sizes
    check_distinct("arms", arms, ARMS)
    if "continued" in arms and options.continued is None:
        raise ConfigError(
            "arms: the continued arm needs a continued-pre-trained checkpoint (--continued)"
        )
    check_distinct("sizes", sizes)
    if any(s is not None and (isinstance(s, bool) or s < 1) for s in sizes):
        raise ConfigError(
            f"sizes: got {list(sizes)}; give labelled-set sizes of 1 or more, or 'all'"
        )
    check_distinct("seeds", options.seeds)
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
        arm, _, key = override_key(item)
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
    # More (or fewer) arms, sizes or seeds leave the finished runs meaning what they did.
    check_out_dir(
        options.out_dir, options, resume=options.resume, may_change=("arms", "sizes", "seeds")
    )


def arm_method(arm: str) -> str:
    """The adapt.method an arm's runs fine-tune with (ARM_SETTINGS)."""
    return next(
        item.partition("=")[2] for item in ARM_SETTINGS[arm] if item.startswith("adapt.method=")
    )


def override_key(item: str) -> tuple[str, str, str]:
    """(arm or '', the `section.key=value` part, its key) of one override."""
    head, _, _ = item.partition("=")
    arm, colon, rest = head.partition(":")
    if not colon:
        arm, rest = "", head
    setting = item[len(arm) + 1 :] if arm else item
    return arm, setting, rest.removeprefix("--")


def parse_sizes(text: str) -> tuple[int | None, ...]:
    """`50,200,1000,all` as sizes (None for all); a word that is neither a number nor 'all' is
    refused."""
    words = [word.strip() for word in text.split(",") if word.strip()]
    for word in words:
        if word.lower() != "all" and not word.isdigit():
            raise ConfigError(
                f"--sizes: {word!r} is not a number of examples; write e.g. 50,200,1000,all"
            )
    return tuple(None if word.lower() == "all" else int(word) for word in words)


def _read(options: TransferOptions) -> list[TextRecord]:
    if len(options.labelled) == 2:  # the pos and neg files
        return read_polarity(*options.labelled, encoding=options.encoding or "latin-1")
    fields = {key: getattr(options, key) for key in ("text_field", "label_field")}
    records, _ = read_labelled(options.labelled[0], encoding=options.encoding or "utf-8", **fields)
    return records


def split_labelled(options: TransferOptions) -> Split:
    unique: dict[str, TextRecord] = {}
    duplicates = conflicting = 0
    for record in _read(options):
        # Whitespace-normalised identity: a repeated SMS in train and test would inflate test
        # scores.
        first = unique.setdefault(" ".join(record.text.split()), record)
        if first is not record:
            duplicates += 1
            conflicting += first.label != record.label
    records = list(unique.values())
    labels = tuple(sorted({r.label for r in records}))
    if len(labels) < 2:
        where = " and ".join(map(str, options.labelled))
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
    minority = min(labels, key=lambda label: counts[label])
    accuracy = sum(r.label == majority for r in test) / len(test)
    return Split(pool, val, test, labels, minority, duplicates, conflicting, accuracy)


def effective_sizes(
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


def write_data(options: TransferOptions, split: Split) -> None:
    """The split's files in `out_dir/data/`, and the options a resume must match."""
    for name, records in zip(DATA_FILES, (split.pool, split.val, split.test)):
        rows = ({"text": r.text, "label": r.label, "source": r.source} for r in records)
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        path = options.out_dir / "data" / name
        # Texts and labels decide the runs; `source` spells the file as this command did.
        old = path.read_text(encoding="utf-8") if options.resume and path.is_file() else None
        if old is not None and _examples(old) != _examples(text):
            raise ConfigError(
                f"{path}: the labelled data differ from the experiment's split; resume with the "
                "same file or choose another --out"
            )
        write_atomic(path, text)
    record_options(options.out_dir, options)
