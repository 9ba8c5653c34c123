"""The span (extractive question-answering) head: its config rule (labels exactly start, end), its
per-token (B, T, 2) logits, and read_padded's segment ids."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from graft.model.config import SPAN_LABELS, ModelConfig, preset
from graft.model.transformer import LanguageModel, read_padded


def _span(name: str = "bert-nano", **overrides: object) -> ModelConfig:
    fields: dict[str, object] = dict(
        vocab_size=50, max_seq_len=16, d_model=32, n_layers=1, n_heads=2, head="span"
    )
    return preset(name, **{**fields, **overrides})


@pytest.mark.parametrize(
    "labels", [("a", "b"), ("end", "start"), ("start", "end", "none"), ("start",)]
)
def test_a_span_head_refuses_other_labels(labels: tuple[str, ...]) -> None:
    refused = r"head span .* exactly the labels \['start', 'end'\], got"
    with pytest.raises(ValidationError, match=refused):
        _span(labels=labels)


def test_a_span_head_needs_its_labels() -> None:
    with pytest.raises(ValidationError, match="head: sequence, token or span"):
        _span()
    config = _span(labels=SPAN_LABELS)
    assert config.labels == ("start", "end") and not config.can_generate


@pytest.mark.parametrize("name", ["bert-nano", "nano"])
def test_span_logits_are_start_and_end_at_every_token(name: str) -> None:
    torch.manual_seed(0)
    model = LanguageModel(_span(name, labels=SPAN_LABELS)).eval()
    assert model.classifier.out_features == 2 and model.classifier.bias is not None
    ids = torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        out = model(ids, heads=["classifier"])
        hidden = model(ids, heads=[]).hidden
    assert out.class_logits is not None
    assert out.class_logits.shape == (3, 7, 2) and out.class_logits.dtype == torch.float32
    # every token's own hidden state through the one linear layer: [..., 0] start, [..., 1] end
    expected = hidden @ model.classifier.weight.T + model.classifier.bias
    torch.testing.assert_close(out.class_logits, expected)


def test_read_padded_takes_one_segment_id_per_token() -> None:
    torch.manual_seed(0)
    model = LanguageModel(_span(labels=SPAN_LABELS)).eval()
    rows, types = [[5, 6, 7, 8], [9, 10]], [[0, 0, 1, 1], [0, 1]]
    with torch.no_grad():
        out, real = read_padded(model, rows, ["classifier"], token_types=types)
        alone = model(torch.tensor([rows[1]]), token_type_ids=torch.tensor([types[1]]), heads=[])
    assert out.class_logits is not None and out.class_logits.shape == (2, 4, 2)
    assert real.tolist() == [[True] * 4, [True, True, False, False]]
    # the padded row reads as it does alone, segments included
    torch.testing.assert_close(out.hidden[1, :2], alone.hidden[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one segment id per token"):
        read_padded(model, rows, ["classifier"], token_types=[[0, 0, 1], [0, 1]])
