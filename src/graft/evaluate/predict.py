"""What a model predicts for whole texts: the one path `graft eval`, the experiments and the
server's /v1/classify share. Text becomes ids through `graft.data.inputs.model_inputs` (framed
for an encoder, cut to the context) and ids become outputs through
`graft.model.transformer.read_padded`, exactly as the server reads them. A token tagger reads
words through `graft.data.tagged.tagged_inputs`, as it was trained."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from graft.data.inputs import model_inputs
from graft.data.tagged import TaggedInputs
from graft.data.tokenizer import Tokenizer
from graft.errors import ConfigError, DataError
from graft.model.transformer import LanguageModel, read_padded

__all__ = ["Classified", "WordTags", "class_probabilities", "word_tags"]


@dataclass(frozen=True)
class Classified:
    probabilities: torch.Tensor  # (N, labels) float32 on the CPU, in the order of the texts
    truncated: int  # texts cut to fit the context


@torch.inference_mode()
def scoring_context(model: LanguageModel, seq_len: int | None, name: str) -> int:
    """The ids a text may take when `model` scores it: `--seq-len` when given, from 1 to the
    model's context, else that context. `name` says whose context it is in the refusal. The one
    rule of `graft eval` and `graft extract`."""
    context = model.config.max_seq_len
    if seq_len is None:
        return context
    if not 1 <= seq_len <= context:
        raise ConfigError(f"--seq-len {seq_len}: give 1 to {name}'s context of {context} tokens")
    return seq_len


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


@dataclass(frozen=True)
class WordTags:
    """A token tagger's reading of one sentence: a tag per word and the probability the model gave
    it. A word past the context (not in the inputs) is "O" with probability 0.0."""

    tags: list[str]
    scores: list[float]


@torch.inference_mode()
def word_tags(
    model: LanguageModel, inputs: Sequence[TaggedInputs], *, batch_size: int = 8
) -> list[WordTags]:
    """The tag of every word of every sentence, in order, read in batches of `batch_size`: the
    model's choice (argmax) at each word's first sub-token, as training scored it. `inputs` come
    from `graft.data.tagged.tagged_inputs` (framed when the model is an encoder, cut to its
    context), the one path `graft finetune tokens`, `graft eval --task tokens` and `graft
    extract` share."""
    names = model.config.labels
    out: list[WordTags] = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        logits = read_padded(model, [x.ids for x in batch], ["classifier"])[0].class_logits
        assert logits is not None
        best = logits.argmax(-1, keepdim=True)
        chosen = logits.float().softmax(-1).gather(-1, best)[..., 0]
        for x, choice, probability in zip(batch, best[..., 0].tolist(), chosen.tolist()):
            # Positions of word starts, in word order: word i is the i-th such position.
            tags = [names[c] for c, w in zip(choice, x.words) if w >= 0]
            scores = [p for p, w in zip(probability, x.words) if w >= 0]
            missing = x.n_words - len(tags)  # words cut off by the context
            out.append(WordTags(tags + ["O"] * missing, scores + [0.0] * missing))
    return out
