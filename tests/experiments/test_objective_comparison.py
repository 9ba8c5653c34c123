"""Tests for graft.experiments.objective_comparison: every objective trained on the same tiny
data and probed on one labelled set, a failing arm reported beside the others, refusals before any
training, resuming with more arms, and `graft experiment objectives` in-process."""

from __future__ import annotations

import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from graft.cli import main
from graft.errors import ConfigError
from graft.experiments.objective_comparison import (
    DEFAULT_OBJECTIVES,
    ComparisonOptions,
    compare_objectives,
)
from graft.experiments.runner import failed_runs

# A model small enough that each arm trains in well under a second; seq_len 32 is 4 steps of 4 x 32.
TINY = (
    "model.max_seq_len=32",
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "train.eval_every=2",
    "train.eval_batches=2",
    "train.log_every=1",
)
_TOPICS = {
    "sport": "goal match team score player ball league coach win field",
    "cook": "bake oven flour sugar pan salt butter recipe boil taste",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, text_corpus: Path) -> dict[str, Path]:
    from graft.data.shards import prepare_shards
    from graft.data.tokenizer import bytes_tokenizer

    root = tmp_path_factory.mktemp("objective_comparison")
    prepare_shards([text_corpus], bytes_tokenizer(sentinels=8), root / "data", progress=False)
    rng = random.Random(0)
    rows = [
        {"text": " ".join(rng.choices(words.split(), k=8)), "label": label}
        for label, words in _TOPICS.items()
        for _ in range(20)
    ]
    labelled = root / "topics.jsonl"
    labelled.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return {"root": root, "data": root / "data", "labelled": labelled}


def options(inputs: dict[str, Path], out: Path, **changes: object) -> ComparisonOptions:
    base = ComparisonOptions(
        data=inputs["data"],
        out_dir=out,
        labelled=inputs["labelled"],
        max_tokens=512,
        seq_len=32,
        batch_size=4,
        progress=False,
        overrides=TINY,
    )
    return replace(base, **changes)


def test_every_objective_trains_on_the_same_budget_and_is_probed(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `python -m graft` puts graft/__main__.py first: the command is shown as `graft`.
    argv = ["/x/graft/__main__.py", "experiment", "objectives", "--lr", "1e-3"]
    monkeypatch.setattr(sys, "argv", argv)
    lines: list[str] = []
    report = compare_objectives(options(inputs, tmp_path / "cmp"), echo=lines.append)
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    arms = {arm["objective"]: arm for arm in results["runs"]}
    assert list(arms) == list(DEFAULT_OBJECTIVES)
    for name, arm in arms.items():
        assert arm["error"] is None, name
        assert arm["tokens"] == 512 and 0.0 <= arm["probe_accuracy"] <= 1.0
        assert (Path(arm["run_dir"]) / "checkpoints" / "last").is_dir()
    # Encoders for mlm and mlm+nsp; the tokenizer has sentinels, so denoising is t5-style.
    assert arms["mlm+nsp"]["model"] == "bert-micro" and arms["clm"]["model"] == "micro"
    assert arms["denoise"]["variant"] == "t5" and "val/clm/ppl" in arms["mix"]["val"]
    assert {"val/mlm_acc", "val/mlm_unigram_acc", "val/nsp_acc"} <= set(arms["mlm+nsp"]["val"])
    assert results["probe"] == {
        "labels": ["cook", "sport"],
        "train": 28,
        "test": 12,
        "majority_label": "cook",
        "majority_accuracy": 0.5,
    }
    text = report.read_text()
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ")
        for line in text.splitlines()
        if line.startswith("| ")
    }
    for name, model in (
        ("clm", "micro"),
        ("mlm", "bert-micro"),
        ("mlm+nsp", "bert-micro"),
        ("denoise (t5)", "micro"),
        ("mix (clm + denoise t5)", "micro"),
    ):
        assert rows[name][1].startswith(f"{model} (") and rows[name][2] == "512", rows[name]
    assert "(unigram " in text and "(clm part)" in text and "scores **0.500**" in text
    assert "```\ngraft experiment objectives --lr 1e-3\n```" in text
    assert results["command"] == "graft experiment objectives --lr 1e-3"
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert len(lines) == 2 * len(DEFAULT_OBJECTIVES)


