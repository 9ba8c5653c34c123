"""The fine-tuning half of `graft quickstart`: two tasks with real labels from this Python
installation, each fine-tuned from the pre-trained checkpoint and from scratch under the same
budget.

- classify: which standard-library package a function comes from, given its code without its
  docstring (the `TaskSizes.packages` packages with the most documented functions, the same number
  of functions from each);
- instruct: given that code, write the first line of its docstring (Alpaca records, scored with
  ROUGE-L on greedy generations).

`select_tasks` fixes every split from `iter_stdlib_functions` before anything is pre-trained, so the
quickstart can keep the validation and test functions out of the pre-training corpus
(`build_stdlib_corpus(exclude=...)`), and `find_leaks` checks that it did. `write_task_files` writes
the records, each function's code cut at a line boundary to fit the context; `compare_on_tasks`
runs `finetune` and `evaluate_checkpoint` per task, arm and seed through the shared experiment
runner; `finetune_section` is the report's section (means over seeds with 95% intervals, the
difference paired by seed), with `plot_comparison`'s bar chart.
"""

from __future__ import annotations

import ast
import bisect
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.atomic_files import write_atomic
from graft.config import load_finetune_config
from graft.data.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from graft.data.records import Message
from graft.data.stdlib_corpus import StdlibFunction
from graft.data.tokenizer import Tokenizer
from graft.errors import DataError
from graft.evaluate.evaluate import EvalOptions, evaluate_checkpoint
from graft.experiments import runner
from graft.run_files import CHECKPOINTS_DIR
from graft.train.finetune import finetune

__all__ = [
    "ARMS",
    "INSTRUCTION",
    "LEARNING_RATES",
    "ArmOutcome",
    "TaskFiles",
    "TaskSizes",
    "TaskSplits",
    "compare_on_tasks",
    "drop_leaks",
    "find_leaks",
    "finetune_section",
    "headline",
    "plot_comparison",
    "select_tasks",
    "write_task_files",
]

INSTRUCTION = "Write the first line of the docstring of this function."
SPLITS = ("train", "val", "test")
TASKS = ("classify", "instruct")
# From scratch keeps the checkpoint's architecture and tokenizer and re-initialises every weight.
ARMS: dict[str, tuple[str, ...]] = {
    "pretrained": ("adapt.method=full",),
    "scratch": ("adapt.method=full", "adapt.from_scratch=true"),
}
# Peak learning rates: each arm's best on validation in 150-step runs from a 5-minute micro
# quickstart checkpoint (rates tried: 1e-4 to 3e-3 for a pre-trained classifier, 3e-4 to 3e-3 from
# scratch, 1e-4 to 1e-3 for pre-trained instructions). Fresh weights want 1e-3, as in the transfer
# experiment. So does a pre-trained classifier: its head is new, and at fine-tuning's usual 1e-4 it
# barely learns in 150 steps (validation macro F1 0.55 against 0.86 at 1e-3). Instructions train the
# pre-trained LM head: 1e-4 and 3e-4 tied (validation loss 4.362, 4.360), 1e-3 was worse (4.469).
LEARNING_RATES: dict[tuple[str, str], float] = {
    ("classify", "pretrained"): 1e-3,
    ("classify", "scratch"): 1e-3,
    ("instruct", "pretrained"): 1e-4,
    ("instruct", "scratch"): 1e-3,
}
ARM_NAMES = {"pretrained": "pre-trained", "scratch": "from scratch"}
# (key in the evaluation report, name in ours); every one is a share between 0 and 1.
METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "classify": (("accuracy", "accuracy"), ("macro_f1", "macro F1")),
    "instruct": (
        ("rougeL", "ROUGE-L"),
        ("exact_match", "exact match"),
        ("ended_with_eos", "ended with eos"),
    ),
}
GENERATE_LIMIT = 100  # test prompts generated for: greedy decoding is the slow part of scoring
MAX_NEW_TOKENS = 32  # a docstring's first line is ~15 tokens; room to show whether the model stops
EXAMPLES = 3  # generations shown in the report


