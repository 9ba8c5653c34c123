"""/v1/completions and /v1/chat/completions: a request becomes prompt ids and SamplingParams, goes
to the engine, and its events come back as one JSON body or as server-sent events.

Everything a client can get wrong is checked here, before the engine sees the request, and answered
with a 400 naming the field: the model name, a prompt longer than the context, max_tokens beyond
it, unsupported OpenAI fields. The engine's bounded queue answers 429.

A client that goes away is noticed by a task that waits for the ASGI `http.disconnect` message
(the request body has been read by then, so that is the only message left to come); it cancels
the engine request, whose batch slot frees at the next decode step. A stream whose sending fails
is cancelled the same way when its generator is closed.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from graft.data.records import Message
from graft.data.tokenizer import Tokenizer
from graft.infer.engine import Engine, Event, QueueFull, RequestHandle
from graft.infer.engine import Request as EngineRequest
from graft.infer.sampling import SamplingParams
from graft.serve.http_errors import APIError, error_body
from graft.serve.metrics import ServeMetrics
from graft.serve.model_info import ModelInfo, token_bytes
from graft.serve.prompts import PromptError, chat_prompt_ids
from graft.serve.schemas import (
    MAX_STOP_STRINGS,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Delta,
    ErrorResponse,
    SamplingFields,
    TokenLogprob,
    TopLogprob,
    Usage,
)

SSE_MEDIA_TYPE = "text/event-stream"
_ENGINE_FAILED = "generation failed inside the engine; the server logged it"
Reason = Literal["stop", "length"]
# OpenAPI before 3.2 has an event stream's `schema` describe one event.
_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "A chunk as JSON (OpenAI's chunk shapes), or [DONE] last.",
        }
    },
}
_STREAMED = {
    "content": {SSE_MEDIA_TYPE: {"schema": _SSE_EVENT}},
    "description": "JSON when stream is false; "
    "server-sent events (data: {chunk}, then data: [DONE]) when true.",
}
_WATCHERS: set[asyncio.Task[None]] = set()


@dataclass(frozen=True)
class Prepared:
    """A checked request, ready for the engine."""

    request: EngineRequest
    include_usage: bool


def check_model(requested: str | None, info: ModelInfo) -> None:
    if requested is not None and requested != info.name:
        raise APIError(
            404,
            f"model {requested!r} is not served here; this server serves {info.name!r}",
            param="model",
            code="model_not_found",
        )


def _check_request(body: SamplingFields, info: ModelInfo) -> None:
    """The checks every generation request passes first: the model, whether it can generate,
    and the OpenAI fields graft does not implement."""
    check_model(body.model, info)
    if not info.config.can_generate:
        raise APIError(
            400,
            f"model {info.name!r} is a {info.kind} and cannot generate text; use "
            f"{'/v1/classify or ' if info.config.head == 'sequence' else ''}/v1/embeddings",
            param="model",
            code="model_cannot_generate",
        )
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias", code="unsupported")
    if isinstance(body, CompletionRequest):
        if body.echo:
            raise APIError(400, "echo is not supported", param="echo", code="unsupported")
        if body.suffix is not None:
            raise APIError(400, "suffix is not supported", param="suffix", code="unsupported")
    if isinstance(body, ChatCompletionRequest):
        if body.tools:
            raise APIError(400, "tools are not supported", param="tools", code="unsupported")
        if body.response_format is not None and body.response_format.get("type", "text") != "text":
            raise APIError(
                400,
                'response_format: only {"type": "text"} is supported',
                param="response_format",
                code="unsupported",
            )
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")


def _stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    strings = [stop] if isinstance(stop, str) else list(stop or [])
    if len(strings) > MAX_STOP_STRINGS:
        raise APIError(
            400, f"stop: at most {MAX_STOP_STRINGS} strings, got {len(strings)}", param="stop"
        )
    if any(not s for s in strings):
        raise APIError(400, "stop: stop strings must not be empty", param="stop")
    return tuple(strings)


def _max_new_tokens(
    requested: int | None,
    explicit: bool,
    prompt_len: int,
    context: int,
    field: str,
    prompt_field: str,
) -> int:
    room = context - prompt_len
    if room < 1:
        raise APIError(
            400,
            f"{prompt_field}: the prompt is {prompt_len} tokens; the model's context is {context} "
            "tokens, leaving no room to generate",
            param=prompt_field,
            code="context_length_exceeded",
        )
    if requested is None:
        return room
    if explicit and requested > room:
        raise APIError(
            400,
            f"{field}: {requested} new tokens do not fit: "
            f"the prompt is {prompt_len} tokens and the model's context is {context}, "
            f"leaving {room}",
            param=field,
            code="context_length_exceeded",
        )
    return min(requested, room)


def _sampling_params(
    body: SamplingFields, max_new_tokens: int, logprobs: int | None, stop_ids: frozenset[int]
) -> SamplingParams:
    # Tiny temperatures and top_p values are safe: sampling.py decodes the first greedily and
    # always keeps the most likely token for the second.
    try:
        return SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=body.temperature,
            top_k=body.top_k or None,
            top_p=None if body.top_p >= 1 else body.top_p,
            min_p=body.min_p or None,
            seed=body.seed,
            stop_ids=stop_ids,
            repetition_penalty=body.repetition_penalty,
            frequency_penalty=body.frequency_penalty,
            presence_penalty=body.presence_penalty,
            logprobs=logprobs,
        )
    except ValueError as err:  # the schema's limits should have caught it; say which field anyway
        field = str(err).split(" ", 1)[0]
        raise APIError(
            400, str(err), param=field if field in type(body).model_fields else None
        ) from None


def prepare_completion(body: CompletionRequest, tokenizer: Tokenizer, info: ModelInfo) -> Prepared:
    _check_request(body, info)
    if isinstance(body.prompt, str):
        if body.prompt:
            ids = tokenizer.encode(body.prompt)
        elif tokenizer.eot_id is not None:
            ids = [tokenizer.eot_id]  # an empty prompt: the start of a fresh document
        else:
            raise APIError(
                400,
                "prompt: empty, and the tokenizer has no end-of-text token to start from",
                param="prompt",
            )
    else:
        ids = list(body.prompt)
        vocab = info.config.vocab_size or tokenizer.vocab_size
        if (bad := next((i for i in ids if i >= vocab), None)) is not None:
            raise APIError(
                400,
                f"prompt: token id {bad} is outside the vocabulary (0..{vocab - 1})",
                param="prompt",
            )
    explicit = "max_tokens" in body.model_fields_set and body.max_tokens is not None
    max_new = _max_new_tokens(
        body.max_tokens, explicit, len(ids), info.config.max_seq_len, "max_tokens", "prompt"
    )
    return _prepared(body, ids, max_new, body.logprobs, info, "cmpl")


def prepare_chat(body: ChatCompletionRequest, tokenizer: Tokenizer, info: ModelInfo) -> Prepared:
    _check_request(body, info)
    messages = [
        Message(
            "system" if m.role == "developer" else m.role,
            m.content if isinstance(m.content, str) else "".join(p.text for p in m.content or []),
        )
        for m in body.messages
    ]
    try:
        ids = chat_prompt_ids(tokenizer, messages)
    except PromptError as err:
        param = "messages" if err.index is None else f"messages[{err.index}].content"
        raise APIError(400, f"{param}: {err}", param=param) from None
    requested, field = body.max_tokens, "max_tokens"
    if body.max_completion_tokens is not None:
        requested, field = body.max_completion_tokens, "max_completion_tokens"
    max_new = _max_new_tokens(requested, True, len(ids), info.config.max_seq_len, field, "messages")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return _prepared(body, ids, max_new, logprobs, info, "chatcmpl")


def _prepared(
    body: SamplingFields,
    ids: list[int],
    max_new_tokens: int,
    logprobs: int | None,
    info: ModelInfo,
    id_prefix: str,
) -> Prepared:
    request = EngineRequest(
        prompt_ids=ids,
        params=_sampling_params(body, max_new_tokens, logprobs, info.stop_ids),
        stop=_stop_strings(body.stop),
        request_id=f"{id_prefix}-{uuid.uuid4().hex}",
    )
    options = body.stream_options
    return Prepared(request, body.stream and options is not None and options.include_usage)


def run_events(
    request: Request, handle: RequestHandle, *, endpoint: str, started: float, metrics: ServeMetrics
) -> AsyncGenerator[Event, None]:
    """The engine's events for one request, cancelling it if the client disconnects or the consumer
    stops early; records time to first token and the token counts. The disconnect watcher starts
    now, not when the events are first read: a client gone before its stream began is noticed
    too."""

    async def cancel_on_disconnect() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                handle.cancel()
                return

    async def events() -> AsyncGenerator[Event, None]:
        finished = first = False
        try:
            async for event in handle.aevents():
                if event.token is not None and not first:
                    first = True
                    metrics.observe_first_token(endpoint, time.perf_counter() - started)
                if event.finish_reason is not None:
                    finished = True
                    metrics.add_tokens(event.prompt_tokens, event.completion_tokens)
                yield event
        finally:
            watcher.cancel()
            if not finished:
                handle.cancel()

    watcher = asyncio.create_task(cancel_on_disconnect())
    _WATCHERS.add(watcher)  # asyncio keeps only weak references to tasks
    watcher.add_done_callback(_WATCHERS.discard)
    return events()


def _usage(event: Event) -> Usage:
    return Usage(
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        total_tokens=event.prompt_tokens + event.completion_tokens,
    )


def _finish_reason(event: Event) -> Reason:
    if event.finish_reason == "error":
        raise APIError(500, _ENGINE_FAILED, type="server_error")
    return "length" if event.finish_reason == "length" else "stop"


def _chat_logprobs(tokenizer: Tokenizer, events: list[Event]) -> ChatLogprobs:
    def fields(token_id: int, logprob: float) -> dict[str, Any]:
        text, raw = tokenizer.decode([token_id]), list(token_bytes(tokenizer, token_id))
        return {"token": text, "logprob": logprob, "bytes": raw}

    content = []
    for event in events:
        token = event.token
        if token is None or token.logprob is None:
            continue
        top = [TopLogprob(**fields(i, lp)) for i, lp in token.top]
        content.append(TokenLogprob(**fields(token.id, token.logprob), top_logprobs=top))
    return ChatLogprobs(content=content)


def _completion_logprobs(
    tokenizer: Tokenizer, events: list[Event], offset: int = 0
) -> CompletionLogprobs:
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top: list[dict[str, float]] = []
    offsets: list[int] = []
    for event in events:
        token = event.token
        if token is None or token.logprob is None:
            continue
        text = tokenizer.decode([token.id])
        tokens.append(text)
        token_logprobs.append(token.logprob)
        alternatives: dict[str, float] = {}
        for i, lp in token.top:  # most likely first; tokens that decode alike keep the likeliest
            alternatives.setdefault(tokenizer.decode([i]), lp)
        top.append(alternatives)
        offsets.append(offset)
        offset += len(text)
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=token_logprobs, top_logprobs=top, text_offset=offsets
    )


def _sse(payload: BaseModel | str) -> str:
    """One server-sent event. A chunk is built from its schema (schemas.py) with every field it
    sends set, so the fields left unset (a final chunk's empty delta) are the ones left out."""
    data = payload if isinstance(payload, str) else payload.model_dump_json(exclude_unset=True)
    return f"data: {data}\n\n"


def _chunk(
    schema: type[CompletionResponse] | type[ChatCompletionChunk],
    head: dict[str, Any],
    choices: list[Any],
    usage: Usage | None = None,
) -> str:
    """One streamed chunk of `schema` (`head` holds its id, created and model): a usage chunk
    carries `usage` (and no choices), the others leave it out, as OpenAI's streams do."""
    fields: dict[str, Any] = {"usage": usage} if usage is not None else {}
    kind = schema.model_fields["object"].default  # set, so that exclude_unset keeps it
    return _sse(schema(**head, object=kind, choices=choices, **fields))


async def _stream(
    events: AsyncGenerator[Event, None],
    chunk: Callable[..., str],
    include_usage: bool,
    pieces: Callable[[Event, Reason | None], Iterator[str]],
    first: tuple[str, ...] = (),
) -> AsyncIterator[str]:
    """A stream's server-sent events: `first`, the `pieces` of each event, a usage chunk after the
    last one when asked for, then [DONE]; an error event ends it with OpenAI's error body."""
    async with aclosing(events):  # closing it cancels the request when the client is gone
        for piece in first:
            yield piece
        async for event in events:
            if event.finish_reason == "error":
                error = error_body(_ENGINE_FAILED, "server_error")
                yield _sse(ErrorResponse.model_validate(error))
                break
            reason = None if event.finish_reason is None else _finish_reason(event)
            for piece in pieces(event, reason):
                yield piece
            if reason is not None and include_usage:
                yield chunk([], _usage(event))
    yield _sse("[DONE]")


def completion_routes(engine: Engine, info: ModelInfo, metrics: ServeMetrics) -> APIRouter:
    router = APIRouter()
    tokenizer = engine.tokenizer

    def start(
        prepared: Prepared, request: Request, endpoint: str
    ) -> tuple[AsyncGenerator[Event, None], dict[str, Any]]:
        """Submit a prepared request; its events (cancelled if the client leaves) and the id,
        creation time and model that every body and chunk of its answer carries."""
        # latency counts from here: preparing is validation, not waiting
        started = time.perf_counter()
        try:
            handle = engine.submit(prepared.request)
        except QueueFull:
            raise APIError(
                429,
                "the server is busy: its request queue is full; retry shortly",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None
        except ValueError as err:
            raise APIError(400, f"the engine refused the request: {err}") from None
        events = run_events(request, handle, endpoint=endpoint, started=started, metrics=metrics)
        head = {"id": prepared.request.request_id, "created": int(time.time()), "model": info.name}
        return events, head

    @router.post(
        "/v1/completions",
        response_model=CompletionResponse,
        tags=["OpenAI"],
        responses={200: _STREAMED},
        summary="Continue a prompt (text or token ids)",
    )
    async def completions(body: CompletionRequest, request: Request) -> Any:
        prepared = prepare_completion(body, tokenizer, info)
        events, head = start(prepared, request, "/v1/completions")
        logprobs = body.logprobs is not None
        if body.stream:
            chunk = functools.partial(_chunk, CompletionResponse, head)
            offset = 0

            def pieces(event: Event, reason: Reason | None) -> Iterator[str]:
                nonlocal offset
                if event.text or reason is not None or (logprobs and event.token is not None):
                    lp = _completion_logprobs(tokenizer, [event], offset) if logprobs else None
                    offset += len(event.text)
                    choice = CompletionChoice(
                        index=0, text=event.text, logprobs=lp, finish_reason=reason
                    )
                    yield chunk([choice])

            return _event_stream(_stream(events, chunk, prepared.include_usage, pieces))
        collected = [event async for event in events]
        choice = CompletionChoice(
            text="".join(e.text for e in collected),
            finish_reason=_finish_reason(collected[-1]),
            logprobs=_completion_logprobs(tokenizer, collected) if logprobs else None,
        )
        return CompletionResponse(**head, choices=[choice], usage=_usage(collected[-1]))

    @router.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        tags=["OpenAI"],
        responses={200: _STREAMED},
        summary="The assistant's next turn in a conversation",
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        # In a worker thread: the chat template is the checkpoint's code and may run up to its
        # deadline (graft.data.template_sandbox); on the event loop it would hold every stream.
        prepared = await run_in_threadpool(prepare_chat, body, tokenizer, info)
        events, head = start(prepared, request, "/v1/chat/completions")
        if body.stream:
            chunk = functools.partial(_chunk, ChatCompletionChunk, head)

            def delta(
                delta: Delta, reason: Reason | None = None, lp: ChatLogprobs | None = None
            ) -> str:
                return chunk(
                    [ChatChunkChoice(index=0, delta=delta, logprobs=lp, finish_reason=reason)]
                )

            def pieces(event: Event, reason: Reason | None) -> Iterator[str]:
                has_logprob = body.logprobs and event.token is not None
                if event.text or has_logprob:
                    lp = _chat_logprobs(tokenizer, [event]) if has_logprob else None
                    yield delta(Delta(content=event.text), None, lp)
                if reason is not None:
                    yield delta(Delta(), reason)

            first = (delta(Delta(role="assistant", content="")),)
            return _event_stream(_stream(events, chunk, prepared.include_usage, pieces, first))
        collected = [event async for event in events]
        choice = ChatChoice(
            message=AssistantMessage(content="".join(e.text for e in collected)),
            finish_reason=_finish_reason(collected[-1]),
            logprobs=_chat_logprobs(tokenizer, collected) if body.logprobs else None,
        )
        return ChatCompletionResponse(**head, choices=[choice], usage=_usage(collected[-1]))

    return router


def _event_stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    # no-cache and no proxy buffering: each token should reach the client when it is made.
    return StreamingResponse(
        chunks,
        media_type=SSE_MEDIA_TYPE,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
