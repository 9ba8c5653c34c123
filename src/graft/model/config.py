"""ModelConfig: every architectural choice of graft's one transformer class, and the named presets.

GPT-2 style, Llama style and BERT style are settings of the same fields, never separate classes.
Each field has a Hugging Face counterpart (the export target decides which), so a config can be
written back out as a transformers `config.json`; the one exception, a classifier with
`classifier_pooling: mean`, which no transformers class reads, is refused at export.
"""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator

NormKind = Literal["layernorm", "rmsnorm"]
PositionKind = Literal["learned", "rope"]
# gelu_tanh is GPT-2's "gelu_new"; swiglu is Llama's gated SiLU MLP (gate_proj, up_proj, down_proj).
MlpKind = Literal["gelu", "gelu_tanh", "swiglu"]
# causal: each token sees itself and earlier tokens (decoders); bidirectional: every token sees
# every other (encoders such as BERT). Batches may still pass their own mask (padding, prefix).
AttentionKind = Literal["causal", "bidirectional"]
# pre: x + f(norm(x)) with a final norm (GPT-2, Llama); post: norm(x + f(x)) with a norm after
# the embeddings and none at the end (the original Transformer, BERT, RoBERTa).
NormPosition = Literal["pre", "post"]
# lm: the language-model head alone. sequence / token: a classifier too
# (HF *ForSequenceClassification / *ForTokenClassification), reading the last real token (decoders)
# or the pooled first token (encoders), or every token. span: extractive question answering, two
# logits (start, end) at every token (HF *ForQuestionAnswering's qa_outputs); its labels are
# exactly SPAN_LABELS.
HeadKind = Literal["lm", "sequence", "token", "span"]
# The span head's two outputs, in order: [..., 0] scores where the answer starts, [..., 1] where
# it ends.
SPAN_LABELS = ("start", "end")
# What a sequence classifier reads. token: the architecture's summary token (BERT's pooled [CLS], a
# decoder's last real token), as transformers' *ForSequenceClassification do. mean: the mean of
# every real token's final hidden state, which a briefly pre-trained encoder (whose [CLS] learned
# little) classifies better from; no transformers class holds it, so such a classifier does not
# export.
PoolingKind = Literal["token", "mean"]


class ConfigSection(BaseModel):
    """The base of every config section (model, objective, train, ...): unknown keys refused,
    frozen, and a boolean never read as a number. Pydantic's lax mode reads `max_steps: true` as
    1 and `lr: on` as 1.0; YAML's yes/no/on/off make that an easy slip to miss."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                if (
                    isinstance(value, bool)
                    and field is not None
                    and _takes_numbers_not_booleans(field.annotation)
                ):
                    boolean = str(value).lower()
                    raise ValueError(f"{key}: expected a number, got the boolean {boolean}")
        return data

    def given(self, *keys: str) -> list[str]:
        """Which of `keys` the config set to something other than their defaults (to refuse
        knobs a command or variant does not use). A default written out is not a choice: a
        resolved config (--print-config, a run's config.yaml) holds every field and must load
        back."""
        fields = type(self).model_fields
        return [
            key
            for key in keys
            if key in self.model_fields_set
            and getattr(self, key) != fields[key].get_default(call_default_factory=True)
        ]


def _takes_numbers_not_booleans(annotation: Any) -> bool:
    """Whether a field's type reads int or float and not bool (Optional and unions included)."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = get_args(annotation)
    else:
        members = (annotation,)
    if bool in members or Any in members:
        return False
    return any(m in (int, float) for m in members)


class RopeScaling(ConfigSection):
    """Llama-3's RoPE frequency scaling (transformers' `rope_type: llama3`): wavelengths longer than
    original_max_position_embeddings / low_freq_factor are slowed by `factor`, those shorter than
    original_max_position_embeddings / high_freq_factor are kept, and the band between is
    blended."""

    rope_type: Literal["llama3"] = "llama3"
    factor: float = Field(default=8.0, gt=0)
    low_freq_factor: float = Field(default=1.0, gt=0)
    high_freq_factor: float = Field(default=4.0, gt=0)
    original_max_position_embeddings: int = Field(default=8192, ge=1)

    @model_validator(mode="after")
    def _check_band(self) -> RopeScaling:
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"rope_scaling.high_freq_factor ({self.high_freq_factor}) "
                f"must exceed low_freq_factor ({self.low_freq_factor})"
            )
        return self


