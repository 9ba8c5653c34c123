"""What a model predicts for whole texts: the one path `graft eval`, the experiments and the
server's /v1/classify share. Text becomes ids through `graft.data.inputs.model_inputs` (framed
for an encoder, cut to the context) and ids become outputs through
`graft.model.transformer.read_padded`, exactly as the server reads them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from graft.data.inputs import model_inputs
from graft.data.tokenizer import Tokenizer
from graft.errors import DataError
from graft.model.transformer import LanguageModel, read_padded

__all__ = ["Classified", "class_probabilities"]


@dataclass(frozen=True)
class Classified:
    probabilities: torch.Tensor  # (N, labels) float32 on the CPU, in the order of the texts
    truncated: int  # texts cut to fit the context


@torch.inference_mode()
def class_probabilities(
    model: LanguageModel,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    max_len: int,
    batch_size: int = 32,
    sources: Sequence[str] | None = None,
) -> Classified:
    """Class probabilities of a sequence classifier for every text, in order, read in batches of
    `batch_size`. `sources` (file:line of each text) name a text that encodes to no tokens."""
    inputs = model_inputs(tokenizer, texts, framed=model.config.is_encoder, max_len=max_len)
    for i, ids in enumerate(inputs.ids):
        if not ids:
            where = sources[i] if sources is not None else f"text {i}"
            raise DataError(f"{where}: the text encodes to no tokens")
    probabilities = []
    for start in range(0, len(inputs.ids), batch_size):
        logits = read_padded(model, inputs.ids[start : start + batch_size], ["classifier"])[0]
        assert logits.class_logits is not None
        probabilities.append(logits.class_logits.softmax(dim=-1).cpu())
    return Classified(
        torch.cat(probabilities) if probabilities else torch.empty(0, len(model.config.labels)),
        sum(inputs.truncated),
    )
