"""`graft export --format gguf` end to end: a Llama-style checkpoint becomes a GGUF file that reads
back."""

import subprocess
import sys

import pytest
import torch

from graft.checkpoint import save_checkpoint
from graft.data.tokenizer import bytes_tokenizer
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel

pytestmark = [pytest.mark.parity, pytest.mark.e2e]


def checkpoint(tmp_path, **style):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=262, max_seq_len=32, d_model=64, n_layers=1, n_heads=2, **style)
    return save_checkpoint(
        tmp_path / "ckpt",
        model=LanguageModel(config),
        tokenizer=bytes_tokenizer(),
        run_config_yaml="model: {}\n",
    )


def graft(*args):
    return subprocess.run(
        [sys.executable, "-m", "graft", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_export_gguf_writes_a_file_the_reader_verifies(tmp_path):
    ckpt = checkpoint(tmp_path, norm="rmsnorm", positions="rope", mlp="swiglu", bias=False)
    done = graft("export", ckpt, "--format", "gguf", "--dtype", "f32", "--out", tmp_path / "m.gguf")
    assert done.returncode == 0, done.stderr
    assert (
        "verify: gguf reader found all" in done.stdout and (tmp_path / "m.gguf").stat().st_size > 0
    )


def test_export_gguf_refuses_a_gpt2_style_model_in_one_line(tmp_path):
    done = graft("export", checkpoint(tmp_path), "--format", "gguf", "--out", tmp_path / "m.gguf")
    assert done.returncode == 2
    assert (
        done.stderr.startswith("graft: error: cannot export to GGUF")
        and done.stderr.count("\n") == 1
    )
    assert not (tmp_path / "m.gguf").exists()
