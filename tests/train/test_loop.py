"""The loop's limits, early stopping and learning-rate schedule."""

import math
import re
from pathlib import Path
from typing import Any

import pytest

from graft.config import OptimConfig, validate_run_config
from graft.data.shards import prepare_shards
from graft.data.tokenizer import bytes_tokenizer
from graft.train.metrics_log import read_metrics
from graft.train.optim import learning_rate
from graft.train.pretrain import pretrain


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loop")
    (root / "a.txt").write_text("abcdefgh " * 400)
    (root / "b.txt").write_text("hgfedcba " * 400)
    prepare_shards(
        [root / "a.txt", root / "b.txt"], bytes_tokenizer(), root / "data", progress=False
    )
    return root / "data"


def run(data_dir: Path, out: Path, optim: dict | None = None, **train):
    return pretrain(config(data_dir, out, optim, **train))


def config(data_dir: Path, out: Path, optim: dict | None = None, **train):
    return validate_run_config(
        {
            "model": {
                "preset": "nano",
                "max_seq_len": 16,
                "d_model": 16,
                "n_layers": 1,
                "n_heads": 2,
            },
            "data": {"path": str(data_dir)},
            "optim": {"warmup_steps": 2, **(optim or {})},
            "train": {
                "out_dir": str(out),
                "batch_size": 2,
                "eval_every": 5,
                "eval_batches": 1,
                "log_every": 1,
                "progress": False,
                **train,
            },
        }
    )


def test_token_limit_stops_at_the_first_step_past_it(data_dir, tmp_path):
    result = run(data_dir, tmp_path / "r", max_tokens=100)  # 32 tokens a step
    assert (result.stop_reason, result.step, result.tokens_seen) == ("max_tokens", 4, 128)
    metrics = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert metrics[0]["step"] == 0 and "val/loss" in metrics[0]  # the untrained baseline
    assert metrics[-1]["step"] == 4 and "val/loss" in metrics[-1]  # a final evaluation at the stop
    assert (tmp_path / "r" / "loss_curve.png").stat().st_size > 1000
    assert {p.name for p in (tmp_path / "r" / "checkpoints").iterdir()} == {"last", "best"}


def test_patience_stops_when_validation_stops_improving(data_dir, tmp_path):
    # With a learning rate of ~0 the validation loss cannot improve after the first evaluation.
    result = run(data_dir, tmp_path / "r", optim={"lr": 1e-12}, max_steps=1000, patience=2)
    assert result.stop_reason == "patience"
    assert result.step == 15  # best at 5, no improvement at 10 and 15


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    assert learning_rate(0, 0.0, cfg) == pytest.approx(0.1)
    assert learning_rate(9, 0.0, cfg) == pytest.approx(1.0)
    assert learning_rate(10, 0.0, cfg) == pytest.approx(1.0)
    assert learning_rate(50, 0.5, cfg) == pytest.approx(0.55)
    assert learning_rate(99, 1.0, cfg) == pytest.approx(0.1)
    linear = OptimConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=0, schedule="linear")
    assert learning_rate(5, 0.25, linear) == pytest.approx(0.75)
    assert not math.isnan(learning_rate(5, 2.0, cfg))


def test_a_diverging_loss_stops_before_the_step_with_one_clear_error(
    data_dir, tmp_path, monkeypatch
):
    from graft.errors import TrainingError
    from graft.objectives.batch import LossSum
    from graft.objectives.clm import CausalLM

    real_loss = CausalLM.loss
    calls = {"n": 0}

    def loss_that_explodes(self, model, batch):
        out = real_loss(self, model, batch)
        calls["n"] += 1
        return (
            LossSum(out.total * float("inf"), out.count)
            if calls["n"] > 6 and model.training
            else out
        )

    monkeypatch.setattr(CausalLM, "loss", loss_that_explodes)
    with pytest.raises(
        TrainingError, match=r"became (inf|nan) at step 6; the last checkpoint \(step 5\) is intact"
    ):
        run(data_dir, tmp_path / "r", max_steps=20)
    from graft.checkpoint import verify_checkpoint

    verify_checkpoint(tmp_path / "r" / "checkpoints" / "last")  # the step-5 checkpoint


