"""The objective comparison: one small model pre-trained with each objective, then probed.

This module owns `graft experiment objectives`. Every arm trains the same model size (a decoder
preset for clm, denoise and mix; the encoder of the same width for mlm and mlm+nsp) on the same
prepared data for the same number of tokens, with the same seed and optimiser settings. Each
arm's last checkpoint is then frozen and a linear probe is fitted on its mean-pooled features of
one labelled set, split the same way for every arm. The report puts each objective's own
validation metrics beside the probe accuracy, because only the probe is comparable across
objectives: a masked-LM loss and a causal-LM loss measure different tasks. The arms run through
the shared `runner`, so an interrupted comparison resumes with its finished arms kept.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from graft.atomic_files import write_atomic
from graft.checkpoint import load_model
from graft.config import COMMAND_DATA, OBJECTIVES, RunConfig, apply_override, validate_run_config
from graft.data.inputs import model_inputs
from graft.data.records import TextRecord, read_labelled, stratified_split
from graft.device import resolve_device
from graft.errors import ConfigError
from graft.experiments import runner
from graft.experiments.probe import ProbeResult, linear_probe, sequence_features
from graft.model.config import PRESETS
from graft.objectives.base import ShardObjective
from graft.run_files import CHECKPOINTS_DIR, METRICS_FILE, read_metrics
from graft.train.pretrain import open_prepared, pretrain

__all__ = ["ArmResult", "ComparisonOptions", "compare_objectives"]

DEFAULT_OBJECTIVES: tuple[str, ...] = ("clm", "mlm", "mlm+nsp", "denoise", "mix")
# Rows of the report's table: (metric key, column title, format).
_METRIC_COLUMNS = (
    ("val/loss", "val loss", "{:.3f}"),
    ("val/ppl", "val ppl", "{:.1f}"),
    ("val/mlm_acc", "mlm acc", "{:.3f}"),
    ("val/nsp_acc", "nsp acc", "{:.3f}"),
)


@dataclass(frozen=True)
class ComparisonOptions:
    data: Path
    out_dir: Path
    labelled: Path
    max_tokens: int
    text_field: str = "text"
    label_field: str = "label"
    encoding: str = "utf-8"
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    preset: str = "micro"  # decoder size; encoder arms use "bert-" + the same size
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 1337
    probe_examples: int = 2000
    probe_test_fraction: float = 0.3
    # `section.key=value`, applied to every arm after the settings above
    overrides: tuple[str, ...] = ()
    resume: bool = False
    progress: bool = True


@dataclass(frozen=True)
class ArmResult:
    """One objective's outcome; `error` is set (and the numbers empty) when the arm failed."""

    objective: str
    variant: str  # denoise style, or the mixture's parts
    model: str  # the preset; overrides may change its size
    run_dir: str
    parameters: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    val: dict[str, float] = field(default_factory=dict)
    probe_accuracy: float | None = None
    probe_train_accuracy: float | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.objective} ({self.variant})" if self.variant else self.objective


@dataclass(frozen=True)
class ProbeSet:
    """The labelled examples every arm is probed on: one stratified split, shared by all arms."""

    train: list[TextRecord]
    test: list[TextRecord]
    labels: tuple[str, ...]
    majority_label: str
    majority_accuracy: float  # test accuracy of always answering the training majority label

    def summary(self) -> dict[str, object]:
        """What results.json says of the probe set: its counts, not its texts."""
        plain = {k: v for k, v in vars(self).items() if k not in ("train", "test")}
        return plain | {"train": len(self.train), "test": len(self.test)}


