"""Tests for the quickstart's fine-tuning tasks: splits, records that fit the context, the leak
check against the pre-training corpus, and the report section (no training here: the reduced
quickstart in tests/e2e/test_cli.py runs the whole thing)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from graft.data.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from graft.data.records import read_conversations, read_labelled
from graft.data.stdlib_corpus import StdlibFunction, build_stdlib_corpus, iter_stdlib_functions
from graft.data.tokenizer import bytes_tokenizer
from graft.errors import DataError
from graft.experiments.quickstart_tasks import (
    INSTRUCTION,
    ArmOutcome,
    Leaks,
    TaskSizes,
    TaskSplits,
    _fit,
    drop_leaks,
    find_leaks,
    finetune_section,
    plot_comparison,
    select_tasks,
    write_task_files,
)

SMALL = TaskSizes(
    packages=4,
    per_package=30,
    classify_test=5,
    classify_val=5,
    instruct_test=10,
    instruct_val=10,
    instruct_train=50,
)


@pytest.fixture(scope="module")
def functions() -> list[StdlibFunction]:
    return list(iter_stdlib_functions(seed=7))


@pytest.fixture(scope="module")
def splits(functions: list[StdlibFunction]) -> TaskSplits:
    return select_tasks(functions, SMALL)


def test_classification_splits_are_balanced_disjoint_and_from_the_largest_packages(
    functions: list[StdlibFunction], splits: TaskSplits
) -> None:
    counts = Counter(f.package for f in functions)
    assert set(splits.packages) == {p for p, _ in counts.most_common(4)}
    for split, per_package in (("train", 20), ("val", 5), ("test", 5)):
        assert Counter(f.package for f in splits.classify[split]) == {
            p: per_package for p in splits.packages
        }
    every = [f for split in ("train", "val", "test") for f in splits.classify[split]]
    assert len(set(every)) == len(every)


def test_instruction_answers_are_their_own(
    functions: list[StdlibFunction], splits: TaskSplits
) -> None:
    first_lines = Counter(f.docstring_first_line for f in functions)
    held = splits.instruct["val"] + splits.instruct["test"]
    assert (
        len(splits.instruct["test"]),
        len(splits.instruct["val"]),
        len(splits.instruct["train"]),
    ) == (10, 10, 50)
    assert all(first_lines[f.docstring_first_line] == 1 for f in held)
    assert not set(held) & set(splits.instruct["train"])
    assert set(splits.held_out) == set(held) | set(splits.classify["val"] + splits.classify["test"])
    assert len(splits.held_out) == len(set(splits.held_out))


def test_too_few_functions_is_a_data_error(functions: list[StdlibFunction]) -> None:
    with pytest.raises(DataError, match="--skip-finetune"):
        select_tasks(functions[:40], SMALL)


def test_code_is_cut_at_a_line_boundary_or_inside_an_overlong_first_line() -> None:
    code = "def f(a, b):\n    x = a + b\n    return x"
    assert _fit(code, len, 100) == (code, False)
    assert _fit(code, len, 30) == ("def f(a, b):\n    x = a + b", True)
    assert _fit(code, len, 5) == ("def f", True)


def test_records_fit_the_context_and_read_back(splits: TaskSplits, tmp_path: Path) -> None:
    tokenizer = bytes_tokenizer()
    files = write_task_files(splits, tokenizer, tmp_path, seq_len=256, max_new_tokens=32)
    assert files.cut["classify"] > 0 and files.cut["instruct"] > 0  # bytes make long texts
    for split, functions in splits.classify.items():
        records, _ = read_labelled(files.classify[split])
        assert [r.label for r in records] == [f.package for f in functions]
        for record, f in zip(records, functions):
            assert len(tokenizer.encode(record.text)) <= 256
            assert f.code_without_docstring.startswith(record.text)
    for split, functions in splits.instruct.items():
        conversations, _ = read_conversations(files.instruct[split])
        assert [c.messages[-1].content for c in conversations] == [
            f.docstring_first_line for f in functions
        ]
        for conversation, f in zip(conversations, functions):
            prompt = render_chat(
                DEFAULT_CHAT_TEMPLATE, conversation.messages[:-1], add_generation_prompt=True
            )
            assert len(tokenizer.encode(prompt)) <= 256 - 32
            instruction, code = conversation.messages[0].content.split("\n\n", 1)
            assert instruction == INSTRUCTION and f.code_without_docstring.startswith(code)


def test_a_context_too_short_for_any_code_is_refused(splits: TaskSplits, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no room for code"):
        write_task_files(splits, bytes_tokenizer(), tmp_path, seq_len=64, max_new_tokens=32)


def test_find_leaks_finds_held_out_functions_until_the_corpus_excludes_them(
    functions: list[StdlibFunction], tmp_path: Path
) -> None:
    plain = build_stdlib_corpus(tmp_path / "plain.jsonl", max_bytes=300_000, seed=0)
    rows = [json.loads(line) for line in plain.path.read_text(encoding="utf-8").splitlines()]
    modules = {
        r["source"].removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for r in rows
        if r["kind"] == "module"
    }
    present = [f for f in functions if f.module in modules][:40]
    absent = [f for f in functions if f.module not in modules][:40]
    assert len(present) == 40
    leaks = find_leaks(plain.path, present + absent)
    assert set(leaks.definitions) >= set(
        present
    )  # every one whose module is in the corpus is found
    assert len(leaks.first_lines) >= 30
    excluded = build_stdlib_corpus(
        tmp_path / "excluded.jsonl", max_bytes=300_000, seed=0, exclude=present
    )
    assert excluded.excluded_definitions >= len(present)
    assert not set(find_leaks(excluded.path, present).definitions)


def test_drop_leaks_only_touches_evaluation_splits(splits: TaskSplits) -> None:
    found, answered = splits.classify["test"][0], splits.instruct["test"][0]
    in_train = splits.classify["train"][0]
    kept = drop_leaks(splits, Leaks(definitions=(found, in_train), first_lines=(answered,)))
    assert found not in kept.classify["test"] and in_train in kept.classify["train"]
    assert answered not in kept.instruct["test"]
    assert len(kept.classify["test"]) == len(splits.classify["test"]) - 1
    assert (
        kept.classify["val"] == splits.classify["val"]
        and kept.instruct["val"] == splits.instruct["val"]
    )


def test_report_section_has_the_table_with_intervals_the_verdict_the_plot_and_examples(
    splits: TaskSplits, tmp_path: Path
) -> None:
    files = write_task_files(splits, bytes_tokenizer(), tmp_path / "tasks", seq_len=256)
    outcomes = []
    # Classification over three seeds, pre-trained ahead by 0.3, 0.4 and 0.5; instructions once.
    scores = {
        ("classify", "pretrained"): [0.7, 0.8, 0.9],
        ("classify", "scratch"): [0.4, 0.4, 0.4],
        ("instruct", "pretrained"): [0.75],
        ("instruct", "scratch"): [0.25],
    }
    metrics = {
        "classify": ("accuracy", "macro_f1"),
        "instruct": ("rougeL", "exact_match", "ended_with_eos"),
    }
    for (task, arm), values in scores.items():
        for seed, value in enumerate(values, start=5):
            run_dir = tmp_path / "finetune" / f"{task}-{arm}" / f"s{seed}"
            if task == "instruct":  # what evaluate_checkpoint leaves for the examples
                (run_dir / "eval").mkdir(parents=True)
                rows = [
                    {"reference": f.docstring_first_line, "prediction": f"{arm} `guess`\nline"}
                    for f in splits.instruct["test"]
                ]
                (run_dir / "eval" / "generate_samples.jsonl").write_text(
                    "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
                )
            lr = 1e-4 if arm == "pretrained" else 1e-3
            outcomes.append(
                ArmOutcome(
                    task,
                    arm,
                    seed,
                    str(run_dir),
                    lr,
                    7,
                    "max_steps",
                    7,
                    16,
                    10.0,
                    2.0,
                    {**{k: value for k in metrics[task]}, "count": 10.0},
                )
            )
    plot = plot_comparison(outcomes, tmp_path / "finetune" / "comparison.png")
    assert plot.read_bytes().startswith(b"\x89PNG")
    text = "\n".join(
        finetune_section(tmp_path, splits, files, outcomes, plot, Leaks((), ()), held_out=30)
    )
    assert (
        "| task | metric | pre-trained | from scratch | difference "
        "| seconds per run (pre-trained, scratch) |" in text
    )
    # t(0.975, 2) = 4.303 and s = 0.1 over 3 seeds: a half-width of 0.248, both for the
    # pre-trained scores and for the paired differences; from scratch has no spread.
    assert (
        "| accuracy | 0.800 [0.552, 1.000] | 0.400 [0.400, 0.400] | +0.400 [+0.152, +0.648] "
        "| 12, 12 |" in text
    )
    assert "| ROUGE-L | 0.750 | 0.250 | +0.500 |" in text
    assert (
        "- classify test accuracy: 0.800 [0.552, 1.000] pre-trained, 0.400 [0.400, 0.400] from "
        "scratch (3 seeds each); **pre-trained beats scratch**; paired by seed (3 seeds" in text
    )
    assert "- instruct test ROUGE-L: 0.750 pre-trained, 0.250 from scratch (1 seed each)." in text
    assert "classify seeds 5, 6, 7; instruct seeds 5" in text
    assert "![pre-trained against from scratch](finetune/comparison.png)" in text
    assert (
        "classification 0.0001 pre-trained, 0.001 from scratch" in text and "same 7 steps" in text
    )
    assert text.count("- reference: ") == 3
    assert "- pre-trained: `` pretrained `guess` line ``" in text