@dataclass(frozen=True)
class TaskSizes:
    """How many functions each split gets."""

    packages: int = 8  # classes of the classification task
    per_package: int = 200  # at most; the same for every package (the smallest's count if less)
    classify_test: int = 40  # per package
    classify_val: int = 20  # per package
    instruct_test: int = 100
    instruct_val: int = 100
    instruct_train: int | None = None  # None: every other function


@dataclass(frozen=True)
class TaskSplits:
    """The functions of each task's train, val and test splits, and the packages (the labels)."""

    packages: tuple[str, ...]
    classify: dict[str, tuple[StdlibFunction, ...]]
    instruct: dict[str, tuple[StdlibFunction, ...]]

    @property
    def held_out(self) -> tuple[StdlibFunction, ...]:
        """Validation and test functions of both tasks, once each: what pre-training must not
        see."""
        tasks = (self.classify, self.instruct)
        return tuple(dict.fromkeys(f for t in tasks for s in ("val", "test") for f in t[s]))


@dataclass(frozen=True)
class TaskFiles:
    """The JSONL files `write_task_files` wrote, and how much code it had to cut to fit."""

    classify: dict[str, Path]
    instruct: dict[str, Path]
    # per task: the most tokens of a text (classify) or a prompt (instruct)
    token_limits: dict[str, int]
    cut: dict[str, int]  # per task: records whose code was cut


@dataclass(frozen=True)
class ArmOutcome:
    """One fine-tuning run and its test scores."""

    task: str
    arm: str
    seed: int
    run_dir: str
    lr: float
    steps: int
    stop_reason: str
    max_steps: int
    batch_size: int
    train_seconds: float  # the whole `finetune` call: reading records, training, checkpoints
    test_seconds: float
    scores: dict[str, float]
    error: str | None = None  # never set: a run that fails ends the quickstart


@dataclass(frozen=True)
class Leaks:
    """Held-out functions whose text the corpus still holds (see `find_leaks`)."""

    definitions: tuple[StdlibFunction, ...]
    first_lines: tuple[StdlibFunction, ...]


# -- the tasks -------------------------------------------------------------------------------


def select_tasks(functions: Sequence[StdlibFunction], sizes: TaskSizes = TaskSizes()) -> TaskSplits:
    """The splits of both tasks, taken in the (seeded) order of `functions`.

    Instruction test and validation functions have a docstring first line no other function has,
    so neither fine-tuning nor another function's docstring in the corpus hands over the answer.
    """
    counts = Counter(f.package for f in functions)
    packages = tuple(sorted(counts, key=lambda p: (-counts[p], p))[: sizes.packages])
    held_per_package = sizes.classify_test + sizes.classify_val
    if len(packages) < 2 or counts[packages[-1]] <= held_per_package:
        raise DataError(
            "this Python installation has too few documented standard-library functions for the "
            f"quickstart's tasks ({dict(counts.most_common(sizes.packages))}); run it with "
            "--skip-finetune"
        )
    per_package = min(sizes.per_package, counts[packages[-1]])
    classify: dict[str, list[StdlibFunction]] = {split: [] for split in SPLITS}
    taken: Counter[str] = Counter()
    for f in functions:
        if f.package in packages and taken[f.package] < per_package:
            index = taken[f.package]
            split = "test" if index < sizes.classify_test else "val"
            classify[split if index < held_per_package else "train"].append(f)
            taken[f.package] += 1
    first_lines = Counter(f.docstring_first_line for f in functions)
    unique = [f for f in functions if first_lines[f.docstring_first_line] == 1]
    test = unique[: sizes.instruct_test]
    val = unique[sizes.instruct_test : sizes.instruct_test + sizes.instruct_val]
    if len(test) < sizes.instruct_test or not val:
        raise DataError(
            f"only {len(unique)} standard-library functions have a docstring first line of their "
            "own; run the quickstart with --skip-finetune"
        )
    held = set(test) | set(val)
    train = [f for f in functions if f not in held][: sizes.instruct_train]
    instruct = {"train": tuple(train), "val": tuple(val), "test": tuple(test)}
    return TaskSplits(packages, {k: tuple(v) for k, v in classify.items()}, instruct)


