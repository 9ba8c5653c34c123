"""Classifier heads in and out, against transformers: *ForSequenceClassification and
*ForTokenClassification of GPT-2, Llama, Qwen2, BERT and RoBERTa built from tiny random configs,
imported and compared on right-padded batches; graft classifiers exported and loaded back by
AutoModelForSequenceClassification / AutoModelForTokenClassification with the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from graft.model.config import preset
from graft.model.convert.hf import load_hf_model
from graft.model.convert.hf_export import export_hf
from graft.model.transformer import LanguageModel, padding_attention_mask

pytestmark = pytest.mark.parity

VOCAB, PAD, LABELS = 99, 0, ("neg", "neutral", "pos")
_SHAPE = dict(
    vocab_size=VOCAB,
    pad_token_id=PAD,
    num_labels=3,
    id2label=dict(enumerate(LABELS)),
    label2id={n: i for i, n in enumerate(LABELS)},
)
CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(
        n_positions=32, n_embd=32, n_layer=2, n_head=4, **_SHAPE
    ),
    "llama": lambda: transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        **_SHAPE,
    ),
    "qwen2": lambda: transformers.Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        **_SHAPE,
    ),
    "bert": lambda: transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        **_SHAPE,
    ),
    # Its sequence head is dense + tanh + out_proj over <s>: graft's pooler and classifier.
    "roberta": lambda: transformers.RobertaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32 + PAD + 1,  # positions count from pad_token_id + 1
        **_SHAPE,
    ),
}


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (3, 10), generator=gen)
    real = torch.ones(3, 10, dtype=torch.bool)
    real[1, 6:] = False
    real[2, 2:] = False
    ids[~real] = PAD
    return ids, real


def _perturb(module: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def _graft_logits(model: LanguageModel, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    causal = model.config.attention == "causal"
    return model(
        ids,
        attention_mask=padding_attention_mask(real, causal=causal),
        heads=["classifier"],
        last_index=real.sum(1) - 1,
    ).class_logits


@pytest.mark.parametrize("head", ["sequence", "token"])
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_import_matches_transformers(family: str, head: str, tmp_path: Path) -> None:
    auto = (
        transformers.AutoModelForSequenceClassification
        if head == "sequence"
        else transformers.AutoModelForTokenClassification
    )
    torch.manual_seed(0)
    reference = auto.from_config(CONFIGS[family]())
    _perturb(reference)
    reference.eval().save_pretrained(tmp_path)
    model = load_hf_model(tmp_path)
    assert model.config.head == head and model.config.labels == LABELS
    ids, real = _batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=real.long()).logits
        got = _graft_logits(model, ids, real)
    if head == "token":
        expected, got = expected[real], got[real]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("head", ["sequence", "token"])
@pytest.mark.parametrize("name", ["nano", "llama-nano", "bert-nano"])
def test_graft_classifier_round_trips(name: str, head: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LanguageModel(
        preset(
            name,
            vocab_size=VOCAB,
            max_seq_len=32,
            d_model=32,
            n_layers=2,
            n_heads=4,
            head=head,
            labels=LABELS,
        )
    )
    _perturb(model)
    model.eval()
    export_hf(model, tmp_path / "out")
    auto = (
        transformers.AutoModelForSequenceClassification
        if head == "sequence"
        else transformers.AutoModelForTokenClassification
    )
    loaded = auto.from_pretrained(tmp_path / "out", pad_token_id=PAD).eval()
    assert loaded.config.id2label == dict(enumerate(LABELS))
    ids, real = _batch()
    with torch.no_grad():
        expected = loaded(input_ids=ids, attention_mask=real.long()).logits
        got = _graft_logits(model, ids, real)
    if head == "token":
        expected, got = expected[real], got[real]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    again = load_hf_model(tmp_path / "out")
    assert (again.config.head, again.config.labels) == (head, LABELS)
    card = (tmp_path / "out" / "README.md").read_text()
    assert (
        f"pipeline_tag: {'text' if head == 'sequence' else 'token'}-classification" in card
        and "0: neg, 1: neutral, 2: pos" in card
    )


@pytest.mark.parametrize(
    "name, head",
    [("nano", "sequence"), ("bert-nano", "token"), ("bert-nano", "lm"), ("llama-nano", "lm")],
)
def test_verify_compares_the_right_outputs(name: str, head: str, tmp_path: Path) -> None:
    from graft.data.tokenizer import bytes_tokenizer
    from graft.model.convert.verify import verify_hf_export

    tokenizer = bytes_tokenizer()
    labels = LABELS if head != "lm" else ()
    torch.manual_seed(0)
    model = LanguageModel(
        preset(
            name,
            vocab_size=tokenizer.vocab_size,
            max_seq_len=32,
            d_model=32,
            n_layers=1,
            n_heads=4,
            head=head,
            labels=labels,
        )
    ).eval()
    export_hf(model, tmp_path / "out", tokenizer=tokenizer)
    records = {r.check: r for r in verify_hf_export(tmp_path / "out", model, tokenizer)}
    assert records["logits"].ok, records["logits"].detail
    with torch.no_grad():  # and it notices a wrong classifier (or embedding)
        weight = (model.classifier if head != "lm" else model.model.embed_tokens).weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(5)))
    assert not {r.check: r for r in verify_hf_export(tmp_path / "out", model, tokenizer)}[
        "logits"
    ].ok


def test_a_two_label_classifier_saved_without_id2label_imports(tmp_path: Path) -> None:
    """transformers leaves id2label and num_labels out of config.json at its default of two
    labels (and reads two back); graft refused such a directory as having no known labels."""
    torch.manual_seed(0)
    config = CONFIGS["bert"]()
    config.num_labels = 2  # transformers' default: LABEL_0, LABEL_1
    reference = transformers.AutoModelForSequenceClassification.from_config(config)
    reference.eval().save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    for key in ("id2label", "num_labels"):  # what transformers writes, or the test tests nothing
        if key in written:
            del written[key]
    (tmp_path / "config.json").write_text(json.dumps(written))
    model = load_hf_model(tmp_path)
    assert model.config.labels == ("LABEL_0", "LABEL_1")
    ids, real = _batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=real.long()).logits
        torch.testing.assert_close(_graft_logits(model, ids, real), expected, atol=1e-4, rtol=0)
