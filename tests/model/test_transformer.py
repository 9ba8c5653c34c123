"""The transformer: causality, presets, GPT-2 and Llama styles from one class."""

import pytest
import torch
import torch.nn.functional as F

from graft.errors import ConfigError
from graft.model.config import PRESETS, ModelConfig, preset
from graft.model.transformer import LanguageModel

STYLES = {
    "gpt2": dict(norm="layernorm", positions="learned", mlp="gelu_tanh", bias=True),
    "llama": dict(norm="rmsnorm", positions="rope", mlp="swiglu", bias=False, n_kv_heads=2),
}


def tiny(style: str, **overrides) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=97,
        max_seq_len=32,
        d_model=32,
        n_layers=2,
        n_heads=4,
        **{**STYLES[style], **overrides},
    )
    return LanguageModel(config).eval()


@pytest.mark.parametrize("style", STYLES)
def test_changing_token_t_never_changes_logits_before_t(style):
    model = tiny(style)
    x = torch.randint(0, 97, (3, 20))
    with torch.no_grad():
        base = model(x).logits
        for t in (0, 7, 19):
            edited = x.clone()
            edited[:, t] = (edited[:, t] + 1) % 97
            out = model(edited).logits
            assert torch.equal(out[:, :t], base[:, :t]), f"position < {t} saw token {t}"
            assert not torch.allclose(out[:, t:], base[:, t:]), (
                "the edit must change something at or after t"
            )


@pytest.mark.parametrize("style", STYLES)
def test_chunked_forward_with_cache_equals_full_forward(style):
    from graft.model.kv_cache import KVCache

    model = tiny(style)
    x = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        full = model(x).logits
        cache = KVCache(model.config, 2, 24)
        parts = [
            model(x[:, :10], kv_cache=cache).logits,
            model(x[:, 10:11], kv_cache=cache).logits,
            model(x[:, 11:], kv_cache=cache).logits,
        ]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_styles_are_configs_of_one_class_with_llama_names():
    gpt2, llama = tiny("gpt2"), tiny("llama")
    assert type(gpt2) is type(llama)
    names = set(dict(llama.named_parameters()))
    for expected in (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.norm.weight",
    ):
        assert expected in names
    assert llama.model.layers[0].self_attn.k_proj.weight.shape == (2 * 8, 32)  # 2 kv heads of dim 8
    assert "model.embed_positions.weight" in dict(gpt2.named_parameters())
    assert not any(n.endswith("bias") for n in names)


def test_tied_head_shares_the_embedding():
    model = tiny("gpt2")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    untied = tiny("gpt2", tie_embeddings=False)
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


def test_gpt2_124m_preset_has_gpt2_small_parameter_count():
    with torch.device("meta"):
        model = LanguageModel(preset("gpt2-124m"))
    assert model.num_parameters() == 124_439_808  # GPT-2 small, tied head


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds(name):
    config = preset(name, vocab_size=PRESETS[name].get("vocab_size", 1000))
    with torch.device("meta"):
        model = LanguageModel(config)
    assert model.num_parameters() > 0


def test_unknown_preset_and_bad_heads_are_refused():
    with pytest.raises(ConfigError, match="unknown model preset"):
        preset("huge")
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        ModelConfig(vocab_size=10, d_model=32, n_heads=4, n_kv_heads=3)


def test_sequence_longer_than_context_is_refused():
    model = tiny("gpt2")
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_mean_pooled_classifier_reads_the_mean_of_real_tokens_only(attention):
    model = tiny(
        "gpt2", attention=attention, head="sequence", labels=("a", "b"), classifier_pooling="mean"
    )
    x = torch.randint(0, 97, (2, 12))
    last = torch.tensor([11, 6])  # row 1: 7 real tokens, then padding
    real = torch.arange(12)[None, :] <= last[:, None]
    mask = real[:, None, None, :] if attention == "bidirectional" else None
    with torch.no_grad():
        out = model(x, attention_mask=mask, heads=["classifier"], last_index=last)
        hidden, logits = out.hidden, out.class_logits
        expected = model.classifier(torch.stack([hidden[0].mean(0), hidden[1, :7].mean(0)]))
        assert torch.allclose(logits, expected, atol=1e-6)
        padded = x.clone()
        padded[1, 7:] = (padded[1, 7:] + 5) % 97  # other padding ids: row 1's logits must not move
        again = model(
            padded, attention_mask=mask, heads=["classifier"], last_index=last
        ).class_logits
    assert torch.allclose(again[1], logits[1], atol=1e-6)
    assert not hasattr(model, "pooler"), "mean pooling needs no pooler"


def test_mean_pooled_classifier_is_refused_at_export():
    from graft.model.convert.hf_export import hf_architecture

    config = tiny("gpt2", head="sequence", labels=("a", "b"), classifier_pooling="mean").config
    with pytest.raises(
        ConfigError, match="mean-pooled sequence classifier has no transformers class"
    ):
        hf_architecture(config)


def test_what_a_model_is_comes_from_one_property_each() -> None:
    """is_encoder and can_generate: the server, chat, generation and export all ask these."""
    decoder, encoder = preset("micro", vocab_size=64), preset("bert-micro", vocab_size=64)
    assert decoder.can_generate and not decoder.is_encoder
    assert encoder.is_encoder and not encoder.can_generate
    classifier = preset("micro", vocab_size=64, head="sequence", labels=("a", "b"))
    assert not classifier.can_generate and not classifier.is_encoder


@pytest.mark.parametrize("mlm_head", [False, True])
def test_every_lm_head_loss_equals_cross_entropy_of_its_logits(mlm_head):
    """Given targets, the LM head returns their summed cross-entropy (fused, or over the scored
    rows only for "masked_lm" and for BERT's biased head) and, where it forms logits, its hits:
    each must equal what the plain logits give."""
    model = tiny("gpt2", mlm_head=mlm_head, attention="bidirectional" if mlm_head else "causal")
    x = torch.randint(0, 97, (2, 12))
    targets = torch.randint(0, 97, (2, 12))
    targets[0, :5] = -100  # unscored positions
    targets[1, 7:] = -100
    with torch.no_grad():
        logits = model(x).logits
        scored = targets != -100
        expected = F.cross_entropy(logits[scored], targets[scored], reduction="sum")
        hits = int((logits[scored].argmax(-1) == targets[scored]).sum())
        for head in ("lm", "masked_lm"):
            out = model(x, heads=[head], targets=targets)
            assert out.logits is None, "a loss, not logits"
            torch.testing.assert_close(out.lm_loss, expected, rtol=1e-5, atol=1e-4)
            if head == "masked_lm" or mlm_head:
                assert int(out.lm_correct) == hits
            else:
                assert out.lm_correct is None  # the fused loss never forms the logits


def test_heads_are_computed_only_when_asked():
    model = tiny("gpt2", head="sequence", labels=("a", "b", "c"))
    x = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        bare = model(x, heads=[])
        assert bare.logits is None and bare.class_logits is None
        out = model(x, heads=["classifier"], last_index=torch.tensor([11, 4]))
    assert out.logits is None and out.class_logits.shape == (2, 3)
    torch.testing.assert_close(out.hidden, bare.hidden)
