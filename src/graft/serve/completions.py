"""/v1/completions and /v1/chat/completions: a request becomes prompt ids and SamplingParams, goes
to the engine, and its events come back as one JSON body or as server-sent events.

Everything a client can get wrong is checked here, before the engine sees the request, and answered
with a 400 naming the field: the model name, a prompt longer than the context, max_tokens beyond
it, unsupported OpenAI fields. The engine's bounded queue answers 429.

/v1/completions also takes a batch of prompts (one engine request each, submitted together so that
they decode as one batch; one choice each) and `echo`, which is how lm-evaluation-harness scores a
text: each prompt is read in one forward pass (`Engine.score`, in a worker thread) and its tokens'
logprobs come before those of the tokens generated after it (none with max_tokens 0).

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
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal, cast

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from graft.data.inputs import input_frame
from graft.data.inputs import prompt_ids as text_prompt_ids
from graft.data.records import Message
from graft.data.tokenizer import Tokenizer
from graft.infer.engine import Engine, Event, QueueFull, RequestHandle
from graft.infer.engine import Request as EngineRequest
from graft.infer.generate import GeneratedToken
from graft.infer.sampling import SamplingParams
from graft.infer.stream import TextStream
from graft.serve.http_errors import APIError, error_body
from graft.serve.metrics import ServeMetrics
from graft.serve.model_info import ModelInfo, token_bytes, token_text
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
    ChatMessage,
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


def refuse_past_context(length: int, context: int, field: str) -> None:
    """A 400 naming `field` when `length` tokens are more than the model's context: for a
    request that only reads its tokens (echo scoring, attention)."""
    if length > context:
        raise APIError(
            400,
            f"{field}: {length} tokens; the model's context is {context}",
            param=field,
            code="context_length_exceeded",
        )


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
            f"model {info.name!r} is {info.a_kind} and cannot generate text; use "
            f"{'/v1/classify or ' if info.config.head == 'sequence' else ''}/v1/embeddings",
            param="model",
            code="model_cannot_generate",
        )
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias", code="unsupported")
    if isinstance(body, CompletionRequest):
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
    limits: tuple[int, int],
    field: str,
    prompt_field: str,
) -> int:
    """The new tokens a request may have: `requested` (None: as many as fit), within what the
    prompt leaves of `limits`, the model's context and the engine's max_batch_tokens. The
    engine refuses a request whose prompt and new tokens pass either, so a default is cut to
    fit and an `explicit` request past them is refused here, naming `field`."""
    context, batch_tokens = limits
    limit, limited_by = context, f"the model's context is {context} tokens"
    if batch_tokens < context:  # graft serve --max-batch-tokens below the context
        limit = batch_tokens
        limited_by = f"this server takes at most {batch_tokens} tokens a request (prompt and new)"
    room = limit - prompt_len
    if room < 1:
        raise APIError(
            400,
            f"{prompt_field}: the prompt is {prompt_len} tokens; {limited_by}, "
            "leaving no room to generate",
            param=prompt_field,
            code="context_length_exceeded",
        )
    if requested is None:
        return room
    if explicit and requested > room:
        raise APIError(
            400,
            f"{field}: {requested} new tokens do not fit: "
            f"the prompt is {prompt_len} tokens and {limited_by}, leaving {room}",
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


@dataclass(frozen=True)
class PreparedPrompt:
    """One checked prompt of a completion request: its ids, the text `echo` returns for it (the
    text given, or the ids decoded), and the engine request that continues it (None when
    max_tokens is 0: echo alone, nothing generated). `opening` ids come first and stand for no
    text of it: the bos a text prompt is read after (`graft.data.inputs.prompt_ids`)."""

    ids: list[int]
    text: str
    prepared: Prepared | None
    opening: int = 0


def _prompt_ids(
    prompt: str | list[int], where: str, tokenizer: Tokenizer, info: ModelInfo
) -> list[int]:
    if isinstance(prompt, str):
        ids = text_prompt_ids(tokenizer, prompt)
        if ids is not None:
            return ids
        raise APIError(
            400,
            f"{where}: empty, and the tokenizer has no end-of-text token to start from",
            param=where,
        )
    if not prompt:
        raise APIError(400, f"{where}: empty; give at least one token id", param=where)
    vocab = info.config.vocab_size or tokenizer.vocab_size
    if (bad := next((i for i in prompt if i >= vocab), None)) is not None:
        raise APIError(
            400,
            f"{where}: token id {bad} is outside the vocabulary (0..{vocab - 1})",
            param=where,
        )
    return list(prompt)


def prepare_completion(
    body: CompletionRequest, tokenizer: Tokenizer, info: ModelInfo, batch_tokens: int
) -> list[PreparedPrompt]:
    """Each prompt of the request (one, or a batch), checked against the model and its context
    and the engine's max_batch_tokens (`batch_tokens`)."""
    _check_request(body, info)
    # A list of ints is one prompt as token ids; a list of texts or of id lists is a batch.
    prompt = body.prompt
    batch = isinstance(prompt, list) and not isinstance(prompt[0], int)
    prompts = cast("list[str | list[int]]", prompt if batch else [prompt])
    if body.stream and (batch or body.echo):
        field = "echo" if body.echo else "prompt"
        raise APIError(
            400,
            f"{field}: stream takes one prompt without echo; send stream: false for "
            f"{'echo' if body.echo else 'a batch of prompts'}",
            param=field,
            code="unsupported",
        )
    if body.max_tokens == 0 and not body.echo:
        raise APIError(
            400,
            "max_tokens: 0 generates nothing; it needs echo: true (score the prompt only)",
            param="max_tokens",
        )
    context = info.config.max_seq_len
    explicit = "max_tokens" in body.model_fields_set and body.max_tokens is not None
    out = []
    for i, each in enumerate(prompts):
        where = f"prompt[{i}]" if batch else "prompt"
        ids = _prompt_ids(each, where, tokenizer, info)
        text = each if isinstance(each, str) else tokenizer.decode(ids)
        opening = len(input_frame(tokenizer, framed=False).before) if isinstance(each, str) else 0
        if body.max_tokens == 0:
            # Echo alone reads the prompt once: the whole context is its to fill, no more. A
            # longer prompt is refused rather than scored in windows, whose logprobs would not
            # be conditioned on the whole prompt as a client reading them assumes.
            refuse_past_context(len(ids), context, where)
            out.append(PreparedPrompt(ids, text, None, opening))
            continue
        limits = (context, batch_tokens)
        max_new = _max_new_tokens(body.max_tokens, explicit, len(ids), limits, "max_tokens", where)
        out.append(
            PreparedPrompt(
                ids, text, _prepared(body, ids, max_new, body.logprobs, info, "cmpl"), opening
            )
        )
    return out


