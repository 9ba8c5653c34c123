"""Hugging Face checkpoints in and out: GPT-2, Llama (and Llama-3 RoPE scaling), Mistral, Qwen2, and
the encoders BERT and RoBERTa (their names and heads live in `bert.py`).

Import reads a local transformers directory (`config.json` plus `model.safetensors`, a sharded
`model.safetensors.index.json`, or `pytorch_model.bin` read with weights_only=True), maps its config
onto a ModelConfig and its tensors onto graft's names. Llama, Mistral and Qwen2 already use graft's
names; GPT-2's are renamed, its Conv1D weights ((in, out)) transposed and its fused c_attn split
into q/k/v. Anything graft cannot run exactly (an unknown model_type, a real sliding window, another
RoPE scaling) is refused with the reason rather than approximated.

Export writes `config.json` + `model.safetensors` for GPT2LMHeadModel (learned positions, LayerNorm,
GELU MLP, biases), LlamaForCausalLM (RoPE, RMSNorm, SwiGLU), Qwen2ForCausalLM (the Llama layout
with q/k/v biases alone), or for encoders BertModel / BertForMaskedLM / BertForPreTraining; a
classifier as the family's *ForSequenceClassification / *ForTokenClassification, a span head
(extractive QA) as its *ForQuestionAnswering, both ways. Given
the tokenizer it adds `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` and
`generation_config.json`, so AutoTokenizer and `generate` work with no further setup (an encoder's
tokenizer.json frames texts [CLS] ... [SEP] as graft does, see `exported_tokenizer`); a model card
`README.md` states only what the source checkpoint's files say. A config no such architecture can
represent is refused before anything is written; the directory is built beside its destination and
renamed into place. `graft.model.convert.verify` checks an export.

transformers itself is never imported: it is a test oracle here, not a dependency.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from graft.atomic_files import atomic_directory
from graft.errors import CheckpointError, ConfigError, first_line
from graft.model.config import SPAN_LABELS, ModelConfig, RopeScaling
from graft.model.convert.bert import (
    ACTIVATIONS,
    ENCODER_MODEL_TYPES,
    SPAN_HEAD,
    bert_config_dict,
    encoder_fields,
    from_encoder,
    graft_to_hf_names,
    position_offset,
)
from graft.model.convert.bert import DEFAULTS as ENCODER_DEFAULTS
from graft.model.convert.model_card import model_card
from graft.model.convert.outputs import check_export_out
from graft.model.transformer import LanguageModel, RotaryEmbedding
from graft.run_files import CHECKPOINTS_DIR, EXPLAIN_DIR, run_dir_of
from graft.torch_files import load_torch_file

if TYPE_CHECKING:
    from graft.data.tokenizer import Tokenizer

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "export_hf",
    "exported_eos_id",
    "stop_ids",
    "exported_tokenizer",
    "generation_config_dict",
    "model_card",
    "tokenizer_config_dicts",
    "hf_model_type",
    "is_hf_directory",
    "load_hf_model",
    "read_hf_config",
]

CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
GENERATION_CONFIG_FILE = "generation_config.json"
MODEL_CARD_FILE = "README.md"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", *ENCODER_MODEL_TYPES)

# The defaults of transformers' config classes, for keys a config.json leaves out (recent
# save_pretrained writes them all; hand-written and old files may not).
# Mistral and Qwen2 differ from Llama in the few keys they override below.
_LLAMA_DEFAULTS: dict[str, Any] = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=None,
    head_dim=None,
    hidden_act="silu",
    max_position_embeddings=2048,
    initializer_range=0.02,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    rope_theta=10000.0,
    rope_scaling=None,
    attention_bias=False,
    mlp_bias=False,
    attention_dropout=0.0,
)
_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": dict(
        vocab_size=50257,
        n_positions=1024,
        n_embd=768,
        n_layer=12,
        n_head=12,
        n_inner=None,
        activation_function="gelu_new",
        resid_pdrop=0.1,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        tie_word_embeddings=True,
    ),
    "llama": _LLAMA_DEFAULTS,
    "mistral": {
        **_LLAMA_DEFAULTS,
        "intermediate_size": 14336,
        "num_key_value_heads": 8,
        "max_position_embeddings": 4096 * 32,
        "sliding_window": 4096,
    },
    "qwen2": {
        **_LLAMA_DEFAULTS,
        "vocab_size": 151936,
        "intermediate_size": 22016,
        "num_key_value_heads": 32,
        "max_position_embeddings": 32768,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "layer_types": None,
    },
    **ENCODER_DEFAULTS,
}
# Files every graft checkpoint holds beside its config.json (graft.checkpoint's MANIFEST_FILE and
# RUN_CONFIG_FILE; not imported from there, which imports this module) and no HF directory does.
_GRAFT_CHECKPOINT_FILES = ("manifest.json", "run_config.yaml")
# Buffers some older checkpoints saved next to the weights; derived, never needed.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


# ---------------------------------------------------------------- import


def is_hf_directory(directory: Path) -> bool:
    """A transformers directory: a config.json with a model_type and no graft `architecture` key;
    or a config.json that is neither graft's nor readable as a transformers one (broken JSON, not
    an object, no model_type) in a directory without graft's checkpoint files. The second kind is
    claimed so that loading it names what is wrong with its config.json (`_read_raw_config`):
    left to the graft checkpoint reader, it would be blamed on a manifest.json that an HF
    directory never has."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raw = None
    if isinstance(raw, dict) and "architecture" in raw:
        return False  # graft's own config.json
    if isinstance(raw, dict) and "model_type" in raw:
        return True
    # A damaged graft checkpoint still has the files graft writes beside config.json; its
    # manifest then names the damage.
    return not any((directory / name).exists() for name in _GRAFT_CHECKPOINT_FILES)


