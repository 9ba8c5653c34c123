"""How much of a model a fine-tune trains: all of it, the last blocks and the heads, or LoRA
adapters.

LoRA comes from PEFT, injected in place (`peft.inject_adapter_in_model`), so the model keeps its own
class and module names and the training loop and objectives need no wrapper. A LoRA checkpoint holds
the base weights in `model.safetensors` (plain names) and the adapter in PEFT's format beside them
(`adapter_config.json`, `adapter_model.safetensors` with `base_model.model.` names), which
`PeftModel.from_pretrained` reads over the same base; `merge_lora` folds the adapter into the
weights (what `graft export --merge-lora` does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from graft.config import AdaptConfig
from graft.errors import CheckpointError, ConfigError
from graft.model.transformer import LanguageModel

if TYPE_CHECKING:
    from peft import LoraConfig

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
# Heads a fine-tune adds: always trained, whatever the method.
CLASSIFIER_PREFIX = "classifier."  # a task's own head: its labels' rows, or a span's two
HEAD_PREFIXES = (CLASSIFIER_PREFIX, "pooler.")
# adapter_config.json's settings that change what an adapter computes, beside r, lora_alpha and
# target_modules: every one is passed on, so an adapter trained elsewhere (rsLoRA's scale, DoRA,
# per-layer ranks) loads as PEFT would load it.
_ADAPTER_SETTINGS = (
    "lora_dropout",
    "bias",
    "fan_in_fan_out",
    "use_rslora",
    "use_dora",
    "rank_pattern",
    "alpha_pattern",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
)


def apply_adaptation(model: LanguageModel, cfg: AdaptConfig) -> None:
    """Mark what trains: everything (full), the last `trainable_blocks` blocks plus the final norm
    and heads (freeze), or LoRA adapters on `lora_targets` plus the new heads (lora)."""
    if cfg.method == "full":
        return
    for param in model.parameters():
        param.requires_grad_(False)
    n_layers = model.config.n_layers
    if cfg.method == "freeze":
        if cfg.trainable_blocks > n_layers:
            raise ConfigError(
                f"adapt.trainable_blocks ({cfg.trainable_blocks}) "
                f"exceeds the model's {n_layers} blocks"
            )
        trainable = [f"model.layers.{i}." for i in range(n_layers - cfg.trainable_blocks, n_layers)]
        trainable += ["model.norm.", "lm_head_transform.", *HEAD_PREFIXES]
        if model.config.head == "lm" and not model.config.tie_embeddings:
            trainable.append("lm_head.")
        for name, param in model.named_parameters():
            if name.startswith(tuple(trainable)):
                param.requires_grad_(True)
        return
    from peft import inject_adapter_in_model

    # The blocks' layers only: the LM head's weight is read directly by the fused loss (an
    # adapter there would never train, and merging it would move tied input embeddings too),
    # and a fine-tune's new heads train fully anyway.
    linear = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    names = {name.rsplit(".", 1)[-1] for name in linear if name.startswith("model.layers.")}
    heads = {name.rsplit(".", 1)[-1] for name in linear} - names
    unknown = [t for t in cfg.lora_targets if t not in names]
    if unknown:
        what = "a head's layer" if unknown[0] in heads else "no linear layer of a block"
        raise ConfigError(
            f"adapt.lora_targets: {unknown[0]} is {what}; LoRA adapts the blocks' layers: "
            f"{', '.join(sorted(names))} (train a head with adapt.method=full or freeze)"
        )
    inject_adapter_in_model(lora_config(cfg), model)
    for name, param in model.named_parameters():
        if "lora_" in name or name.startswith(HEAD_PREFIXES):
            param.requires_grad_(True)


def lora_config(cfg: AdaptConfig) -> LoraConfig:
    from peft import LoraConfig  # imported lazily: peft pulls in transformers

    return LoraConfig(
        r=cfg.lora_rank,
        # peft annotates lora_alpha as int, but only ever divides by it (scaling = alpha / r).
        lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        bias="none",
    )


def has_lora(model: nn.Module) -> bool:
    return any("lora_A" in name for name, _ in model.named_parameters())


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each tied tensor once."""
    params = list(model.parameters())  # parameters() yields a tied tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def split_lora_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base weights under the model's plain names, adapter weights under PEFT's file names)."""
    from peft import get_peft_model_state_dict

    base = {
        name.replace(".base_layer.", "."): t.detach().cpu().contiguous()
        for name, t in model.state_dict().items()
        if "lora_" not in name
    }
    adapter = {
        _PEFT_PREFIX + name: t.detach().cpu().contiguous()
        for name, t in get_peft_model_state_dict(model).items()
    }
    return base, adapter


def save_adapter(
    model: nn.Module, cfg: AdaptConfig, directory: Path, base: str, *, weights: bool = True
) -> None:
    """Write adapter_config.json and adapter_model.safetensors (PEFT's format) into `directory`;
    the config alone without `weights` (an FSDP checkpoint keeps them among its shards)."""
    config = lora_config(cfg).to_dict()
    config.update(base_model_name_or_path=base, peft_type="LORA", task_type=None)
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    (directory / ADAPTER_CONFIG_FILE).write_text(
        json.dumps(config, indent=2, default=str), encoding="utf-8"
    )
    if not weights:
        return
    save_file(
        split_lora_state(model)[1], str(directory / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"}
    )


def load_adapter(model: LanguageModel, directory: Path, *, weights: bool = True) -> None:
    """Inject the LoRA adapter saved in `directory` into `model` (whose base weights are loaded);
    without `weights`, its layers only (an FSDP checkpoint's shards then fill them)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    path = directory / ADAPTER_CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        config = LoraConfig(
            r=raw["r"],
            lora_alpha=raw["lora_alpha"],
            target_modules=raw["target_modules"],
            **{key: raw[key] for key in _ADAPTER_SETTINGS if raw.get(key) is not None},
        )
        tensors = load_file(str(directory / ADAPTER_WEIGHTS_FILE)) if weights else {}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{directory}: unreadable LoRA adapter ({err})") from None
    if raw.get("modules_to_save"):
        raise CheckpointError(
            f"{path}: modules_to_save {raw['modules_to_save']} keeps whole trained copies of "
            "layers, which graft does not read; give an adapter of LoRA layers only"
        )
    inject_adapter_in_model(config, model)
    outside = [
        name
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and not name.startswith("model.layers.")
    ]
    if outside:
        raise CheckpointError(
            f"{path}: an adapter on {outside[0]}, a head: graft's loss reads the head's weight "
            "directly, so LoRA adapts the blocks' layers only"
        )
    if not weights:
        return
    result = set_peft_model_state_dict(
        model, {k.removeprefix(_PEFT_PREFIX): v for k, v in tensors.items()}
    )
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise CheckpointError(
            f"{directory / ADAPTER_WEIGHTS_FILE}: tensor {unexpected[0]} fits no layer of the model"
        )


def merge_lora(model: LanguageModel) -> None:
    """Fold every LoRA adapter into its base layer and put the plain layer back, in place."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(
                model.get_submodule(parent_name) if parent_name else model,
                child,
                module.get_base_layer(),
            )
