"""graft's one transformer: a backbone parameterised by ModelConfig, and the heads the tasks read
(the LM head, BERT's MLM transform, pooler and NSP head, the classifier and span heads).

GPT-2 style (learned positions, LayerNorm, GELU MLP, biases), Llama style (RoPE, RMSNorm,
SwiGLU, grouped-query attention, no biases) and BERT style (post-norm, token types,
bidirectional attention) are configs of these classes, as are the attention masks they read.
Module names follow Hugging Face Llama (`model.embed_tokens`, `model.layers.N.self_attn.q_proj`,
`mlp.gate_proj`, `model.norm`, `lm_head`) so state dicts and LoRA target names carry over without
renaming; other layouts (GPT-2's fused `c_attn`) are converted at the edge.

Shape letters in comments: B batch, T query length, S key length, C d_model, H heads,
K kv heads, D head dim, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from graft.data.inputs import right_padded
from graft.data.records import IGNORE_INDEX
from graft.model.config import ModelConfig, RopeScaling
from graft.model.losses import linear_cross_entropy_sum

if TYPE_CHECKING:
    from graft.model.kv_cache import CacheView


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
            window = slice(start, start + length)
            return self.cos[None, None, window], self.sin[None, None, window]
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
        self.n_heads, self.n_kv_heads = config.n_heads, config.kv_heads
        self.head_dim, self.dropout = config.head_dim, config.dropout
        q_width, kv_width = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.qkv_widths = [q_width, kv_width, kv_width]
        self.q_proj = nn.Linear(config.d_model, q_width, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.d_model, kv_width, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.d_model, kv_width, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_width, config.d_model, bias=config.bias)
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
        kv_cache: CacheView | None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attention's output (B, T, C), and with need_weights its softmax weights
        (B, H, T, S), computed explicitly (same mask, scale and head sharing as SDPA, whose
        fused kernels never form them): for explaining a prediction, never for training."""
        B, T, C = x.shape
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split(self.qkv_widths, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, K, S, D): the past plus these T
        if need_weights:
            y, weights = self._explicit_attention(q, k, v, attn_mask, is_causal)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, C)), weights
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
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C)), None

    def _explicit_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(q k^T / sqrt(D) + mask) v, as SDPA defines it, and the softmax weights."""
        if self.n_kv_heads != self.n_heads:  # each kv head serves n_heads / n_kv_heads queries
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, T, S)
        T, S = scores.shape[-2:]
        if is_causal:  # SDPA's is_causal: query i sees keys 0..i (the top-left triangle)
            attn_mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask
        weights = scores.softmax(dim=-1)
        dropped = F.dropout(weights, self.dropout) if self.training else weights
        return dropped @ v, weights


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
        kv_cache: CacheView | None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's output, and its attention weights when need_weights (else None)."""
        if self.pre_norm:
            attended, weights = self.self_attn(
                self.input_layernorm(x), rotary, attn_mask, is_causal, kv_cache, need_weights
            )
            x = x + self.dropout(attended)
            return x + self.dropout(self.mlp(self.post_attention_layernorm(x))), weights
        attended, weights = self.self_attn(x, rotary, attn_mask, is_causal, kv_cache, need_weights)
        x = self.post_attention_layernorm(x + self.dropout(attended))
        return self.post_feedforward_layernorm(x + self.dropout(self.mlp(x))), weights


