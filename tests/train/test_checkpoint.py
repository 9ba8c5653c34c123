"""Checkpoints: atomic replacement, recovery from an interrupted save, corruption caught on load."""

import json

import pytest
import torch

from graft import checkpoint as ckpt
from graft.data.tokenizer import bytes_tokenizer
from graft.errors import CheckpointError
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel


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