def chat_ids(chat: Sequence[ChatMessage], tokenizer: Tokenizer) -> list[int]:
    """The prompt ids of a request's messages, before the next assistant turn: what the model
    reads for /v1/chat/completions (and what /v1/attention maps)."""
    messages = [
        Message(
            "system" if m.role == "developer" else m.role,
            m.content if isinstance(m.content, str) else "".join(p.text for p in m.content or []),
        )
        for m in chat
    ]
    try:
        return chat_prompt_ids(tokenizer, messages)
    except PromptError as err:
        param = "messages" if err.index is None else f"messages[{err.index}].content"
        raise APIError(400, f"{param}: {err}", param=param) from None


def prepare_chat(
    body: ChatCompletionRequest, tokenizer: Tokenizer, info: ModelInfo, batch_tokens: int
) -> Prepared:
    """The request checked against the model, its context and the engine's max_batch_tokens
    (`batch_tokens`)."""
    _check_request(body, info)
    ids = chat_ids(body.messages, tokenizer)
    requested, field = body.max_tokens, "max_tokens"
    if body.max_completion_tokens is not None:
        requested, field = body.max_completion_tokens, "max_completion_tokens"
    limits = (info.config.max_seq_len, batch_tokens)
    max_new = _max_new_tokens(requested, True, len(ids), limits, field, "messages")
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