def hf_model_type(directory: Path) -> str:
    return str(_read_raw_config(Path(directory))["model_type"])


def read_hf_config(directory: Path, tensor_names: Iterable[str] | None = None) -> ModelConfig:
    """The ModelConfig equivalent to a transformers config.json, or a CheckpointError saying why
    none is. Encoders' heads are read off their tensor names (listed from the files when not
    given)."""
    path = Path(directory) / CONFIG_FILE
    raw = _read_raw_config(Path(directory))
    model_type = raw["model_type"]
    # an explicit null is meaningful (sliding_window: null = none)
    cfg = {**_DEFAULTS[model_type], **raw}

    def refuse(reason: str) -> CheckpointError:
        return CheckpointError(f"{path}: cannot import this {model_type} model: {reason}")

    def names() -> set[str]:
        return set(tensor_names if tensor_names is not None else _tensor_names(Path(directory)))

    try:
        if model_type == "gpt2":
            fields = _gpt2_fields(cfg, refuse)
        elif model_type in ENCODER_MODEL_TYPES:
            fields = encoder_fields(model_type, cfg, names(), refuse)
        else:
            fields = _llama_fields(model_type, cfg, refuse)
        head = _classifier_head(cfg, refuse)
        if head is not None:
            fields["head"], fields["labels"] = head
            # a classifier file has no LM head; the tied one costs nothing
            if "lm_head.weight" not in names():
                fields["tie_embeddings"] = True
        return ModelConfig(**fields)
    except ValidationError as err:
        raise CheckpointError(f"{path}: not a valid model config ({_first_error(err)})") from None


_HEAD_SUFFIXES = {
    "ForSequenceClassification": "sequence",
    "ForTokenClassification": "token",
    "ForQuestionAnswering": "span",
}


