"""Logging backends (train.log) and block norms (train.norms_every): the TensorBoard event file a
run writes, read back with tensorboard's own reader, holds the rows of metrics.jsonl; a resumed
run leaves one point per step there; norms come every N steps; a missing package or a bad name
is refused in one line."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from graft.checkpoint import load_model
from graft.config import load_run_config, validate_run_config
from graft.data.shards import prepare_shards
from graft.data.tokenizer import bytes_tokenizer
from graft.errors import ConfigError
from graft.model.config import preset
from graft.model.transformer import LanguageModel
from graft.objectives.clm import CausalLM
from graft.train.log_backends import TENSORBOARD_DIR, TensorBoardLog
from graft.train.metrics_log import MetricsLog, read_metrics
from graft.train.norms import gradient_norms, part_of, weight_norms
from graft.train.pretrain import pretrain

PARTS = {"embeddings", "block.0", "block.1", "head"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("logging")
    (root / "a.txt").write_text("abcdefgh " * 400)
    (root / "b.txt").write_text("hgfedcba " * 400)
    prepare_shards(
        [root / "a.txt", root / "b.txt"], bytes_tokenizer(), root / "data", progress=False
    )
    return root / "data"


def config(data_dir: Path, out: Path, **train: Any):
    return validate_run_config(
        {
            "model": {
                "preset": "nano",
                "max_seq_len": 16,
                "d_model": 16,
                "n_layers": 2,
                "n_heads": 2,
            },
            "data": {"path": str(data_dir)},
            "optim": {"warmup_steps": 2, "grad_clip": 0.01},
            "train": {
                "out_dir": str(out),
                "batch_size": 2,
                "eval_batches": 1,
                "log_every": 1,
                "progress": False,
                "log": ["jsonl", "tensorboard"],
                "norms_every": 2,
                **train,
            },
        }
    )


def board(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's event files as TensorBoard shows it: (step, value) by tag."""
    reader = EventAccumulator(str(run / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    reader.Reload()
    return {
        tag: [(event.step, event.value) for event in reader.Scalars(tag)]
        for tag in reader.Tags()["scalars"]
    }


def jsonl(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The same, from metrics.jsonl."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in read_metrics(run / "metrics.jsonl"):
        for key, value in row.items():
            if key != "step":
                series.setdefault(key, []).append((row["step"], value))
    return series


def assert_same_series(run: Path) -> None:
    events, rows = board(run), jsonl(run)
    assert sorted(events) == sorted(rows)
    for tag, points in rows.items():
        assert [step for step, _ in events[tag]] == [step for step, _ in points], tag
        for (_, shown), (_, written) in zip(events[tag], points):
            # TensorBoard keeps float32 of the full value, metrics.jsonl six decimals.
            assert shown == pytest.approx(written, rel=1e-6, abs=5e-7), tag


def test_the_event_file_holds_the_rows_of_metrics_jsonl(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    pretrain(config(data_dir, run, max_steps=4, eval_every=4))
    assert len(list((run / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 1
    assert_same_series(run)
    events = board(run)
    assert [step for step, _ in events["train/loss"]] == [1, 2, 3, 4]
    assert [step for step, _ in events["val/loss"]] == [0, 4]
    # Norms every 2 steps, of every part, finite and positive.
    norm_tags = {tag for tag in events if tag.startswith("norm/")}
    assert norm_tags == {f"norm/{kind}/{part}" for kind in ("weight", "grad") for part in PARTS}
    for tag in norm_tags:
        assert [step for step, _ in events[tag]] == [2, 4], tag
        assert all(math.isfinite(value) and value > 0 for _, value in events[tag]), tag
    # The parts' gradient norms make up the global one before clipping (optim.grad_clip is far
    # below it, so norms taken after clipping would not)...
    for step, whole in events["grad_norm"][1::2]:
        parts = [dict(events[f"norm/grad/{part}"])[step] for part in PARTS]
        assert whole > 0.1 and math.hypot(*parts) == pytest.approx(whole, rel=1e-5)
    # ... and the weight norms are those of the weights after the step's update.
    model, _ = load_model(run / "checkpoints" / "last")
    for tag, value in weight_norms(model).items():
        assert dict(events[tag])[4] == pytest.approx(value, rel=1e-6), tag


def test_a_resumed_run_leaves_one_point_per_step(data_dir: Path, tmp_path: Path, monkeypatch):
    run = tmp_path / "run"
    # Ctrl-C while drawing step 5's batch: step 4 (train and norms) is logged, the last
    # checkpoint is step 3's, so the resume trains step 4 again.
    draw = CausalLM.train_batch
    calls = {"n": 0}

    def interrupting(self, batch_size, generator):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return draw(self, batch_size, generator)

    monkeypatch.setattr(CausalLM, "train_batch", interrupting)
    first = pretrain(config(data_dir, run, max_steps=6, eval_every=3))
    assert first.stop_reason == "interrupted" and first.step == 4
    assert [step for step, _ in board(run)["norm/grad/block.0"]] == [2, 4]
    monkeypatch.setattr(CausalLM, "train_batch", draw)

    resumed = pretrain(config(data_dir, run, max_steps=6, eval_every=3), resume=True)
    assert resumed.step == 6
    assert len(list((run / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2
    events = board(run)
    assert [step for step, _ in events["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [step for step, _ in events["norm/grad/block.0"]] == [2, 4, 6]
    assert [step for step, _ in events["val/loss"]] == [0, 3, 6]
    assert_same_series(run)


def test_a_fresh_run_replaces_the_old_event_files(tmp_path: Path) -> None:
    old = TensorBoardLog(tmp_path, resume_from_step=None)
    old.write(7, {"train/loss": 1.0})
    old.close()
    fresh = TensorBoardLog(tmp_path, resume_from_step=None)
    fresh.write(1, {"train/loss": 2.0, "flag": True})  # a boolean is not a scalar
    fresh.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    reader = EventAccumulator(str(tmp_path))
    reader.Reload()
    assert reader.Tags()["scalars"] == ["train/loss"]
    assert [(e.step, e.value) for e in reader.Scalars("train/loss")] == [(1, 2.0)]


def test_norms_are_grouped_by_block_and_match_a_direct_computation() -> None:
    torch.manual_seed(0)
    model = LanguageModel(
        preset("nano", vocab_size=256, max_seq_len=16, d_model=16, n_layers=2, n_heads=2)
    )
    assert part_of("model.layers.1.mlp.up_proj.weight") == "block.1"
    assert part_of("_orig_mod.model.layers.12.self_attn.q_proj.lora_A.default.weight") == (
        "block.12"
    )
    assert part_of("model.embed_positions.weight") == "embeddings"
    assert part_of("model.norm.weight") == part_of("lm_head.weight") == "head"
    block = torch.cat([p.flatten() for p in model.model.layers[1].parameters()])
    weights = weight_norms(model)
    assert set(weights) == {f"norm/weight/{part}" for part in PARTS}
    assert weights["norm/weight/block.1"] == pytest.approx(block.norm().item(), rel=1e-5)
    assert gradient_norms(model) == {}  # no backward yet
    model(torch.randint(0, 256, (2, 8)), targets=torch.randint(0, 256, (2, 8))).lm_loss.backward()
    grads = gradient_norms(model)
    grad = torch.cat([p.grad.flatten() for p in model.model.layers[1].parameters()])
    assert grads["norm/grad/block.1"] == pytest.approx(grad.norm().item(), rel=1e-5)
    # A frozen block is not a part that trains.
    model.model.layers[0].requires_grad_(False)
    assert "norm/weight/block.0" not in weight_norms(model)


def test_private_training_logs_weight_norms_only(data_dir: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    dp = {"noise_multiplier": 1.0, "batch": 4}
    cfg = config(data_dir, run, max_steps=2, eval_every=2, log_every=2, log=["jsonl"])
    pretrain(validate_run_config({**cfg.model_dump(mode="json"), "dp": dp}))
    assert "no gradient norms under dp" in capsys.readouterr().err
    keys = {key for row in read_metrics(run / "metrics.jsonl") for key in row}
    assert {f"norm/weight/{part}" for part in PARTS} <= keys
    assert not any(key.startswith("norm/grad/") for key in keys)
    assert not (run / TENSORBOARD_DIR).exists()  # train.log without tensorboard


def test_log_and_norm_settings_are_checked() -> None:
    assert load_run_config(None, ["train.log=jsonl,tensorboard"]).train.log == (
        "jsonl",
        "tensorboard",
    )
    assert load_run_config(None, ["train.log=[wandb, wandb]"]).train.log == ("wandb",)
    assert load_run_config(None, []).train.norms_every is None
    with pytest.raises(ConfigError, match=r"train\.log\.1: .*'tensorboard'.*got 'tensorbord'"):
        load_run_config(None, ["train.log=jsonl,tensorbord"])
    with pytest.raises(ConfigError, match=r"train\.norms_every: .*greater than or equal to 1"):
        load_run_config(None, ["train.norms_every=0"])


# Each of 2 processes (gloo) holds half of every parameter and gradient of an FSDP2 model;
# rank 0 writes the norms they agree on beside those of the same model kept whole.
FSDP_NORMS = """
import copy, json, sys
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from graft.model.config import preset
from graft.model.transformer import LanguageModel
from graft.train.norms import gradient_norms, weight_norms

dist.init_process_group("gloo")
torch.manual_seed(0)
model = LanguageModel(preset("nano", vocab_size=256, max_seq_len=16, d_model=16, n_layers=2))
whole = copy.deepcopy(model)
ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
for block in model.model.layers:
    fully_shard(block)
fully_shard(model)
assert all(isinstance(p, DTensor) for p in model.parameters())
for m in (model, whole):  # the same batch on both ranks: FSDP's average is the batch's gradient
    m(ids, targets=ids).lm_loss.backward()
sharded = {**weight_norms(model), **gradient_norms(model)}
kept = {**weight_norms(whole), **gradient_norms(whole)}
if dist.get_rank() == 0:
    json.dump({"sharded": sharded, "whole": kept}, open(sys.argv[1], "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_fsdp_norms_are_those_of_the_whole_model(tmp_path: Path) -> None:
    script, out = tmp_path / "fsdp_norms.py", tmp_path / "norms.json"
    script.write_text(FSDP_NORMS)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*launcher, str(script), str(out)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    norms = json.loads(out.read_text())
    assert norms["sharded"].keys() == norms["whole"].keys()
    assert len(norms["whole"]) == 2 * len(PARTS)
    for key, value in norms["whole"].items():
        assert norms["sharded"][key] == pytest.approx(value, rel=1e-5), key


@pytest.mark.parametrize(
    ("backend", "fix"),
    [("tensorboard", "pip install 'graft[tensorboard]'"), ("wandb", "pip install wandb")],
)
@pytest.mark.parametrize("writes", [True, False])
def test_a_backend_that_is_not_installed_is_refused_in_one_line(
    tmp_path: Path, monkeypatch, backend: str, fix: str, writes: bool
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == backend else find_spec(name)
    )
    with pytest.raises(ConfigError) as refused:
        MetricsLog(tmp_path, writes=writes, backends=["jsonl", backend])
    assert str(refused.value) == f"train.log: {backend} is not installed; {fix}, or drop it"
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_pretrain_lines_go_to_echo(data_dir: Path, tmp_path: Path, capsys) -> None:
    """A Python caller's `echo` gets the run's lines: they used to reach standard output (and
    the notices standard error) whatever it gave, as `finetune` would not."""
    lines: list[str] = []
    cfg = config(data_dir, tmp_path / "run", max_steps=2, eval_every=2, log_every=2)
    pretrain(cfg, echo=lines.append)
    out, err = capsys.readouterr()
    assert (out, err) == ("", "")
    assert [line.split(":")[0] for line in lines] == ["step 2"]
    assert "val/loss" in lines[0]
    # A notice too (here privacy's, without gradient norms), where the CLI's go to stderr.
    dp = {"noise_multiplier": 1.0, "batch": 4}
    private = {**cfg.model_dump(mode="json"), "dp": dp}
    private["train"]["out_dir"] = str(tmp_path / "private")
    lines.clear()
    pretrain(validate_run_config(private), echo=lines.append)
    assert capsys.readouterr() == ("", "")
    assert any("no gradient norms under dp" in line for line in lines), lines