def watch_disconnect(request: Request, handles: Sequence[RequestHandle]) -> asyncio.Task[None]:
    """A task that cancels `handles` when the client disconnects. One per HTTP request: only one
    reader receives the `http.disconnect` message, so a batch's requests share it."""

    async def cancel_on_disconnect() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                for handle in handles:
                    handle.cancel()
                return

    watcher = asyncio.create_task(cancel_on_disconnect())
    _WATCHERS.add(watcher)  # asyncio keeps only weak references to tasks
    watcher.add_done_callback(_WATCHERS.discard)
    return watcher


def run_events(
    request: Request,
    handle: RequestHandle,
    *,
    endpoint: str,
    started: float,
    metrics: ServeMetrics,
    watcher: asyncio.Task[None] | None = None,
) -> AsyncGenerator[Event, None]:
    """The engine's events for one request, cancelling it if the client disconnects or the consumer
    stops early; records time to first token and the token counts. The disconnect watcher starts
    now, not when the events are first read: a client gone before its stream began is noticed
    too. A batch passes the `watcher` its requests share, and stops it itself."""

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
            if own:
                watching.cancel()
            if not finished:
                handle.cancel()

    own = watcher is None
    watching = watch_disconnect(request, [handle]) if watcher is None else watcher
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
        text, raw = token_text(tokenizer, token_id), list(token_bytes(tokenizer, token_id))
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
    top: list[dict[str, float] | None] = []
    offsets: list[int] = []
    for event in events:
        token = event.token
        if token is None or token.logprob is None:
            continue
        tokens.append(token_text(tokenizer, token.id))
        token_logprobs.append(token.logprob)
        top.append(_alternatives(tokenizer, token.top))
        offsets.append(offset)
        offset += len(event.text)  # what the token added to the text, as the stream counts
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=token_logprobs, top_logprobs=top, text_offset=offsets
    )


def _alternatives(tokenizer: Tokenizer, top: list[tuple[int, float]]) -> dict[str, float]:
    alternatives: dict[str, float] = {}
    for i, lp in top:  # most likely first; tokens that decode alike keep the likeliest
        alternatives.setdefault(token_text(tokenizer, i), lp)
    return alternatives


def _prompt_logprobs(
    tokenizer: Tokenizer, prompt: PreparedPrompt, scored: list[GeneratedToken]
) -> CompletionLogprobs:
    """An echoed prompt's logprobs: `scored` (Engine.score) holds every token's but the first,
    which has nothing before it to be predicted from (null, as OpenAI's). Offsets are where each
    token's text begins in the echoed prompt; a token holding part of a character begins where
    that character does, and an opening bos, which the text does not hold, at 0."""
    ids = prompt.ids
    offsets, offset, stream = [], 0, TextStream(tokenizer)
    for i, token_id in enumerate(ids):
        offsets.append(offset)
        if i >= prompt.opening:
            offset += len(stream.push(token_id))
    return CompletionLogprobs(
        tokens=[token_text(tokenizer, i) for i in ids],
        token_logprobs=[None, *(t.logprob for t in scored)],
        top_logprobs=[None, *(_alternatives(tokenizer, t.top) for t in scored)],
        text_offset=offsets,
    )


