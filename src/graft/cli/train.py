"""The training commands: `graft quickstart`, `pretrain`, `finetune`, `experiment` and `audit`,
each a parser and its runner. All but quickstart take `--section.key=value` overrides."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from graft.cli.common import (
    COMMON,
    EXIT_INTERRUPTED,
    EXIT_RUNS_FAILED,
    add_shared,
    options_from,
)
from graft.errors import GraftError

if TYPE_CHECKING:
    from graft.config import RunConfig


def add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        parents=[COMMON],
        help="Pre-train a small model on a corpus built from this Python installation.",
        description="The embedded default: builds a corpus from the running Python's standard "
        "library and documentation (nothing downloaded), trains a tokenizer, prepares shards, "
        "pre-trains a small model on a budget of tokens, fine-tunes it on two tasks from the same "
        "installation (a function's package; its docstring's first line) against training from "
        "scratch (classification over 3 seeds per arm), and writes a report.",
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=1_500_000,
        help="pre-training tokens (default: 1500000, about 5 minutes on 2 idle cores)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/quickstart"),
        help="run directory, replaced if it exists",
    )
    p.add_argument("--preset", default="micro", help="model preset (default: micro)")
    p.add_argument(
        "--corpus-mb", type=float, default=8.0, help="corpus size in MB of text (default: 8)"
    )
    p.add_argument(
        "--vocab-size", type=int, default=4096, help="BPE vocabulary size (default: 4096)"
    )
    p.add_argument("--seed", type=int, default=1337)
    add_shared(p, "--no-progress")
    p.add_argument(
        "--finetune-steps",
        type=int,
        default=70,
        help="steps of each of the eight fine-tuning runs (default: 70, about 4.5 minutes in all "
        "on 2 idle cores)",
    )
    p.add_argument(
        "--skip-finetune", action="store_true", help="stop after pre-training; nothing is held out"
    )


def run_quickstart(args: argparse.Namespace) -> int:
    from graft.quickstart import QuickstartOptions, run_quickstart

    options = options_from(
        QuickstartOptions,
        args,
        corpus_bytes=int(args.corpus_mb * 1e6),
        progress=not args.no_progress,
        finetune=not args.skip_finetune,
    )
    report = run_quickstart(options, echo=print)
    print(f"report: {report}")
    return 0


def add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        parents=[COMMON],
        help="Pre-train a model with a YAML recipe and --section.key=value overrides.",
        description="Example: graft pretrain --config configs/pretrain/micro.yaml "
        "--data.path runs/data --train.max_steps=500. Overrides are --section.key=value or "
        "--section.key value.",
    )
    p.add_argument("--config", type=Path, help="YAML recipe (see configs/pretrain/)")
    add_shared(p, "--resume", "--print-config")
    # Shortcuts for the settings changed most often; each is the dotted override named in its help.
    p.add_argument(
        "--objective",
        # Held equal to the shard objectives' names by tests/objectives/test_plugins.py.
        help="clm, mlm, nsp, mlm+nsp, denoise or mix (objective.name), default clm",
    )
    p.add_argument("--data", help="prepared data directory (data.path)")
    p.add_argument(
        "--init",
        help="continue pre-training from a checkpoint or Hugging Face directory (train.init)",
    )
    p.add_argument(
        "--replay", help="prepared general data replayed against forgetting (data.replay_path)"
    )
    p.add_argument(
        "--replay-fraction",
        help="fraction of batches from --replay (data.replay_fraction, default 0.1)",
    )
    p.add_argument("--out", help="run directory (train.out_dir)")


def add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="Fine-tune a checkpoint or Hugging Face model on labelled data."
    )
    tsub = p.add_subparsers(dest="task", required=True, metavar="TASK")
    helps = {
        "classify": "sequence classification from JSONL/JSON/CSV/TSV (text and label columns)",
        "tokens": "token classification (BIO tags) from CoNLL or JSONL",
        "instruct": "instruction following from Alpaca-style or chat (messages) records",
        "seq2seq": "translation or summarisation from JSONL source/target records, or parallel "
        "files PREFIX.SRC/PREFIX.TGT with --objective.source_lang/--objective.target_lang",
        "qa": "extractive question answering (an encoder) from SQuAD JSON or JSONL context/"
        "question/answers records, long contexts in overlapping windows (--objective.stride)",
    }
    for task, text in helps.items():
        t = tsub.add_parser(
            task,
            parents=[COMMON],
            help=text,
            description=f"{text}. Starts from fine-tuning defaults (lower learning rate, short "
            "warm-up, weight decay, dropout, early stopping on the validation metric); any field "
            "can be overridden with --section.key=value; --print-config shows them all.",
        )
        t.add_argument(
            "--init",
            required=True,
            help="checkpoint, run directory or Hugging Face directory (train.init)",
        )
        t.add_argument(
            "--train", help="training records (data.train_file; or set in the --config recipe)"
        )
        t.add_argument(
            "--val",
            help="validation records (data.val_file); default: a share of --train held out "
            "(stratified by label for classify, whole articles for qa)",
        )
        t.add_argument("--out", help="run directory (train.out_dir)")
        t.add_argument(
            "--method",
            choices=["full", "freeze", "lora"],
            help="what trains (adapt.method, default full)",
        )
        t.add_argument("--config", type=Path, help="YAML recipe (see configs/finetune/)")
        add_shared(t, "--resume", "--print-config")
        t.add_argument(
            "--skip-invalid",
            action="store_true",
            help="skip and count bad records instead of stopping at the first (data.skip_invalid)",
        )
        if task == "classify":
            t.add_argument("--text-field", help="text column (data.text_field, default text)")
            t.add_argument("--label-field", help="label column (data.label_field, default label)")


def _given(shortcuts: dict[str, object]) -> list[str]:
    """`key=value` overrides for the shortcut flags that were given."""
    return [f"{key}={value}" for key, value in shortcuts.items() if value is not None]


def run_pretrain(args: argparse.Namespace) -> int:
    from graft.config import load_run_config

    shortcuts = {
        "objective.name": args.objective,
        "data.path": args.data,
        "train.init": args.init,
        "data.replay_path": args.replay,
        "data.replay_fraction": args.replay_fraction,
        "train.out_dir": args.out,
    }
    return _train(args, load_run_config(args.config, _given(shortcuts) + args.overrides))


def run_finetune(args: argparse.Namespace) -> int:
    from graft.config import load_finetune_config

    shortcuts = {
        "train.init": args.init,
        "data.train_file": args.train,
        "data.val_file": args.val,
        "train.out_dir": args.out,
        "adapt.method": args.method,
        "data.text_field": getattr(args, "text_field", None),
        "data.label_field": getattr(args, "label_field", None),
        "data.skip_invalid": "true" if args.skip_invalid else None,
    }
    overrides = _given(shortcuts) + args.overrides
    return _train(args, load_finetune_config(args.task, args.config, overrides))


def _train(args: argparse.Namespace, config: RunConfig) -> int:
    """Resolve, then print the config (--print-config) or run it: pre-training or fine-tuning,
    by the command."""
    # torch loads only once the config is known to be good
    from graft.checkpoint import resolve
    from graft.distributed import step_layout, world_from_env

    config = resolve(config, resume=args.resume)  # with --init or --resume: the checkpoint's model
    # grad_accum from train.global_batch and the number of processes (torchrun's)
    config = config.model_copy(update={"train": step_layout(config.train, world_from_env())})
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    if args.command == "pretrain":
        from graft.train.pretrain import pretrain

        result = pretrain(config, resume=args.resume)
    else:
        from graft.train.finetune import finetune

        result = finetune(config, resume=args.resume, echo=print)
    interrupted = result.stop_reason == "interrupted"
    if not world_from_env().is_main:  # rank 0 reports for every process
        return EXIT_INTERRUPTED if interrupted else 0
    if result.already_finished:
        limit = f"train.{result.stop_reason}"
        print(
            f"{result.run_dir} had already finished at step {result.step} ({limit} reached); "
            f"nothing was done. To train further, raise {limit} and --resume"
        )
        return 0
    if interrupted:
        print(interrupted_line(result.step, result.run_dir), file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.epsilon is not None:
        print(
            f"privacy spent: epsilon {result.epsilon:.3f} at delta {config.dp.delta:g} "
            f"({config.dp.accountant} accountant; the unit is one training record)"
        )
    if args.command == "pretrain":
        last = result.evals[-1] if result.evals else {}
        summary = "  ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "step")
        print(
            f"stopped ({result.stop_reason}) at step {result.step}, "
            f"{result.tokens_seen:,} tokens, {result.elapsed_s:.0f} s. {summary}"
        )
        print(f"run: {result.run_dir}")
        return 0
    print(
        f"stopped ({result.stop_reason}) at step {result.step}, {result.elapsed_s:.0f} s; "
        f"best {config.train.monitor} {result.best_metric:.4f}"
        if result.best_metric is not None
        else f"stopped ({result.stop_reason})"
    )
    from graft.run_files import CHECKPOINTS_DIR

    best = result.run_dir / CHECKPOINTS_DIR / "best"
    print(f"run: {result.run_dir}  (best checkpoint: {best})")
    return 0


def interrupted_line(step: int, run_dir: Path) -> str:
    """What an interrupted run says: where it resumes from, or that it has nowhere to."""
    from graft.checkpoint import saved_checkpoint

    saved = saved_checkpoint(run_dir)
    if saved is None:
        return (
            f"interrupted at step {step}, before the first checkpoint: nothing to resume "
            "(rerunning starts from step 0)"
        )
    return (
        f"interrupted at step {step}; the last complete checkpoint, {saved}, is intact: "
        "continue with --resume"
    )


def add_experiment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="Run a comparison experiment.")
    esub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    e = esub.add_parser(
        "objectives",
        parents=[COMMON],
        help="Pre-train one small model per objective and compare them with a linear probe.",
        description="Pre-trains the same model size with each objective on the same data for the "
        "same number of tokens, probes each frozen model on a labelled set, and writes report.md, "
        "results.json and comparison.png into --out. Further --section.key=value overrides apply "
        "to every arm.",
    )
    e.add_argument(
        "--data", type=Path, required=True, help="prepared data directory (from graft data prepare)"
    )
    e.add_argument(
        "--labelled",
        type=Path,
        required=True,
        help="labelled file for the probe (.jsonl, .json, .csv, .tsv or label<TAB>text)",
    )
    add_shared(e, "--text-field", "--label-field")
    e.add_argument("--encoding", help="encoding of --labelled (default: utf-8)")
    e.add_argument("--objectives", help="comma list (default: clm,mlm,mlm+nsp,denoise,mix)")
    e.add_argument("--preset", help="decoder size; encoder arms use bert-<size> (default: micro)")
    e.add_argument("--max-tokens", type=int, required=True, help="training tokens per arm")
    e.add_argument("--seq-len", type=int, help="training context and probe length (default: 128)")
    e.add_argument("--batch-size", type=int, help="sequences per step (default: 16)")
    e.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3)")
    e.add_argument(
        "--seed", type=int, help="seed for every arm and the probe split (default: 1337)"
    )
    e.add_argument(
        "--probe-examples", type=int, help="stratified subsample of --labelled (default: 2000)"
    )
    e.add_argument(
        "--probe-test-fraction",
        type=float,
        help="held-out share of the probe examples (default: 0.3)",
    )
    e.add_argument("--out", type=Path, required=True, help="directory for the report and the runs")
    e.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted comparison in --out, keeping its finished arms",
    )
    add_shared(e, "--no-progress")
    _add_experiment_transfer(esub)


def _add_experiment_transfer(esub: argparse._SubParsersAction) -> None:
    t = esub.add_parser(
        "transfer",
        parents=[COMMON],
        help="Fine-tune from scratch, fully, with LoRA and as a linear probe at several "
        "labelled-set sizes and seeds; report means and 95%% CIs.",
        description="Splits one labelled set once (test, validation, training pool), then "
        "fine-tunes every arm (scratch, full, lora, probe, and continued with --continued) at "
        "every size with every seed under the same budget, scores each best checkpoint on the "
        "test set, and writes report.md, results.json and learning_curve.png into --out. Further "
        "--section.key=value overrides apply to every run that reads them (adapt.lora_* to the "
        "lora arm's); --ARM:section.key=value to one arm's runs (e.g. --lora:optim.lr=2e-3).",
    )
    t.add_argument(
        "--init",
        type=Path,
        required=True,
        help="the pre-trained checkpoint (or run or Hugging Face directory)",
    )
    t.add_argument(
        "--continued", type=Path, help="a continued-pre-trained checkpoint: adds the continued arm"
    )
    t.add_argument(
        "--labelled",
        type=Path,
        nargs="+",
        required=True,
        metavar="FILE",
        help="a labelled file (.jsonl, .json, .csv, .tsv or label<TAB>text), or the pos and neg "
        "polarity files",
    )
    add_shared(t, "--text-field", "--label-field")
    t.add_argument(
        "--encoding", help="encoding of --labelled (default: utf-8; latin-1 for a polarity pair)"
    )
    t.add_argument(
        "--arms",
        help="comma list (default: scratch,full,lora,probe, and continued with --continued)",
    )
    t.add_argument(
        "--sizes",
        help="labelled training examples per run, comma list with 'all' (default: 50,200,1000,all)",
    )
    t.add_argument("--seeds", type=int, help="seeds per arm and size: 0..N-1 (default: 3)")
    t.add_argument("--test-fraction", type=float, help="held-out test share (default: 0.2)")
    t.add_argument(
        "--val-size", type=int, help="validation texts for early stopping (default: 200)"
    )
    t.add_argument(
        "--max-steps", type=int, help="steps per run, the same for every arm (default: 500)"
    )
    t.add_argument(
        "--max-minutes", type=float, help="minutes per run, the same for every arm (default: none)"
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted experiment in --out, keeping its runs; it may add --seeds, "
        "--sizes or --arms",
    )
    t.add_argument(
        "--out", type=Path, required=True, help="directory for the report, the split and the runs"
    )
    add_shared(t, "--no-progress")


def comma_list(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(word.strip() for word in text.split(",") if word.strip())


def run_experiment(args: argparse.Namespace) -> int:
    if args.action == "transfer":
        return _run_experiment_transfer(args)
    from graft.experiments.objective_comparison import ComparisonOptions, compare_objectives

    options = options_from(
        ComparisonOptions,
        args,
        objectives=comma_list(args.objectives),
        overrides=tuple(args.overrides),
        progress=not args.no_progress,
    )
    return _experiment_done(compare_objectives(options, echo=print))


def _run_experiment_transfer(args: argparse.Namespace) -> int:
    from graft.experiments.transfer import run_transfer
    from graft.experiments.transfer_options import TransferOptions, parse_sizes

    sizes = None if args.sizes is None else parse_sizes(args.sizes)
    if args.seeds is not None and args.seeds < 1:
        raise GraftError(
            f"--seeds {args.seeds}: give the number of seeds, 1 or more (3 for useful CIs)"
        )
    options = options_from(
        TransferOptions,
        args,
        labelled=tuple(args.labelled),
        arms=comma_list(args.arms),
        sizes=sizes,
        seeds=None if args.seeds is None else tuple(range(args.seeds)),
        overrides=tuple(args.overrides),
        progress=not args.no_progress,
    )
    return _experiment_done(run_transfer(options, echo=print))


def _experiment_done(report: Path) -> int:
    """The report's path, and exit status 1 when a run failed: a script or CI job running an
    experiment must not take a table of failures for a result."""
    from graft.experiments.runner import failed_runs

    print(f"report: {report}")
    failed = failed_runs(report.parent)
    if failed:
        print(
            f"graft: {len(failed)} run(s) failed (the report says why): {', '.join(failed)}",
            file=sys.stderr,
        )
        return EXIT_RUNS_FAILED
    return 0


def add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="Audit what a fine-tuning run leaks about its records.")
    asub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = asub.add_parser(
        "canaries",
        parents=[COMMON],
        help="Insert secret canaries, fine-tune, and measure their exposure and a one-run "
        "epsilon lower bound.",
        description="Writes an audited training file into --out: the records of --data as "
        "one-turn conversations (a labelled text becomes the reply to a fixed instruction, since "
        "exposure needs a generative model; conversation files are kept as they are), plus "
        "--canaries random secrets each inserted --repeats times, --controls never inserted, and "
        "--members membership canaries each inserted with probability 1/2. The validation split "
        "is held out first and holds no canary. Fine-tunes --init with objective instruct once "
        "without DP and, when the overrides turn DP on (--dp.epsilon=8), once with it; other "
        "--section.key=value overrides apply to both runs. Scores each run's last checkpoint: "
        "per-canary exposure (Carlini et al. 2019, sampled and skew-normal extrapolated) and the "
        "one-run epsilon lower bound (Steinke, Nasr and Jagielski 2023), beside the accountant's "
        "epsilon; writes report.json and report.md.",
    )
    a.add_argument(
        "--init",
        type=Path,
        required=True,
        help="the base checkpoint (or run or Hugging Face directory; a decoder)",
    )
    a.add_argument(
        "--data",
        type=Path,
        required=True,
        help="labelled records (.jsonl, .json, .csv, .tsv or label<TAB>text) or conversations "
        "(.jsonl/.json, Alpaca or chat messages)",
    )
    a.add_argument(
        "--out", type=Path, required=True, help="directory for the data, runs and report"
    )
    a.add_argument("--canaries", type=int, help="inserted exposure canaries (default: 10)")
    a.add_argument("--repeats", type=int, help="times each canary is inserted (default: 10)")
    a.add_argument("--controls", type=int, help="exposure canaries never inserted (default: 10)")
    a.add_argument(
        "--members",
        type=int,
        help="membership canaries, each in with probability 1/2 (default: 200)",
    )
    a.add_argument(
        "--samples",
        type=int,
        help="candidate secrets each canary is ranked against (default: 2000)",
    )
    a.add_argument("--digits", type=int, help="digits of a secret: |R| = 10^digits (default: 6)")
    a.add_argument("--seed", type=int, help="seed of the canaries and the splits (default: 0)")
    a.add_argument(
        "--beta", type=float, help="the one-run bound holds at confidence 1 - beta (default: 0.05)"
    )
    a.add_argument(
        "--instruction", help="the user turn of every record (default: 'Write a text message.')"
    )
    add_shared(a, "--text-field", "--label-field", "--no-progress")
    a.add_argument("--encoding", help="encoding of --data (default: utf-8)")


def run_audit(args: argparse.Namespace) -> int:
    from graft.experiments.canaries import AuditOptions, run_canary_audit

    options = options_from(
        AuditOptions,
        args,
        overrides=tuple(args.overrides),
        progress=not args.no_progress,
    )
    report = run_canary_audit(options, echo=print)
    print(report.read_text(encoding="utf-8"), end="")
    print(f"report: {report}")
    return 0
