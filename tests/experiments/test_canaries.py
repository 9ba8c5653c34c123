"""`graft audit canaries` in-process on a tiny base model: the audited data (canaries where they
belong, none in validation), the runs planned with and without DP, a short fine-tune whose
inserted canaries are more exposed than the controls never trained on, the report's structure,
and bad input refused in one line before any training."""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from graft.cli import main
from graft.errors import ConfigError
from graft.experiments.canaries import AuditOptions, run_configs

TINY_BASE = [
    "--model.preset=nano",
    "--model.max_seq_len=96",  # a canary conversation is about 85 byte tokens
    "--model.d_model=32",
    "--model.n_layers=1",
    "--model.n_heads=2",
    "--train.batch_size=8",
    "--train.max_steps=2",
    "--train.eval_every=2",
    "--train.eval_batches=1",
    "--train.progress=false",
    "--optim.warmup_steps=1",
]
# 100 steps of 16 records over ~120: each inserted canary (20 copies) is seen about 250 times.
TRAIN = [
    "--train.max_steps=100",
    "--train.eval_every=50",
    "--train.batch_size=16",
    "--train.patience=100",
    "--optim.lr=3e-3",
    "--optim.warmup_steps=5",
    "--model.dropout=0",
]
_WORDS = "see you at home later win prize cash free claim ok".split()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, bytes_data: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("canaries")
    assert (
        main(["pretrain", "--data", str(bytes_data), "--out", str(root / "base"), *TINY_BASE]) == 0
    )
    rng = random.Random(0)
    rows = [
        f"{'ham' if i % 3 else 'spam'}\t" + " ".join(rng.choice(_WORDS) for _ in range(4))
        for i in range(40)
    ]
    sms = root / "SMSSpamCollection"  # label<TAB>text, as the SMS Spam Collection ships
    sms.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"base": root / "base" / "checkpoints" / "last", "data": sms, "root": root}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: this model is far too small to gain from more, and on a busy 2-core
    machine torch's threads wait on each other (measured here: 4 s with 1 thread, 18 s with 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _audit(inputs: dict[str, Path], out: Path, *more: str) -> list[str]:
    return [
        "audit",
        "canaries",
        "--init",
        str(inputs["base"]),
        "--data",
        str(inputs["data"]),
        "--out",
        str(out),
        *more,
    ]