def write_task_files(
    splits: TaskSplits,
    tokenizer: Tokenizer,
    out_dir: Path,
    seq_len: int,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> TaskFiles:
    """`out_dir/{classify,instruct}/{train,val,test}.jsonl`, each function's code cut to fit
    `seq_len`.

    Classification keeps up to `seq_len` tokens of code. An instruction's prompt (template,
    instruction and code) keeps room for `max_new_tokens` in the context, since positions past the
    pre-training context were never trained; longer docstring lines are cut by fine-tuning itself.
    """
    # The prompt around the code, as `read_conversations` and the chat template make it of a
    # record: what fine-tuning and evaluation will render.
    template = tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
    placeholder = "\x00code\x00"
    message = Message("user", f"{INSTRUCTION}\n\n{placeholder}")
    special = tokenizer.special_tokens_map
    prompt = render_chat(template, [message], add_generation_prompt=True, special_tokens=special)
    before, after = prompt.split(placeholder)
    limits = {"classify": seq_len, "instruct": seq_len - max_new_tokens}
    tokens: dict[str, Callable[[str], int]] = {
        "classify": lambda code: len(tokenizer.encode(code)),
        "instruct": lambda code: len(tokenizer.encode(before + code + after)),
    }
    if tokens["instruct"]("def f():") > limits["instruct"]:
        raise DataError(
            f"a context of {seq_len} tokens leaves no room for code in an instruction prompt "
            f"with {max_new_tokens} new tokens; use a longer context"
        )
    paths: dict[str, dict[str, Path]] = {"classify": {}, "instruct": {}}
    cut = {"classify": 0, "instruct": 0}
    for task, by_split in (("classify", splits.classify), ("instruct", splits.instruct)):
        for split in SPLITS:
            rows = []
            for f in by_split[split]:
                code, was_cut = _fit(f.code_without_docstring, tokens[task], limits[task])
                cut[task] += was_cut
                # An extra field, kept for people; readers ignore it.
                where = f"{f.module}:{f.name}"
                rows.append(
                    {"text": code, "label": f.package, "function": where}
                    if task == "classify"
                    else {
                        "instruction": INSTRUCTION,
                        "input": code,
                        "output": f.docstring_first_line,
                        "function": where,
                    }
                )
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            paths[task][split] = write_atomic(out_dir / task / f"{split}.jsonl", text)
    return TaskFiles(paths["classify"], paths["instruct"], limits, cut)


def _fit(code: str, tokens: Callable[[str], int], limit: int) -> tuple[str, bool]:
    """The longest run of whole first lines of `code` whose `tokens` are within `limit` (the first
    line cut by characters when even it is too long), and whether anything was cut."""
    if tokens(code) <= limit:
        return code, False
    lines = code.split("\n")
    keep = _longest(len(lines), lambda n: tokens("\n".join(lines[:n])) <= limit)
    if keep:
        return "\n".join(lines[:keep]).rstrip(), True
    keep = _longest(len(lines[0]), lambda n: tokens(lines[0][:n]) <= limit)
    return lines[0][: max(keep, 1)], True


def _longest(limit: int, ok: Callable[[int], bool]) -> int:
    """The largest n in [0, limit] with ok(n), for an ok that holds up to some n and not beyond."""
    return bisect.bisect(range(1, limit + 1), False, key=lambda n: not ok(n))


# -- leaks -----------------------------------------------------------------------------------


def find_leaks(corpus: Path, functions: Iterable[StdlibFunction]) -> Leaks:
    """Which of `functions` the JSONL corpus still holds, and whose docstring first line it holds.

    A definition is found where, ignoring indentation and blank lines, its lines up to the end of
    its signature (decorators included) are followed by a docstring, any or none, and then by
    exactly the rest of its code: the function as its source file has it, or a copy of its code
    (what `build_stdlib_corpus(exclude=...)` cuts). The first line alone may also occur elsewhere
    (a module docstring, a comment, a similar function): counted apart, since that is the
    instruction task's answer without being the function.
    """
    functions = list(functions)
    texts = [record["text"] for record in _read_jsonl(corpus)]
    lines: list[str] = []
    for text in texts:
        lines += [*_stripped(text.split("\n")), ""]  # "": a boundary no definition crosses
    where: dict[str, list[int]] = defaultdict(list)
    for number, line in enumerate(lines):
        where[line].append(number)
    definitions = []
    for f in functions:
        header, body = _split_definition(f)
        for end in where.get(header[-1], ()):
            if lines[end + 1 - len(header) : end + 1] == header and (
                lines[end + 1 : end + 1 + len(body)] == body
                or _docstring_then(lines, end + 1, body)
            ):
                definitions.append(f)
                break
    whole = "\n".join(texts)
    return Leaks(tuple(definitions), tuple(f for f in functions if f.docstring_first_line in whole))


def _split_definition(f: StdlibFunction) -> tuple[list[str], list[str]]:
    """The non-blank lines, stripped, up to the end of the signature (where the docstring was) and
    after it."""
    definition = ast.parse(f.code_without_docstring).body[0]
    assert isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef))
    lines = f.code_without_docstring.split("\n")
    end = definition.body[0].lineno - 2  # the line before the first statement...
    # ...unless comments or blank lines stand between the docstring and that statement.
    while end > 0 and (not lines[end].strip() or lines[end].strip().startswith("#")):
        end -= 1
    return _stripped(lines[: end + 1]), _stripped(lines[end + 1 :])