def _loss_not_finite_at(monkeypatch, bad_calls: set[int]) -> None:
    """CausalLM's training loss becomes NaN on the given training calls (1-based)."""
    from graft.objectives.batch import LossSum
    from graft.objectives.clm import CausalLM

    real_loss = CausalLM.loss
    calls = {"n": 0}

    def loss(self, model, batch):
        out = real_loss(self, model, batch)
        if not model.training:
            return out
        calls["n"] += 1
        return LossSum(out.total * float("nan"), out.count) if calls["n"] in bad_calls else out

    monkeypatch.setattr(CausalLM, "loss", loss)


def test_a_loss_gone_bad_before_the_first_save_says_no_checkpoint_exists(
    data_dir, tmp_path, monkeypatch
):
    from graft.errors import TrainingError

    _loss_not_finite_at(monkeypatch, {2})
    with pytest.raises(TrainingError, match="at step 2; no checkpoint was written yet") as err:
        run(data_dir, tmp_path / "r", max_steps=20)
    assert "--resume" not in str(err.value)
    assert not (tmp_path / "r" / "checkpoints" / "last").exists()


def test_nonfinite_skip_skips_the_step_counts_it_and_stops_after_the_limit_in_a_row(
    data_dir, tmp_path, monkeypatch
):
    import torch
    from safetensors.torch import load_file

    from graft.errors import TrainingError

    _loss_not_finite_at(monkeypatch, {3, 7, 8})
    result = run(data_dir, tmp_path / "r", max_steps=10, nonfinite="skip", nonfinite_limit=3)
    assert (result.stop_reason, result.step) == ("max_steps", 10)
    rows = read_metrics(tmp_path / "r" / "metrics.jsonl")
    skipped = {row["step"]: row.get("nonfinite_skipped", 0) for row in rows if "lr" in row}
    assert [skipped[s] for s in range(1, 11)] == [0, 0, 1, 1, 1, 1, 2, 3, 3, 3]
    assert all(math.isfinite(row["train/loss"]) for row in rows if "train/loss" in row)
    weights = load_file(str(tmp_path / "r" / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())

    # Three in a row reach the limit: the run stops, naming the checkpoint it can go on from.
    _loss_not_finite_at(monkeypatch, {6, 7, 8})
    with pytest.raises(TrainingError, match=r"not finite for 3 steps in a row \(to step 8\)"):
        run(data_dir, tmp_path / "s", max_steps=10, nonfinite="skip", nonfinite_limit=3)


def test_resuming_a_finished_run_changes_nothing(data_dir, tmp_path):
    run(data_dir, tmp_path / "r", optim={"lr": 1e-12}, max_steps=1000, patience=2)
    files = sorted((tmp_path / "r").rglob("*"))
    before = {p: p.read_bytes() for p in files if p.is_file() and p.name != "config.yaml"}
    settings = config(data_dir, tmp_path / "r", {"lr": 1e-12}, max_steps=1000, patience=2)
    for _ in range(2):
        result = pretrain(settings, resume=True)
        assert result.already_finished and (result.stop_reason, result.step) == ("patience", 15)
    assert sorted((tmp_path / "r").rglob("*")) == files
    assert {p: p.read_bytes() for p in before} == before
    # A raised limit trains on.
    patient = settings.train.model_copy(update={"patience": 3})
    more = pretrain(settings.model_copy(update={"train": patient}), resume=True)
    assert not more.already_finished and more.step == 20


def test_the_progress_bar_shows_time_left_only_under_a_time_limit(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every run without train.max_minutes showed an empty `left=,` on its bar."""
    from tqdm import tqdm

    from graft.train import loop

    shown: list[str] = []

    class Bar(tqdm):  # the loop's bar, recording each postfix it is given
        def set_postfix(self, *args: Any, **kwargs: Any) -> None:
            super().set_postfix(*args, **kwargs)
            shown.append(self.postfix or "")

    monkeypatch.setattr(loop, "tqdm", Bar)
    run(data_dir, tmp_path / "steps", max_steps=3, progress=True)
    assert len(shown) == 3 and all(
        text.startswith("loss=") and "tok_s=" in text and "left" not in text for text in shown
    ), shown
    shown.clear()
    run(data_dir, tmp_path / "minutes", max_minutes=60, max_steps=3, progress=True)
    assert len(shown) == 3 and all(re.search(r"\bleft=59m\d\ds\b", text) for text in shown), shown


def test_a_checkpoint_write_defers_ctrl_c_but_keeps_an_ignored_sigint_ignored() -> None:
    """A run whose SIGINT is ignored (a background job of a shell script) died with exit 130
    when a SIGINT landed during a checkpoint write."""
    import os
    import signal

    from graft.train.loop import interrupts_deferred

    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)  # taken after the write, not during it
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
