"""Hugging Face decoders in and out, against transformers itself: tiny random models built from
configs (nothing downloaded), imported with graft and compared logit for logit, padded batches
included, and token for token under greedy generation; graft models exported and loaded back by
AutoModelForCausalLM; and the inputs that must be refused, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from graft.errors import CheckpointError, ConfigError
from graft.infer.generate import SamplingParams, generate
from graft.model.config import ModelConfig, RopeScaling
from graft.model.convert.hf import load_hf_model, read_hf_config
from graft.model.convert.hf_export import export_hf
from graft.model.transformer import LanguageModel

pytestmark = pytest.mark.parity

VOCAB, MAX_LEN, NEW_TOKENS = 96, 64, 32
_LLAMA_SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_LEN,
)

FAMILIES: dict[str, tuple[type, dict[str, object]]] = {
    "gpt2": (
        transformers.GPT2Config,
        dict(vocab_size=VOCAB, n_positions=MAX_LEN, n_embd=32, n_layer=2, n_head=4),
    ),
    "llama-gqa": (
        transformers.LlamaConfig,
        dict(**_LLAMA_SHAPE, num_key_value_heads=2, tie_word_embeddings=True),
    ),
    "llama-untied": (
        transformers.LlamaConfig,
        dict(**_LLAMA_SHAPE, num_key_value_heads=4, tie_word_embeddings=False),
    ),
    "llama3-rope-scaling": (
        transformers.LlamaConfig,
        dict(
            **_LLAMA_SHAPE,
            num_key_value_heads=2,
            rope_theta=10000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    "mistral": (
        transformers.MistralConfig,
        dict(**_LLAMA_SHAPE, num_key_value_heads=2, sliding_window=None),
    ),
    "qwen2": (
        transformers.Qwen2Config,
        dict(**_LLAMA_SHAPE, num_key_value_heads=2, tie_word_embeddings=True),
    ),
}


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Add seeded noise to every parameter, so zero-initialised biases and unit norm weights are
    exercised too (a wrong split or a dropped bias must show in the logits)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def _build_hf(family: str, **overrides: object) -> torch.nn.Module:
    config_cls, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_cls(**{**kwargs, **overrides}))
    _perturb(model, 1)
    return model.eval()


def _save(model: torch.nn.Module, directory: Path, how: str = "safetensors") -> Path:
    if how == "bin":  # transformers 5 writes safetensors only; older checkpoints are pickles
        model.config.save_pretrained(directory)
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    elif how == "sharded":
        model.save_pretrained(directory, max_shard_size="20KB")
        assert (directory / "model.safetensors.index.json").is_file()
    else:
        model.save_pretrained(directory)
    return directory


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, VOCAB, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    mask[2, 3:] = 0
    return ids, mask


def _graft_mask(mask: torch.Tensor) -> torch.Tensor:
    T = mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return causal[None, None] & mask.bool()[:, None, None, :]  # (B, 1, T, T)


def _assert_same_logits(graft_model: LanguageModel, hf_model: torch.nn.Module) -> None:
    ids, mask = _inputs()
    with torch.no_grad():
        ours = graft_model(ids).logits
        theirs = hf_model(input_ids=ids).logits
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
        ours_padded = graft_model(ids, attention_mask=_graft_mask(mask)).logits
        theirs_padded = hf_model(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(ours_padded[keep], theirs_padded[keep], atol=1e-4, rtol=0)


def _assert_same_greedy(graft_model: LanguageModel, hf_model: torch.nn.Module) -> None:
    prompt = [5, 17, 42, 8, 64, 3]
    ours = list(
        generate(graft_model, prompt, SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0))
    )
    hf_model.generation_config.eos_token_id = None  # a random model must not stop early
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            eos_token_id=None,
            pad_token_id=0,
        )
    assert ours == out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_import_matches_transformers(family: str, tmp_path: Path) -> None:
    hf_model = _build_hf(family)
    how = {"llama-untied": "bin", "qwen2": "sharded"}.get(family, "safetensors")
    model = load_hf_model(_save(hf_model, tmp_path, how))
    assert model.config.tie_embeddings == hf_model.config.tie_word_embeddings
    _assert_same_logits(model, hf_model)
    _assert_same_greedy(model, hf_model)


def test_imported_configs_carry_the_family_switches(tmp_path: Path) -> None:
    qwen = read_hf_config(_save(_build_hf("qwen2"), tmp_path / "q"))
    assert (qwen.bias, qwen.qkv_bias, qwen.n_kv_heads) == (False, True, 2)
    llama3 = read_hf_config(_save(_build_hf("llama3-rope-scaling"), tmp_path / "l"))
    assert llama3.rope_scaling == RopeScaling(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16
    )
    gpt2 = read_hf_config(_save(_build_hf("gpt2"), tmp_path / "g"))
    assert (gpt2.norm, gpt2.positions, gpt2.mlp, gpt2.bias, gpt2.d_ff) == (
        "layernorm",
        "learned",
        "gelu_tanh",
        True,
        128,
    )


_BASE = dict(vocab_size=VOCAB, max_seq_len=MAX_LEN, d_model=32, n_layers=2, n_heads=4)
_LLAMA_STYLE = dict(
    norm="rmsnorm", positions="rope", mlp="swiglu", bias=False, norm_eps=1e-6, d_ff=64
)
ROUND_TRIPS: dict[str, tuple[dict[str, object], str]] = {
    "gpt2-style": (dict(), "GPT2LMHeadModel"),
    "gpt2-untied-exact-gelu": (dict(tie_embeddings=False, mlp="gelu"), "GPT2LMHeadModel"),
    "llama-style-gqa": (dict(**_LLAMA_STYLE, n_kv_heads=2), "LlamaForCausalLM"),
    "llama-style-biased-untied": (
        dict(**{**_LLAMA_STYLE, "bias": True}, tie_embeddings=False),
        "LlamaForCausalLM",
    ),
    "llama3-scaled": (
        dict(**_LLAMA_STYLE, rope_scaling=RopeScaling(original_max_position_embeddings=16)),
        "LlamaForCausalLM",
    ),
    "qwen2-style": (dict(**_LLAMA_STYLE, n_kv_heads=2, attention_bias=True), "Qwen2ForCausalLM"),
}


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_export_round_trips_through_transformers(name: str, tmp_path: Path) -> None:
    fields, architecture = ROUND_TRIPS[name]
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(**{**_BASE, **fields})).eval()
    _perturb(model, 3)
    out = export_hf(model, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == [architecture]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf_model).__name__ == architecture
    _assert_same_logits(model, hf_model)
    _assert_same_greedy(model, hf_model)
    # and back again: the same config and the same tensors
    again = load_hf_model(out)
    skip = {"dropout", "d_ff"}  # d_ff comes back explicit; ff_dim is what matters
    assert again.config.model_dump(exclude=skip) == model.config.model_dump(exclude=skip)
    assert again.config.ff_dim == model.config.ff_dim
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, atol=0, rtol=0)


# ---------------------------------------------------------------- refusals


def _listing(directory: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(directory)), p.stat().st_size) for p in directory.rglob("*"))


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_hf_model(tmp_path)
    assert _listing(tmp_path) == []


def test_unknown_model_type_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bloom"}))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown model_type 'bloom'"):
        load_hf_model(tmp_path)


def test_directory_without_weights_is_refused(tmp_path: Path) -> None:
    _build_hf("llama-gqa").config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no weights"):
        load_hf_model(tmp_path)


def _rewrite(directory: Path, change) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return _listing(directory)


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    directory = _save(_build_hf("llama-gqa"), tmp_path)
    before = _rewrite(directory, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: tensor model\.layers\.1\.self_attn\.k_proj\.weight is missing",
    ):
        load_hf_model(directory)
    assert _listing(directory) == before


def test_misshaped_tensor_is_named(tmp_path: Path) -> None:
    directory = _save(_build_hf("qwen2"), tmp_path)
    _rewrite(
        directory, lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.bias", torch.zeros(31))
    )
    with pytest.raises(
        CheckpointError,
        match=r"tensor model\.layers\.0\.self_attn\.q_proj\.bias has shape \(31,\), "
        r"config\.json implies \(32,\)",
    ):
        load_hf_model(directory)


def test_misshaped_gpt2_tensor_is_named_as_gpt2_names_it(tmp_path: Path) -> None:
    directory = _save(_build_hf("gpt2"), tmp_path)
    _rewrite(
        directory, lambda t: t.__setitem__("transformer.h.1.mlp.c_fc.weight", torch.zeros(32, 100))
    )
    with pytest.raises(CheckpointError, match=r"tensor h\.1\.mlp\.c_fc\.weight has shape"):
        load_hf_model(directory)
    _rewrite(directory, lambda t: t.pop("transformer.h.0.ln_2.bias"))
    with pytest.raises(CheckpointError, match=r"tensor h\.0\.ln_2\.bias is missing"):
        load_hf_model(directory)


def test_real_sliding_window_is_refused_not_ignored(tmp_path: Path) -> None:
    directory = _save(_build_hf("mistral", sliding_window=16), tmp_path)
    with pytest.raises(CheckpointError, match="sliding_window 16 < max_position_embeddings 64"):
        load_hf_model(directory)
    # a window as long as the context is no window at all
    load_hf_model(_save(_build_hf("mistral", sliding_window=MAX_LEN), tmp_path / "wide"))


@pytest.mark.parametrize(
    "fields, reason",
    [
        (
            dict(positions="rope"),
            "positions=rope, norm=layernorm, mlp=gelu_tanh is no Hugging Face decoder",
        ),
        (dict(bias=False), "GPT-2 .* always has biases"),
        (dict(n_kv_heads=2), "GPT-2 has no grouped-query attention"),
        (
            dict(**{**_LLAMA_STYLE, "bias": True}, attention_bias=False),
            ".* match neither Llama nor Qwen2",
        ),
    ],
)
def test_unexportable_config_is_refused_before_writing(
    fields: dict[str, object], reason: str, tmp_path: Path
) -> None:
    model = LanguageModel(ModelConfig(**{**_BASE, **fields}))
    with pytest.raises(ConfigError, match=f"cannot export to Hugging Face: {reason}"):
        export_hf(model, tmp_path / "out")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
def test_attentions_and_hidden_states_match_transformers(family: str, tmp_path: Path) -> None:
    """What graft.insight.explain draws is what transformers reports: every block's softmax
    weights (its eager attention, the one that forms them), padded rows included, and the
    residual stream layer by layer (transformers' last one is after the final norm, which
    lm_logits_of applies)."""
    hf_model = _build_hf(family, attn_implementation="eager")
    model = load_hf_model(_save(hf_model, tmp_path))
    ids, mask = _inputs()
    with torch.no_grad():
        ours = model(ids, attention_mask=_graft_mask(mask), output_attentions=True)
        ours_hidden = model(ids, output_hidden_states=True).hidden_states
        theirs = hf_model(
            input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True
        )
        theirs_hidden = hf_model(input_ids=ids, output_hidden_states=True).hidden_states
        assert ours.attentions is not None and ours_hidden is not None
        assert len(ours.attentions) == len(theirs.attentions) == 2
        keep = mask.bool()  # queries at padding see different things by convention
        for mine, its in zip(ours.attentions, theirs.attentions):
            assert mine.shape == its.shape == (3, 4, 12, 12)
            torch.testing.assert_close(
                mine.transpose(1, 2)[keep], its.transpose(1, 2)[keep], atol=1e-5, rtol=0
            )
        assert len(ours_hidden) == len(theirs_hidden) == 3
        for mine, its in zip(ours_hidden[:-1], theirs_hidden[:-1]):
            torch.testing.assert_close(mine, its, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            model.lm_logits_of(ours_hidden[-1]),
            hf_model.lm_head(theirs_hidden[-1]),
            atol=1e-4,
            rtol=0,
        )