def _stripped(lines: Iterable[str]) -> list[str]:
    return [s for s in (line.strip() for line in lines) if s]


def _docstring_then(lines: list[str], start: int, body: list[str]) -> bool:
    """Whether a string literal opens at lines[start] and `body` follows right after it closes."""
    if start >= len(lines):
        return False
    opening = lines[start]
    text = opening.lstrip("rRuUbB")
    quotes = next((q for q in ('"""', "'''", '"', "'") if text.startswith(q)), None)
    if quotes is None or len(opening) - len(text) > 2:
        return False
    close = start
    if quotes not in text[len(quotes) :]:  # the docstring goes on to a later line
        close += 1
        while close < len(lines) and quotes not in lines[close]:
            if not lines[close]:
                return False  # the document ended inside the string
            close += 1
    return lines[close + 1 : close + 1 + len(body)] == body


def drop_leaks(splits: TaskSplits, leaks: Leaks) -> TaskSplits:
    """`splits` less what the corpus gave away: from either task's validation and test splits the
    functions it still holds (near-copies cutting missed), and from the instruction task's also
    those whose docstring first line, the answer, occurs in it."""
    found = set(leaks.definitions)
    gone = {"classify": found, "instruct": found | set(leaks.first_lines)}
    kept = {
        task: {
            split: tuple(f for f in functions if split == "train" or f not in gone[task])
            for split, functions in getattr(splits, task).items()
        }
        for task in TASKS
    }
    return TaskSplits(splits.packages, kept["classify"], kept["instruct"])


# -- the comparison --------------------------------------------------------------------------


