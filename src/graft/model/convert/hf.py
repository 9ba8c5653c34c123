"""Hugging Face checkpoints in: GPT-2, Llama (and Llama-3 RoPE scaling), Mistral, Qwen2, and the
encoders BERT and RoBERTa (their names and heads live in `bert.py`), plus what both directions
share: the file names of a transformers directory, the head-class suffixes and GPT-2's name table.

Import reads a local transformers directory (`config.json` plus `model.safetensors`, a sharded
`model.safetensors.index.json`, or `pytorch_model.bin` read with weights_only=True), maps its config
onto a ModelConfig and its tensors onto graft's names. Llama, Mistral and Qwen2 already use graft's
names; GPT-2's are renamed, its Conv1D weights ((in, out)) transposed and its fused c_attn split
into q/k/v. A family's *ForSequenceClassification / *ForTokenClassification comes in as a
classifier, its *ForQuestionAnswering as a span head. Anything graft cannot run exactly (an unknown
model_type, a real sliding window, another RoPE scaling) is refused with the reason rather than
approximated. `stop_ids` reads the eos ids a directory's generation_config.json names, the one
rule for where generation stops.

Export lives in `graft.model.convert.hf_export`, which imports the shared names from here; this
module never imports it, so the names flow one way only.

transformers itself is never imported: it is a test oracle here, not a dependency.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from graft.errors import CheckpointError, first_line
from graft.model.config import SPAN_LABELS, ModelConfig, RopeScaling
from graft.model.convert.bert import (
    ACTIVATIONS,
    ENCODER_MODEL_TYPES,
    SPAN_HEAD,
    encoder_fields,
    from_encoder,
    graft_to_hf_names,
    position_offset,
)
from graft.model.convert.bert import DEFAULTS as ENCODER_DEFAULTS
from graft.model.transformer import LanguageModel, RotaryEmbedding
from graft.torch_files import load_torch_file

if TYPE_CHECKING:
    from graft.data.tokenizer import Tokenizer

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "stop_ids",
    "hf_model_type",
    "is_hf_directory",
    "load_hf_model",
    "read_hf_config",
]

# A transformers directory's files: import reads them, hf_export writes them, verify checks them.
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


HEAD_SUFFIXES = {
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
        (kind for suffix, kind in HEAD_SUFFIXES.items() if architecture.endswith(suffix)), None
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
        return hf_names.get(name, name) if hf_names is not None else hf_tensor_name(name, config)

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
CONV1D_WEIGHTS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # (in, out) weights


def hf_tensor_name(graft_name: str, config: ModelConfig) -> str:
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
            if inner.endswith(CONV1D_WEIGHTS) and leaf == "weight":
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


# ---------------------------------------------------------------- generation stops


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
