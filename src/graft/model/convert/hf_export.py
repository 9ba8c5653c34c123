"""Hugging Face checkpoints out: graft models written as transformers directories.

Export writes `config.json` + `model.safetensors` for GPT2LMHeadModel (learned positions, LayerNorm,
GELU MLP, biases), LlamaForCausalLM (RoPE, RMSNorm, SwiGLU), Qwen2ForCausalLM (the Llama layout
with q/k/v biases alone), or for encoders BertModel / BertForMaskedLM / BertForPreTraining; a
classifier as the family's *ForSequenceClassification / *ForTokenClassification, a span head
(extractive QA) as its *ForQuestionAnswering. Given the tokenizer it adds `tokenizer.json`,
`tokenizer_config.json`, `special_tokens_map.json` and `generation_config.json`, so AutoTokenizer
and `generate` work with no further setup (an encoder's tokenizer.json frames texts [CLS] ... [SEP]
as graft does, see `exported_tokenizer`); a model card `README.md` states only what the source
checkpoint's files say. A config no such architecture can represent is refused before anything is
written; the directory is built beside its destination and renamed into place.
`graft.model.convert.verify` checks an export.

Import is `graft.model.convert.hf`; the file names, head-class suffixes and GPT-2's name table come
from there, so the two directions cannot drift apart. transformers itself is never imported.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from graft.atomic_files import atomic_directory
from graft.errors import ConfigError
from graft.model.config import ModelConfig
from graft.model.convert.bert import SPAN_HEAD, bert_config_dict, graft_to_hf_names
from graft.model.convert.hf import (
    CONFIG_FILE,
    CONV1D_WEIGHTS,
    GENERATION_CONFIG_FILE,
    HEAD_SUFFIXES,
    MODEL_CARD_FILE,
    SAFETENSORS_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    hf_tensor_name,
)
from graft.model.convert.model_card import model_card
from graft.model.convert.outputs import check_export_out
from graft.model.transformer import LanguageModel
from graft.run_files import CHECKPOINTS_DIR, EXPLAIN_DIR, run_dir_of

if TYPE_CHECKING:
    from graft.data.tokenizer import Tokenizer

__all__ = [
    "export_hf",
    "exported_eos_id",
    "exported_tokenizer",
    "generation_config_dict",
    "hf_architecture",
    "hf_config_dict",
    "hf_state_dict",
    "model_card",
    "tokenizer_config_dicts",
]

# ---------------------------------------------------------------- config and weights


def _cannot_export(reason: str) -> ConfigError:
    return ConfigError(f"cannot export to Hugging Face: {reason}")


def hf_architecture(config: ModelConfig) -> str:
    """The transformers model_type a config exports as: gpt2, llama or qwen2; ConfigError with the
    reason when none can represent it exactly."""
    if config.head == "sequence" and config.classifier_pooling == "mean":
        raise _cannot_export(
            "a mean-pooled sequence classifier has no transformers class "
            "(their *ForSequenceClassification read the pooled [CLS] or the last token); "
            "fine-tune with model.classifier_pooling: token to export"
        )
    gelu = config.mlp in ("gelu", "gelu_tanh")
    gpt2_style = (config.positions, config.norm) == ("learned", "layernorm") and gelu  # BERT's too
    encoder_switches = (config.attention, config.norm_position) != ("causal", "pre")
    encoder_parts = (config.mlm_head, config.pooler, config.nsp_head, config.type_vocab_size)
    if encoder_switches or any(encoder_parts):
        bert_style = (config.attention, config.norm_position) == ("bidirectional", "post")
        if not (bert_style and gpt2_style):
            raise _cannot_export(
                "encoder options "
                "(bidirectional attention, post-norm, token types, MLM/pooler/NSP heads) "
                "export as BERT only, which needs all of: "
                "attention bidirectional, norm_position post, "
                "learned positions, layernorm, gelu/gelu_tanh MLP"
            )
        return "bert"
    if gpt2_style:
        if not config.bias or not config.qkv_bias:
            raise _cannot_export(
                "GPT-2 (learned positions, layernorm, GELU MLP) "
                "always has biases in every linear layer and norm; "
                "this config turns them off (bias/attention_bias false)"
            )
        if config.kv_heads != config.n_heads:
            raise _cannot_export(
                "GPT-2 has no grouped-query attention; n_kv_heads must equal n_heads"
            )
        return "gpt2"
    if (config.positions, config.norm, config.mlp) == ("rope", "rmsnorm", "swiglu"):
        if config.bias and not config.qkv_bias:
            raise _cannot_export(
                "biases on o_proj and the MLP without q/k/v biases match neither Llama nor Qwen2"
            )
        return "qwen2" if config.qkv_bias and not config.bias else "llama"
    raise _cannot_export(
        f"positions={config.positions}, norm={config.norm}, mlp={config.mlp} "
        "is no Hugging Face decoder: "
        "GPT-2 needs learned positions + layernorm + gelu/gelu_tanh, "
        "Llama/Qwen2 need rope + rmsnorm + swiglu"
    )


_FAMILY_CLASS = {"gpt2": "GPT2", "llama": "Llama", "qwen2": "Qwen2", "bert": "Bert"}


def hf_config_dict(config: ModelConfig) -> dict[str, Any]:
    """The transformers config.json for a graft config (see hf_architecture for what is refused); a
    classifier exports as the family's *ForSequenceClassification / *ForTokenClassification, a
    span head as its *ForQuestionAnswering."""
    out = _model_config_dict(config)
    if config.head != "lm":
        suffix = next(s for s, kind in HEAD_SUFFIXES.items() if kind == config.head)
        out["architectures"] = [_FAMILY_CLASS[out["model_type"]] + suffix]
    if config.head in ("sequence", "token"):
        # A span head's two outputs are no classes: transformers' default num_labels (2) fits it.
        out["id2label"] = dict(enumerate(config.labels))
        out["label2id"] = {name: i for i, name in enumerate(config.labels)}
    return out


def _model_config_dict(config: ModelConfig) -> dict[str, Any]:
    kind = hf_architecture(config)
    if config.vocab_size is None:
        raise _cannot_export("vocab_size is not set")
    if kind == "bert":
        if not config.tie_embeddings and not config.mlm_head:
            raise _cannot_export(
                "an untied output layer without BERT's masked-LM head has no BERT counterpart"
            )
        return bert_config_dict(config, _cannot_export)
    if kind == "gpt2":
        return dict(
            architectures=["GPT2LMHeadModel"],
            model_type="gpt2",
            vocab_size=config.vocab_size,
            n_positions=config.max_seq_len,
            n_embd=config.d_model,
            n_layer=config.n_layers,
            n_head=config.n_heads,
            n_inner=config.ff_dim,
            activation_function="gelu_new" if config.mlp == "gelu_tanh" else "gelu",
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            layer_norm_epsilon=config.norm_eps,
            initializer_range=config.init_std,
            scale_attn_weights=True,
            tie_word_embeddings=config.tie_embeddings,
            use_cache=True,
            torch_dtype="float32",
        )
    common = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.ff_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.kv_heads,
        head_dim=config.head_dim,
        hidden_act="silu",
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        initializer_range=config.init_std,
        tie_word_embeddings=config.tie_embeddings,
        rope_theta=config.rope_theta,
        rope_scaling=config.rope_scaling.model_dump(mode="json") if config.rope_scaling else None,
        attention_dropout=config.dropout,
        use_cache=True,
        torch_dtype="float32",
    )
    if kind == "qwen2":
        return dict(
            architectures=["Qwen2ForCausalLM"],
            model_type="qwen2",
            **common,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=config.n_layers,
        )
    return dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        **common,
        attention_bias=config.bias,
        mlp_bias=config.bias,
    )


def hf_state_dict(model: LanguageModel) -> dict[str, torch.Tensor]:
    """The model's tensors under the export target's names (a tied lm_head is not stored)."""
    config = model.config
    kind = hf_architecture(config)
    weights = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        weights.pop("lm_head.weight")
    if config.head != "lm":
        # A *For...Classification class holds the backbone and the classifier only (and BERT's
        # sequence classifier its pooler): the pre-training heads stay behind.
        keep_pooler = kind == "bert" and config.head == "sequence"
        weights = {
            k: v
            for k, v in weights.items()
            if k.startswith(("model.", "classifier.")) or (keep_pooler and k.startswith("pooler."))
        }
        if config.head == "span":
            head = SPAN_HEAD  # every family's *ForQuestionAnswering
        elif kind == "gpt2" and config.head == "token":
            head = "classifier"
        else:
            head = "score"  # BERT's classifier keeps its name: graft_to_hf_names below
        if kind != "bert":
            weights = {
                k.replace("classifier.", f"{head}.", 1) if k.startswith("classifier.") else k: v
                for k, v in weights.items()
            }
        if kind in ("llama", "qwen2") and config.head == "span":
            # Their *ForQuestionAnswering keep the base model as `transformer` (transformers'
            # backwards compatibility), not `model`.
            weights = {
                k.replace("model.", "transformer.", 1) if k.startswith("model.") else k: v
                for k, v in weights.items()
            }
    if kind == "bert":
        names = graft_to_hf_names(config, "bert", weights)
        # BertModel: no "bert." prefix on its names
        bare = not config.mlm_head and config.head == "lm"
        weights = {
            names[k].removeprefix("bert.") if bare else names[k]: v for k, v in weights.items()
        }
    elif kind == "gpt2":
        out: dict[str, torch.Tensor] = {}
        for name, value in weights.items():
            if not name.startswith("model."):  # lm_head, score, classifier: named alike in GPT-2
                out[name] = value
                continue
            if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
                continue  # fused with q_proj below
            if ".self_attn.q_proj." in name:
                parts = [weights[name.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
                value = torch.cat(parts, dim=0)
            target = hf_tensor_name(name, config)
            stem, _, leaf = target.rpartition(".")
            if stem.endswith(CONV1D_WEIGHTS) and leaf == "weight":
                value = value.t()
            out[f"transformer.{target}"] = value
        weights = out
    return {k: v.contiguous() for k, v in weights.items()}


def export_hf(
    model: LanguageModel,
    out_dir: Path,
    *,
    tokenizer: Tokenizer | None = None,
    source: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `out_dir` as a transformers directory: config.json, model.safetensors and README.md
    (the model card, with facts from the checkpoint directory `source` where given); given a graft
    Tokenizer also tokenizer.json, tokenizer_config.json, special_tokens_map.json and
    generation_config.json. Everything is checked before anything is written: a non-empty
    out_dir is replaced only with `overwrite`, and a file there never (check_export_out). The
    directory is built beside its destination and renamed into place. Returns out_dir."""
    out_dir = Path(out_dir)
    config_json = hf_config_dict(model.config)  # refuses an unexportable config first
    assert model.config.vocab_size is not None  # hf_config_dict refuses a config without one
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        # Larger embeddings are fine (models often pad the vocabulary); ids past them are not.
        raise ConfigError(
            f"cannot export: the tokenizer has {tokenizer.vocab_size} tokens "
            "but the embedding matrix "
            f"(model.embed_tokens.weight) only {model.config.vocab_size} rows"
        )
    check_export_out(out_dir, folder=True, overwrite=overwrite)
    if tokenizer is not None:
        # The model config's special ids too: GPT2Config would otherwise default them to 50256.
        config_json.update(
            bos_token_id=tokenizer.bos_id,
            eos_token_id=exported_eos_id(tokenizer, model.config),
            pad_token_id=tokenizer.pad_id,
        )
    if source is not None and run_dir_of(source) == Path(source):
        source = Path(source) / CHECKPOINTS_DIR / "last"  # a run folder: the card's checkpoint
    weights = hf_state_dict(model)
    with atomic_directory(out_dir) as tmp:
        save_file(weights, str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config_json, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            exported_tokenizer(tokenizer, model.config).save(tmp)
            tokenizer_config, special_map = tokenizer_config_dicts(tokenizer, model.config)
            _write_json(tmp / TOKENIZER_CONFIG_FILE, tokenizer_config)
            _write_json(tmp / SPECIAL_TOKENS_MAP_FILE, special_map)
            _write_json(
                tmp / GENERATION_CONFIG_FILE, generation_config_dict(tokenizer, model.config)
            )
        run = None if source is None else run_dir_of(source)
        if run is not None and (run / EXPLAIN_DIR / "index.html").is_file():
            # `graft explain`'s page of the run travels with the model, and the card links it.
            shutil.copytree(run / EXPLAIN_DIR, tmp / EXPLAIN_DIR)
        (tmp / MODEL_CARD_FILE).write_text(
            model_card(model, config_json, tokenizer, source), encoding="utf-8"
        )
    return out_dir


# ---------------------------------------------------------------- tokenizer and generation files


def exported_tokenizer(tokenizer: Tokenizer, config: ModelConfig) -> Tokenizer:
    """The tokenizer as export_hf writes it: `tokenizer` itself, or for an encoder a copy that
    frames its input as graft does.

    graft reads every text given to an encoder as [CLS] text [SEP]
    (`graft.data.inputs.input_frame`), but a tokenizer graft trained has no post-processor, so
    transformers' `tokenizer(text)` would give the model unframed ids. Such a tokenizer is
    exported with BERT's template over its own cls and sep tokens; one that has a post-processor
    (an imported BERT's) is written as it is, and `tokenizer` itself is never changed."""
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    if (
        not config.is_encoder
        or cls_id is None
        or sep_id is None
        or tokenizer.backend.post_processor is not None
    ):
        return tokenizer
    cls, sep = tokenizer.id_to_token(cls_id), tokenizer.id_to_token(sep_id)

    def piece(kind: str, name: str | None, type_id: int) -> dict[str, Any]:
        return {kind: {"id": name, "type_id": type_id}}

    # Written as tokenizer.json spells it: a template string would misread a token with a colon.
    serialised = json.loads(tokenizer.backend.to_str())
    serialised["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            piece("SpecialToken", cls, 0),
            piece("Sequence", "A", 0),
            piece("SpecialToken", sep, 0),
        ],
        "pair": [
            piece("SpecialToken", cls, 0),
            piece("Sequence", "A", 0),
            piece("SpecialToken", sep, 0),
            piece("Sequence", "B", 1),
            piece("SpecialToken", sep, 1),
        ],
        "special_tokens": {
            token: {"id": token, "ids": [token_id], "tokens": [token]}
            for token, token_id in ((cls, cls_id), (sep, sep_id))
        },
    }
    backend = type(tokenizer.backend).from_str(json.dumps(serialised))
    # type(): model/ imports graft.data's Tokenizer for type checking only.
    return type(tokenizer)(
        backend,
        tokenizer.kind,
        special_tokens_map=tokenizer.special_tokens_map,
        chat_template=tokenizer.chat_template,
    )