def _classifier_head(
    cfg: dict[str, Any], refuse: Callable[[str], CheckpointError]
) -> tuple[str, tuple[str, ...]] | None:
    """("sequence" | "token", label names) for a *ForSequenceClassification /
    *ForTokenClassification directory, from its `architectures` and `id2label`; ("span",
    SPAN_LABELS) for a *ForQuestionAnswering (its id2label names no classes); None for other
    architectures."""
    architecture = next(iter(cfg.get("architectures") or []), "")
    head = next(
        (kind for suffix, kind in _HEAD_SUFFIXES.items() if architecture.endswith(suffix)), None
    )
    if head is None:
        return None
    if head == "span":
        return head, SPAN_LABELS
    id2label = cfg.get("id2label") or {}
    try:
        ordered = sorted((int(i), str(name)) for i, name in id2label.items())
    except (TypeError, ValueError):
        raise refuse(f"id2label must map integer ids to label names, got {id2label!r}") from None
    if not ordered or [i for i, _ in ordered] != list(range(len(ordered))):
        # transformers writes neither for its default of two labels, and reads that default back
        count = cfg.get("num_labels") or len(ordered) or 2
        ordered = [(i, f"LABEL_{i}") for i in range(int(count))]
    return head, tuple(name for _, name in ordered)


def _gpt2_fields(cfg: dict[str, Any], refuse: Callable[[str], CheckpointError]) -> dict[str, Any]:
    activation = cfg["activation_function"]
    if activation not in ACTIVATIONS:
        raise refuse(f"activation_function {activation!r} is not one of {sorted(ACTIVATIONS)}")
    if (
        not cfg["scale_attn_weights"]
        or cfg["scale_attn_by_inverse_layer_idx"]
        or cfg["reorder_and_upcast_attn"]
    ):
        raise refuse(
            "non-default attention scaling (scale_attn_weights / scale_attn_by_inverse_layer_idx / "
            "reorder_and_upcast_attn) is not supported"
        )
    return dict(
        vocab_size=cfg["vocab_size"],
        max_seq_len=cfg["n_positions"],
        d_model=cfg["n_embd"],
        n_layers=cfg["n_layer"],
        n_heads=cfg["n_head"],
        d_ff=cfg["n_inner"] or 4 * cfg["n_embd"],
        norm="layernorm",
        norm_eps=cfg["layer_norm_epsilon"],
        positions="learned",
        mlp=ACTIVATIONS[activation],
        bias=True,
        tie_embeddings=bool(cfg["tie_word_embeddings"]),
        dropout=cfg["resid_pdrop"],
        init_std=cfg["initializer_range"],
    )


