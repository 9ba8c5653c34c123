"""BERT and RoBERTa <-> graft: config fields and tensor names for the encoder families.

An encoder is graft's one model class with the encoder switches on (bidirectional attention,
post-norm, token types, BERT's masked-LM head, pooler, NSP head). Which heads a checkpoint has is
read from its tensors, not its config: BertModel has a pooler and no heads, BertForMaskedLM the
masked-LM head and no pooler, BertForPreTraining all of them.

RoBERTa numbers positions from pad_token_id + 1 (rows 0..pad_token_id of its position table are
never used by right-padded input), so import drops those rows and graft counts positions from 0.
Export writes BERT layouts only (BertModel / BertForMaskedLM / BertForPreTraining, and the
classifier and question-answering heads hf.py names).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from graft.errors import CheckpointError
from graft.model.config import ModelConfig

ENCODER_MODEL_TYPES = ("bert", "roberta")

_BERT_DEFAULTS: dict[str, Any] = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=512,
    type_vocab_size=2,
    initializer_range=0.02,
    layer_norm_eps=1e-12,
    pad_token_id=0,
    position_embedding_type="absolute",
    is_decoder=False,
    add_cross_attention=False,
    tie_word_embeddings=True,
)
DEFAULTS: dict[str, dict[str, Any]] = {
    "bert": _BERT_DEFAULTS,
    "roberta": {
        **_BERT_DEFAULTS,
        "vocab_size": 50265,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
    },
}
# transformers' GELU names (BERT's hidden_act, GPT-2's activation_function) -> graft's mlp
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}

# graft name (after model.layers.N.) -> BERT name (after encoder.layer.N.)
_LAYER = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.o_proj": "attention.output.dense",
    "post_attention_layernorm": "attention.output.LayerNorm",
    "mlp.up_proj": "intermediate.dense",
    "mlp.down_proj": "output.dense",
    "post_feedforward_layernorm": "output.LayerNorm",
}
_EMBEDDINGS = {
    "model.embed_tokens": "embeddings.word_embeddings",
    "model.embed_positions": "embeddings.position_embeddings",
    "model.embed_token_types": "embeddings.token_type_embeddings",
    "model.embed_norm": "embeddings.LayerNorm",
    "pooler.dense": "pooler.dense",
}
# transformers' name for a span (extractive QA) head in every family's *ForQuestionAnswering;
# graft's is `classifier`, as for the other classifier heads.
SPAN_HEAD = "qa_outputs"
# The heads sit outside the base model, under family-specific names.
_HEADS = {
    "bert": {
        "lm_head": "cls.predictions.decoder",
        "lm_head_transform.dense": "cls.predictions.transform.dense",
        "lm_head_transform.norm": "cls.predictions.transform.LayerNorm",
        "nsp_head": "cls.seq_relationship",
    },
    "roberta": {
        "lm_head": "lm_head.decoder",
        "lm_head_transform.dense": "lm_head.dense",
        "lm_head_transform.norm": "lm_head.layer_norm",
    },
}


# RoBERTa's sequence head (RobertaClassificationHead) is dense + tanh over <s>, then out_proj:
# BERT's pooler and classifier under other names (its dropouts sit before each product, BERT's
# after the pooler only: the same logits in eval). graft name -> transformers name.
_ROBERTA_SEQUENCE_HEAD = {"pooler.dense": "classifier.dense", "classifier": "classifier.out_proj"}


def position_offset(model_type: str, cfg: dict[str, Any]) -> int:
    return int(cfg["pad_token_id"]) + 1 if model_type == "roberta" else 0


def encoder_fields(
    model_type: str,
    cfg: dict[str, Any],
    tensor_names: Iterable[str],
    refuse: Callable[[str], CheckpointError],
) -> dict[str, Any]:
    """ModelConfig fields of a BERT/RoBERTa config.json, with the heads its tensors hold."""
    if cfg["is_decoder"] or cfg["add_cross_attention"]:
        raise refuse("decoder / cross-attention BERT variants are not supported")
    if cfg["position_embedding_type"] != "absolute":
        raise refuse(
            f"position_embedding_type {cfg['position_embedding_type']!r}: "
            "graft has absolute positions only"
        )
    if cfg["hidden_act"] not in ACTIVATIONS:
        raise refuse(f"hidden_act {cfg['hidden_act']!r} is not one of {sorted(ACTIVATIONS)}")
    names = set(tensor_names)

    def has(suffix: str) -> bool:
        return any(n == suffix or n.endswith("." + suffix) for n in names)

    lm_prefix = _HEADS[model_type]["lm_head_transform.dense"]
    return dict(
        vocab_size=cfg["vocab_size"],
        max_seq_len=cfg["max_position_embeddings"] - position_offset(model_type, cfg),
        d_model=cfg["hidden_size"],
        n_layers=cfg["num_hidden_layers"],
        n_heads=cfg["num_attention_heads"],
        d_ff=cfg["intermediate_size"],
        norm="layernorm",
        norm_eps=cfg["layer_norm_eps"],
        positions="learned",
        mlp=ACTIVATIONS[cfg["hidden_act"]],
        bias=True,
        tie_embeddings=bool(cfg["tie_word_embeddings"]),
        dropout=cfg["hidden_dropout_prob"],
        init_std=cfg["initializer_range"],
        attention="bidirectional",
        norm_position="post",
        type_vocab_size=cfg["type_vocab_size"],
        mlm_head=has(f"{lm_prefix}.weight"),
        pooler=has("pooler.dense.weight")
        or (model_type == "roberta" and has("classifier.dense.weight")),
        nsp_head=model_type == "bert" and has("cls.seq_relationship.weight"),
    )


def graft_to_hf_names(
    config: ModelConfig, model_type: str, graft_names: Iterable[str]
) -> dict[str, str]:
    """graft tensor name -> the name in a (prefixed, head-carrying) transformers checkpoint."""
    base = model_type  # "bert." / "roberta." prefix of the base model inside *ForMaskedLM
    out: dict[str, str] = {}
    for name in graft_names:
        stem, _, leaf = name.rpartition(".")
        if name == "lm_head.bias":  # the output layer's bias sits beside its decoder
            out[name] = f"{_HEADS[model_type]['lm_head'].rpartition('.')[0]}.bias"
        elif stem in _HEADS[model_type]:
            out[name] = f"{_HEADS[model_type][stem]}.{leaf}"
        elif stem == "classifier" and config.head == "span":
            out[name] = f"{SPAN_HEAD}.{leaf}"
        elif (
            model_type == "roberta" and config.head == "sequence" and stem in _ROBERTA_SEQUENCE_HEAD
        ):
            out[name] = f"{_ROBERTA_SEQUENCE_HEAD[stem]}.{leaf}"
        elif stem in _EMBEDDINGS:
            out[name] = f"{base}.{_EMBEDDINGS[stem]}.{leaf}"
        elif stem.startswith("model.layers."):
            _, _, index, inner = stem.split(".", 3)
            out[name] = f"{base}.encoder.layer.{index}.{_LAYER.get(inner, inner)}.{leaf}"
        else:
            out[name] = name
    return out


def from_encoder(
    tensors: dict[str, torch.Tensor],
    sources: dict[str, Path],
    config: ModelConfig,
    model_type: str,
    offset: int,
    graft_names: Iterable[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """Rename a BERT/RoBERTa state dict to graft's names; unknown tensors keep their name (and are
    then reported as unexpected by the caller)."""
    to_graft = {
        hf: graft for graft, hf in graft_to_hf_names(config, model_type, graft_names).items()
    }
    # The tied decoder's bias, saved under another name by some transformers versions.
    to_graft.setdefault(f"{_HEADS[model_type]['lm_head']}.bias", "lm_head.bias")
    out: dict[str, torch.Tensor] = {}
    where: dict[str, Path] = {}
    for key, value in tensors.items():
        # A bare base model (BertModel.save_pretrained) has no "bert." prefix; heads never do.
        heads = (f"{model_type}.", "cls.", "lm_head.", "classifier.", f"{SPAN_HEAD}.")
        name = key if key.startswith(heads) else f"{model_type}.{key}"
        if name.endswith("embeddings.position_ids") or name.endswith("embeddings.token_type_ids"):
            continue  # buffers older versions saved; derived, never needed
        target = to_graft.get(name, key)
        if target == "model.embed_positions.weight" and offset:
            value = value[offset:]
        if target in out and not torch.equal(out[target], value):
            raise CheckpointError(
                f"{sources[key]}: tensor {key} disagrees with another copy of {target}"
            )
        out[target], where[target] = value, sources[key]
    return out, where


def bert_config_dict(config: ModelConfig, refuse: Callable[[str], Exception]) -> dict[str, Any]:
    """transformers' config.json for a graft encoder, as BERT."""
    if config.kv_heads != config.n_heads:
        raise refuse("BERT has no grouped-query attention; n_kv_heads must equal n_heads")
    if not config.bias or not config.qkv_bias:
        raise refuse("BERT has biases in every linear layer and norm; this config turns them off")
    if config.type_vocab_size < 1:
        raise refuse("BERT always has token-type embeddings; set type_vocab_size >= 1")
    if config.nsp_head and not config.mlm_head:
        raise refuse(
            "an NSP head without the masked-LM head has no transformers class "
            "(BertForPreTraining has both)"
        )
    architecture = "BertForMaskedLM" if config.mlm_head else "BertModel"
    if config.nsp_head:
        architecture = "BertForPreTraining"
    return dict(
        architectures=[architecture],
        model_type="bert",
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        intermediate_size=config.ff_dim,
        hidden_act="gelu" if config.mlp == "gelu" else "gelu_new",
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        max_position_embeddings=config.max_seq_len,
        type_vocab_size=config.type_vocab_size,
        initializer_range=config.init_std,
        layer_norm_eps=config.norm_eps,
        position_embedding_type="absolute",
        tie_word_embeddings=config.tie_embeddings,
        torch_dtype="float32",
    )