@dataclass
class LayerTrace:
    """What the backbone records layer by layer when a caller asks (LanguageModel.forward's
    output_attentions and output_hidden_states): a list to fill for each thing asked, None for
    the others."""

    attentions: list[torch.Tensor] | None = None  # per block, (B, H, T, S) softmax weights
    hidden_states: list[torch.Tensor] | None = None  # after the embeddings, then per block


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
        # A training choice, not architecture (so not in the config): see checkpoint_activations.
        self.activation_checkpointing = False
        self.per_sample = False  # LanguageModel.per_sample_gradients

    def forward(
        self,
        input_ids: torch.Tensor | None,
        *,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        causal: bool | None = None,
        kv_cache: CacheView | None = None,
        inputs_embeds: torch.Tensor | None = None,
        trace: LayerTrace | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T); position_ids (B, T), default past..past+T-1; token_type_ids (B, T),
        default 0; attention_mask: bool, broadcastable to (B, 1, T, S), True where a query may
        attend to a key: the whole mask, used as given. Without one, `causal` (default: the
        config's `attention`) picks causal or full attention. inputs_embeds (B, T, C): token
        embeddings to read instead of looking up input_ids (give one of the two); positions and
        token types are added to them as to looked-up ones. `trace`: what to record per layer."""
        given = input_ids if inputs_embeds is None else inputs_embeds
        if given is None or (input_ids is not None and inputs_embeds is not None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        B, T = given.shape[:2]
        device = given.device
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
                keys = torch.arange(past + T, device=device)
                queries = torch.arange(past, past + T, device=device)
                attn_mask = keys[None, :] <= queries[:, None]  # (T, S)
        if inputs_embeds is not None:
            x = inputs_embeds
        else:
            assert input_ids is not None  # one of the two, checked above
            if self.per_sample:  # Opacus's ghost norms view the ids: they must be contiguous
                input_ids = input_ids.contiguous()
            x = self.embed_tokens(input_ids)
        if self.per_sample and position_ids is None and self.config.positions == "learned":
            # Per-sample gradients (DP-SGD) are taken from each module's (B, ...) inputs: the
            # tables must be called with a row of ids per example, not sliced once for all.
            position_ids = torch.arange(past, past + T, device=device).repeat(B, 1)
        if self.per_sample and token_type_ids is None and self.config.type_vocab_size:
            token_type_ids = torch.zeros(B, T, dtype=torch.long, device=device)
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
        need_weights = trace is not None and trace.attentions is not None
        hidden_states = trace.hidden_states if trace is not None else None
        if hidden_states is not None:
            hidden_states.append(x)
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:  # keep the block's input only; its activations come back in backward
                x, weights = checkpoint(
                    layer,
                    x,
                    rotary,
                    attn_mask,
                    is_causal,
                    kv_cache,
                    need_weights,
                    use_reentrant=False,
                )
            else:
                x, weights = layer(x, rotary, attn_mask, is_causal, kv_cache, need_weights)
            if trace is not None and trace.attentions is not None:
                trace.attentions.append(weights)
            if hidden_states is not None:
                hidden_states.append(x)
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


Head = Literal["lm", "masked_lm", "nsp", "classifier"]
LM: tuple[Head, ...] = ("lm",)  # what a plain call computes: the LM head's logits


@dataclass
class ModelOutput:
    """What one call of the model returns: the backbone's final hidden states and the outputs of
    the heads asked for (None for the others)."""

    hidden: torch.Tensor  # (B, T, C)
    logits: torch.Tensor | None = None  # LM logits, (B, T, V) or (B, 1, V)
    lm_loss: torch.Tensor | None = None  # LM cross-entropy summed over the scored targets
    lm_row_loss: torch.Tensor | None = None  # (B,) the same per row; per-sample mode only
    # Scored targets the LM head predicted right, where it formed their logits (a masked LM)
    lm_correct: torch.Tensor | None = None
    nsp_logits: torch.Tensor | None = None  # (B, 2), float32
    class_logits: torch.Tensor | None = None  # (B, labels) or (B, T, labels), float32
    # Asked for explicitly (output_attentions, output_hidden_states), for explaining a prediction:
    attentions: tuple[torch.Tensor, ...] | None = None  # per block, (B, H, T, S) softmax weights
    # The residual stream after the embeddings, then after each block (n_layers + 1 of them,
    # before the final norm): lm_logits_of reads any of them as the LM head would.
    hidden_states: tuple[torch.Tensor, ...] | None = None


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
                residual = name.endswith(("o_proj", "down_proj"))
                scale = 1 / math.sqrt(2 * self.config.n_layers) if residual else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        causal: bool | None = None,
        kv_cache: CacheView | None = None,
        heads: Collection[Head] = LM,
        targets: torch.Tensor | None = None,
        last_index: torch.Tensor | None = None,
        last_only: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """The one entry point: the backbone once, then the heads asked for (`Transformer.forward`
        documents the inputs).

        "lm": logits (B, T, V), or (B, 1, V) with last_only (generation needs only the last
        position, and skipping the others saves most of the head's cost on a long prompt); given
        `targets` (B, T), IGNORE_INDEX where not scored, their summed cross-entropy instead,
        without forming the whole logits (chunk by chunk; a BERT-style head forms the scored
        rows' logits, and DP-SGD's per-record losses, which Opacus's hooks need, all of them).
        "masked_lm": with `targets`, the LM head reads only the scored positions (a masked LM
        scores ~15% of them) and forms their logits: their summed cross-entropy and how many it
        got right. "nsp": BERT's next-sentence logits (B, 2).
        "classifier":
        config.head's logits, (B, labels) per sequence read at last_index (B,), each row's last
        real token (default: the last position), or (B, T, labels) per token; a span head's are
        (B, T, 2), [..., 0] the answer's start and [..., 1] its end at each token.

        For explaining a prediction (graft.insight), each asked for explicitly so the default
        path stays the fused one: inputs_embeds (B, T, C), token embeddings read instead of
        input_ids (integrated gradients differentiate with respect to them); output_attentions,
        every block's softmax weights (B, H, T, S), formed explicitly instead of by the fused
        kernel (same output); output_hidden_states, the residual stream after the embeddings
        and after each block."""
        trace = None
        if output_attentions or output_hidden_states:
            trace = LayerTrace(
                attentions=[] if output_attentions else None,
                hidden_states=[] if output_hidden_states else None,
            )
        h = self.model(
            input_ids,
            position_ids=position_ids,
            token_type_ids=token_type_ids,
            attention_mask=attention_mask,
            causal=causal,
            kv_cache=kv_cache,
            inputs_embeds=inputs_embeds,
            trace=trace,
        )
        out = ModelOutput(h)
        if trace is not None:
            out.attentions = None if trace.attentions is None else tuple(trace.attentions)
            out.hidden_states = None if trace.hidden_states is None else tuple(trace.hidden_states)
        if targets is not None and ("lm" in heads or "masked_lm" in heads):
            out = self._lm_loss(out, targets, sparse="masked_lm" in heads)
        elif "lm" in heads:
            out.logits = self.lm_head(self._head_input(h[:, -1:] if last_only else h))
        if "nsp" in heads:
            out.nsp_logits = self.nsp_head(self.pooler(h)).float()
        if "classifier" in heads:
            out.class_logits = self._classify(h, last_index).float()
        return out

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The token embeddings (B, T, C) input_ids are read as: what `inputs_embeds` replaces
        (positions and token types are added later, in the backbone)."""
        return self.model.embed_tokens(input_ids)

    def lm_logits_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head's logits (..., V) for a residual-stream state, one of
        ModelOutput.hidden_states: the final norm (pre-norm models), then the head, as the last
        block's output is read. The logit lens: what each layer would predict."""
        if self.config.norm_position == "pre":
            hidden = self.model.norm(hidden)
        return self.lm_head(self._head_input(hidden))

    def _head_input(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states as the LM head's output layer reads them (through BERT's transform, if
        any)."""
        return self.lm_head_transform(h) if self.config.mlm_head else h

    def _lm_loss(self, out: ModelOutput, targets: torch.Tensor, *, sparse: bool) -> ModelOutput:
        if self.model.per_sample:
            # The plain path, every row kept: per-sample gradient hooks see the head's (B, T, C)
            # input, which neither the fused loss nor the scored-rows gather below would show.
            logits = self.lm_head(self._head_input(out.hidden)).float()  # (B, T, V)
            each = F.cross_entropy(
                logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
            )
            out.lm_row_loss = each.view(targets.shape).sum(1)
            out.lm_loss = out.lm_row_loss.sum()
            if sparse:
                chosen = targets != IGNORE_INDEX
                out.lm_correct = (logits[chosen].argmax(-1) == targets[chosen]).sum()
            return out
        if not sparse and not self.config.mlm_head:
            out.lm_loss = linear_cross_entropy_sum(out.hidden, self.lm_head.weight, targets)
            return out
        # Only the scored rows go through the head (for a masked LM, 85% of its work is skipped,
        # not computed and ignored); BERT's head, with its transform and bias, always goes here:
        # the fused loss takes neither.
        chosen = targets != IGNORE_INDEX
        logits = self.lm_head(self._head_input(out.hidden[chosen])).float()  # (n, V)
        wanted = targets[chosen]
        out.lm_loss = F.cross_entropy(logits, wanted, reduction="sum")
        out.lm_correct = (logits.argmax(-1) == wanted).sum()
        return out

    def _classify(self, hidden: torch.Tensor, last_index: torch.Tensor | None) -> torch.Tensor:
        """The classifier's logits. Per sequence, an encoder reads its pooled first token (BERT's
        [CLS]); a decoder the hidden state at last_index, its last real token, the only one that
        has seen the whole text; with classifier_pooling mean, either reads the mean over the real
        tokens (those up to last_index). A token or span head reads every token."""
        if self.config.head in ("token", "span"):
            return self.classifier(self.classifier_dropout(hidden))
        B, T = hidden.shape[:2]
        if last_index is None:
            last_index = torch.full((B,), T - 1, device=hidden.device)
        if self.config.classifier_pooling == "mean":
            # Right-padded rows: positions up to last_index are the real tokens.
            pooled = mean_pool(hidden, torch.arange(T, device=hidden.device) <= last_index[:, None])
        elif self.config.attention == "bidirectional":
            pooled = self.pooler(hidden)
        else:
            pooled = hidden[torch.arange(B, device=hidden.device), last_index]
        return self.classifier(self.classifier_dropout(pooled))

    def per_sample_gradients(self, enabled: bool = True) -> None:
        """Compute every parameter's gradient through a module call on (B, ...) inputs, so that
        per-sample gradient hooks (Opacus, DP-SGD) see each example: learned position and
        token-type tables are called per row and the LM loss forms full logits. Same values,
        more memory; off by default."""
        self.model.per_sample = enabled

    def checkpoint_activations(self, enabled: bool = True) -> None:
        """Recompute each block's activations during backward instead of keeping them from the
        forward (train.activation_checkpointing): activation memory falls from every block's to
        one block's inputs, for about one more forward of compute. Dropout draws are replayed, so
        gradients are unchanged."""
        self.model.activation_checkpointing = enabled

    def compile_backbone(self) -> None:
        """torch.compile the blocks in place (train.compile): parameter names, and so
        checkpoints, are unchanged, and the heads and the loss stay eager."""
        self.model.compile()

    def num_parameters(self) -> int:
        # parameters() skips the tied duplicate: each parameter counts once
        return sum(p.numel() for p in self.parameters())


def mean_pool(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The mean of hidden states (B, T, C) over each row's real positions (B, T) bool: mean-pooled
    classifiers, /v1/embeddings and the probe alike."""
    weights = real.to(hidden.dtype)[..., None]  # (B, T, 1): padding counts for nothing
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


def read_padded(
    model: LanguageModel,
    rows: Sequence[Sequence[int]],
    heads: Collection[Head],
    *,
    token_types: Sequence[Sequence[int]] | None = None,
) -> tuple[ModelOutput, torch.Tensor]:
    """The model once over whole inputs of different lengths (each row already checked against
    the model's context and vocabulary), right-padded, the padding masked out of attention; a
    sequence classifier reads each row's last real token. `token_types`, one per token of each
    row, are the segment ids of a model with token types (a question-answering encoder reads the
    question as segment 0 and the context as 1); without them every token is segment 0. Returns
    the outputs and the real positions (N, T). The one way whole texts are read for prediction:
    `graft eval`'s classifier, tagger and span reader, the server's /v1/classify and
    /v1/embeddings."""
    device = next(model.parameters()).device
    tokens, lengths = (t.to(device) for t in right_padded(rows, 0))  # padding is masked: any id
    types = None
    if token_types is not None:
        if [len(t) for t in token_types] != [len(r) for r in rows]:
            raise ValueError("read_padded: token_types needs one segment id per token of each row")
        types = right_padded(token_types, 0)[0].to(device)
    real = torch.arange(tokens.shape[1], device=device)[None, :] < lengths[:, None]
    # Equal lengths need no mask: the model's own causal or full attention is the same thing.
    causal = not model.config.is_encoder
    mask = None if bool(real.all()) else padding_attention_mask(real, causal=causal)
    out = model(
        tokens, token_type_ids=types, attention_mask=mask, heads=heads, last_index=lengths - 1
    )
    return out, real