def compare_on_tasks(
    init: Path,
    files: TaskFiles,
    out_dir: Path,
    *,
    steps: int,
    seq_len: int,
    seeds: dict[str, int],
    seed: int,
    progress: bool,
    echo: Callable[[str], None] = lambda _: None,
) -> tuple[ArmOutcome, ...]:
    """Fine-tune `init` on each task from its weights and from scratch for `steps` steps, with
    `seeds[task]` seeds (seed, seed + 1, ...) per arm, keep each run's best checkpoint by its
    validation metric, and score it on the test split. `out_dir/results.json` holds every run."""
    plan = [
        runner.Planned(
            (task, arm, s),
            out_dir / f"{task}-{arm}" / f"s{s}",
            f"fine-tuning {task}, {ARM_NAMES[arm]}, seed {s}, {steps} steps",
        )
        for task in TASKS
        for s in range(seed, seed + seeds[task])
        for arm in ARMS
    ]

    def run(planned: runner.Planned[tuple[str, str, int]]) -> ArmOutcome:
        task, arm, run_seed = planned.key
        data = files.classify if task == "classify" else files.instruct
        settings = [
            runner.setting("train.init", init),
            runner.setting("train.out_dir", planned.run_dir),
            runner.setting("data.train_file", data["train"]),
            runner.setting("data.val_file", data["val"]),
            runner.setting("train.max_steps", steps),
            runner.setting("train.eval_every", max(1, steps // 3)),
            runner.setting("train.seq_len", seq_len),
            runner.setting("train.seed", run_seed),
            runner.setting("train.progress", progress),
            runner.setting("optim.lr", LEARNING_RATES[task, arm]),
            *ARMS[arm],
        ]
        config = load_finetune_config(task, None, settings)
        started = time.perf_counter()
        result = finetune(config, echo=echo)
        runner.raise_if_interrupted(result.stop_reason)
        train_seconds = time.perf_counter() - started
        scores = _score(task, planned.run_dir, data["test"], seq_len, echo)
        return ArmOutcome(
            *planned.key,
            str(planned.run_dir),
            config.optim.lr,
            result.step,
            result.stop_reason,
            steps,
            config.train.batch_size,
            train_seconds,
            time.perf_counter() - started - train_seconds,
            scores,
        )

    def summary(o: ArmOutcome) -> str:
        key, name = METRICS[o.task][0]
        return f"test {name} {o.scores[key]:.3f}"

    outcomes = runner.run_plan(
        plan,
        run,
        ArmOutcome,
        summary=summary,
        results=lambda runs: runner.write_results(out_dir, None, runs),
        echo=echo,
    )
    return tuple(outcomes.values())


def _score(
    task: str, run_dir: Path, test: Path, seq_len: int, echo: Callable[[str], None]
) -> dict[str, float]:
    checkpoint, out = run_dir / CHECKPOINTS_DIR / "best", run_dir / "eval"
    if task == "classify":
        options = EvalOptions(checkpoint, "classify", (test,), out, seq_len=seq_len, device="auto")
    else:  # greedy generations for the first test prompts, every one kept
        limits: dict[str, Any] = dict(
            limit=GENERATE_LIMIT, max_new_tokens=MAX_NEW_TOKENS, samples=GENERATE_LIMIT
        )
        options = EvalOptions(checkpoint, "generate", (test,), out, device="auto", **limits)
    report = json.loads(evaluate_checkpoint(options, echo).read_text(encoding="utf-8"))
    return {key: float(report[key]) for key, _ in METRICS[task]} | {"count": float(report["count"])}


# -- the report ------------------------------------------------------------------------------


def _by_seed(outcomes: Sequence[ArmOutcome], task: str, arm: str, key: str) -> dict[int, float]:
    return {o.seed: o.scores[key] for o in outcomes if (o.task, o.arm) == (task, arm)}


def headline(outcomes: Sequence[ArmOutcome]) -> list[str]:
    """Each task's first metric, pre-trained against from scratch: mean and 95% interval over
    seeds, and the verdict paired by seed where there are two seeds or more."""
    lines = []
    for task in TASKS:
        key, name = METRICS[task][0]
        a, b = (_by_seed(outcomes, task, arm, key) for arm in ARMS)
        ours, theirs = runner.mean_text(list(a.values())), runner.mean_text(list(b.values()))
        line = f"{task} test {name}: {ours} pre-trained, {theirs} from scratch ({len(a)} seed"
        verdict = runner.verdict(a, b, "pre-trained beats scratch")
        lines.append(line + (f"s each); {verdict}" if len(a) > 1 else " each)"))
    return lines


def plot_comparison(outcomes: Sequence[ArmOutcome], path: Path) -> Path:
    """Grouped bars: each task metric's test score, pre-trained beside from scratch, at the mean
    over seeds with its 95% interval."""
    groups = [
        (task, key, f"{_TASK_SHORT[task]}\n{name}") for task in TASKS for key, name in METRICS[task]
    ]
    fig, (ax,) = runner.figure(2.0 + 1.3 * len(groups), 4.2)
    arms = {
        ARM_NAMES[arm]: [
            list(_by_seed(outcomes, task, arm, key).values()) for task, key, _ in groups
        ]
        for arm in ARMS
    }
    runner.bars(ax, [label for _, _, label in groups], arms)
    ax.set(ylim=(0, 1.08), ylabel="test score (0-1)")
    steps = max((o.max_steps for o in outcomes), default=0)
    ax.set_title(f"held-out functions, {steps} steps per run (mean, 95% CI)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    return runner.save_png(fig, path)


_TASK_SHORT = {"classify": "package", "instruct": "docstring"}
_TASK_TITLES = {"classify": "package of a function", "instruct": "first docstring line"}


def finetune_section(
    report_dir: Path,
    splits: TaskSplits,
    files: TaskFiles,
    outcomes: Sequence[ArmOutcome],
    plot: Path,
    leaks: Leaks,
    held_out: int,
) -> list[str]:
    """The report's "Fine-tuning" section, as markdown lines; paths are written relative to
    `report_dir`.

    `splits` are those the runs used (after `drop_leaks`); `held_out` counts the functions cut from
    the corpus, `leaks` what `find_leaks` found of them in it.
    """
    first = {(o.task, o.arm): o for o in reversed(outcomes)}  # each arm's first seed
    per_package = Counter(f.package for f in splits.classify["test"]).values()
    low, high = min(per_package), max(per_package)
    balance = f"{low}{f'-{high}' if high > low else ''} from each package"
    k = len(splits.packages)
    n = {task: {s: len(getattr(splits, task)[s]) for s in SPLITS} for task in TASKS}
    seeds = {task: sorted({o.seed for o in outcomes if o.task == task}) for task in TASKS}
    pre = first["classify", "pretrained"]
    generated = int(first["instruct", "pretrained"].scores["count"])
    seq_len = files.token_limits["classify"]
    lines = [
        "## Fine-tuning: pre-trained against from scratch",
        "",
        "Two tasks with labels from this Python installation's standard library, chosen before "
        f"pre-training so that their {held_out:,} validation and test functions could be cut out "
        "of the pre-training corpus: code and docstring, and any copy of their code elsewhere. "
        f"Checked in the corpus that was trained on (`find_leaks`): {len(leaks.definitions)} of "
        "them were still found (near-copies the cut misses: the same lines inside a longer "
        f"function, or in a nested one), and the docstring first line of {len(leaks.first_lines)} "
        "occurs in it (a module docstring, a comment, a similar function); they were dropped from "
        "the evaluation splits they would give away (either task's for the first kind, the "
        "instruction task's for the second).",
        "",
        "- **Package of a function** (`classify`): a function's code without its docstring -> "
        f"which of the {k} packages with the most documented functions it comes from "
        f"({', '.join(splits.packages)}); {n['classify']['train']:,} / {n['classify']['val']:,} / "
        f"{n['classify']['test']:,} train / validation / test functions, drawn equally from each "
        f"package (test: {balance}; chance {1 / k:.3f}); code cut at a line boundary to {seq_len} "
        f"tokens ({files.cut['classify']:,} cut). Files: `tasks/classify/`.",
        f'- **First docstring line** (`instruct`): Alpaca records: instruction "{INSTRUCTION}", '
        "input the code without its docstring (cut at a line boundary so that the prompt and "
        f"{MAX_NEW_TOKENS} new tokens fit in {seq_len}; {files.cut['instruct']:,} cut), output its "
        f"docstring's first line; {n['instruct']['train']:,} / {n['instruct']['val']:,} / "
        f"{n['instruct']['test']:,} train / validation / test functions, the validation and test "
        "ones with a first line no other function has. Scored on greedy generations for the first "
        f"{generated} test prompts. Files: `tasks/instruct/`.",
        f"- Every run trains for the same {pre.max_steps} steps of batch {pre.batch_size}, "
        f"context {seq_len} (the pre-training context), AdamW with warm-up and linear decay, once "
        "from the pre-trained checkpoint (every weight trains) and once from scratch (the same "
        "architecture and tokenizer, re-initialised) per seed: "
        + "; ".join(f"{task} seeds {', '.join(map(str, seeds[task]))}" for task in TASKS)
        + " (a seed sets the new weights and the batch order). Peak learning rates, each arm's "
        "best on validation in a sweep (`graft.experiments.quickstart_tasks.LEARNING_RATES`): "
        f"classification {pre.lr:g} pre-trained, {first['classify', 'scratch'].lr:g} from scratch; "
        f"instructions {first['instruct', 'pretrained'].lr:g} pre-trained, "
        f"{first['instruct', 'scratch'].lr:g} from scratch. The best checkpoint by validation "
        "(macro F1; loss) is scored on the test split. Runs: `finetune/<task>-<arm>/s<seed>/`, "
        "scores in their `eval/`, every number in `finetune/results.json`."
        + "".join(
            f" {o.task} {ARM_NAMES[o.arm]} seed {o.seed} stopped at step {o.steps} "
            f"({o.stop_reason})."
            for o in outcomes
            if o.stop_reason != "max_steps"
        ),
        "",
        "Scores are the mean over seeds with its 95% interval (Student's t); the difference is "
        "pre-trained minus from scratch, paired by seed.",
        "",
    ]
    rows = []
    for task in TASKS:
        tested = n["classify"]["test"] if task == "classify" else generated
        title = f"{_TASK_TITLES[task]} ({tested} test)"
        runs = [[o for o in outcomes if (o.task, o.arm) == (task, arm)] for arm in ARMS]
        seconds = [sum(o.train_seconds + o.test_seconds for o in r) / len(r) for r in runs]
        per_run = ", ".join(f"{s:.0f}" for s in seconds)
        for i, (key, name) in enumerate(METRICS[task]):
            a, b = (_by_seed(outcomes, task, arm, key) for arm in ARMS)
            differences = [a[seed] - b[seed] for seed in a if seed in b]
            means = [runner.mean_text(list(scores.values())) for scores in (a, b)]
            difference = runner.mean_text(differences, clip=False, sign="+")
            rows.append(
                [title if i == 0 else "", name, *means, difference, per_run if i == 0 else ""]
            )
    head = ["task", "metric", "pre-trained", "from scratch", "difference"]
    lines += runner.table([*head, "seconds per run (pre-trained, scratch)"], rows)
    lines += [
        "",
        *(f"- {line}." for line in headline(outcomes)),
        "",
        f"![pre-trained against from scratch]({plot.relative_to(report_dir).as_posix()})",
        "",
        f"### Example generations (greedy, up to {MAX_NEW_TOKENS} new tokens)",
        "",
    ]
    run_dirs = [Path(first["instruct", arm].run_dir) for arm in ARMS]
    return lines + _examples(run_dirs, splits.instruct["test"], files.instruct["test"])


def _examples(run_dirs: list[Path], functions: Sequence[StdlibFunction], test: Path) -> list[str]:
    """The first test functions' generations in `run_dirs` (ARMS order) beside the reference."""
    rows = [_read_jsonl(run / "eval" / "generate_samples.jsonl")[:EXAMPLES] for run in run_dirs]
    records = _read_jsonl(test)
    lines: list[str] = []
    for f, record, a, b in zip(functions, records, *rows):
        code = str(record["input"])
        fence = "````" if "```" in code else "```"
        lines += [f"`{f.module}.{f.name}`:", "", fence + "python", code, fence, ""]
        lines += [
            f"- reference: {_inline(str(a['reference']))}",
            f"- pre-trained: {_inline(str(a['prediction']))}",
            f"- from scratch: {_inline(str(b['prediction']))}",
            "",
        ]
    return lines


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def _inline(text: str) -> str:
    """Text as one markdown code span that survives backticks and line breaks in it."""
    text = " ".join(text.split()) or "(nothing)"
    return f"`` {text} ``" if "`" in text else f"`{text}`"