def compare_objectives(
    options: ComparisonOptions, echo: Callable[[str], None] = lambda _: None
) -> Path:
    """Train and probe one arm per objective into options.out_dir; returns the path of report.md.

    Everything that would fail every arm (options, data, labelled set) is refused before any
    training; an arm that fails on its own is reported as failed and the others still run.
    """
    _check_options(options)
    tokenizer, _, _ = open_prepared(options.data)
    # t5-style denoising needs sentinel tokens; BART-style (one mask per span) works with any
    # tokenizer.
    style = "t5" if len(tokenizer.sentinel_ids) >= 2 else "bart"
    probe_set = _probe_set(options)
    configs: dict[str, RunConfig | ConfigError] = {}
    for objective in options.objectives:
        try:
            configs[objective] = _arm_config(options, objective, style)
        except ConfigError as err:  # reported as the arm's failure when it comes to run
            configs[objective] = err
    errors = [c for c in configs.values() if isinstance(c, ConfigError)]
    if len(errors) == len(configs):  # a setting every arm rejects is a mistake, not an outcome
        raise errors[0]
    runner.record_options(options.out_dir, options)

    def name(objective: str) -> str:
        m = getattr(configs[objective], "model", None)  # None: the arm could not be configured
        size = f", {m.n_layers}x{m.d_model} for {options.max_tokens:,} tokens" if m else ""
        return objective + size

    def run(planned: runner.Planned[str]) -> ArmResult:
        config = configs[planned.key]
        if isinstance(config, ConfigError):
            raise config
        result = pretrain(config)
        runner.raise_if_interrupted(result.stop_reason)
        probe, parameters = _probe(config, probe_set)
        val = {k: v for k, v in (result.evals[-1] if result.evals else {}).items() if k != "step"}
        return _arm(
            options,
            planned.key,
            style,
            parameters=parameters,
            tokens=result.tokens_seen,
            train_seconds=result.elapsed_s,
            val=val,
            probe_accuracy=probe.accuracy,
            probe_train_accuracy=probe.train_accuracy,
        )

    def summary(arm: ArmResult) -> str:
        return (
            f"val/loss {arm.val.get('val/loss', math.nan):.3f}, probe accuracy "
            f"{arm.probe_accuracy:.3f} (majority {probe_set.majority_accuracy:.3f})"
        )

    def results(arms: list[ArmResult]) -> None:
        runner.write_results(options.out_dir, options, arms, probe=probe_set.summary())

    plan = [runner.Planned(o, _run_dir(options, o), name(o)) for o in options.objectives]
    outcomes = runner.run_plan(
        plan,
        run,
        ArmResult,
        summary=summary,
        failed=lambda planned, error, _: _arm(options, planned.key, style, error=error),
        resume=options.resume,
        results=results,
        echo=echo,
    )
    arms = list(outcomes.values())
    results(arms)
    _plot(arms, probe_set.majority_accuracy, options.out_dir / "comparison.png")
    return write_atomic(options.out_dir / "report.md", _report(options, arms, probe_set))


def _check_options(options: ComparisonOptions) -> None:
    known = [name for name, cls in OBJECTIVES.items() if cls.reads == COMMAND_DATA["pretrain"]]
    runner.check_distinct("objectives", options.objectives, known)
    # The step budget divides max_tokens by these: zero would be a ZeroDivisionError.
    for flag, value in (
        ("--max-tokens", options.max_tokens),
        ("--batch-size", options.batch_size),
        ("--seq-len", options.seq_len),
    ):
        if value < 1:
            raise ConfigError(f"{flag}: give a whole number, 1 or more; got {value}")
    encoders = [o for o in options.objectives if _preset_for(options, o) != options.preset]
    if encoders and _preset_for(options, encoders[0]) not in PRESETS:
        twins = [name.removeprefix("bert-") for name in PRESETS if name.startswith("bert-")]
        raise ConfigError(
            f"--preset {options.preset}: objective {encoders[0]} trains an encoder, the preset's "
            f"bert- twin, and there is no bert-{options.preset}; choose one of: "
            f"{', '.join(p for p in twins if p in PRESETS)}"
        )
    if not 0 < options.probe_test_fraction < 1 or options.probe_examples < 4:
        raise ConfigError(
            "probe_test_fraction must be between 0 and 1 and probe_examples at least 4, got "
            f"{options.probe_test_fraction} and {options.probe_examples}"
        )
    # Another list of objectives adds or drops arms and leaves the finished ones as they were.
    runner.check_out_dir(
        options.out_dir, options, resume=options.resume, may_change=("objectives",)
    )


def _arm(options: ComparisonOptions, objective: str, style: str, **outcome: Any) -> ArmResult:
    variant = {"denoise": style, "mix": f"clm + denoise {style}"}.get(objective, "")
    preset = _preset_for(options, objective)
    return ArmResult(objective, variant, preset, str(_run_dir(options, objective)), **outcome)