def _llama_fields(
    model_type: str, cfg: dict[str, Any], refuse: Callable[[str], CheckpointError]
) -> dict[str, Any]:
    if cfg["hidden_act"] != "silu":
        raise refuse(f"hidden_act {cfg['hidden_act']!r}: graft's gated MLP is SwiGLU (silu) only")
    d_model, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if cfg["head_dim"] is not None and heads and cfg["head_dim"] * heads != d_model:
        raise refuse(
            f"head_dim {cfg['head_dim']} * {heads} heads != hidden_size {d_model}; "
            "graft needs hidden_size = heads * head_dim"
        )
    max_len = cfg["max_position_embeddings"]
    window = cfg.get("sliding_window")
    sliding = model_type == "mistral" or (
        model_type == "qwen2"
        and (bool(cfg["use_sliding_window"]) or "sliding_attention" in (cfg["layer_types"] or []))
    )
    if sliding and window is not None and window < max_len:
        raise refuse(
            f"sliding_window {window} < max_position_embeddings {max_len}: "
            "graft has no sliding-window attention, "
            "and ignoring it would change the outputs past that length"
        )
    theta, scaling = _rope(cfg, refuse)
    kv_heads = cfg["num_key_value_heads"] or heads
    if model_type == "qwen2":
        bias, attention_bias = False, True  # Qwen2: q/k/v biased, o_proj and the MLP not
    elif model_type == "llama":
        if bool(cfg["attention_bias"]) != bool(cfg["mlp_bias"]):
            raise refuse(
                "attention_bias and mlp_bias differ; graft biases attention and MLP together"
            )
        bias, attention_bias = bool(cfg["attention_bias"]), None
    else:
        bias, attention_bias = False, None
    return dict(
        vocab_size=cfg["vocab_size"],
        max_seq_len=max_len,
        d_model=d_model,
        n_layers=cfg["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=kv_heads if kv_heads != heads else None,
        d_ff=cfg["intermediate_size"],
        norm="rmsnorm",
        norm_eps=cfg["rms_norm_eps"],
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        mlp="swiglu",
        bias=bias,
        attention_bias=attention_bias,
        tie_embeddings=bool(cfg["tie_word_embeddings"]),
        dropout=cfg["attention_dropout"],
        init_std=cfg["initializer_range"],
    )


def _rope(
    cfg: dict[str, Any], refuse: Callable[[str], CheckpointError]
) -> tuple[float, RopeScaling | None]:
    """theta and scaling from either layout: transformers 5's `rope_parameters`, or the older
    top-level `rope_theta` plus `rope_scaling`."""
    params = dict(cfg.get("rope_parameters") or {})
    theta = params.pop("rope_theta", cfg["rope_theta"])
    scaling = (
        params
        if params.get("rope_type", params.get("type", "default")) != "default"
        else cfg["rope_scaling"]
    )
    if not scaling:
        return float(theta), None
    scaling = dict(scaling)
    kind = scaling.pop("rope_type", scaling.pop("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise refuse(
            f"rope scaling type {kind!r} is not supported (graft runs default and llama3 RoPE)"
        )
    if scaling.pop("partial_rotary_factor", 1.0) != 1.0:
        raise refuse("partial_rotary_factor != 1 is not supported")
    try:
        return float(theta), RopeScaling(rope_type="llama3", **scaling)
    except (ValidationError, TypeError) as err:
        raise refuse(f"bad llama3 rope scaling {scaling}: {_first_error(err)}") from None


# What json.loads gives -> the name JSON gives it, for a message about the file.
_JSON_KINDS: dict[type, str] = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _read_raw_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such directory")
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}; not a Hugging Face model directory")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable JSON ({err})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{path}: holds a JSON {_JSON_KINDS.get(type(raw), 'value')}, not an object; "
            "not a Hugging Face model config"
        )
    if "model_type" not in raw:
        raise CheckpointError(f"{path}: has no model_type; not a Hugging Face model config")
    if raw["model_type"] not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{path}: unknown model_type {raw['model_type']!r}; "
            f"graft imports {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return raw


