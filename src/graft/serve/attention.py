"""/v1/attention (extension): where the model looked while reading a conversation or a text.

A conversation is rendered exactly as /v1/chat/completions renders it (`chat_ids`); when it ends
with an assistant reply, that reply's tokens follow the prompt the model answered, so the map is
of what the model read while writing it (the reply's text encoded again: a reply whose generated
ids encode differently reads slightly differently here). The model runs once with
output_attentions (`Engine.attentions`, in a worker thread, under the engine's lock) and the
answer is graft.insight's attention rollout and the last layer's weights, heads averaged.
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from graft.data.inputs import model_inputs
from graft.infer.engine import Engine
from graft.insight.explain import attention_rollout
from graft.serve.completions import chat_ids, check_model, refuse_past_context
from graft.serve.http_errors import APIError
from graft.serve.metrics import ServeMetrics
from graft.serve.model_info import ModelInfo, token_text
from graft.serve.schemas import ChatMessage, RequestBody

DECIMALS = 4


class AttentionRequest(RequestBody):
    """Extension: give `messages` (a chat, optionally ending with the assistant's reply) or
    `prompt` (a text), not both."""

    model: str | None = None
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, description="A conversation, read as /v1/chat/completions reads it."
    )
    prompt: str | None = Field(None, description="A text, read as /v1/completions reads it.")


class AttentionResponse(BaseModel):
    model: str
    tokens: list[str] = Field(..., description="Each token the model read, as text.")
    reply_start: int = Field(
        ...,
        description="Index of the first token of the conversation's last assistant reply "
        "(len(tokens) when it does not end with one).",
    )
    layers: int
    heads: int
    rollout: list[list[float]] = Field(
        ..., description="T×T attention rollout, heads averaged; row i sums to 1."
    )
    last_layer: list[list[float]] = Field(
        ..., description="T×T softmax weights of the last layer, heads averaged."
    )


def attention_routes(engine: Engine, info: ModelInfo, metrics: ServeMetrics) -> APIRouter:
    router = APIRouter()
    tokenizer = engine.tokenizer

    def read_ids(body: AttentionRequest) -> tuple[list[int], int, str]:
        """The ids the model reads, where the reply starts, and the field they came from."""
        if (body.messages is None) == (body.prompt is None):
            raise APIError(400, "messages or prompt: give exactly one", param="messages")
        if body.messages is not None:
            if not info.config.can_generate:
                raise APIError(
                    400,
                    f"messages: model {info.name!r} is {info.a_kind} and does not chat; "
                    "give a prompt",
                    param="messages",
                    code="model_cannot_generate",
                )
            *before, last = body.messages
            if last.role != "assistant" or not before:
                ids = chat_ids(body.messages, tokenizer)
                return ids, len(ids), "messages"
            prompt = chat_ids(before, tokenizer)
            content = last.content
            text = content if isinstance(content, str) else "".join(p.text for p in content or [])
            return prompt + tokenizer.encode(text), len(prompt), "messages"
        assert body.prompt is not None
        bare = tokenizer.encode(body.prompt)
        if not bare:
            raise APIError(400, "prompt: empty; give some text", param="prompt")
        framed = info.config.is_encoder  # an encoder reads [CLS] text [SEP], as /v1/embeddings
        ids = model_inputs(tokenizer, [bare], framed=framed, max_len=None).ids[0]
        return ids, len(ids), "prompt"

    def attend(body: AttentionRequest) -> AttentionResponse:
        ids, reply_start, field = read_ids(body)
        refuse_past_context(len(ids), info.config.max_seq_len, field)
        # (L, H, T, T), in float64: rounded in float32, 0.5048 would be sent as the nearest
        # float32, 0.504800021648407, and the JSON would carry 15 digits, not 4.
        weights = engine.attentions(ids).double().numpy()
        metrics.add_tokens(len(ids), 0)
        return AttentionResponse(
            model=info.name,
            tokens=[token_text(tokenizer, i) for i in ids],
            reply_start=reply_start,
            layers=weights.shape[0],
            heads=weights.shape[1],
            rollout=np.round(attention_rollout(weights), DECIMALS).tolist(),
            last_layer=np.round(weights[-1].mean(axis=0), DECIMALS).tolist(),
        )

    @router.post(
        "/v1/attention",
        response_model=AttentionResponse,
        tags=["graft"],
        summary="Extension: attention rollout and last-layer attention over a chat or a text",
    )
    async def attention(body: AttentionRequest) -> AttentionResponse:
        check_model(body.model, info)
        # In a worker thread: the chat template may run up to its deadline, and the forward pass
        # should not hold the event loop while other requests stream.
        return await run_in_threadpool(attend, body)

    return router
