"""Hostile pickles: a Hugging Face pytorch_model.bin, or a checkpoint's optimizer.pt, whose
unpickling would run a command. graft reads both with weights_only=True, which refuses them; the
user must see one line saying the file tried to run code, never torch's traceback advising
weights_only=False, and the command must never run."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graft.checkpoint import (
    STATE_DIR,
    RngStates,
    TrainingState,
    restore_training_state,
    save_checkpoint,
)
from graft.cli import EXIT_BAD_INPUT, main
from graft.data.tokenizer import bytes_tokenizer
from graft.errors import CheckpointError
from graft.model.config import ModelConfig
from graft.model.convert.hf_export import export_hf
from graft.model.transformer import LanguageModel


class RunsCode:
    """Unpickled, it would run `touch MARKER`: pickling only records the call."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _bin_directory(directory: Path, extra: object | None, write: str) -> Path:
    """A tiny GPT-2 style Hugging Face directory whose weights are a pytorch_model.bin, with
    `extra` among its entries; written by torch.save, or (`extra` alone) by plain pickle."""
    tokenizer = bytes_tokenizer()
    torch.manual_seed(0)
    model = LanguageModel(
        ModelConfig(vocab_size=tokenizer.vocab_size, max_seq_len=16, d_model=16, n_heads=2)
    )
    export_hf(model, directory, tokenizer=tokenizer)
    weights: dict[str, object] = dict(load_file(str(directory / "model.safetensors")))
    (directory / "model.safetensors").unlink()
    if extra is not None:
        weights["lm_head.weight"] = extra
    with open(directory / "pytorch_model.bin", "wb") as handle:
        if write == "torch.save":
            torch.save(weights, handle)
        else:  # plain pickle, as old tools wrote (tensors pickled so load through code too)
            pickle.dump({"lm_head.weight": extra}, handle, protocol=2)
    return directory / "pytorch_model.bin"


@pytest.mark.parametrize("write", ["torch.save", "pickle"])
def test_generate_refuses_a_bin_that_runs_code_in_one_line(
    write: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tally: Callable[[str, str, int], None],
) -> None:
    marker = tmp_path / "pwned"
    weights = _bin_directory(tmp_path / "hf", RunsCode(marker), write)
    capsys.readouterr()
    tally("hostile pickles:", "tries", 1)
    assert main(["generate", str(tmp_path / "hf"), "--max-new-tokens", "2"]) == EXIT_BAD_INPUT
    assert not marker.exists()
    assert capsys.readouterr().err.splitlines() == [
        f"graft: error: {weights}: refused: the file tries to run code when loaded "
        "(pickle global posix.system); load only weights from sources you trust, as safetensors"
    ]
    tally("hostile pickles:", "refused in one line", 1)


def test_an_honest_bin_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The control: the same directory without the hostile entry generates."""
    _bin_directory(tmp_path / "hf", None, "torch.save")
    assert main(["generate", str(tmp_path / "hf"), "--prompt", "a", "--max-new-tokens", "2"]) == 0


def test_resume_refuses_an_optimizer_state_that_runs_code(
    tmp_path: Path, tally: Callable[[str, str, int], None]
) -> None:
    """optimizer.pt is read the same way; the manifest may vouch for it (a re-hashed copy)."""
    tokenizer = bytes_tokenizer()
    model = LanguageModel(
        ModelConfig(vocab_size=tokenizer.vocab_size, max_seq_len=16, d_model=16, n_heads=2)
    )
    optimizer = torch.optim.AdamW(model.parameters())
    rng = RngStates(torch_cpu=torch.get_rng_state(), data=torch.Generator().get_state())
    directory = save_checkpoint(
        tmp_path / "ckpt",
        model=model,
        tokenizer=tokenizer,
        run_config_yaml="{}\n",
        optimizer=optimizer,
        state=TrainingState(),
        rng=rng,
    )
    marker, path = tmp_path / "pwned", directory / STATE_DIR / "optimizer.pt"
    torch.save({"state": RunsCode(marker), "param_groups": []}, path)
    tally("hostile pickles:", "tries", 1)
    with pytest.raises(CheckpointError) as refused:
        restore_training_state(directory, model, optimizer, torch.Generator(), torch.device("cpu"))
    assert str(refused.value) == (
        f"{path}: refused: the file tries to run code when loaded (pickle global posix.system); "
        "load only weights from sources you trust, as safetensors"
    )
    assert not marker.exists()
    tally("hostile pickles:", "refused in one line", 1)
