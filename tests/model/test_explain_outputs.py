"""What the model gives a caller explaining a prediction (graft.insight.explain), asked for
explicitly: attention weights equal to a reference softmax(q k^T / sqrt(D) + mask) computed here
from the module's own weights, hidden states the LM head reads back into the model's logits, and
token embeddings given in place of ids."""

from __future__ import annotations

import math

import pytest
import torch

from graft.model.config import ModelConfig
from graft.model.kv_cache import KVCache
from graft.model.transformer import LanguageModel, apply_rotary, padding_attention_mask

STYLES = {
    "gpt2": dict(norm="layernorm", positions="learned", mlp="gelu_tanh", bias=True),
    "llama-gqa": dict(norm="rmsnorm", positions="rope", mlp="swiglu", bias=False, n_kv_heads=2),
    "bert": dict(attention="bidirectional", norm_position="post", mlm_head=True, type_vocab_size=2),
}
VOCAB = 61


def tiny(style: str) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=VOCAB,
        max_seq_len=24,
        d_model=32,
        n_layers=2,
        n_heads=4,
        init_std=0.3,  # peaked weights: a wrong mask or scale shows
        **STYLES[style],
    )
    return LanguageModel(config).eval()


def reference_weights(
    model: LanguageModel, layer: int, x: torch.Tensor, real: torch.Tensor
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) of one block, head by head, from its weights and its input
    x (B, T, C); real (B, T) marks the keys that are not padding."""
    config, block = model.config, model.model.layers[layer]
    attn = block.self_attn
    h = block.input_layernorm(x) if config.norm_position == "pre" else x
    B, T, _ = x.shape
    H, K, D = config.n_heads, config.kv_heads, config.head_dim
    q = attn.q_proj(h).view(B, T, H, D).transpose(1, 2)
    k = attn.k_proj(h).view(B, T, K, D).transpose(1, 2)
    if config.positions == "rope":
        cos, sin = model.model.rotary(None, 0, T)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    out = torch.empty(B, H, T, T)
    for head in range(H):
        kv = head // (H // K)  # grouped-query: consecutive query heads share a kv head
        scores = q[:, head] @ k[:, kv].transpose(-2, -1) / math.sqrt(D)  # (B, T, T)
        allowed = real[:, None, :].expand(B, T, T)
        if config.attention == "causal":
            allowed = allowed & torch.ones(T, T, dtype=torch.bool).tril()
        scores = torch.where(allowed, scores, torch.tensor(float("-inf")))
        out[:, head] = torch.exp(scores - scores.amax(-1, keepdim=True))
        out[:, head] /= out[:, head].sum(-1, keepdim=True)
    return out


@pytest.mark.parametrize("style", STYLES)
def test_attentions_equal_the_reference_softmax(style: str) -> None:
    model = tiny(style)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    real = torch.ones(2, 9, dtype=torch.bool)
    real[1, 6:] = False  # the second row is right-padded
    mask = padding_attention_mask(real, causal=model.config.attention == "causal")
    with torch.no_grad():
        plain = model(ids, attention_mask=mask)
        out = model(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
        unmasked = model(ids[:1], output_attentions=True, output_hidden_states=True)
    assert out.attentions is not None and out.hidden_states is not None
    assert len(out.attentions) == model.config.n_layers
    assert len(out.hidden_states) == model.config.n_layers + 1
    # Forming the weights explicitly gives what the fused kernel gives.
    assert plain.logits is not None and out.logits is not None
    torch.testing.assert_close(out.logits, plain.logits, atol=1e-5, rtol=0)
    for layer, weights in enumerate(out.attentions):
        assert weights.shape == (2, 4, 9, 9)
        expected = reference_weights(model, layer, out.hidden_states[layer], real)
        torch.testing.assert_close(weights, expected, atol=1e-6, rtol=1e-5)
    # Without a mask the model's own causal or full attention is used: the same weights.
    for layer, weights in enumerate(unmasked.attentions or ()):
        expected = reference_weights(
            model, layer, out.hidden_states[layer][:1], torch.ones(1, 9, dtype=torch.bool)
        )
        torch.testing.assert_close(weights, expected, atol=1e-6, rtol=1e-5)


def test_the_reference_sees_a_wrong_mask() -> None:
    """The reference can fail: the same weights read as bidirectional are not causal ones."""
    model = tiny("gpt2")
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(ids, output_attentions=True, output_hidden_states=True, causal=False)
    assert out.attentions is not None and out.hidden_states is not None
    expected = reference_weights(model, 0, out.hidden_states[0], torch.ones(1, 9, dtype=torch.bool))
    assert not torch.allclose(out.attentions[0], expected, atol=1e-3)


@pytest.mark.parametrize("style", STYLES)
def test_the_lens_on_the_last_hidden_state_gives_the_logits(style: str) -> None:
    model = tiny(style)
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        assert out.hidden_states is not None and out.logits is not None
        torch.testing.assert_close(
            model.lm_logits_of(out.hidden_states[-1]), out.logits, atol=1e-5, rtol=0
        )
        # An earlier layer predicts something else: the lens reads each layer, not the output.
        assert not torch.allclose(model.lm_logits_of(out.hidden_states[1]), out.logits, atol=1e-2)


@pytest.mark.parametrize("style", STYLES)
def test_token_embeddings_in_place_of_ids(style: str) -> None:
    model = tiny(style)
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    embeds = model.token_embeddings(ids)
    with torch.no_grad():
        by_ids, by_embeds = model(ids).logits, model(inputs_embeds=embeds).logits
        zeroed = model(inputs_embeds=torch.zeros_like(embeds)).logits
    assert by_ids is not None and by_embeds is not None and zeroed is not None
    torch.testing.assert_close(by_embeds, by_ids, atol=0, rtol=0)
    assert not torch.allclose(zeroed, by_ids, atol=1e-3)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(ids, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model()


def test_attentions_with_a_cache_cover_the_past() -> None:
    model = tiny("llama-gqa")
    ids = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids, output_attentions=True)
        cache = KVCache(model.config, 1, 10)
        model(ids[:, :6], kv_cache=cache)
        tail = model(ids[:, 6:], kv_cache=cache, output_attentions=True)
    assert full.attentions is not None and tail.attentions is not None
    for whole, part in zip(full.attentions, tail.attentions):
        assert part.shape == (1, 4, 4, 10)  # four new queries over all ten keys
        torch.testing.assert_close(part, whole[:, :, 6:], atol=1e-6, rtol=1e-5)


def test_the_default_call_records_nothing() -> None:
    out = tiny("gpt2")(torch.zeros(1, 3, dtype=torch.long))
    assert out.attentions is None and out.hidden_states is None
