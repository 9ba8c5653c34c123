"""An adapter trained by PEFT over a graft export loads into graft as PEFT loads it: every
setting that changes what it computes (rsLoRA's scale, per-layer ranks) is read, and an adapter
graft cannot run as trained (on a head, or with whole trained layer copies) is refused."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
import transformers

from graft.adapt import load_adapter
from graft.errors import CheckpointError
from graft.model.config import ModelConfig
from graft.model.convert.hf_export import export_hf
from graft.model.transformer import LanguageModel

CONFIG = ModelConfig(
    vocab_size=48, max_seq_len=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
    norm="rmsnorm", positions="rope", mlp="swiglu", bias=False, dropout=0.0,
)  # fmt: skip


def _graft() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(CONFIG).eval()


def _peft_adapter(tmp_path: Path, **settings: object) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """(adapter folder, input ids, PEFT's logits) for an adapter with random (non-zero) weights
    over the export of _graft()."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(_graft(), tmp_path / "hf"))
    lora = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **settings)  # type: ignore[arg-type]
    model = peft.get_peft_model(hf, lora).eval()
    out = tmp_path / "adapter"
    model.save_pretrained(out)
    ids = torch.randint(0, CONFIG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return out, ids, model(input_ids=ids).logits


@pytest.mark.parametrize(
    "settings",
    [
        {"target_modules": ["q_proj", "v_proj"]},
        {"target_modules": ["q_proj", "v_proj"], "use_rslora": True},
        {"target_modules": ["q_proj", "down_proj"], "rank_pattern": {"down_proj": 2}},
    ],
    ids=["plain", "rslora", "rank-pattern"],
)
def test_a_peft_adapter_gives_peft_logits(tmp_path: Path, settings: dict[str, object]) -> None:
    adapter, ids, theirs = _peft_adapter(tmp_path, **settings)
    model = _graft()
    load_adapter(model, adapter)
    with torch.no_grad():
        ours = model(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "settings, refusal",
    [
        ({"target_modules": ["q_proj", "lm_head"]}, "an adapter on lm_head, a head"),
        (
            {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
            "modules_to_save ['lm_head'] keeps whole trained copies",
        ),
    ],
    ids=["head", "modules-to-save"],
)
def test_an_adapter_graft_cannot_run_as_trained_is_refused(
    tmp_path: Path, settings: dict[str, object], refusal: str
) -> None:
    adapter, _, _ = _peft_adapter(tmp_path, **settings)
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    with pytest.raises(CheckpointError) as refused:
        load_adapter(_graft(), adapter)
    assert str(refused.value).startswith(f"{adapter / 'adapter_config.json'}: {refusal}")