def exported_eos_id(tokenizer: Tokenizer, config: ModelConfig) -> int | None:
    """The one end-of-sequence id an export names: config.json's and generation_config.json's
    eos_token_id, tokenizer_config.json's and special_tokens_map.json's eos_token, and what
    `verify` checks them against. All four come from here so that they cannot disagree.

    A tokenizer with an eos role (graft's <|endoftext|>, RoBERTa's </s>, a decoder's) exports
    that. One without (BERT's) ends graft's documents with [SEP] (Tokenizer.eot_id): a decoder
    generates up to it, so its export names [SEP] as eos and stops there too; an encoder
    generates nothing, and transformers' own BERT files name no eos at all (config.json
    eos_token_id null, no eos_token), so an encoder's export names none either."""
    if config.is_encoder and "eos_token" not in tokenizer.special_tokens_map:
        return None
    return tokenizer.eot_id


def tokenizer_config_dicts(
    tokenizer: Tokenizer, config: ModelConfig
) -> tuple[dict[str, Any], dict[str, str]]:
    """tokenizer_config.json and special_tokens_map.json for a graft tokenizer (its tokenizer.json
    is the whole tokenizer; these name the roles of its special tokens for transformers)."""
    # role -> token, for the roles whose token is in the vocabulary
    roles = dict(tokenizer.special_tokens_map)
    eos = exported_eos_id(tokenizer, config)
    eos_token = None if eos is None else tokenizer.id_to_token(eos)
    if eos_token is not None:
        roles["eos_token"] = eos_token  # a decoder over BERT's vocabulary: [SEP], see above
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **roles,
        "model_max_length": config.max_seq_len,
        # graft's decoders already give back the text; transformers' clean-up would alter it.
        "clean_up_tokenization_spaces": False,
    }
    if tokenizer.chat_template is not None:  # instruction tuning gives a tokenizer its template
        tokenizer_config["chat_template"] = tokenizer.chat_template
    return tokenizer_config, roles


def generation_config_dict(tokenizer: Tokenizer, config: ModelConfig) -> dict[str, Any]:
    """generation_config.json: generation stops at the exported eos (exported_eos_id) and pads
    with the pad token."""
    ids = {
        "eos_token_id": exported_eos_id(tokenizer, config),
        "pad_token_id": tokenizer.pad_id,
        "bos_token_id": tokenizer.bos_id,  # graft's own tokenizers have none; imported ones may
    }
    return {key: value for key, value in ids.items() if value is not None}


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
