"""Tests for graft.experiments.transfer (with its options and report modules): every arm x size x
seed fine-tuned from a tiny pre-trained base and scored on one held-out test set, the report's
table, comparison, command line and plot, a test set disjoint from training and validation texts,
refusals before any training, a failing run reported beside the others, resuming, and
`graft experiment transfer` in-process."""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from graft.cli import main
from graft.config import RunConfig
from graft.errors import ConfigError
from graft.experiments.transfer import run_transfer
from graft.experiments.transfer_options import TransferOptions, parse_sizes
from graft.experiments.transfer_report import Cell, RunOutcome, versus
from graft.train.loop import RunResult

TINY_BASE = [
    "--model.max_seq_len=32",
    "--model.d_model=32",
    "--model.n_layers=2",
    "--model.n_heads=2",
    "--train.batch_size=8",
    "--train.max_steps=2",
    "--train.eval_every=2",
    "--train.eval_batches=1",
    "--train.progress=false",
    "--optim.warmup_steps=1",
]
# Every run: 10 steps of 8 texts, evaluated twice.
RUN = ("train.batch_size=8", "train.eval_every=5", "optim.warmup_steps=1")
_WORDS = {"spam": "win prize cash free claim".split(), "ham": "see you at home later".split()}


def _key(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, bytes_data: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("transfer")
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(bytes_data),
                "--out",
                str(root / "base"),
                "--model.preset=nano",
                *TINY_BASE,
            ]
        )
        == 0
    )
    rng = random.Random(0)
    # Two disjoint vocabularies, one label three times as frequent, and repeated texts (one with
    # other spacing) that a naive split would put on both sides.
    rows = [
        {"text": " ".join(rng.choice(_WORDS[label]) for _ in range(5)), "label": label}
        for label in ["spam"] * 40 + ["ham"] * 120
    ]
    rows += [dict(rows[i]) for i in range(0, 160, 16)] + [
        {"text": "  " + rows[1]["text"] + " ", "label": "spam"}
    ]
    labelled = root / "sms.jsonl"
    labelled.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return {"base": root / "base" / "checkpoints" / "last", "labelled": labelled, "root": root}


def options(inputs: dict[str, Path], out: Path, **changes: object) -> TransferOptions:
    base = TransferOptions(
        init=inputs["base"],
        labelled=(inputs["labelled"],),
        out_dir=out,
        arms=("scratch", "full", "probe", "lora"),
        sizes=(8, None),
        seeds=(0, 1),
        val_size=20,
        max_steps=10,
        overrides=RUN,
        progress=False,
    )
    return replace(base, **changes)


@pytest.fixture(scope="module")
def experiment(inputs: dict[str, Path]) -> Path:
    out = inputs["root"] / "experiment"
    lines: list[str] = []
    # The command line recorded is the process's own, the program by its name.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["/venv/bin/graft", "experiment", "transfer", "--out", "a b"])
        report = run_transfer(options(inputs, out), echo=lines.append)
    assert report == out / "report.md"
    assert sum(line.endswith(": training") for line in lines) == 16
    return out


