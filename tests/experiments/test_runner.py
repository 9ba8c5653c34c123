"""Tests for graft.experiments.runner, the runner every experiment shares: runs in plan order with a
failing one reported beside the others, resuming (finished runs kept, unfinished and failed ones
cleared and run again), results on Ctrl-C, the out-dir and resume checks, overrides that survive
YAML, the recorded command line, and the report's numbers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from graft.config import apply_override
from graft.errors import ConfigError, DataError
from graft.experiments.runner import (
    Planned,
    check_distinct,
    check_out_dir,
    command_line,
    mean_text,
    record_options,
    run_plan,
    setting,
    with_interval,
    write_results,
)


@dataclass(frozen=True)
class Outcome:
    name: str
    score: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class Options:
    data: Path
    out_dir: Path
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 10
    resume: bool = False


def plan(root: Path) -> list[Planned[str]]:
    return [Planned(name, root / "runs" / name, f"run {name}") for name in ("a", "b", "c")]


def runner(
    calls: list[str], fail: str = "", interrupt: str = ""
) -> Callable[[Planned[str]], Outcome]:
    def run(planned: Planned[str]) -> Outcome:
        calls.append(planned.key)
        planned.run_dir.mkdir(parents=True)
        if planned.key == fail:
            raise DataError(f"{planned.key} went wrong")
        if planned.key == interrupt:
            raise KeyboardInterrupt
        return Outcome(planned.key, score=len(calls))

    return run


def test_runs_in_order_a_failure_is_an_outcome_and_resume_keeps_what_finished(
    tmp_path: Path,
) -> None:
    calls: list[str] = []
    saved: list[list[str]] = []
    lines: list[str] = []
    outcomes = run_plan(
        plan(tmp_path),
        runner(calls, fail="b"),
        Outcome,
        summary=lambda o: f"score {o.score:g}",
        failed=lambda p, error, seconds: Outcome(p.key, error=error),
        results=lambda runs: saved.append([o.name for o in runs]),
        echo=lines.append,
    )
    assert calls == ["a", "b", "c"] and list(outcomes) == ["a", "b", "c"]
    assert outcomes["b"] == Outcome("b", error="b went wrong")
    assert lines == [
        "[1/3] run a: training",
        "[1/3] run a: score 1",
        "[2/3] run b: training",
        "[2/3] run b: failed: b went wrong",
        "[3/3] run c: training",
        "[3/3] run c: score 3",
    ]
    assert saved == [["a"], ["a", "b"], ["a", "b", "c"]]
    stored = json.loads((tmp_path / "runs" / "b" / "outcome.json").read_text())
    assert stored == {"name": "b", "score": 0.0, "error": "b went wrong"}

    # Resuming: a finished run is kept, a failed one runs again, and so does one that left its
    # directory but no outcome (interrupted), from an empty directory.
    (tmp_path / "runs" / "c" / "outcome.json").unlink()
    (tmp_path / "runs" / "c" / "stale").write_text("half a checkpoint")
    calls.clear()
    lines.clear()
    outcomes = run_plan(
        plan(tmp_path),
        runner(calls),
        Outcome,
        summary=lambda o: "done",
        resume=True,
        echo=lines.append,
    )
    assert calls == ["b", "c"] and lines[0] == "[1/3] run a: kept from the earlier run"
    assert outcomes["a"] == Outcome("a", score=1) and outcomes["b"].error is None
    assert not (tmp_path / "runs" / "c" / "stale").exists()


def test_without_failed_a_graft_error_ends_the_experiment(tmp_path: Path) -> None:
    calls: list[str] = []
    with pytest.raises(DataError, match="a went wrong"):
        run_plan(plan(tmp_path), runner(calls, fail="a"), Outcome, summary=str)
    assert calls == ["a"]


def test_ctrl_c_saves_what_finished_and_ends_the_experiment(tmp_path: Path) -> None:
    calls: list[str] = []
    saved: list[list[str]] = []
    with pytest.raises(KeyboardInterrupt):
        run_plan(
            plan(tmp_path),
            runner(calls, interrupt="b"),
            Outcome,
            summary=str,
            results=lambda runs: saved.append([o.name for o in runs]),
        )
    assert calls == ["a", "b"] and saved == [["a"], ["a"]]
    assert not (tmp_path / "runs" / "b" / "outcome.json").exists()


def test_an_out_dir_holding_runs_needs_resume_with_the_same_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "exp"
    options = Options(data=tmp_path / "data.jsonl", out_dir=out)
    check_out_dir(out, options, resume=False)  # nothing there yet
    (out / "runs" / "a").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already holds runs; pass --resume"):
        check_out_dir(out, options, resume=False)
    with pytest.raises(ConfigError, match="experiment.json: missing"):
        check_out_dir(out, options, resume=True)
    record_options(out, options)
    check_out_dir(out, replace(options, resume=True), resume=True)
    with pytest.raises(ConfigError, match=r"another steps \(10, now 20\).*seeds may change"):
        check_out_dir(out, replace(options, steps=20), resume=True, may_change=("seeds",))
    check_out_dir(out, replace(options, seeds=(0, 1, 2)), resume=True, may_change=("seeds",))
    with pytest.raises(ConfigError, match="another data"):
        check_out_dir(out, replace(options, data=tmp_path / "other.jsonl"), resume=True)
    # The same file and out_dir by relative paths are the same experiment.
    monkeypatch.chdir(tmp_path)
    check_out_dir(Path("exp"), Options(Path("data.jsonl"), Path("exp")), resume=True)


def test_lists_of_arms_are_distinct_known_and_not_empty() -> None:
    check_distinct("arms", ("full", "lora"), ("full", "lora", "probe"))
    check_distinct("sizes", (8, None))
    with pytest.raises(ConfigError, match=r"arms: unknown 'ful', 'x'; choose from full, lora$"):
        check_distinct("arms", ("ful", "lora", "x"), ("full", "lora"))
    with pytest.raises(ConfigError, match=r"seeds: got \[\]; name one or more, each once$"):
        check_distinct("seeds", ())
    with pytest.raises(ConfigError, match=r"got \['full', 'full'\]; .* each once from full, lora$"):
        check_distinct("arms", ("full", "full"), ("full", "lora"))


def test_settings_survive_being_read_as_yaml(tmp_path: Path) -> None:
    path = tmp_path / "it's: #odd"
    raw: dict[str, dict[str, object]] = {}
    for item in (
        setting("train.out_dir", path),
        setting("train.progress", False),
        setting("train.max_minutes", None),
        setting("optim.lr", 1e-3),
    ):
        apply_override(raw, item)
    assert raw == {
        "train": {"out_dir": str(path), "progress": False, "max_minutes": None},
        "optim": {"lr": 1e-3},
    }


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/venv/bin/graft", "experiment", "--out", "my runs"], "graft experiment --out 'my runs'"),
        (
            ["/src/graft/__main__.py", "quickstart", "--tokens", "10"],
            "graft quickstart --tokens 10",
        ),
    ],
)
def test_the_command_line_is_the_processs_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str], expected: str
) -> None:
    monkeypatch.setattr(sys, "argv", argv)
    assert command_line() == expected
    written = write_results(tmp_path, Options(tmp_path / "d", tmp_path), [Outcome("a", 0.5)])
    record = json.loads(written.read_text())
    assert record["command"] == command_line() and record["runs"] == [
        {"name": "a", "score": 0.5, "error": None}
    ]
    assert record["options"]["seeds"] == [0, 1] and record["options"]["data"] == str(tmp_path / "d")


def test_means_and_intervals_as_text() -> None:
    assert mean_text([0.5]) == "0.500" and with_interval([0.5]) == ("0.500", "– (1 run)")
    assert with_interval([]) == ("–", "–")
    # t(0.975, 2) = 4.303, s = 0.1, n = 3: half-width 0.248; clipped to [0, 1] for scores.
    assert mean_text([0.8, 0.9, 1.0]) == "0.900 [0.652, 1.000]"
    assert mean_text([0.1, 0.2, 0.3], clip=False, sign="+") == "+0.200 [-0.048, +0.448]"