def _run_dir(options: ComparisonOptions, objective: str) -> Path:
    return options.out_dir / "runs" / objective.replace("+", "-")


def _preset_for(options: ComparisonOptions, objective: str) -> str:
    encoder = objective in OBJECTIVES and OBJECTIVES[objective].attention == "bidirectional"
    return f"bert-{options.preset}" if encoder else options.preset


def _arm_config(options: ComparisonOptions, objective: str, style: str) -> RunConfig:
    steps = math.ceil(options.max_tokens / (options.batch_size * options.seq_len))
    same = ("seed", "batch_size", "seq_len", "max_tokens", "progress")  # train.* named as options
    section: dict[str, Any] = {"name": objective}
    if objective == "denoise":
        section["denoise_style"] = style
    if objective == "mix":
        section.update(mix={"clm": 0.5, "denoise": 0.5}, denoise={"denoise_style": style})
    raw: dict[str, Any] = {
        "model": {"preset": _preset_for(options, objective)},
        "data": {"path": str(options.data)},
        "objective": section,
        # Warm-up and evaluation scale with the budget, so a short run still warms up and every
        # arm's loss curve has about ten points.
        "optim": {"lr": options.lr, "warmup_steps": min(100, max(1, steps // 10))},
        "train": {
            "out_dir": str(_run_dir(options, objective)),
            "eval_every": max(1, steps // 10),
            **{key: getattr(options, key) for key in same},
        },
    }
    for item in options.overrides:
        apply_override(raw, item)
    # Overrides apply to every arm; masking at document ends applies where an arm packs documents
    # (clm, a mix with clm), so an arm that does not is run without it, not refused.
    data, arm = raw.get("data"), OBJECTIVES.get(objective)
    if isinstance(data, dict) and data.get("mask_doc_boundaries") and arm is not None:
        try:
            packs = arm.model_validate(raw["objective"])
        except ValidationError:
            packs = None  # validate_run_config below says what is wrong
        if isinstance(packs, ShardObjective) and not packs.reads_document_boundaries():
            del data["mask_doc_boundaries"]
    return validate_run_config(raw, where=f"objective {objective}", command="pretrain")


def _probe_set(options: ComparisonOptions) -> ProbeSet:
    fields = {key: getattr(options, key) for key in ("text_field", "label_field", "encoding")}
    records, _ = read_labelled(options.labelled, **fields)
    labels = tuple(sorted({r.label for r in records}))
    if len(labels) < 2:
        raise ConfigError(
            f"{options.labelled}: a probe needs at least 2 labels, found {len(labels)} "
            f"({', '.join(labels)}); give a labelled set with two or more classes"
        )
    if len(records) > options.probe_examples:  # a stratified subsample keeps the label balance
        _, records = stratified_split(records, options.probe_examples / len(records), options.seed)
    train, test = stratified_split(records, options.probe_test_fraction, options.seed)
    counts = Counter(r.label for r in train)
    # A tie goes to the first label in sorted order.
    majority = max(labels, key=lambda label: counts[label])
    accuracy = sum(r.label == majority for r in test) / max(len(test), 1)
    return ProbeSet(train, test, labels, majority, accuracy)


def _probe(config: RunConfig, probe_set: ProbeSet) -> tuple[ProbeResult, int]:
    """The probe on the arm's last checkpoint, and the model's parameter count."""
    device = resolve_device(config.train.device)
    model, tokenizer = load_model(config.train.out_dir / CHECKPOINTS_DIR / "last", device=device)
    seq_len = config.seq_len

    def encoded(records: list[TextRecord]) -> tuple[torch.Tensor, torch.Tensor]:
        # Encoders trained on [CLS] text [SEP] windows are probed on texts framed the same way,
        # by the one text -> model-input path that fine-tuning and serving take.
        texts = [r.text for r in records]
        ids = model_inputs(tokenizer, texts, framed=model.config.is_encoder, max_len=seq_len).ids
        labels = torch.tensor([probe_set.labels.index(r.label) for r in records])
        return sequence_features(model, ids, max_len=seq_len), labels

    train, test = encoded(probe_set.train), encoded(probe_set.test)
    result = linear_probe(*train, *test, labels=probe_set.labels, seed=config.train.seed)
    return result, model.num_parameters()


def _cell(arm: ArmResult, key: str, fmt: str) -> str:
    value = arm.val.get(key)
    if key == "val/ppl" and value is None and "val/clm/ppl" in arm.val:
        return fmt.format(arm.val["val/clm/ppl"]) + " (clm part)"  # comparable with the clm arm's
    if key == "val/mlm_acc" and value is not None and "val/mlm_unigram_acc" in arm.val:
        return f"{value:.3f} (unigram {arm.val['val/mlm_unigram_acc']:.3f})"
    return "–" if value is None else fmt.format(value)


def _report(options: ComparisonOptions, arms: list[ArmResult], probe_set: ProbeSet) -> str:
    head = ["arm", "model", "tokens", "minutes", *(t for _, t, _ in _METRIC_COLUMNS), "probe acc"]
    rows = []
    for arm in arms:
        if arm.error is not None:
            reason = arm.error.replace("|", "\\|").replace("\n", " ")
            rows.append([arm.name, arm.model, *["–"] * (len(head) - 3), f"failed: {reason}"])
            continue
        model = f"{arm.model} ({arm.parameters / 1e6:.2f}M)"
        numbers = [f"{arm.tokens:,}", f"{arm.train_seconds / 60:.1f}"]
        numbers += [_cell(arm, key, fmt) for key, _, fmt in _METRIC_COLUMNS]
        rows.append([arm.name, model, *numbers, f"{arm.probe_accuracy:.3f}"])
    lines = [
        "# Pre-training objectives compared",
        "",
        f"Each arm pre-trains from scratch on `{options.data}` for {options.max_tokens:,} tokens "
        f"(sequence length {options.seq_len}, batch {options.batch_size}, lr {options.lr:g}, seed "
        f"{options.seed}); then a linear probe on its frozen, mean-pooled features classifies "
        f"`{options.labelled}`.",
        "",
        *runner.table(head, rows),
        "",
        f"Probe: {len(probe_set.train):,} training and {len(probe_set.test):,} test examples "
        f"(labels {', '.join(probe_set.labels)}), the same stratified split for every arm; always "
        f"answering the majority label `{probe_set.majority_label}` scores "
        f"**{probe_set.majority_accuracy:.3f}** on the test set.",
        "",
        "Validation loss is each objective's own loss (next token, masked tokens, or dropped "
        "spans) and is not comparable across objectives; probe accuracy is. mlm acc is beside the "
        "accuracy of always guessing the most frequent token (unigram).",
        "",
        "![probe accuracy and validation loss](comparison.png)",
        "",
        *runner.command_section(),
        "Each arm's run (config, metrics, checkpoints, `outcome.json`) is in `runs/`; every number "
        "above is in `results.json`.",
        "",
    ]
    return "\n".join(lines)


def _plot(arms: list[ArmResult], majority: float, out: Path) -> Path:
    done = [arm for arm in arms if arm.error is None]
    fig, (probes, curves) = runner.figure(11, 4, panels=2)
    colors = [f"C{i}" for i in range(len(done))]  # an arm has the same colour in both panels
    accuracies = [a.probe_accuracy or 0.0 for a in done]
    drawn = probes.bar([a.name for a in done], accuracies, color=colors)
    probes.bar_label(drawn, fmt="%.3f", fontsize=8)
    probes.axhline(majority, color="black", linestyle="--", label=f"majority class {majority:.3f}")
    probes.set(ylim=(0, 1.08), ylabel="linear-probe test accuracy", title="downstream probe")
    probes.tick_params(axis="x", labelrotation=20)
    probes.legend(loc="lower right", framealpha=0.9)
    for arm, color in zip(done, colors):
        rows = [
            (m["tokens"], m["val/loss"])
            for m in read_metrics(Path(arm.run_dir) / METRICS_FILE)
            if "val/loss" in m and "tokens" in m
        ]
        if rows:
            curves.plot(*zip(*rows), marker="o", markersize=3, label=arm.name, color=color)
    curves.set(xlabel="training tokens", title="pre-training")
    curves.set_ylabel("validation loss (each objective's own)")
    curves.grid(alpha=0.3)
    if done:
        curves.legend()
    return runner.save_png(fig, out)