def test_every_arm_size_and_seed_is_trained_and_scored_on_the_test_set(experiment: Path) -> None:
    results = json.loads((experiment / "results.json").read_text())
    runs = results["runs"]
    split = results["split"]
    assert split["labels"] == ["ham", "spam"] and split["minority"] == "spam"
    assert split["duplicates"] >= 11 and split["val"] == 20
    assert {(r["arm"], r["size"], r["seed"]) for r in runs} == {
        (arm, size, seed)
        for arm in ("scratch", "full", "probe", "lora")
        for size in (8, None)
        for seed in (0, 1)
    }
    for run in runs:
        assert run["error"] is None, run
        assert 0.0 <= run["accuracy"] <= 1.0 and 0.0 <= run["macro_f1"] <= 1.0
        assert set(run["per_class"]) == {"ham", "spam"}
        assert sum(map(sum, run["confusion"])) == split["test"]
        assert run["train_examples"] == (8 if run["size"] == 8 else split["pool"])
        assert run["steps"] == 10 and run["examples_seen"] == 80 and run["seconds"] > 0
        assert (Path(run["run_dir"]) / "checkpoints" / "best").is_dir()
        assert json.loads((Path(run["run_dir"]) / "outcome.json").read_text()) == run
        assert run["truncated"] == 0  # five words fit the context
    trainable = {r["arm"]: (r["trainable_parameters"], r["total_parameters"]) for r in runs}
    assert (
        trainable["full"] == trainable["scratch"] and trainable["full"][0] == trainable["full"][1]
    )
    assert trainable["probe"][0] < trainable["lora"][0] < trainable["full"][0]
    # Each arm ran with its own settings: LoRA and the probe at 1e-3, full fine-tuning at the
    # default.
    config = (experiment / "runs" / "lora" / "n8" / "s0" / "config.yaml").read_text()
    assert "method: lora" in config and "lr: 0.001" in config
    config = (experiment / "runs" / "probe" / "nall" / "s1" / "config.yaml").read_text()
    assert "method: freeze" in config and "trainable_blocks: 0" in config and "seed: 1" in config
    assert (
        "from_scratch: true"
        in (experiment / "runs" / "scratch" / "n8" / "s0" / "config.yaml").read_text()
    )


