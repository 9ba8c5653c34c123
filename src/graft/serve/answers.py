"""/v1/qa (extension): the span of a passage that answers a question, from a checkpoint of
`graft finetune qa`.

The question and its context are read exactly as fine-tuning and `graft eval --task qa` read
them: in the windows `graft.data.qa.qa_windows` makes (`[CLS] question [SEP] piece [SEP]`), with
the stride and the longest answer the checkpoint was fine-tuned with (`qa_settings`), and the
answer is the best span over all windows as `graft.evaluate.qa.answer_spans` picks it. The
windows run in a worker thread under the engine's lock (`Engine.span_logits`). Like Hugging
Face's question-answering pipeline, the answer comes with its character offsets in the context
and its score (start logit + end logit).
"""

from __future__ import annotations

import torch
from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from graft.errors import GraftError
from graft.evaluate.qa import Prediction, answer_spans, qa_settings
from graft.infer.engine import Engine
from graft.serve.completions import check_model
from graft.serve.http_errors import APIError
from graft.serve.metrics import ServeMetrics
from graft.serve.model_info import ModelInfo
from graft.serve.schemas import RequestBody, Usage


class QARequest(RequestBody):
    """Extension: a question about a passage (the context), answered by a span of it."""

    model: str | None = None
    question: str = Field(..., min_length=1)
    context: str = Field(..., min_length=1, description="The passage that holds the answer.")
    max_answer_tokens: int | None = Field(
        None, ge=1, description="Longest answer, in tokens; default: the fine-tune's setting."
    )


class QAResponse(BaseModel):
    model: str
    answer: str = Field(..., description="context[start:end]; empty when no span qualifies.")
    start: int = Field(..., description="Character offset of the answer in the context.")
    end: int
    score: float | None = Field(
        ..., description="Start logit + end logit of the span; null when no span qualifies."
    )
    windows: int = Field(..., description="Windows the context was read in.")
    usage: Usage


def qa_routes(engine: Engine, info: ModelInfo, metrics: ServeMetrics) -> APIRouter:
    router = APIRouter()
    settings = qa_settings(info.source) if info.config.head == "span" else None

    @router.post(
        "/v1/qa",
        response_model=QAResponse,
        tags=["graft"],
        summary="Extension: answer a question with a span of its context",
    )
    async def answer(body: QARequest) -> QAResponse:
        check_model(body.model, info)
        if settings is None:
            raise APIError(
                400,
                f"model {info.name!r} has no span head (it is {info.a_kind}); /v1/qa serves "
                "checkpoints from `graft finetune qa`",
                param="model",
                code="no_span_head",
            )
        read: list[int] = []  # tokens of every window, for the usage

        def span_logits(ids: list[list[int]], token_types: list[list[int]]) -> torch.Tensor:
            read.extend(len(row) for row in ids)
            return engine.span_logits(ids, token_types)

        def predict() -> Prediction:
            [prediction] = answer_spans(
                engine.model,
                engine.tokenizer,
                [(body.question, body.context)],
                max_len=info.input_context,
                stride=settings.stride,
                max_answer_tokens=body.max_answer_tokens or settings.max_answer_tokens,
                read=span_logits,
            )
            return prediction

        try:
            prediction = await run_in_threadpool(predict)
        except GraftError as err:  # a question that leaves no room for the context
            raise APIError(400, str(err).removeprefix("question 0: "), param="question") from None
        tokens = sum(read)
        metrics.add_tokens(tokens, 0)
        return QAResponse(
            model=info.name,
            answer=prediction.text,
            start=prediction.start_char,
            end=prediction.end_char,
            score=prediction.score,
            windows=prediction.windows,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    return router