def test_the_audit_exposes_inserted_canaries_and_reports_both_audits(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    out = tmp_path / "audit"
    flags = ["--canaries", "4", "--repeats", "20", "--controls", "6", "--members", "20"]
    flags += ["--samples", "300", "--digits", "4", "--no-progress"]
    assert main(_audit(inputs, out, *flags, *TRAIN)) == 0
    assert "## Summary" in capsys.readouterr().out

    key = json.loads((out / "canaries.json").read_text(encoding="utf-8"))
    train = (out / "audit_train.jsonl").read_text(encoding="utf-8")
    val = (out / "audit_val.jsonl").read_text(encoding="utf-8")
    replies = [json.loads(line)["messages"][-1]["content"] for line in train.splitlines()]
    assert all(replies.count(c["text"]) == 20 for c in key["inserted"])
    assert all(c["text"] not in replies for c in key["controls"])
    assert all(replies.count(c["text"]) == int(c["included"]) for c in key["members"])
    assert "the code for" not in val and "passphrase" not in val and len(val.splitlines()) == 4
    first = json.loads(train.splitlines()[0])["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"]
    assert first[0]["content"] == "Write a text message."

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["options"]["canaries"] == 4 and [r["name"] for r in report["runs"]] == ["plain"]
    (run,) = report["runs"]
    assert run["private"] is False and run["accountant_epsilon"] is None
    assert run["checkpoint"].endswith("checkpoints/last") and run["steps"] == 100
    assert run["val_loss"] is not None and run["val_loss"] > 0
    assert len(run["inserted"]) == 4 and len(run["controls"]) == 6
    one_run = run["one_run"]
    assert one_run["canaries"] == 20 and one_run["guesses"] == 2 * one_run["k"]
    assert 0 <= one_run["correct"] <= one_run["guesses"] and one_run["epsilon"] >= 0
    assert one_run["delta"] == 1e-5 and len(one_run["grid"]) >= 2
    inserted = [c["exposure"]["sampled"] for c in run["inserted"]]
    controls = [c["exposure"]["sampled"] for c in run["controls"]]
    assert all(c["exposure"]["candidates"] == 300 for c in run["inserted"] + run["controls"])
    # The leak the audit exists to show: 100 steps over 20 copies each lift every inserted secret
    # above the typical control, and their mean far above (a control averages ~1.4 bits).
    assert min(inserted) > statistics.median(controls)
    assert statistics.mean(inserted) > statistics.mean(controls) + 3
    assert run["exposure_mean"] == pytest.approx(statistics.mean(inserted))
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "One-run audit: " in markdown and "not private" in markdown and "| control |" in markdown


def test_dp_overrides_add_a_private_run_and_the_rest_apply_to_both(tmp_path: Path) -> None:
    base = AuditOptions(init=tmp_path / "base", data=tmp_path / "d.tsv", out_dir=tmp_path / "a")
    (plain,) = run_configs(base)
    assert plain[0] == "plain" and not plain[1].dp.enabled
    options = AuditOptions(
        init=base.init,
        data=base.data,
        out_dir=base.out_dir,
        overrides=("train.max_steps=7", "dp.epsilon=8", "dp.delta=1e-6", "dp.batch=4"),
    )
    configs = dict(run_configs(options))
    assert list(configs) == ["plain", "dp"]
    assert configs["dp"].dp.enabled and configs["dp"].dp.epsilon == 8
    assert not configs["plain"].dp.enabled
    # dp.delta too: both runs' one-run bounds are stated at the same delta
    assert all(c.train.max_steps == 7 and c.dp.delta == 1e-6 for c in configs.values())
    assert configs["dp"].dp.batch == 4 and configs["plain"].dp.batch is None
    assert configs["dp"].train.out_dir == tmp_path / "a" / "runs" / "dp"
    assert configs["plain"].data.val_file == tmp_path / "a" / "audit_val.jsonl"
    assert configs["plain"].objective.name == "instruct"
    for owned in ("data.val_file=x.jsonl", "train.init=elsewhere", "objective.name=classify"):
        with pytest.raises(ConfigError, match="the audit sets it"):
            run_configs(AuditOptions(base.init, base.data, base.out_dir, overrides=(owned,)))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--canaries", "0"], "--canaries 0: give a whole number, 1 or more"),
        (["--beta", "1.5"], "--beta 1.5"),
        (["--digits", "1", "--canaries", "8", "--controls", "8"], "--digits 1"),
        (["--data.train_file=x.jsonl"], "override --data.train_file: the audit sets it"),
    ],
)
def test_bad_options_are_refused_in_one_line(
    inputs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    expected: str,
) -> None:
    assert main(_audit(inputs, tmp_path / "out", *flags)) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "runs").exists()


def test_bad_files_are_named(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.tsv"
    command = _audit(inputs, tmp_path / "out")
    command[command.index("--data") + 1] = str(missing)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such file" in err and err.count("\n") == 1
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"prompt": "hi"}\n', encoding="utf-8")
    command[command.index("--data") + 1] = str(odd)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"--data {odd}: expected conversations or labelled records" in err
    command[command.index("--init") + 1] = str(tmp_path / "no_base")
    assert main(command) == 2
    assert "no_base" in capsys.readouterr().err


def test_an_out_dir_holding_runs_is_refused(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out" / "runs" / "plain").mkdir(parents=True)
    assert main(_audit(inputs, tmp_path / "out")) == 2
    assert "already holds runs; choose another" in capsys.readouterr().err


def test_a_canary_longer_than_the_context_is_refused_before_any_training(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit"
    argv = ["audit", "canaries", "--init", str(inputs["base"]), "--data", str(inputs["data"])]
    code = main([*argv, "--out", str(out), "--no-progress", "--train.seq_len=48"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "reply does not fit in the training context of 48 tokens" in err[0]
    assert not out.exists()  # nothing trained, nothing written: the rerun is free to go