def test_the_report_has_the_table_with_cis_the_comparison_compute_and_the_plot(
    experiment: Path,
) -> None:
    report = (experiment / "report.md").read_text()
    assert (
        "| examples | arm | runs | accuracy | 95% CI | macro F1 | 95% CI "
        "| F1 spam | 95% CI | F1 ham | 95% CI |" in report
    )
    for arm in ("scratch", "full", "probe", "lora"):
        assert f"| 8 (8) | {arm} | 2/2 | " in report
        assert "| all (" in report and f") | {arm} | 2/2 | " in report
    assert (
        report.count("- 8 labelled examples: full ") == 1
        and report.count("- all labelled examples: full ") == 1
    )
    assert "paired by seed (2 seeds, each running both arms), the difference is" in report
    assert "## Compute per arm" in report and "| probe | pre-trained and frozen" in report
    assert "## Command\n\n```\ngraft experiment transfer --out 'a b'\n```" in report
    results = json.loads((experiment / "results.json").read_text())
    assert results["command"] == "graft experiment transfer --out 'a b'"
    assert results["options"]["sizes"] == [8, None] and results["options"]["seeds"] == [0, 1]
    png = experiment / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_test_set_shares_no_text_with_training_or_validation(
    experiment: Path, inputs: dict[str, Path]
) -> None:
    def texts(name: str) -> list[str]:
        lines = (experiment / "data" / name).read_text(encoding="utf-8").splitlines()
        return [_key(json.loads(line)["text"]) for line in lines]

    train, val, test = texts("train.jsonl"), texts("val.jsonl"), texts("test.jsonl")
    assert not set(test) & (set(train) | set(val)) and not set(train) & set(val)
    distinct = {
        _key(json.loads(line)["text"]) for line in inputs["labelled"].read_text().splitlines()
    }
    assert len(train) + len(val) + len(test) == len(distinct)  # every text once, none lost


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arms": ("full", "finetune")}, "arms: unknown 'finetune'"),
        ({"sizes": (0, None)}, "sizes: got [0, None]"),
        ({"sizes": (1,)}, "cannot hold each of the 2 labels"),
        ({"arms": ("full", "continued")}, "--continued"),
        ({"overrides": ("train.seed=3",)}, "the experiment sets train.seed itself"),
        ({"overrides": ("lorra:optim.lr=1e-2",)}, "unknown arm 'lorra'"),
        ({"val_size": 500}, "lower --val-size"),
        ({"seeds": ()}, "seeds: got []"),
        ({"max_steps": None}, "the budget is unset"),
    ],
)
def test_a_bad_option_is_refused_before_anything_runs(
    inputs: dict[str, Path], tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_transfer(options(inputs, out, **changes))
    assert not (out / "runs").exists() and not (out / "results.json").exists()


def test_a_failing_run_is_reported_the_others_go_on_and_resume_keeps_finished_runs(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "failing"
    # A LoRA target the model does not have fails inside the lora arm's runs only.
    failing = options(
        inputs,
        out,
        arms=("full", "lora"),
        sizes=(None,),
        seeds=(0,),
        max_steps=4,
        overrides=(*RUN, "lora:adapt.lora_targets=[nope]"),
    )
    run_transfer(failing)
    runs = {r["arm"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["full"]["error"] is None
    assert "nope is no linear layer of a block" in runs["lora"]["error"]
    report = (out / "report.md").read_text()
    assert "## Failed runs" in report and "| all (" in report and "| lora | 0/1 | – |" in report
    with pytest.raises(ConfigError, match="pass --resume"):
        run_transfer(failing)
    with pytest.raises(ConfigError, match="another max_steps"):
        run_transfer(replace(failing, resume=True, max_steps=5))
    lines: list[str] = []
    run_transfer(replace(failing, resume=True), echo=lines.append)
    assert any("full" in line and "kept from the earlier run" in line for line in lines)
    assert any(
        "lora" in line and line.endswith(": training") for line in lines
    )  # a failed run is tried again


def test_an_interrupted_experiment_keeps_its_finished_runs_and_resumes(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import graft.experiments.transfer as transfer

    out = tmp_path / "interrupted"
    opts = options(inputs, out, arms=("probe",), sizes=(None,), seeds=(0, 1), max_steps=3)
    real, calls = transfer.finetune, []

    def interrupted_second_run(config: RunConfig, **kwargs: Any) -> RunResult:
        calls.append(config.train.seed)
        if len(calls) == 2:
            config.train.out_dir.mkdir(parents=True)  # a run cut short leaves its directory behind
            raise KeyboardInterrupt
        return real(config, **kwargs)

    monkeypatch.setattr(transfer, "finetune", interrupted_second_run)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(opts)
    assert [r["seed"] for r in json.loads((out / "results.json").read_text())["runs"]] == [0]
    assert not (out / "report.md").exists()
    monkeypatch.setattr(transfer, "finetune", real)
    run_transfer(replace(opts, resume=True))
    assert [r["seed"] for r in json.loads((out / "results.json").read_text())["runs"]] == [0, 1]
    # More seeds for the same cells: the finished runs are kept, only the new seed trains.
    lines: list[str] = []
    run_transfer(replace(opts, resume=True, seeds=(0, 1, 2)), echo=lines.append)
    assert sum("kept from the earlier run" in line for line in lines) == 2
    assert [r["seed"] for r in json.loads((out / "results.json").read_text())["runs"]] == [0, 1, 2]
    assert json.loads((out / "experiment.json").read_text())["seeds"] == [0, 1, 2]
    # The same files by another path are the same experiment.
    monkeypatch.chdir(tmp_path)
    run_transfer(
        replace(
            opts,
            resume=True,
            seeds=(0, 1, 2),
            out_dir=Path("interrupted"),
            labelled=tuple(Path(os.path.relpath(p, tmp_path)) for p in opts.labelled),
        )
    )


def test_cli_runs_the_experiment_on_a_polarity_pair(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(1)
    pos, neg = tmp_path / "rt.pos", tmp_path / "rt.neg"
    for path, words in ((pos, "good great fine nice happy"), (neg, "bad awful poor sad grim")):
        lines = {" ".join(rng.choices(words.split(), k=6)) for _ in range(40)}
        path.write_text("\n".join(sorted(lines)) + "\n", encoding="latin-1")
    out = tmp_path / "cli"
    common = [
        "experiment",
        "transfer",
        "--init",
        str(inputs["base"]),
        "--labelled",
        str(pos),
        str(neg),
        "--arms",
        "probe",
        "--seeds",
        "1",
        "--val-size",
        "10",
        "--max-steps",
        "3",
        "--out",
        str(out),
        "--no-progress",
        "--train.batch_size=8",
        "--probe:optim.lr=3e-3",
    ]
    assert main([*common, "--sizes", "0,all"]) == 2
    assert "sizes: got [0, None]" in capsys.readouterr().err
    assert main([*common, "--sizes", "all"]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["split"]["labels"] == ["neg", "pos"] and results["runs"][0]["error"] is None
    assert "lr: 0.003" in (out / "runs" / "probe" / "nall" / "s0" / "config.yaml").read_text()


def test_parse_sizes() -> None:
    assert parse_sizes("50, 200,all") == (50, 200, None)
    with pytest.raises(ConfigError, match="'ten' is not a number"):
        parse_sizes("ten")


def test_comparisons_are_judged_paired_by_seed() -> None:
    def cell(arm: str, accuracies: list[float], seeds: list[int] | None = None) -> Cell:
        seeds = seeds if seeds is not None else list(range(len(accuracies)))
        return Cell(
            arm,
            200,
            [RunOutcome(arm, 200, seed, "", accuracy=a) for seed, a in zip(seeds, accuracies)],
        )

    cells = [
        cell("scratch", [0.970, 0.972, 0.974]),
        cell("continued", [0.990, 0.991, 0.992]),
        cell("full", [0.960, 0.965, 0.962]),
    ]
    (line,) = versus(cells, "continued", "scratch", "continued beats scratch")
    assert line.startswith("- 200 labelled examples: continued 0.991 [")
    assert "**continued beats scratch**; paired by seed (3 seeds" in line
    assert "the difference is +0.019 [" in line and "which excludes 0" in line
    (line,) = versus(cells, "full", "scratch", "pre-trained beats scratch")
    assert "pre-trained does not beat scratch: it is worse" in line and "-0.010 [" in line

    # The sample moves both arms together: the separate intervals overlap widely, yet every seed's
    # difference is +0.005, which the paired judgement sees.
    cells = [cell("scratch", [0.950, 0.970, 0.990]), cell("full", [0.955, 0.975, 0.995])]
    (line,) = versus(cells, "full", "scratch", "pre-trained beats scratch")
    assert "**pre-trained beats scratch**" in line and "+0.005 [+0.005, +0.005]" in line

    # Differences of both signs: no winner, whatever the means say.
    cells = [cell("scratch", [0.970, 0.972, 0.974]), cell("full", [0.980, 0.965, 0.976])]
    (line,) = versus(cells, "full", "scratch", "pre-trained beats scratch")
    assert "no clear winner" in line and "includes 0" in line and "**" not in line

    # Only seeds both arms finished are paired; one such seed is no evidence.
    cells = [cell("scratch", [0.970, 0.972], [0, 1]), cell("full", [0.990, 0.991], [1, 2])]
    (line,) = versus(cells, "full", "scratch", "pre-trained beats scratch")
    assert "no evidence either way" in line


def test_an_override_for_every_run_goes_to_the_runs_that_read_it(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    """A LoRA setting given without an arm reaches the lora arm, and the other arms, whose
    method does not read it (and would refuse it), run without it."""
    from graft.experiments.runner import Planned
    from graft.experiments.transfer import _run_config

    given = options(inputs, tmp_path, overrides=(*RUN, "adapt.lora_rank=4", "optim.lr=2e-3"))
    for arm in ("scratch", "full", "probe", "lora"):
        config = _run_config(given, Planned((arm, None, 0), tmp_path / arm, arm))
        assert config.adapt.lora_rank == (4 if arm == "lora" else 8)
        assert config.optim.lr == 2e-3  # every method reads the learning rate
