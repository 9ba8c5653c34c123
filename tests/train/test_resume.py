"""Resume is exact: 200 steps straight == 100 steps, interrupted, resumed, 100 more (bitwise)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graft.checkpoint import verify_checkpoint
from graft.config import validate_run_config
from graft.data.shards import prepare_shards
from graft.data.tokenizer import bytes_tokenizer
from graft.errors import ConfigError
from graft.objectives.clm import CausalLM
from graft.train.pretrain import pretrain


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    (root / "docs").mkdir()
    for i in range(20):
        (root / "docs" / f"{i}.txt").write_text(
            f"Document {i}. " + "the quick brown fox jumps over the lazy dog " * (5 + i)
        )
    prepare_shards([root / "docs"], bytes_tokenizer(), root / "data", progress=False)
    return root / "data"


def config(data_dir: Path, out: Path, **train):
    return validate_run_config(
        {
            # dropout > 0, so the restored RNG state matters too
            "model": {
                "preset": "nano",
                "max_seq_len": 32,
                "d_model": 32,
                "n_layers": 2,
                "n_heads": 2,
                "dropout": 0.1,
            },
            "data": {"path": str(data_dir)},
            "optim": {"lr": 3e-3, "warmup_steps": 20},
            "train": {
                "out_dir": str(out),
                "batch_size": 4,
                "grad_accum": 2,
                "max_steps": 200,
                "eval_every": 50,
                "eval_batches": 2,
                "log_every": 10,
                "progress": False,
                "deterministic": True,
                **train,
            },
        }
    )


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def test_interrupted_and_resumed_run_ends_with_identical_weights(data_dir, tmp_path, monkeypatch):
    straight = pretrain(config(data_dir, tmp_path / "straight"))
    assert straight.step == 200 and straight.stop_reason == "max_steps"

    # Ctrl-C while drawing the batch of step 101: the checkpoint of step 100 is the last one.
    draw = CausalLM.train_batch
    calls = {"n": 0}

    def interrupting(self, batch_size, generator):
        calls["n"] += 1
        if calls["n"] > 100 * 2:  # grad_accum draws per step
            raise KeyboardInterrupt
        return draw(self, batch_size, generator)

    monkeypatch.setattr(CausalLM, "train_batch", interrupting)
    first = pretrain(config(data_dir, tmp_path / "split"))
    assert first.stop_reason == "interrupted" and first.step == 100
    verify_checkpoint(tmp_path / "split" / "checkpoints" / "last")
    monkeypatch.setattr(CausalLM, "train_batch", draw)

    resumed = pretrain(config(data_dir, tmp_path / "split"), resume=True)
    assert resumed.step == 200 and resumed.tokens_seen == straight.tokens_seen
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The metrics log was truncated at the resume point and continued, not duplicated.
    steps = [
        line
        for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
        if '"train/loss"' in line
    ]
    assert len(steps) == 20


def test_resume_refuses_a_changed_model(data_dir, tmp_path):
    pretrain(config(data_dir, tmp_path / "run", max_steps=10, eval_every=10))
    changed = validate_run_config(
        {
            **config(data_dir, tmp_path / "run").model_dump(mode="json"),
            "model": {**config(data_dir, tmp_path / "run").model.model_dump(), "n_layers": 3},
        }
    )
    before = sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "run").rglob("*"))
    # Refused while resolving, before setup: the run's model is its last checkpoint's.
    with pytest.raises(
        ConfigError, match="--resume: .*model.n_layers: run says 3, checkpoint has 2"
    ):
        pretrain(changed, resume=True)
    assert sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "run").rglob("*")) == before