class ModelConfig(ConfigSection):
    """The shape of a transformer, decoder or encoder. Frozen: a checkpoint's config never
    changes."""

    vocab_size: int | None = Field(
        default=None, ge=1, description="Vocabulary size; None takes it from the tokenizer."
    )
    max_seq_len: int = Field(default=256, ge=1, description="Longest sequence the model accepts.")
    d_model: int = Field(default=128, ge=1, description="Width of the residual stream.")
    n_layers: int = Field(default=4, ge=1, description="Number of transformer blocks.")
    n_heads: int = Field(default=4, ge=1, description="Attention (query) heads per block.")
    n_kv_heads: int | None = Field(
        default=None, ge=1, description="Key/value heads (grouped-query attention); None = n_heads."
    )
    d_ff: int | None = Field(
        default=None,
        ge=1,
        description="Hidden width of the MLP; None = 4*d_model (gelu) or the Llama rule (swiglu).",
    )
    norm: NormKind = Field(default="layernorm", description="layernorm (GPT-2) or rmsnorm (Llama).")
    norm_eps: float = Field(default=1e-5, gt=0)
    positions: PositionKind = Field(
        default="learned", description="learned absolute (GPT-2) or rope (Llama)."
    )
    rope_theta: float = Field(default=10000.0, gt=0)
    rope_scaling: RopeScaling | None = Field(
        default=None, description="Llama-3 RoPE scaling; None = plain RoPE."
    )
    mlp: MlpKind = Field(
        default="gelu_tanh", description="gelu, gelu_tanh (GPT-2) or swiglu (Llama)."
    )
    bias: bool = Field(
        default=True, description="Biases in linear layers and norms (GPT-2 yes, Llama no)."
    )
    attention_bias: bool | None = Field(
        default=None,
        description="Biases on q/k/v_proj alone (Qwen2: True with bias False); None = follow bias.",
    )
    tie_embeddings: bool = Field(
        default=True, description="lm_head shares the token embedding matrix."
    )
    attention: AttentionKind = Field(
        default="causal", description="causal (decoders) or bidirectional (encoders)."
    )
    norm_position: NormPosition = Field(
        default="pre", description="pre-norm (GPT-2, Llama) or post-norm (BERT)."
    )
    type_vocab_size: int = Field(
        default=0,
        ge=0,
        description="Token-type (segment) embeddings, BERT's A/B sentences; 0 = none.",
    )
    mlm_head: bool = Field(
        default=False,
        description="BERT's masked-LM head: dense + GELU + LayerNorm before the output layer, "
        "which gets a bias.",
    )
    pooler: bool = Field(
        default=False, description="BERT's pooler: dense + tanh over the first token."
    )
    nsp_head: bool = Field(
        default=False, description="Next-sentence-prediction head (2 classes) on the pooler."
    )
    head: HeadKind = Field(
        default="lm",
        description="lm; sequence: one label per text; token: one label per token (a classifier); "
        "span: extractive QA, a start and an end logit per token (labels: start, end).",
    )
    labels: tuple[str, ...] = Field(
        default=(), description="The classifier's label names, in output order."
    )
    classifier_pooling: PoolingKind = Field(
        default="token",
        description="What a sequence classifier reads: "
        "token (pooled [CLS] / last real token) or mean.",
    )
    dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Dropout on embeddings, attention and residuals."
    )
    init_std: float = Field(
        default=0.02, gt=0, description="Std of the normal weight initialisation."
    )

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.kv_heads > self.n_heads or self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head dimension, got {self.head_dim}")
        if self.rope_scaling is not None and self.positions != "rope":
            raise ValueError("rope_scaling needs positions: rope")
        if self.nsp_head and not self.pooler:
            raise ValueError(
                "nsp_head needs pooler: true (the NSP head reads the pooled first token)"
            )
        if (self.head == "lm") != (not self.labels):
            raise ValueError(
                "a classifier head (head: sequence, token or span) needs its labels, "
                "and only it has labels"
            )
        if self.head == "span" and self.labels != SPAN_LABELS:
            raise ValueError(
                f"head span (extractive QA) has exactly the labels {list(SPAN_LABELS)}, "
                f"got {list(self.labels)}"
            )
        if (
            self.head == "sequence"
            and self.attention == "bidirectional"
            and self.classifier_pooling == "token"
            and not self.pooler
        ):
            raise ValueError(
                "an encoder's sequence classifier reads the pooler: set pooler: true "
                "(or classifier_pooling: mean)"
            )
        return self

    @property
    def is_encoder(self) -> bool:
        """An encoder (BERT, RoBERTa): it reads every token at once, cannot generate, and reads
        each text framed as `[CLS] text [SEP]` (graft.data.inputs) in training, evaluation and
        serving alike."""
        return self.attention == "bidirectional"

    @property
    def can_generate(self) -> bool:
        """A causal LM with its LM head: the only kind that writes text (generate, chat, serve's
        completions)."""
        return self.head == "lm" and not self.is_encoder

    @property
    def qkv_bias(self) -> bool:
        """Whether q_proj, k_proj and v_proj carry biases (o_proj and the MLP follow `bias`)."""
        return self.bias if self.attention_bias is None else self.attention_bias

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "swiglu":
            # Llama's rule: 2/3 of 4*d (so the three matrices cost about what GPT-2's two do),
            # rounded up to a multiple of 64 for friendly matmul shapes.
            return 64 * ((int(8 * self.d_model / 3) + 63) // 64)
        return 4 * self.d_model


def _gpt2(d_model: int, n_layers: int, n_heads: int, max_seq_len: int) -> dict[str, object]:
    return dict(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        max_seq_len=max_seq_len,
        norm="layernorm",
        positions="learned",
        mlp="gelu_tanh",
        bias=True,
        tie_embeddings=True,
    )


def _llama(
    d_model: int, n_layers: int, n_heads: int, n_kv_heads: int, max_seq_len: int
) -> dict[str, object]:
    return dict(
        _gpt2(d_model, n_layers, n_heads, max_seq_len),
        n_kv_heads=n_kv_heads,
        norm="rmsnorm",
        norm_eps=1e-6,
        positions="rope",
        mlp="swiglu",
        bias=False,
    )


def _bert(d_model: int, n_layers: int, n_heads: int, max_seq_len: int) -> dict[str, object]:
    return dict(
        _gpt2(d_model, n_layers, n_heads, max_seq_len),
        norm_eps=1e-12,
        mlp="gelu",
        attention="bidirectional",
        norm_position="post",
        type_vocab_size=2,
        mlm_head=True,
        pooler=True,
        nsp_head=True,
    )


# Parameter counts in the names are for the blocks alone; embeddings add vocab_size * d_model.
PRESETS: dict[str, dict[str, object]] = {
    "nano": _gpt2(128, 4, 4, 256),  # ~0.8M in blocks
    "micro": _gpt2(256, 4, 4, 256),  # ~3.2M
    "tiny": _gpt2(384, 6, 6, 512),  # ~10.6M
    "small": _gpt2(512, 8, 8, 1024),  # ~25M
    "gpt2-124m": {**_gpt2(768, 12, 12, 1024), "vocab_size": 50257},  # GPT-2 small exactly
    "llama-nano": _llama(128, 4, 4, 2, 256),
    "llama-micro": _llama(256, 4, 4, 2, 256),
    "llama-tiny": _llama(384, 6, 6, 2, 512),
    "llama-small": _llama(512, 8, 8, 4, 1024),
    "llama-124m": {**_llama(768, 12, 12, 4, 1024), "vocab_size": 32000},
    "bert-nano": _bert(128, 4, 4, 256),
    "bert-micro": _bert(256, 4, 4, 256),
    "bert-tiny": _bert(384, 6, 6, 512),
    "bert-small": _bert(512, 8, 8, 512),
    "bert-base": {**_bert(768, 12, 12, 512), "vocab_size": 30522},  # BERT-base exactly
}


def preset(name: str, **overrides: object) -> ModelConfig:
    """The named preset, with any fields overridden."""
    if name not in PRESETS:
        from graft.errors import ConfigError

        raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    # The presets' values are untyped (object); validation checks them, as it checks keywords.
    return ModelConfig.model_validate({**PRESETS[name], **overrides})
