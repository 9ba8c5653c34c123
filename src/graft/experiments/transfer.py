"""The transfer experiment: what a pre-trained checkpoint is worth on one labelled task.

This module owns `graft experiment transfer`'s runs. Every arm fine-tunes at every labelled-set
size with every seed, each run a plain `finetune` under the same budget (steps and/or minutes) into
`out_dir/runs/<arm>/n<size>/s<seed>`:

- scratch: the pre-trained checkpoint's architecture and tokenizer, weights re-initialised;
- full: every weight of the pre-trained checkpoint trains;
- lora: PEFT LoRA adapters on the attention projections, plus the new head;
- probe: the backbone frozen, only the new head (and the final norm) trains: a linear probe;
- continued: full fine-tuning from a continued-pre-trained checkpoint, when one is given.

Each run's best checkpoint (by validation macro F1) is scored on the test set by `graft eval`'s
prediction function. The options and the split are `transfer_options`'s, the report and the plot
`transfer_report`'s, and running, resuming and results.json the shared `runner`'s. A run that
fails is reported and the others go on; `resume` finishes an interrupted experiment, keeping its
finished runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from graft.adapt import apply_adaptation, trainable_parameters
from graft.atomic_files import write_atomic
from graft.checkpoint import load_model, resolve
from graft.config import RunConfig, load_finetune_config, method_reads
from graft.device import resolve_device
from graft.evaluate.metrics import classification_metrics
from graft.evaluate.predict import class_probabilities
from graft.experiments import transfer_options
from graft.experiments.runner import Planned, raise_if_interrupted, run_plan, setting, write_results
from graft.experiments.transfer_options import Split, TransferOptions
from graft.experiments.transfer_report import Cell, RunOutcome, plot, report, size_name
from graft.model.transformer import LanguageModel
from graft.objectives.classify import sample_records
from graft.run_files import CHECKPOINTS_DIR
from graft.train.finetune import finetune

__all__ = ["run_transfer"]

Key = tuple[str, int | None, int]  # arm, size, seed


def run_transfer(options: TransferOptions, echo: Callable[[str], None] = lambda _: None) -> Path:
    """Run every arm x size x seed into options.out_dir; returns the path of report.md.

    Everything that would fail every run (options, overrides, data, checkpoints, a size the data
    cannot give) is refused before any training.
    """
    transfer_options.check_options(options)
    split = transfer_options.split_labelled(options)
    sizes = transfer_options.effective_sizes(options, split, echo)
    for path in filter(None, (options.init, options.continued)):
        load_model(path)  # a missing or corrupt checkpoint is one error now, not one per run
    plan = [
        Planned(
            (arm, size, seed),
            options.out_dir / "runs" / arm / f"n{size_name(size)}" / f"s{seed}",
            f"{arm}, {size_name(size)} examples, seed {seed}",
        )
        for seed in options.seeds
        for size in sizes
        for arm in options.arm_names
    ]
    configs = {p.key: _run_config(options, p) for p in plan}
    for _, size, seed in configs:
        sample_records(split.pool, size, seed)  # a sample of one label fails now, not mid-way
    transfer_options.write_data(options, split)
    counts: dict[str, tuple[int, int]] = {}

    def results(runs: list[RunOutcome]) -> None:
        arms = {arm: list(transfer_options.ARM_SETTINGS[arm]) for arm in options.arm_names}
        write_results(options.out_dir, options, runs, arm_settings=arms, split=split.summary())

    def summary(o: RunOutcome) -> str:
        f1 = o.per_class[split.minority]["f1"]
        return (
            f"test accuracy {o.accuracy:.3f}, macro F1 {o.macro_f1:.3f}, F1 {split.minority} "
            f"{f1:.3f} ({o.seconds:.0f} s)"
        )

    outcomes = run_plan(
        plan,
        lambda p: _one_run(configs[p.key], p, split, counts, lambda m: echo(f"  {m}")),
        RunOutcome,
        summary=summary,
        failed=lambda p, error, seconds: RunOutcome(
            *p.key, str(p.run_dir), _sampled(split, p.key), error=error, seconds=seconds
        ),
        resume=options.resume,
        results=results,
        echo=echo,
    )
    results(list(outcomes.values()))
    cells = [
        Cell(arm, size, [outcomes[(arm, size, seed)] for seed in options.seeds])
        for size in sizes
        for arm in options.arm_names
    ]
    plot(cells, split, options.out_dir / "learning_curve.png")
    return write_atomic(options.out_dir / "report.md", report(options, split, cells))


def _run_config(options: TransferOptions, planned: Planned[Key]) -> RunConfig:
    arm, size, seed = planned.key
    data = options.out_dir / "data"
    settings = [
        setting("train.init", options.continued if arm == "continued" else options.init),
        setting("train.out_dir", planned.run_dir),
        setting("data.train_file", data / transfer_options.DATA_FILES[0]),
        setting("data.val_file", data / transfer_options.DATA_FILES[1]),
        setting("train.seed", seed),
        setting("train.progress", options.progress),
        setting("train.max_steps", options.max_steps),
        setting("train.max_minutes", options.max_minutes),
        setting("data.max_train_examples", size),  # None: the whole pool
        *transfer_options.ARM_SETTINGS[arm],
    ]
    scoped = [transfer_options.override_key(item) for item in options.overrides]
    # An override for every run goes to the runs that read it: a LoRA setting to the lora arm.
    method = transfer_options.arm_method(arm)
    settings += [item for scope, item, key in scoped if not scope and method_reads(key, method)]
    settings += [item for scope, item, _ in scoped if scope == arm]  # last: one arm's wins
    return load_finetune_config("classify", None, settings)


def _sampled(split: Split, key: Key) -> int:
    """Training examples a run draws (stratified, so it can differ from its size by rounding)."""
    _, size, seed = key
    return len(sample_records(split.pool, size, seed))


def _one_run(
    config: RunConfig,
    planned: Planned[Key],
    split: Split,
    counts: dict[str, tuple[int, int]],
    echo: Callable[[str], None],
) -> RunOutcome:
    arm, start = planned.key[0], time.perf_counter()
    config = resolve(config)  # the model that runs (and is scored): train.init's
    result = finetune(config, echo=echo)
    raise_if_interrupted(result.stop_reason)
    device = resolve_device(config.train.device)
    model, tokenizer = load_model(planned.run_dir / CHECKPOINTS_DIR / "best", device=device)
    if arm not in counts:  # the same for every size and seed of an arm
        counts[arm] = _parameter_counts(model, config)
    # graft eval's prediction: texts framed and cut to the training context as fine-tuning did.
    texts = [r.text for r in split.test]
    classified = class_probabilities(model, tokenizer, texts, max_len=config.seq_len)
    labels = model.config.labels
    predicted = [labels[i] for i in classified.probabilities.argmax(-1).tolist()]
    metrics = classification_metrics([r.label for r in split.test], predicted, labels=split.labels)
    return RunOutcome(
        *planned.key,
        str(planned.run_dir),
        _sampled(split, planned.key),
        accuracy=metrics.accuracy,
        macro_f1=metrics.macro_f1,
        per_class=metrics.per_class,
        confusion=metrics.confusion,
        best_val=result.best_metric,
        steps=result.step,
        examples_seen=result.step * config.train.batch_size * config.train.grad_accum,
        stop_reason=result.stop_reason,
        train_seconds=result.elapsed_s,
        seconds=time.perf_counter() - start,
        truncated=classified.truncated,
        trainable_parameters=counts[arm][0],
        total_parameters=counts[arm][1],
    )


def _parameter_counts(model: LanguageModel, config: RunConfig) -> tuple[int, int]:
    """(trainable, total) as the run trained them: a fresh model of the checkpoint's shape, adapted
    the same way (the loaded checkpoint no longer knows what was frozen, and a LoRA one carries its
    adapters already)."""
    fresh = LanguageModel(model.config)
    apply_adaptation(fresh, config.adapt)
    return trainable_parameters(fresh)
