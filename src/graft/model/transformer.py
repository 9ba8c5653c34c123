"""graft's one transformer: a decoder-style backbone parameterised by ModelConfig, plus the LM head.

GPT-2 style (learned positions, LayerNorm, GELU MLP, biases) and Llama style (RoPE, RMSNorm,
SwiGLU, grouped-query attention, no biases) are configs of these classes. Module names follow
Hugging Face Llama (`model.embed_tokens`, `model.layers.N.self_attn.q_proj`, `mlp.gate_proj`,
`model.norm`, `lm_head`) so state dicts and LoRA target names carry over without renaming; other
layouts (GPT-2's fused `c_attn`) are converted at the edge.

Shape letters in comments: B batch, T query length, S key length, C d_model, H heads,
K kv heads, D head dim, V vocabulary.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from graft.model.config import ModelConfig, RopeScaling

if TYPE_CHECKING:
    from graft.model.kv_cache import KVCache


def _norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


class RotaryEmbedding(nn.Module):
    """RoPE in the Hugging Face Llama layout: the two halves of each head are rotated together
    (`rotate_half`), not interleaved pairs, so imported Llama weights need no permutation."""

    # Buffers, registered in __init__.
    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        if config.rope_scaling is not None:
            inv_freq = _llama3_scaled(inv_freq, config.rope_scaling)
        angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # (max_seq_len, D)
        # Not persistent: derived from the config, so checkpoints do not carry them.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(
        self, position_ids: torch.Tensor | None, start: int, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin broadcastable to (B, H, T, D): (B, 1, T, D) gathered at position_ids, or
        (1, 1, T, D) sliced from `start` when positions are consecutive (no gather, no copy)."""
        if position_ids is None:
            return self.cos[None, None, start : start + length], self.sin[
                None, None, start : start + length
            ]
        return self.cos[position_ids].unsqueeze(1), self.sin[position_ids].unsqueeze(1)


