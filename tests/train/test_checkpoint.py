"""Checkpoints: atomic replacement, recovery from an interrupted save, corruption caught on load."""

import json

import pytest
import torch

from graft import checkpoint as ckpt
from graft.data.tokenizer import bytes_tokenizer
from graft.errors import CheckpointError
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel
from graft.train.resume import recover_run, resume_point


def small_model(seed: int = 0, **kw) -> LanguageModel:
    torch.manual_seed(seed)
    return LanguageModel(
        ModelConfig(vocab_size=262, max_seq_len=16, d_model=16, n_layers=1, n_heads=2, **kw)
    )


def save(path, model):
    return ckpt.save_checkpoint(
        path, model=model, tokenizer=bytes_tokenizer(), run_config_yaml="model: {}\n"
    )


@pytest.mark.parametrize(
    "style",
    [
        {},
        {
            "positions": "rope",
            "norm": "rmsnorm",
            "mlp": "swiglu",
            "bias": False,
            "tie_embeddings": False,
        },
    ],
)
def test_round_trip_gives_the_same_logits(tmp_path, style):
    model = small_model(**style).eval()
    save(tmp_path / "c", model)
    loaded, tokenizer = ckpt.load_model(tmp_path / "c")
    x = torch.randint(0, 262, (2, 8))
    torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
    assert tokenizer.sha256 == bytes_tokenizer().sha256
    assert (
        loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ) == model.config.tie_embeddings


def test_replacing_keeps_no_temporaries_and_recovers_an_interrupted_swap(tmp_path):
    save(tmp_path / "last", small_model(0))
    save(tmp_path / "last", small_model(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # A crash between "move the old one aside" and "move the new one in" leaves only .last.old.
    (tmp_path / "last").rename(tmp_path / ".last.old")
    assert ckpt.resolve_checkpoint(tmp_path / "last") == tmp_path / ".last.old"
    ckpt.load_model(tmp_path / "last")


def test_truncated_or_corrupted_files_are_named(tmp_path):
    save(tmp_path / "c", small_model())
    weights = tmp_path / "c" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: .* bytes, expected .*truncated"):
        ckpt.load_model(tmp_path / "c")
    corrupt = bytearray(data)
    corrupt[-5] ^= 0xFF
    weights.write_bytes(bytes(corrupt))
    with pytest.raises(CheckpointError, match="model.safetensors: contents do not match"):
        ckpt.load_model(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest.json: missing"):
        ckpt.load_model(tmp_path / "c")


def test_config_and_weights_that_disagree_are_refused(tmp_path):
    save(tmp_path / "c", small_model())
    config_path = tmp_path / "c" / "config.json"
    raw = json.loads(config_path.read_text())
    raw["model"]["d_model"] = 32
    config_path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError):
        ckpt.load_model(tmp_path / "c")  # the manifest already catches the edited config
    model = LanguageModel(ckpt.read_model_config(tmp_path / "c"))
    with pytest.raises(CheckpointError, match="has shape"):
        ckpt.load_weights(model, tmp_path / "c")


def test_every_file_follows_the_umask(tmp_path):
    """safetensors creates its files 0600: a serving account could not read the weights."""
    import os

    from graft.model.convert.hf_export import export_hf

    previous = os.umask(0o022)
    try:
        save(tmp_path / "c", small_model())
        export_hf(small_model(), tmp_path / "hf", tokenizer=bytes_tokenizer())
    finally:
        os.umask(previous)
    for folder in (tmp_path / "c", tmp_path / "hf"):
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.rglob("*") if p.is_file()}
        assert "model.safetensors" in modes
        assert set(modes.values()) == {"0o644"}, modes


def test_what_interrupted_saves_left_is_cleared_and_said(tmp_path):
    from graft.atomic_files import recover_folder

    save(tmp_path / "last", small_model(0))
    save(tmp_path / "best", small_model(0))
    (tmp_path / ".last.0123456789ab.partial").mkdir()  # a save killed while being written
    (tmp_path / ".last.0123456789ab.partial" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".metrics.jsonl.0123456789ab.tmp").write_text("{")
    (tmp_path / "best").rename(tmp_path / ".best.old")  # killed between the two renames
    (tmp_path / "notes.txt").write_text("not ours to touch")
    said = recover_folder(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last", "notes.txt"]
    assert len(said) == 3 and any("put back best" in line for line in said), said
    ckpt.verify_checkpoint(tmp_path / "best")
    assert recover_folder(tmp_path) == []


def test_a_run_directory_keeps_old_folders_that_are_not_checkpoint_swaps(tmp_path):
    """The run directory is a path the user chose: only graft's temporary files are cleared
    there; a `.config.old` folder (say, in a home directory) is never renamed."""
    run = tmp_path / "run"
    (run / ".config.old").mkdir(parents=True)
    (run / ".config.yaml.0123456789ab.tmp").write_text("half")
    said: list[str] = []
    recover_run(run, said.append)
    assert sorted(p.name for p in run.iterdir()) == [".config.old"]
    assert len(said) == 1 and "removed .config.yaml.0123456789ab.tmp" in said[0]


def test_a_run_that_never_finished_a_save_starts_afresh_with_or_without_resume(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / ".last.0123456789ab.partial").mkdir(parents=True)
    said: list[str] = []
    recover_run(run, said.append)
    assert resume_point(run, resume=False, say=said.append) is None
    assert resume_point(run, resume=True, say=said.append) is None
    assert "removed .last.0123456789ab.partial" in said[0]
    assert all("holds no complete checkpoint" in line for line in said[1:]) and len(said) == 3
    save(run / "checkpoints" / "last", small_model())
    with pytest.raises(ckpt.ConfigError, match="already holds a run; pass --resume"):
        resume_point(run, resume=False, say=said.append)
    assert resume_point(run, resume=True, say=said.append) == run / "checkpoints" / "last"