def test_a_failing_arm_is_reported_and_the_others_complete(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    # Without an NSP head the mlm+nsp arm cannot be configured; clm does not need one.
    opts = options(
        inputs,
        tmp_path / "cmp",
        objectives=("mlm+nsp", "clm"),
        overrides=(*TINY, "model.nsp_head=false"),
    )
    report = compare_objectives(opts).read_text()
    arms = {
        arm["objective"]: arm
        for arm in json.loads((tmp_path / "cmp" / "results.json").read_text())["runs"]
    }
    assert (
        "needs model.nsp_head" in arms["mlm+nsp"]["error"]
        and arms["mlm+nsp"]["probe_accuracy"] is None
    )
    assert arms["clm"]["error"] is None and arms["clm"]["probe_accuracy"] is not None
    assert failed_runs(tmp_path / "cmp") == [arms["mlm+nsp"]["run_dir"]]  # the CLI's exit status
    failed_row = next(line for line in report.splitlines() if line.startswith("| mlm+nsp |"))
    assert "failed: " in failed_row and "needs model.nsp_head" in failed_row
    assert (tmp_path / "cmp" / "comparison.png").exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"objectives": ()}, "name one or more"),
        ({"objectives": ("clm", "gpt")}, "unknown 'gpt'"),
        ({"objectives": ("clm", "clm")}, "each once"),
        (
            {"overrides": ("model.d_modle=32",)},
            "did you mean 'd_model'",
        ),  # every arm refuses it: raised, not reported
        ({"probe_test_fraction": 1.0}, "probe_test_fraction"),
        ({"seq_len": 0}, "--seq-len: give a whole number, 1 or more; got 0"),
        ({"batch_size": 0}, "--batch-size: give a whole number"),
        (
            {"objectives": ("clm", "mlm"), "preset": "llama-micro"},
            "there is no bert-llama-micro; choose one of: nano, micro, tiny, small",
        ),
    ],
)
def test_bad_options_are_refused_before_training(
    inputs: dict[str, Path], tmp_path: Path, changes: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        compare_objectives(options(inputs, tmp_path / "cmp", **changes))
    assert not (tmp_path / "cmp" / "runs").exists()


def test_a_labelled_set_with_one_label_is_refused(inputs: dict[str, Path], tmp_path: Path) -> None:
    one = tmp_path / "one.jsonl"
    one.write_text(
        "".join(json.dumps({"text": f"text {i}", "label": "only"}) + "\n" for i in range(10))
    )
    with pytest.raises(ConfigError, match="at least 2 labels, found 1"):
        compare_objectives(options(inputs, tmp_path / "cmp", labelled=one))
    assert not (tmp_path / "cmp").exists()


def test_an_out_dir_holding_runs_is_refused(inputs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "cmp" / "runs" / "clm").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already holds runs"):
        compare_objectives(options(inputs, tmp_path / "cmp"))


def test_a_resumed_comparison_keeps_finished_arms_and_adds_new_ones(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    first = options(inputs, tmp_path / "cmp", objectives=("clm",))
    compare_objectives(first)
    with pytest.raises(ConfigError, match="another max_tokens"):
        compare_objectives(replace(first, resume=True, max_tokens=256))
    (tmp_path / "cmp" / "runs" / "mlm").mkdir()  # an arm cut short leaves its directory behind
    lines: list[str] = []
    compare_objectives(replace(first, resume=True, objectives=("clm", "mlm")), echo=lines.append)
    assert lines[0] == "[1/2] clm, 1x32 for 512 tokens: kept from the earlier run"
    assert lines[1].startswith("[2/2] mlm, ") and lines[1].endswith(": training")
    runs = json.loads((tmp_path / "cmp" / "results.json").read_text())["runs"]
    assert [(r["objective"], r["error"]) for r in runs] == [("clm", None), ("mlm", None)]


def test_the_command_runs_a_comparison(inputs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    code = main(
        [
            "experiment",
            "objectives",
            "--data",
            str(inputs["data"]),
            "--labelled",
            str(inputs["labelled"]),
            "--objectives",
            "clm,mlm",
            "--preset",
            "nano",
            "--max-tokens",
            "256",
            "--seq-len",
            "32",
            "--batch-size",
            "4",
            "--probe-examples",
            "30",
            "--out",
            str(out),
            "--no-progress",
            *(f"--{item}" for item in TINY),
        ]
    )
    assert code == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert [arm["model"] for arm in results["runs"]] == ["nano", "bert-nano"]
    assert results["probe"]["train"] + results["probe"]["test"] == 30
    assert results["options"]["overrides"] == list(TINY)
    # A bad objective is one line on stderr and exit 2.
    assert (
        main(
            [
                "experiment",
                "objectives",
                "--data",
                str(inputs["data"]),
                "--labelled",
                str(inputs["labelled"]),
                "--objectives",
                "clm,bogus",
                "--max-tokens",
                "256",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "unknown 'bogus'" in capsys.readouterr().err


def test_document_masking_applies_to_the_arms_that_pack_documents(tmp_path: Path) -> None:
    """Overrides apply to every arm; --data.mask_doc_boundaries=true is refused by the objectives
    that do not read it, so those arms run without it rather than fail."""
    from graft.experiments.objective_comparison import _arm_config

    opts = ComparisonOptions(
        data=tmp_path / "d",
        labelled=tmp_path / "l.tsv",
        max_tokens=1000,
        out_dir=tmp_path / "cmp",
        overrides=("data.mask_doc_boundaries=true",),
    )
    masked = {
        name: _arm_config(opts, name, "t5").data.mask_doc_boundaries for name in DEFAULT_OBJECTIVES
    }
    assert masked == {"clm": True, "mlm": False, "mlm+nsp": False, "denoise": False, "mix": True}
