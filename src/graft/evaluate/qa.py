"""What an extractive question-answering model answers: the one prediction path `graft eval --task
qa` and the server share.

Each question is read in the windows `graft.data.qa.qa_windows` makes of it (as fine-tuning
trained them), through `graft.model.transformer.read_padded` with the windows' token types. In
each window the `n_best` highest start and end logits among the positions that stand for context
characters are paired into spans that end at or after they start and hold at most
`max_answer_tokens` tokens, scored by start logit + end logit (BERT's and transformers'
postprocessing); the question's answer is the best span of any of its windows, cut from the
context by the windows' character offsets. A question with no valid span gets an empty answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from graft.data.qa import QARecord, QAWindow, qa_windows
from graft.data.tokenizer import Tokenizer
from graft.errors import CheckpointError, ConfigError
from graft.model.transformer import LanguageModel, read_padded
from graft.objectives.qa import QAConfig

__all__ = ["Prediction", "SpanReader", "answer_spans", "best_span", "qa_settings", "span_logits"]

# Windows' ids and token types -> their start and end logits (B, T, 2), float32 on the CPU.
SpanReader = Callable[[list[list[int]], list[list[int]]], torch.Tensor]


def qa_settings(checkpoint: Path | None) -> QAConfig:
    """The stride and longest answer a span model was fine-tuned with (the objective section of
    its run config), else QAConfig's defaults: what `graft eval --task qa` and the server read
    questions with unless told otherwise."""
    from graft.checkpoint import read_saved_section, resolve_checkpoint

    if checkpoint is None:
        return QAConfig()
    try:
        return read_saved_section(resolve_checkpoint(checkpoint), "objective", QAConfig)
    except CheckpointError:  # no run config (a Hugging Face directory), or another objective's
        return QAConfig()


def span_logits(
    model: LanguageModel, ids: list[list[int]], token_types: list[list[int]]
) -> torch.Tensor:
    """The span head's start and end logits over windows of different lengths, right-padded."""
    out, _ = read_padded(model, ids, ["classifier"], token_types=token_types)
    assert out.class_logits is not None  # (B, T, 2): start, end
    return out.class_logits.float().cpu()


@dataclass(frozen=True)
class Prediction:
    """A question's predicted answer: `text` is context[start_char:end_char]; `score` the span's
    start logit + end logit (None, with an empty text, when no window had a valid span);
    `windows` how many windows the question was read in."""

    text: str
    start_char: int
    end_char: int
    score: float | None
    windows: int


def best_span(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    offsets: Sequence[tuple[int, int] | None],
    *,
    max_answer_tokens: int,
    n_best: int = 20,
) -> tuple[int, int, float] | None:
    """The best valid span of one window: (start position, end position, score), or None.

    `start_logits` and `end_logits` (T,) belong to the window's positions, `offsets` (T) say
    which stand for context characters (not None): only those start or end a span. Of the
    `n_best` highest start and end logits among them, the pairs with start <= end and at most
    `max_answer_tokens` positions are scored by the sum of their logits."""
    candidates = torch.tensor([p for p, span in enumerate(offsets) if span is not None])
    if not len(candidates):
        return None
    k = min(n_best, len(candidates))
    start_scores, start_at = start_logits[candidates].float().topk(k)
    end_scores, end_at = end_logits[candidates].float().topk(k)
    starts, ends = candidates[start_at], candidates[end_at]
    length = ends[None, :] - starts[:, None] + 1  # (k starts, k ends)
    valid = (length >= 1) & (length <= max_answer_tokens)
    if not bool(valid.any()):
        return None
    scores = (start_scores[:, None] + end_scores[None, :]).masked_fill(~valid, float("-inf"))
    i, j = divmod(int(scores.argmax()), k)
    return int(starts[i]), int(ends[j]), float(scores[i, j])


@torch.inference_mode()
def answer_spans(
    model: LanguageModel,
    tokenizer: Tokenizer,
    questions: Sequence[QARecord | tuple[str, str]],
    *,
    max_len: int,
    stride: int,
    max_answer_tokens: int,
    batch_size: int = 8,
    n_best: int = 20,
    read: SpanReader | None = None,
) -> list[Prediction]:
    """The answer of every question, in order: records, or (question, context) pairs. Windows of
    at most `max_len` ids sharing `stride` context tokens are read `batch_size` at a time, by
    `read` when given (the server's engine, under its lock) else `span_logits` on `model`; a
    question that leaves no room for its context is a DataError naming its record (or its
    index)."""
    if model.config.head != "span":
        raise ConfigError(
            f"answering questions needs a span head (graft finetune qa); the model has head "
            f"{model.config.head!r}"
        )
    contexts: list[str] = []
    windows: list[tuple[int, QAWindow]] = []
    for index, item in enumerate(questions):
        if isinstance(item, QARecord):
            question, context, source = item.question, item.context, item.source
        else:
            (question, context), source = item, f"question {index}"
        contexts.append(context)
        found = qa_windows(
            tokenizer, question, context, max_len=max_len, stride=stride, source=source
        )
        windows += [(index, window) for window in found]
    counts = [0] * len(contexts)
    best: list[tuple[float, int, int] | None] = [None] * len(contexts)
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        ids = [list(w.ids) for _, w in batch]
        types = [list(w.token_type_ids) for _, w in batch]
        logits = read(ids, types) if read is not None else span_logits(model, ids, types)
        for row, (index, window) in enumerate(batch):
            counts[index] += 1
            span = best_span(
                logits[row, : len(window), 0],
                logits[row, : len(window), 1],
                window.offsets,
                max_answer_tokens=max_answer_tokens,
                n_best=n_best,
            )
            if span is None:
                continue
            start, end, score = span
            start_span, end_span = window.offsets[start], window.offsets[end]
            assert start_span is not None and end_span is not None  # best_span's candidates
            held = best[index]
            if held is None or score > held[0]:
                best[index] = (score, start_span[0], end_span[1])
    predictions = []
    for context, held, count in zip(contexts, best, counts):
        if held is None:
            predictions.append(Prediction("", 0, 0, None, count))
        else:
            score, start, end = held
            predictions.append(Prediction(context[start:end], start, end, score, count))
    return predictions
