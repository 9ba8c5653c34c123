"""The span (extractive question-answering) head in and out, against transformers: a graft encoder
exported and loaded by BertForQuestionAnswering, BERT / RoBERTa / GPT-2 / Llama / Qwen2 / Mistral
*ForQuestionAnswering built from tiny random configs and imported, each compared on a right-padded
batch (with token types where the family has them): transformers' start_logits / end_logits are
graft's class_logits[..., 0] / [..., 1]."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors import safe_open

from graft.data.tokenizer import bytes_tokenizer
from graft.model.config import SPAN_LABELS, preset
from graft.model.convert.hf import load_hf_model
from graft.model.convert.hf_export import export_hf
from graft.model.convert.verify import verify_hf_export
from graft.model.transformer import LanguageModel, read_padded

pytestmark = pytest.mark.parity

VOCAB = 99
_DECODER: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
)
_ENCODER: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
)
REFERENCES = {
    "bert": lambda: transformers.BertForQuestionAnswering(
        transformers.BertConfig(**_ENCODER, max_position_embeddings=32)
    ),
    "roberta": lambda: transformers.RobertaForQuestionAnswering(
        transformers.RobertaConfig(**_ENCODER, max_position_embeddings=34, pad_token_id=1)
    ),
    "gpt2": lambda: transformers.GPT2ForQuestionAnswering(
        transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    ),
    "llama": lambda: transformers.LlamaForQuestionAnswering(
        transformers.LlamaConfig(vocab_size=VOCAB, **_DECODER)
    ),
    "qwen2": lambda: transformers.Qwen2ForQuestionAnswering(
        transformers.Qwen2Config(vocab_size=VOCAB, **_DECODER)
    ),
    "mistral": lambda: transformers.MistralForQuestionAnswering(
        transformers.MistralConfig(vocab_size=VOCAB, sliding_window=None, **_DECODER)
    ),
}


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    """Seeded noise on every parameter: zero biases (qa_outputs' among them) become nonzero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def _rows(pad_id: int) -> tuple[list[list[int]], list[list[int]], torch.Tensor, torch.Tensor]:
    """Three rows of 12, 8 and 3 tokens (never the pad id), their segment ids (question 0,
    context 1) and the same right-padded: ids (3, 12), real positions (3, 12)."""
    gen = torch.Generator().manual_seed(2)
    lengths = (12, 8, 3)
    rows = [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in lengths]
    types = [[int(i >= 2) for i in range(n)] for n in lengths]
    ids = torch.full((3, 12), pad_id)
    real = torch.zeros(3, 12, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        real[i, : len(row)] = True
    return rows, types, ids, real


def _start_end(model: torch.nn.Module, **inputs: torch.Tensor) -> torch.Tensor:
    """transformers' start and end logits as graft lays them out: (B, T, 2)."""
    out = model(**inputs)
    return torch.stack([out.start_logits, out.end_logits], dim=-1)


def test_graft_encoder_exports_as_bert_for_question_answering(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = preset(
        "bert-nano",
        vocab_size=VOCAB,
        max_seq_len=32,
        d_model=32,
        n_layers=2,
        n_heads=4,
        head="span",
        labels=SPAN_LABELS,
    )
    model = LanguageModel(config)
    _perturb(model)
    model.eval()
    assert model.classifier.bias is not None and bool(model.classifier.bias.abs().min() > 0)
    out = export_hf(model, tmp_path / "out")

    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["BertForQuestionAnswering"] and "id2label" not in saved
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    # BertForQuestionAnswering's base has no pooler, and the pre-training heads stay behind.
    assert {"qa_outputs.weight", "qa_outputs.bias"} <= names
    assert not any(n.startswith(("bert.pooler", "cls.", "classifier")) for n in names)

    reference = transformers.BertForQuestionAnswering.from_pretrained(out).eval()
    rows, types, ids, real = _rows(pad_id=0)
    segments = torch.tensor([t + [0] * (12 - len(t)) for t in types])
    with torch.no_grad():
        expected = _start_end(
            reference, input_ids=ids, attention_mask=real.long(), token_type_ids=segments
        )
        got, got_real = read_padded(model, rows, ["classifier"], token_types=types)
    assert got.class_logits is not None and got.class_logits.dtype == torch.float32
    assert torch.equal(got_real, real)
    torch.testing.assert_close(got.class_logits[real], expected[real], atol=1e-5, rtol=0)
    with torch.no_grad():  # the segments matter: reading every token as segment 0 differs
        flat = read_padded(model, rows, ["classifier"])[0].class_logits
    assert flat is not None and not torch.allclose(flat[real], expected[real], atol=1e-3)

    again = load_hf_model(out)
    assert (again.config.head, again.config.labels, again.config.pooler) == (
        "span",
        SPAN_LABELS,
        False,
    )
    with torch.no_grad():
        reread = read_padded(again, rows, ["classifier"], token_types=types)[0].class_logits
    assert reread is not None
    torch.testing.assert_close(reread[real], expected[real], atol=1e-5, rtol=0)
    assert "pipeline_tag: question-answering" in (out / "README.md").read_text()


def test_verify_compares_start_and_end_logits(tmp_path: Path) -> None:
    tokenizer = bytes_tokenizer()
    torch.manual_seed(0)
    model = LanguageModel(
        preset(
            "bert-nano",
            vocab_size=tokenizer.vocab_size,
            max_seq_len=32,
            d_model=32,
            n_layers=1,
            n_heads=4,
            head="span",
            labels=SPAN_LABELS,
        )
    ).eval()
    export_hf(model, tmp_path / "out", tokenizer=tokenizer)
    records = {r.check: r for r in verify_hf_export(tmp_path / "out", model, tokenizer)}
    assert records["logits"].ok, records["logits"].detail
    with torch.no_grad():  # the end logits alone wrong: verify notices
        model.classifier.bias[1] += 1.0
    records = {r.check: r for r in verify_hf_export(tmp_path / "out", model, tokenizer)}
    assert not records["logits"].ok


@pytest.mark.parametrize("family", sorted(REFERENCES))
def test_question_answering_models_import_and_export(family: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = REFERENCES[family]()
    _perturb(reference)
    reference.eval().save_pretrained(tmp_path / "theirs")
    model = load_hf_model(tmp_path / "theirs")
    assert (model.config.head, model.config.labels) == ("span", SPAN_LABELS)

    pad = 1 if family == "roberta" else 0
    rows, types, ids, real = _rows(pad_id=pad)
    inputs = dict(input_ids=ids, attention_mask=real.long())
    token_types = types if family == "bert" else None
    if token_types is not None:
        inputs["token_type_ids"] = torch.tensor([t + [0] * (12 - len(t)) for t in types])
    with torch.no_grad():
        expected = _start_end(reference, **inputs)
        got = read_padded(model, rows, ["classifier"], token_types=token_types)[0].class_logits
    assert got is not None
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)

    if family in ("roberta", "mistral"):
        return  # graft exports encoders as BERT and sliding-window-free Mistral as Llama
    export_hf(model, tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["architectures"] == [type(reference).__name__]
    loaded = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "ours").eval()
    assert type(loaded) is type(reference)
    with torch.no_grad():
        exported = _start_end(loaded, **inputs)
    torch.testing.assert_close(exported[real], expected[real], atol=1e-5, rtol=0)