def _llama3_scaled(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """Llama-3 frequency scaling, as transformers' `llama3` rope type computes it: long wavelengths
    divided by `factor`, short ones kept, and a linear blend (in 1/wavelength) for the band
    between."""
    wavelen = 2 * math.pi / inv_freq
    context = scaling.original_max_position_embeddings
    long_wave, short_wave = context / scaling.low_freq_factor, context / scaling.high_freq_factor
    smooth = (context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    scaled = torch.where(wavelen > long_wave, inv_freq / scaling.factor, inv_freq)
    in_band = (wavelen >= short_wave) & (wavelen <= long_wave)
    return torch.where(in_band, blended, scaled)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


def padding_attention_mask(real: torch.Tensor, *, causal: bool) -> torch.Tensor:
    """A (B, 1, T, T) mask for right-padded batches: keys that are real tokens (real: (B, T) bool),
    and only earlier ones when causal. Padded queries still see the real keys, so no row is
    empty."""
    T = real.shape[1]
    mask = real[:, None, None, :].expand(-1, 1, T, T)
    if causal:
        mask = mask & torch.ones(T, T, dtype=torch.bool, device=real.device).tril()
    return mask


def prefix_attention_mask(prefix_lengths: torch.Tensor, length: int) -> torch.Tensor:
    """A (B, 1, T, T) prefix-LM mask: the first prefix_lengths[b] tokens see each other in both
    directions; every later token sees the whole prefix and the tokens before it (causal)."""
    idx = torch.arange(length, device=prefix_lengths.device)
    causal = idx[None, :] <= idx[:, None]  # (T, T): key <= query
    in_prefix = idx[None, :] < prefix_lengths[:, None]  # (B, S): key is in the prefix
    return (causal[None] | in_prefix[:, None, :]).unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.n_heads,
            config.kv_heads,
            config.head_dim,
        )
        self.dropout = config.dropout
        self.q_proj = nn.Linear(config.d_model, self.n_heads * self.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(
            config.d_model, self.n_kv_heads * self.head_dim, bias=config.qkv_bias
        )
        self.v_proj = nn.Linear(
            config.d_model, self.n_kv_heads * self.head_dim, bias=config.qkv_bias
        )
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.d_model, bias=config.bias)
        self.qkv_proj: nn.Linear | None = None  # set by fuse_qkv

    @property
    def can_fuse_qkv(self) -> bool:
        """Whether q_proj, k_proj and v_proj are plain linear layers (not LoRA-wrapped, not fused
        already)."""
        return all(
            type(getattr(self, name, None)) is nn.Linear for name in ("q_proj", "k_proj", "v_proj")
        )

    def fuse_qkv(self) -> None:
        """Replace q_proj, k_proj and v_proj by one qkv_proj holding the three: one matmul and one
        weight read per step instead of three, which shows when decoding a token at a time. For
        inference copies (the engine's, see graft.infer.engine): the three projections are gone
        afterwards, so LoRA targets, state-dict names and exporters no longer find them."""
        if self.qkv_proj is not None:
            return
        if not self.can_fuse_qkv:
            raise ValueError(
                "fuse_qkv: q_proj, k_proj and v_proj must be plain nn.Linear "
                "(merge LoRA adapters first)"
            )
        parts = (self.q_proj, self.k_proj, self.v_proj)
        fused = nn.Linear(
            parts[0].in_features,
            sum(p.out_features for p in parts),
            bias=parts[0].bias is not None,
            device=parts[0].weight.device,
            dtype=parts[0].weight.dtype,
        )
        with torch.no_grad():
            fused.weight.copy_(torch.cat([p.weight for p in parts]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([p.bias for p in parts]))
        self.qkv_proj = fused.requires_grad_(False)
        del self.q_proj, self.k_proj, self.v_proj

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        kv_cache: KVCache | None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        if self.qkv_proj is not None:
            kv_width = self.n_kv_heads * self.head_dim
            q, k, v = self.qkv_proj(x).split(
                [self.n_heads * self.head_dim, kv_width, kv_width], dim=-1
            )
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, K, S, D): the past plus these T
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            # Grouped-query attention: each kv head serves n_heads / n_kv_heads query heads;
            # SDPA shares them without materialising repeated keys and values.
            enable_gqa=self.n_kv_heads != self.n_heads,
        )  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """GPT-2's up -> GELU -> down, or Llama's SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        if self.kind == "swiglu":
            self.gate_proj = nn.Linear(config.d_model, config.ff_dim, bias=config.bias)
        self.up_proj = nn.Linear(config.d_model, config.ff_dim, bias=config.bias)
        self.down_proj = nn.Linear(config.ff_dim, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        approximate = "tanh" if self.kind == "gelu_tanh" else "none"
        return self.down_proj(F.gelu(self.up_proj(x), approximate=approximate))


class Block(nn.Module):
    """A residual block. Pre-norm: x + attn(norm(x)), then x + mlp(norm(x)). Post-norm (BERT):
    norm(x + attn(x)), then norm(x + mlp(x)); `post_attention_layernorm` is the norm between the
    attention and the MLP in both placements, so the names match Llama and the BERT converter
    alike."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        if self.pre_norm:
            self.input_layernorm = _norm(config)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = _norm(config)
        self.mlp = MLP(config)
        if not self.pre_norm:
            self.post_feedforward_layernorm = _norm(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        kv_cache: KVCache | None,
    ) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.dropout(
                self.self_attn(self.input_layernorm(x), rotary, attn_mask, is_causal, kv_cache)
            )
            return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))
        x = self.post_attention_layernorm(
            x + self.dropout(self.self_attn(x, rotary, attn_mask, is_causal, kv_cache))
        )
        return self.post_feedforward_layernorm(x + self.dropout(self.mlp(x)))