def load_hf_model(directory: Path) -> LanguageModel:
    """The model of a transformers directory, in eval mode and float32 (graft computes in
    float32; training's autocast is the one place a lower precision comes in)."""
    directory = Path(directory)
    # first: no config or an unknown family says so before any weights load
    model_type = hf_model_type(directory)
    tensors, sources = _read_tensors(directory)
    config = read_hf_config(directory, tensors)
    with torch.device("meta"):
        model = LanguageModel(config)  # no wasted random init: the weights come from the files
    expected = model.state_dict()
    if model_type in ENCODER_MODEL_TYPES:
        raw = {**_DEFAULTS[model_type], **_read_raw_config(directory)}
        tensors, sources = from_encoder(
            tensors, sources, config, model_type, position_offset(model_type, raw), expected
        )
        hf_names: dict[str, str] | None = graft_to_hf_names(config, model_type, expected)
    else:
        hf_names = None
        # A decoder's classifier is transformers' `score` (GPT-2's token classifier: `classifier`),
        # its span head `qa_outputs`.
        for leaf in ("weight", "bias"):
            for theirs in ("score", SPAN_HEAD):
                if f"{theirs}.{leaf}" in tensors:
                    tensors[f"classifier.{leaf}"] = tensors.pop(f"{theirs}.{leaf}")
                    sources[f"classifier.{leaf}"] = sources.pop(f"{theirs}.{leaf}")
        if config.positions == "learned":
            tensors, sources = _from_gpt2(tensors, sources, config)
        else:
            tensors, sources = _from_llama(tensors, sources)

    def hf_name(name: str) -> str:
        return hf_names.get(name, name) if hf_names is not None else _hf_name(name, config)

    if config.tie_embeddings:
        expected.pop("lm_head.weight")
        tensors.pop("lm_head.weight", None)  # some checkpoints store the tied copy anyway
    missing = sorted(set(expected) - set(tensors), key=_natural)
    if missing:
        raise CheckpointError(
            f"{_weights_label(directory)}: tensor {hf_name(missing[0])} is missing "
            f"({len(missing)} missing in all)"
        )
    unexpected = sorted(set(tensors) - set(expected), key=_natural)
    if unexpected:
        name = unexpected[0]
        raise CheckpointError(
            f"{sources[name]}: unexpected tensor {hf_name(name)} for this config "
            f"({len(unexpected)} unexpected in all)"
        )
    for name, want in expected.items():
        if tensors[name].shape != want.shape:
            raise CheckpointError(
                f"{sources[name]}: tensor {hf_name(name)} has shape "
                f"{tuple(tensors[name].shape)}, config.json implies {tuple(want.shape)}"
            )
    tensors = {k: v.to(torch.float32) for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if config.positions == "rope":
        model.model.rotary = RotaryEmbedding(config)  # rebuilt off the meta device
    return model.eval()


def _shard_index(directory: Path) -> tuple[Path, list[str], list[str]] | None:
    """A sharded checkpoint's index file, tensor names and shard files; None when unsharded."""
    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                return index, list(weight_map), sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise CheckpointError(f"{index}: not a valid shard index ({err})") from None
    return None


def _read_tensors(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """Every stored tensor and the file it came from."""
    if (sharded := _shard_index(directory)) is not None:
        index, _, files = sharded
        tensors: dict[str, torch.Tensor] = {}
        sources: dict[str, Path] = {}
        for name in files:
            shard = directory / name
            if not shard.is_file():
                raise CheckpointError(f"{shard}: listed in {index.name} but missing")
            for key, value in _read_file(shard).items():
                tensors[key], sources[key] = value, shard
        return tensors, sources
    for name in (SAFETENSORS_FILE, BIN_FILE):
        path = directory / name
        if path.is_file():
            tensors = _read_file(path)
            return tensors, dict.fromkeys(tensors, path)
    raise CheckpointError(
        f"{directory}: no weights ({SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {BIN_FILE})"
    )


def _tensor_names(directory: Path) -> list[str]:
    """The stored tensor names, without reading the tensors where the format allows."""
    if (sharded := _shard_index(directory)) is not None:
        return sharded[1]
    path = directory / SAFETENSORS_FILE
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: cannot read weights ({err})") from None
    return list(_read_tensors(directory)[0])


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot read weights ({first_line(err)})") from None
    # A .bin is a pickle: read without running code, a file that tries refused in one line.
    loaded = load_torch_file(path)
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return loaded


def _from_llama(
    tensors: dict[str, torch.Tensor], sources: dict[str, Path]
) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """Llama, Mistral and Qwen2 already use graft's names; a bare base model lacks the `model.`
    prefix, and Llama's and Qwen2's *ForQuestionAnswering call it `transformer.`."""
    out, where = {}, {}
    for key, value in tensors.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        name = key.removeprefix("transformer.")
        name = (
            name
            if name.startswith(("model.", "classifier.")) or name == "lm_head.weight"
            else f"model.{name}"
        )
        out[name], where[name] = value, sources[key]
    return out, where


# graft name (after model.layers.N.) -> GPT-2 name (after h.N.), for one-to-one tensors.
_GPT2_LAYER_NAMES = {
    "input_layernorm": "ln_1",
    "post_attention_layernorm": "ln_2",
    "self_attn.o_proj": "attn.c_proj",
    "mlp.up_proj": "mlp.c_fc",
    "mlp.down_proj": "mlp.c_proj",
}
_GPT2_TOP_NAMES = {
    "model.embed_tokens": "wte",
    "model.embed_positions": "wpe",
    "model.norm": "ln_f",
}
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # (in, out) weights


def _hf_name(graft_name: str, config: ModelConfig) -> str:
    """The name a user will find in the HF files, for error messages."""
    if config.positions != "learned" or graft_name == "lm_head.weight":
        return graft_name
    stem, _, leaf = graft_name.rpartition(".")
    if stem in _GPT2_TOP_NAMES:
        return f"{_GPT2_TOP_NAMES[stem]}.{leaf}"
    parts = stem.split(".")
    if len(parts) >= 4 and parts[:2] == ["model", "layers"]:
        inner = ".".join(parts[3:])
        if inner in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            return f"h.{parts[2]}.attn.c_attn.{leaf}"
        return f"h.{parts[2]}.{_GPT2_LAYER_NAMES.get(inner, inner)}.{leaf}"
    return graft_name


def _from_gpt2(
    tensors: dict[str, torch.Tensor], sources: dict[str, Path], config: ModelConfig
) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    out: dict[str, torch.Tensor] = {}
    where: dict[str, Path] = {}
    top = {v: k for k, v in _GPT2_TOP_NAMES.items()}
    layer = {v: k for k, v in _GPT2_LAYER_NAMES.items()}
    C = config.d_model
    for key, value in tensors.items():
        name = key.removeprefix("transformer.")
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        stem, _, leaf = name.rpartition(".")
        # lm_head and classifier are named alike; anything else unknown is reported as unexpected
        renamed = {name: value}
        if stem in top:
            renamed = {f"{top[stem]}.{leaf}": value}
        elif stem.startswith("h.") and stem.count(".") >= 2:
            _, index, inner = stem.split(".", 2)
            prefix = f"model.layers.{index}"
            if inner.endswith(_CONV1D) and leaf == "weight":
                if value.dim() != 2:
                    raise CheckpointError(
                        f"{sources[key]}: tensor {key} has shape {tuple(value.shape)}, expected 2-D"
                    )
                value = value.t()  # Conv1D stores (in, out); nn.Linear wants (out, in)
            if inner == "attn.c_attn":
                if value.shape[0] != 3 * C:
                    raise CheckpointError(
                        f"{sources[key]}: tensor {key} has shape {tuple(tensors[key].shape)}, "
                        f"config.json implies {(C, 3 * C) if leaf == 'weight' else (3 * C,)}"
                    )
                renamed = {
                    f"{prefix}.self_attn.{proj}.{leaf}": part.contiguous()
                    for proj, part in zip(("q_proj", "k_proj", "v_proj"), value.split(C, dim=0))
                }
            else:
                renamed = {f"{prefix}.{layer.get(inner, inner)}.{leaf}": value.contiguous()}
        for target, part in renamed.items():
            out[target], where[target] = part, sources[key]
    return out, where


def _natural(name: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def _weights_label(directory: Path) -> Path:
    for name in (SAFETENSORS_INDEX, BIN_INDEX, SAFETENSORS_FILE, BIN_FILE):
        if (directory / name).is_file():
            return directory / name
    return directory


def _first_error(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return f"{'.'.join(map(str, first['loc'])) or 'config'}: {first['msg']}"
    return first_line(err)


# ---------------------------------------------------------------- export


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
        suffix = next(s for s, kind in _HEAD_SUFFIXES.items() if kind == config.head)
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
            target = _hf_name(name, config)
            stem, _, leaf = target.rpartition(".")
            if stem.endswith(_CONV1D) and leaf == "weight":
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


def stop_ids(tokenizer: Tokenizer, source: Path | None) -> frozenset[int]:
    """The ids that end a generation from the model in `source`: the tokenizer's end-of-text,
    and a Hugging Face directory's generation_config.json eos ids (chat models list their
    end-of-turn token there, as transformers' `generate` reads them). The one rule for
    `graft generate`, `graft eval --task generate`, `graft chat` and the server."""
    ids = {tokenizer.eot_id} if tokenizer.eot_id is not None else set()
    return frozenset(ids | _generation_config_eos(source))


def _generation_config_eos(source: Path | None) -> set[int]:
    if source is None:
        return set()
    try:
        raw = json.loads((source / GENERATION_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    value = raw.get("eos_token_id") if isinstance(raw, dict) else None
    values = value if isinstance(value, list) else [value]
    return {v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0}


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
