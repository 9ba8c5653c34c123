"""`graft quickstart`: the embedded default, end to end, with nothing downloaded.

It builds a corpus from the running Python installation (standard-library sources, their
docstrings and the interpreter's help topics), trains a byte-level BPE tokenizer on it, prepares
token shards, pre-trains a small model on a budget of tokens, samples from the model before and
after, then fine-tunes it on two tasks with labels from the same installation (a function's
package; its docstring's first line), each against the same model trained from scratch over
several seeds (`graft.experiments.quickstart_tasks`), and writes `report.md` beside the run: what
ran, how the loss fell, what the model now writes, and what pre-training was worth to each task.
Every step is the same library call a user would make by hand.
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from graft.atomic_files import write_atomic
from graft.checkpoint import load_model
from graft.config import RunConfig, validate_run_config
from graft.data.documents import iter_documents
from graft.data.shards import prepare_shards
from graft.data.stdlib_corpus import CorpusStats, build_stdlib_corpus, iter_stdlib_functions
from graft.data.tokenizer import Tokenizer, train_tokenizer
from graft.errors import ConfigError
from graft.experiments import quickstart_tasks as tasks
from graft.infer.generate import SamplingParams, generate
from graft.model.transformer import LanguageModel
from graft.run_files import CHECKPOINTS_DIR
from graft.train.loop import RunResult
from graft.train.metrics_log import LOSS_CURVE_FILE
from graft.train.pretrain import pretrain

MARKER = ".graft-quickstart"  # only a directory carrying this is ever replaced
PROMPTS = ("def", "import os\n", "The", "class")  # no trailing space: BPE glues it to the next word


@dataclass(frozen=True)
class QuickstartOptions:
    # Pre-training is budgeted in tokens, not minutes: a minutes budget made the headline
    # comparison depend on how busy the machine was (pre-trained won classification 0.796 to 0.793
    # on a busy 2-core machine, 0.853 to 0.793 on an idle one). The budget below, with the
    # fine-tuning runs, keeps the whole quickstart under 10 minutes on 2 idle cores.
    tokens: int = 1_500_000
    out_dir: Path = Path("runs/quickstart")
    preset: str = "micro"
    corpus_bytes: int = 8_000_000
    vocab_size: int = 4096
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 2e-3
    seed: int = 1337
    progress: bool = True
    finetune: bool = True  # the fine-tuning half (and the held-out functions it needs)
    # Steps of every fine-tuning run, and runs per arm. One classification run per arm cannot tell
    # pre-training's gain from one seed's noise, so classification runs 3 seeds per arm; the
    # instruction task keeps 1 (its greedy test generations are the slowest scoring). That is 8
    # runs where there were 4 of 150 steps. Timed on 2 idle cores with 2.4M tokens and 100 steps:
    # 14.2 min (pre-training at ~5.4k tokens/s, 7.8 min; ~45 s per fine-tuning run), too long;
    # hence 1.5M tokens (~4.6 min) and 70 steps per run (~4.4 min for the 8), under 10 in all.
    finetune_steps: int = 70
    classify_seeds: int = 3


def run_quickstart(
    options: QuickstartOptions, echo: Callable[[str], None] = lambda _: None
) -> Path:
    """Run the whole default pipeline into options.out_dir; returns the path of report.md."""
    if options.tokens < 1:
        raise ConfigError(f"--tokens must be a positive number of tokens, got {options.tokens}")
    if options.finetune_steps < 1:
        raise ConfigError(
            f"--finetune-steps must be a positive number of steps, got {options.finetune_steps}"
        )
    if options.classify_seeds < 1:
        raise ConfigError(f"classify_seeds must be at least 1, got {options.classify_seeds}")
    _run_config(options, options.out_dir, options.vocab_size)  # a bad preset fails before any work
    started = time.perf_counter()
    # The tasks are chosen first so that their validation and test functions never reach
    # pre-training, and so that an installation too small for them fails before anything is written.
    splits: tasks.TaskSplits | None = None
    if options.finetune:
        splits = tasks.select_tasks(list(iter_stdlib_functions(seed=options.seed)))
    out = _fresh_directory(options.out_dir)

    corpus = build_stdlib_corpus(
        out / "corpus" / "docs.jsonl",
        max_bytes=options.corpus_bytes,
        seed=options.seed,
        exclude=splits.held_out if splits else (),
    )
    echo(
        f"corpus: {corpus.documents:,} documents, {corpus.bytes / 1e6:.1f} MB from Python "
        f"{corpus.python_version} "
        f"({', '.join(f'{k} {v:,}' for k, v in corpus.kind_documents.items())})"
        + (f"; {len(splits.held_out):,} functions held out for fine-tuning" if splits else "")
    )

    texts = (doc.read() for doc in iter_documents([corpus.path]))
    tokenizer = train_tokenizer(texts, "bpe", options.vocab_size)
    tokenizer.save(out / "tokenizer")
    echo(f"tokenizer: byte-level BPE, {tokenizer.vocab_size:,} tokens")

    index = prepare_shards(
        [corpus.path], tokenizer, out / "data", seed=options.seed, progress=options.progress
    )
    echo(
        f"data: {index.splits['train'].tokens:,} train tokens, "
        f"{index.splits['val'].tokens:,} validation tokens"
    )

    config = _run_config(options, out, tokenizer.vocab_size)
    torch.manual_seed(config.train.seed)
    untrained = LanguageModel(config.model).eval()
    echo(
        f"model: {options.preset}, {untrained.num_parameters():,} parameters; "
        f"training for {options.tokens:,} tokens"
    )
    before = _samples(untrained, tokenizer, options.seed)
    for prompt, text in before[:2]:
        echo(f"--- sample before training, prompt {prompt!r}:\n{text}")

    result = pretrain(config)
    trained, _ = load_model(out / "run" / CHECKPOINTS_DIR / "best")
    after = _samples(trained, tokenizer, options.seed)
    first, last = result.evals[0]["val/loss"], result.evals[-1]["val/loss"]
    echo(
        f"validation loss {first:.3f} -> {last:.3f} ({100 * (first - last) / first:.0f}% lower) "
        f"in {result.step} steps"
    )
    for prompt, text in after[:2]:
        echo(f"--- sample after training, prompt {prompt!r}:\n{text}")

    def report(finetuned: list[str] | str) -> Path:
        if isinstance(finetuned, str):  # the fine-tuning half did not run (or has not finished)
            finetuned = ["## Fine-tuning", "", finetuned, ""]
        args = (out, options, config, corpus, index.splits["train"].tokens, result, before, after)
        return _write_report(*args, finetuned, time.perf_counter() - started)

    if splits is None:
        return report("Skipped (`--skip-finetune`); nothing was held out of the corpus.")
    if result.stop_reason == "interrupted":
        return report("Skipped: pre-training was interrupted.")
    # Written now too, so that stopping during fine-tuning still leaves the first half's report.
    report("Started, not finished: what ran is in `tasks/` and `finetune/`.")
    return report(_finetune(out, options, config, splits, tokenizer, corpus.path, echo))


def _finetune(
    out: Path,
    options: QuickstartOptions,
    config: RunConfig,
    splits: tasks.TaskSplits,
    tokenizer: Tokenizer,
    corpus: Path,
    echo: Callable[[str], None],
) -> list[str]:
    """Both tasks, each fine-tuned from the pre-trained checkpoint and from scratch; the report's
    section."""
    held_out = len(splits.held_out)
    leaks = tasks.find_leaks(corpus, splits.held_out)
    splits = tasks.drop_leaks(splits, leaks)
    files = tasks.write_task_files(splits, tokenizer, out / "tasks", config.seq_len)
    echo(
        f"tasks: package of a function ({len(splits.packages)} packages, "
        f"{len(splits.classify['train']):,} training functions) and first docstring line "
        f"({len(splits.instruct['train']):,}); of the {held_out:,} held-out functions the corpus "
        f"still holds {len(leaks.definitions)}, and {len(leaks.first_lines)} docstring first "
        "lines: dropped from evaluation"
    )
    outcomes = tasks.compare_on_tasks(
        out / "run" / CHECKPOINTS_DIR / "best",
        files,
        out / "finetune",
        steps=options.finetune_steps,
        seq_len=config.seq_len,
        seeds={"classify": options.classify_seeds, "instruct": 1},
        seed=options.seed,
        progress=options.progress,
        echo=echo,
    )
    plot = tasks.plot_comparison(outcomes, out / "finetune" / "comparison.png")
    for line in tasks.headline(outcomes):
        echo(line)
    return tasks.finetune_section(out, splits, files, outcomes, plot, leaks, held_out)


def _run_config(options: QuickstartOptions, out: Path, vocab_size: int) -> RunConfig:
    same = ("seed", "batch_size", "seq_len", "progress")  # train.* named as options
    return validate_run_config(
        {
            "model": {"preset": options.preset, "vocab_size": vocab_size},
            "data": {"path": str(out / "data")},
            "optim": {"lr": options.lr, "warmup_steps": 50},
            "train": {
                "out_dir": str(out / "run"),
                "max_tokens": options.tokens,
                "eval_every": 100,
                "eval_batches": 8,
                **{key: getattr(options, key) for key in same},
            },
        },
        where="quickstart",
    )


def _fresh_directory(out: Path) -> Path:
    if out.exists():
        if not (out / MARKER).exists():
            raise ConfigError(
                f"{out} exists and was not made by graft quickstart; choose another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).touch()
    return out


def _samples(model: LanguageModel, tokenizer: Tokenizer, seed: int) -> list[tuple[str, str]]:
    stop = frozenset() if tokenizer.eot_id is None else frozenset({tokenizer.eot_id})
    params = SamplingParams(max_new_tokens=60, temperature=0.8, top_k=50, seed=seed, stop_ids=stop)

    def sample(prompt: str) -> str:
        ids = generate(model, tokenizer.encode(prompt), params)
        return prompt + tokenizer.decode([i for i in ids if i != tokenizer.eot_id])

    return [(prompt, sample(prompt)) for prompt in PROMPTS]


def _write_report(
    out: Path,
    options: QuickstartOptions,
    config: RunConfig,
    corpus: CorpusStats,
    train_tokens: int,
    result: RunResult,
    before: list[tuple[str, str]],
    after: list[tuple[str, str]],
    finetuned: list[str],
    seconds: float,
) -> Path:
    first, last = result.evals[0], result.evals[-1]
    m = config.model
    lines = [
        "# graft quickstart report",
        "",
        f"Python {platform.python_version()} on {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; total {seconds / 60:.1f} min.",
        "",
        "## What ran",
        "",
        f"- Corpus: {corpus.documents:,} documents ({corpus.bytes / 1e6:.1f} MB) from this "
        "Python installation: standard-library sources, their docstrings, and the interpreter's "
        "help topics (`corpus/docs.jsonl`)"
        + (
            f", less {corpus.excluded_definitions:,} definitions: the functions held out for "
            "fine-tuning and copies of their code (below)."
            if corpus.excluded_definitions
            else "."
        ),
        f"- Tokenizer: byte-level BPE, {m.vocab_size:,} tokens (`tokenizer/tokenizer.json`); "
        f"{train_tokens:,} training tokens (`data/`).",
        f"- Model: preset `{options.preset}` ({m.n_layers} layers, {m.n_heads} heads, "
        f"width {m.d_model}, {m.norm}, {m.positions} positions, {m.mlp}), "
        f"context {config.seq_len}.",
        f"- Training: {result.step} steps, {result.tokens_seen:,} tokens, "
        f"batch {config.train.batch_size}, AdamW lr {config.optim.lr:g} with warm-up and cosine "
        f"decay, {result.elapsed_s / 60:.1f} min (stopped: {result.stop_reason}). "
        "Config: `run/config.yaml`; metrics: `run/metrics.jsonl`.",
        "",
        "## Validation",
        "",
        "| | step | loss (nats/token) | perplexity | bits per byte |",
        "|---|---|---|---|---|",
        f"| before | {first['step']} | {first['val/loss']:.3f} | {first['val/ppl']:.1f} | "
        f"{first.get('val/bpb', float('nan')):.3f} |",
        f"| after | {last['step']} | {last['val/loss']:.3f} | {last['val/ppl']:.1f} | "
        f"{last.get('val/bpb', float('nan')):.3f} |",
        "",
        "Validation loss fell by "
        f"{100 * (first['val/loss'] - last['val/loss']) / first['val/loss']:.0f}%.",
        "",
        f"![loss curve](run/{LOSS_CURVE_FILE})",
        "",
        "## Samples (temperature 0.8, top-k 50, same seed)",
        "",
    ]
    for (prompt, b), (_, a) in zip(before, after):
        lines += [f"Prompt `{prompt!r}`", ""]
        for when, text in (("Before", b), ("After", a)):
            lines += [f"{when} training:", "", "```", text, "```", ""]
    lines += finetuned
    lines += [
        "## Next",
        "",
        f"- `graft generate {out / 'run'} --prompt 'def '`",
        f"- `graft pretrain --config {out / 'run' / 'config.yaml'} --resume` to train on, "
        "after raising train.max_tokens.",
        "",
    ]
    return write_atomic(out / "report.md", "\n".join(lines))
