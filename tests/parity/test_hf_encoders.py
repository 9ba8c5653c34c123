"""BERT and RoBERTa in and out, against transformers: tiny random encoders built from configs
(nothing downloaded), imported and compared on padded batches for every head they carry; graft
encoders exported as BERT and loaded back by transformers. Encoders do not generate, so greedy
generation parity is a decoder test only (test_hf_decoders.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from graft.errors import CheckpointError
from graft.model.config import preset
from graft.model.convert.hf import load_hf_model
from graft.model.convert.hf_export import export_hf
from graft.model.transformer import LanguageModel, padding_attention_mask

pytestmark = pytest.mark.parity

VOCAB = 99
_SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
)
FAMILIES = {
    "bert-pretraining": (
        transformers.BertForPreTraining,
        transformers.BertConfig(**_SHAPE, max_position_embeddings=64),
    ),
    "bert-mlm": (
        transformers.BertForMaskedLM,
        transformers.BertConfig(**_SHAPE, max_position_embeddings=64),
    ),
    "bert-base-model": (
        transformers.BertModel,
        transformers.BertConfig(**_SHAPE, max_position_embeddings=64),
    ),
    "bert-gelu-new": (
        transformers.BertForMaskedLM,
        transformers.BertConfig(**_SHAPE, max_position_embeddings=64, hidden_act="gelu_new"),
    ),
    "roberta-mlm": (
        transformers.RobertaForMaskedLM,
        transformers.RobertaConfig(**_SHAPE, max_position_embeddings=66, pad_token_id=1),
    ),
}


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Seeded noise on every parameter, so zero biases and unit norm weights are exercised too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def _build(family: str, directory: Path) -> torch.nn.Module:
    cls, config = FAMILIES[family]
    torch.manual_seed(0)
    model = cls(config)
    _perturb(model, 1)
    model.save_pretrained(directory)
    return model.eval()


def _padded_batch(
    pad_id: int, with_types: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, VOCAB, (3, 12), generator=gen)
    real = torch.ones(3, 12, dtype=torch.bool)
    real[1, 8:] = False
    real[2, 3:] = False
    ids[~real] = pad_id
    types = (torch.arange(12) >= 6).long().expand(3, 12).contiguous() if with_types else None
    return ids, real, types


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_import_matches_transformers_on_padded_batches(family: str, tmp_path: Path) -> None:
    reference = _build(family, tmp_path)
    model = load_hf_model(tmp_path)
    roberta = family.startswith("roberta")
    ids, real, types = _padded_batch(pad_id=1 if roberta else 0, with_types=not roberta)
    with torch.no_grad():
        out = reference(input_ids=ids, attention_mask=real.long(), token_type_ids=types)
        mask = padding_attention_mask(real, causal=False)
        heads = ["lm", "nsp"] if family == "bert-pretraining" else ["lm"]
        ours = model(ids, token_type_ids=types, attention_mask=mask, heads=heads)
        hidden = ours.hidden
        if family == "bert-base-model":
            torch.testing.assert_close(hidden[real], out.last_hidden_state[real], atol=1e-4, rtol=0)
            torch.testing.assert_close(model.pooler(hidden), out.pooler_output, atol=1e-4, rtol=0)
            return
        logits = ours.logits
        expected = out.prediction_logits if family == "bert-pretraining" else out.logits
        torch.testing.assert_close(logits[real], expected[real], atol=1e-4, rtol=0)
        if family == "bert-pretraining":
            torch.testing.assert_close(
                ours.nsp_logits, out.seq_relationship_logits, atol=1e-4, rtol=0
            )


def test_heads_are_read_from_the_tensors(tmp_path: Path) -> None:
    seen = {}
    for family in ("bert-pretraining", "bert-mlm", "bert-base-model", "roberta-mlm"):
        _build(family, tmp_path / family)
        c = load_hf_model(tmp_path / family).config
        seen[family] = (c.mlm_head, c.pooler, c.nsp_head, c.type_vocab_size, c.max_seq_len)
    assert seen == {
        "bert-pretraining": (True, True, True, 2, 64),
        "bert-mlm": (True, False, False, 2, 64),
        "bert-base-model": (False, True, False, 2, 64),
        # RoBERTa's first pad_token_id + 1 position rows are never used: 66 - 2 positions remain.
        "roberta-mlm": (True, False, False, FAMILIES["roberta-mlm"][1].type_vocab_size, 64),
    }


@pytest.mark.parametrize("name", ["bert-nano", "bert-mlm-only", "bert-base-model"])
def test_graft_encoder_exports_as_bert(name: str, tmp_path: Path) -> None:
    overrides: dict[str, object] = dict(
        vocab_size=VOCAB, max_seq_len=32, d_model=32, n_layers=2, n_heads=4
    )
    if name == "bert-mlm-only":
        overrides.update(nsp_head=False, pooler=False)
    if name == "bert-base-model":
        overrides.update(nsp_head=False, mlm_head=False)
    torch.manual_seed(0)
    model = LanguageModel(preset("bert-nano", **overrides))
    _perturb(model, 3)
    model.eval()
    export_hf(model, tmp_path / "out")
    loaded = (
        transformers.AutoModel.from_pretrained(tmp_path / "out")
        if name == "bert-base-model"
        else getattr(
            transformers,
            {"bert-nano": "BertForPreTraining", "bert-mlm-only": "BertForMaskedLM"}[name],
        ).from_pretrained(tmp_path / "out")
    )
    loaded.eval()
    ids, real, types = _padded_batch(pad_id=0, with_types=True)
    mask = padding_attention_mask(real, causal=False)
    with torch.no_grad():
        out = loaded(input_ids=ids, attention_mask=real.long(), token_type_ids=types)
        hidden = model(ids, token_type_ids=types, attention_mask=mask, heads=[]).hidden
        if name == "bert-base-model":
            torch.testing.assert_close(hidden[real], out.last_hidden_state[real], atol=1e-4, rtol=0)
            return
        expected = out.prediction_logits if name == "bert-nano" else out.logits
        torch.testing.assert_close(
            model(ids, token_type_ids=types, attention_mask=mask).logits[real],
            expected[real],
            atol=1e-4,
            rtol=0,
        )
        if name == "bert-nano":
            nsp = model(ids, token_type_ids=types, attention_mask=mask, heads=["nsp"]).nsp_logits
            torch.testing.assert_close(nsp, out.seq_relationship_logits, atol=1e-4, rtol=0)
    # And back: graft reads its own export.
    again = load_hf_model(tmp_path / "out")
    assert again.config == model.config.model_copy(update=dict(d_ff=model.config.ff_dim))


def test_missing_encoder_tensor_is_named_as_transformers_names_it(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    _build("bert-mlm", tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["bert.encoder.layer.1.attention.self.key.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError, match=r"bert\.encoder\.layer\.1\.attention\.self\.key\.weight is missing"
    ):
        load_hf_model(tmp_path)


def test_relative_position_bert_is_refused(tmp_path: Path) -> None:
    cls, config = FAMILIES["bert-mlm"]
    cls(
        transformers.BertConfig(
            **_SHAPE, max_position_embeddings=64, position_embedding_type="relative_key"
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="position_embedding_type 'relative_key'"):
        load_hf_model(tmp_path)


@pytest.mark.parametrize(
    "fields",
    [
        dict(attention="bidirectional"),  # a bidirectional pre-norm model: no transformers class
        dict(norm_position="post"),  # a causal post-norm decoder: none either
        dict(type_vocab_size=2),  # token types on a GPT-2 decoder
    ],
)
def test_encoder_switches_without_a_bert_shape_are_refused(
    fields: dict[str, object], tmp_path: Path
) -> None:
    from graft.errors import ConfigError

    model = LanguageModel(preset("nano", vocab_size=VOCAB, **fields))
    with pytest.raises(ConfigError, match="export as BERT only"):
        export_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