def _joined(first: CompletionLogprobs, then: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(
        tokens=first.tokens + then.tokens,
        token_logprobs=first.token_logprobs + then.token_logprobs,
        top_logprobs=first.top_logprobs + then.top_logprobs,
        text_offset=first.text_offset + then.text_offset,
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
    batch_tokens = engine.config.max_batch_tokens

    def submit(prepared: Prepared) -> RequestHandle:
        try:
            return engine.submit(prepared.request)
        except QueueFull:
            raise APIError(
                429,
                "the server is busy: its request queue is full; retry shortly",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None
        except ValueError as err:
            raise APIError(400, f"the engine refused the request: {err}") from None

    def start(
        prepared: Prepared, request: Request, endpoint: str
    ) -> tuple[AsyncGenerator[Event, None], dict[str, Any]]:
        """Submit a prepared request; its events (cancelled if the client leaves) and the id,
        creation time and model that every body and chunk of its answer carries."""
        # latency counts from here: preparing is validation, not waiting
        started = time.perf_counter()
        handle = submit(prepared)
        events = run_events(request, handle, endpoint=endpoint, started=started, metrics=metrics)
        head = {"id": prepared.request.request_id, "created": int(time.time()), "model": info.name}
        return events, head

    async def generate_all(prepared: list[Prepared], request: Request) -> list[list[Event]]:
        """Each request's events, submitted together so that the engine decodes them as one
        batch; all are cancelled if the client leaves or one cannot be queued."""
        if not prepared:
            return []
        started = time.perf_counter()
        handles: list[RequestHandle] = []
        try:
            for each in prepared:
                handles.append(submit(each))
        except APIError:
            for handle in handles:
                handle.cancel()
            raise
        watcher = watch_disconnect(request, handles)
        endpoint = "/v1/completions"

        async def collect(handle: RequestHandle) -> list[Event]:
            events = run_events(
                request,
                handle,
                endpoint=endpoint,
                started=started,
                metrics=metrics,
                watcher=watcher,
            )
            return [event async for event in events]

        try:
            return list(await asyncio.gather(*(collect(handle) for handle in handles)))
        finally:
            watcher.cancel()

    async def complete(
        body: CompletionRequest, prompts: list[PreparedPrompt], request: Request
    ) -> CompletionResponse:
        """The whole answer, one choice per prompt in order: the echoed prompt scored, then what
        the engine generates after it."""
        generating = [p.prepared for p in prompts if p.prepared is not None]
        # Checked before any work: a batch the queue can never hold would only ever get 429s.
        if len(generating) > engine.config.max_queue:
            raise APIError(
                400,
                f"prompt: a batch of {len(generating)} prompts; this server queues at most "
                f"{engine.config.max_queue} (graft serve --max-queue)",
                param="prompt",
            )
        scored: list[list[GeneratedToken]] = []
        if body.echo and body.logprobs is not None:
            top = body.logprobs

            def score() -> list[list[GeneratedToken]]:
                # One prompt at a time: each forward pass holds the engine's lock, and running
                # sequences get their decode steps in between.
                return [engine.score(p.ids, top) for p in prompts]

            try:
                scored = await run_in_threadpool(score)
            except ValueError as err:
                raise APIError(400, f"the engine refused the prompt: {err}") from None
        collected = iter(await generate_all(generating, request))
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, prompt in enumerate(prompts):
            events = next(collected) if prompt.prepared is not None else []
            if not events:  # echo alone (max_tokens 0): only the prompt was read
                metrics.add_tokens(len(prompt.ids), 0)
            echoed = prompt.text if body.echo else ""
            logprobs = None
            if body.logprobs is not None:
                logprobs = _completion_logprobs(tokenizer, events, len(echoed))
                if body.echo:
                    logprobs = _joined(_prompt_logprobs(tokenizer, prompt, scored[index]), logprobs)
            choice = CompletionChoice(
                index=index,
                text=echoed + "".join(e.text for e in events),
                finish_reason=_finish_reason(events[-1]) if events else "length",
                logprobs=logprobs,
            )
            choices.append(choice)
            prompt_tokens += len(prompt.ids)
            completion_tokens += events[-1].completion_tokens if events else 0
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        rid = generating[0].request.request_id if generating else f"cmpl-{uuid.uuid4().hex}"
        return CompletionResponse(
            id=rid, created=int(time.time()), model=info.name, choices=choices, usage=usage
        )

    @router.post(
        "/v1/completions",
        response_model=CompletionResponse,
        tags=["OpenAI"],
        responses={200: _STREAMED},
        summary="Continue a prompt (text or token ids), or a batch of them; echo scores a prompt",
    )
    async def completions(body: CompletionRequest, request: Request) -> Any:
        # In a worker thread: tokenizing a long prompt (or a batch) on the event loop would hold
        # every other request, /health included, until it is done.
        prompts = await run_in_threadpool(prepare_completion, body, tokenizer, info, batch_tokens)
        if not body.stream:
            return await complete(body, prompts, request)
        # One prompt, not echoed, continued (prepare_completion refuses the others in a stream).
        prepared = prompts[0].prepared
        assert prepared is not None
        events, head = start(prepared, request, "/v1/completions")
        logprobs = body.logprobs is not None
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
        prepared = await run_in_threadpool(prepare_chat, body, tokenizer, info, batch_tokens)
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