class Transformer(nn.Module):
    """The backbone: token ids -> final hidden states (B, T, C). It knows nothing of heads or
    losses."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError(
                "ModelConfig.vocab_size must be set (from the tokenizer) before building a model"
            )
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        if config.positions == "learned":
            self.embed_positions = nn.Embedding(config.max_seq_len, config.d_model)
        else:
            self.rotary = RotaryEmbedding(config)
        if config.type_vocab_size:
            self.embed_token_types = nn.Embedding(config.type_vocab_size, config.d_model)
        if config.norm_position == "post":
            self.embed_norm = _norm(config)  # post-norm normalises the embeddings, not the output
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        if config.norm_position == "pre":
            self.norm = _norm(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        causal: bool | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T); position_ids (B, T), default past..past+T-1; token_type_ids (B, T),
        default 0; attention_mask: bool, broadcastable to (B, 1, T, S), True where a query may
        attend to a key: the whole mask, used as given. Without one, `causal` (default: the
        config's `attention`) picks causal or full attention."""
        B, T = input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        if past + T > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {past + T} tokens exceeds max_seq_len {self.config.max_seq_len}"
            )
        if causal is None:
            causal = self.config.attention == "causal"
        attn_mask, is_causal = attention_mask, False
        if attn_mask is None and causal and T > 1:
            if past == 0:
                is_causal = True  # lets SDPA pick its fused causal kernel, no mask tensor
            else:
                # A chunk appended to a cache: query i sees every cached key and keys up to itself.
                keys = torch.arange(past + T, device=input_ids.device)
                queries = torch.arange(past, past + T, device=input_ids.device)
                attn_mask = keys[None, :] <= queries[:, None]  # (T, S)
        x = self.embed_tokens(input_ids)
        rotary = None
        if self.config.positions == "learned":
            if position_ids is None:
                x = x + self.embed_positions.weight[past : past + T]  # (T, C), broadcast over B
            else:
                x = x + self.embed_positions(position_ids)
        else:
            rotary = self.rotary(position_ids, past, T)
        if self.config.type_vocab_size:
            # Without ids every token is segment 0, as in transformers: row 0 is added, not skipped.
            x = x + (
                self.embed_token_types.weight[0]
                if token_type_ids is None
                else self.embed_token_types(token_type_ids)
            )
        if self.config.norm_position == "post":
            x = self.embed_norm(x)
        x = self.dropout(x)
        for layer in self.layers:
            x = layer(x, rotary, attn_mask, is_causal, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.norm(x) if self.config.norm_position == "pre" else x


class MaskedLMTransform(nn.Module):
    """BERT's prediction-head transform, applied before the output layer: dense, GELU, LayerNorm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        # BERT uses its hidden_act here too
        self.approximate = "tanh" if config.mlp == "gelu_tanh" else "none"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(h), approximate=self.approximate))


class Pooler(nn.Module):
    """BERT's pooler: tanh(dense(hidden state of the first token)), the input of sentence-level
    heads."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))


class LanguageModel(nn.Module):
    """Backbone + heads. Always an LM head (tied to the token embeddings when
    config.tie_embeddings): Hugging Face's *ForCausalLM layout (`model.*`, `lm_head`). Encoders add
    BERT's pieces by config: `lm_head_transform` (masked-LM head), `pooler` and `nsp_head`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Transformer(config)
        assert config.vocab_size is not None  # Transformer refuses a config without one
        if config.mlm_head:
            self.lm_head_transform = MaskedLMTransform(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.mlm_head)
        if config.pooler:
            self.pooler = Pooler(config)
        if config.nsp_head:
            self.nsp_head = nn.Linear(config.d_model, 2)
        if config.head != "lm":
            # transformers' decoders score sequences without a bias; every other classifier has one.
            bias = not (config.head == "sequence" and config.attention == "causal")
            self.classifier = nn.Linear(config.d_model, len(config.labels), bias=bias)
            self.classifier_dropout = nn.Dropout(config.dropout)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, init_std) for weights, zero biases, and the projections that
        write into the residual stream scaled by 1/sqrt(2 * n_layers) so its variance stays put."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                scale = (
                    1 / math.sqrt(2 * self.config.n_layers)
                    if name.endswith(("o_proj", "down_proj"))
                    else 1.0
                )
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()

    def head_input(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states as the LM head's output layer reads them (through BERT's transform, if
        any)."""
        return self.lm_head_transform(h) if self.config.mlm_head else h

    def sequence_logits(self, hidden: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
        """Classifier logits (B, labels) of whole sequences: an encoder reads its pooled first token
        (BERT's [CLS]); a decoder the hidden state at last_index (B,), its last real token, the only
        one that has seen the whole text; with classifier_pooling mean, either reads the mean over
        the real tokens (those up to last_index)."""
        if self.config.classifier_pooling == "mean":
            # Right-padded rows: positions up to last_index are the real tokens.
            real = (torch.arange(hidden.shape[1], device=hidden.device) <= last_index[:, None]).to(
                hidden.dtype
            )
            pooled = (hidden * real[..., None]).sum(1) / real.sum(1, keepdim=True)
        elif self.config.attention == "bidirectional":
            pooled = self.pooler(hidden)
        else:
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]
        return self.classifier(self.classifier_dropout(pooled))

    def token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Classifier logits (B, T, labels) for every token."""
        return self.classifier(self.classifier_dropout(hidden))

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        causal: bool | None = None,
        kv_cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V), or (B, 1, V) with last_only: generation needs only the last position,
        and skipping the others saves most of the head's cost on a long prompt."""
        h = self.model(
            input_ids,
            position_ids=position_ids,
            token_type_ids=token_type_ids,
            attention_mask=attention_mask,
            causal=causal,
            kv_cache=kv_cache,
        )
        if last_only:
            h = h[:, -1:, :]
        return self.lm_head(self.head_input(h))

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        seen: set[int] = set()
        total = 0
        for name, p in self.named_parameters():  # named_parameters already skips the tied duplicate
            if exclude_embeddings and "embed" in name:
                continue
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total
