"""`graft serve`: an OpenAI-compatible HTTP API and a playground page over one generation engine.

`create_app` builds the FastAPI app around an Engine the caller owns (and starts); `serve` loads a
checkpoint, starts the engine and runs uvicorn. Routes:

    GET  /                      the playground (static/index.html; open, it asks for the API key)
    GET  /health                liveness and queue figures (open)
    GET  /metrics               Prometheus text format
    GET  /v1/models             OpenAI's model list (one model)
    GET  /v1/models/{id}        the model, plus graft's facts and its card (extension)
    POST /v1/completions        (completions.py)
    POST /v1/chat/completions   (completions.py)
    POST /v1/embeddings         (encodings.py)
    POST /v1/classify           (encodings.py; extension)
    POST /v1/qa                 (answers.py; extension)
    POST /v1/attention          (attention.py; extension)
    GET  /openapi.json, /docs   FastAPI's schema and its viewer (open)

With an API key configured, every /v1 route and /metrics need `Authorization: Bearer KEY`. The
key is compared in constant time, before the body is read. The server binds 127.0.0.1 unless told
otherwise. A request body larger than MAX_REQUEST_BYTES is answered 413 before any route reads it.
"""

from __future__ import annotations

import functools
import hmac
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graft.data.records import MAX_RECORD_CHARS
from graft.data.tokenizer import Tokenizer
from graft.errors import GraftError
from graft.infer.engine import Engine, EngineConfig
from graft.serve.answers import qa_routes
from graft.serve.attention import attention_routes
from graft.serve.completions import check_model, completion_routes
from graft.serve.encodings import encoding_routes
from graft.serve.http_errors import APIError, install_error_handlers
from graft.serve.metrics import Gauges, ServeMetrics
from graft.serve.model_info import ModelInfo, describe_model, load_model_for_serving
from graft.serve.schemas import (
    ErrorResponse,
    Health,
    ModelDetail,
    ModelFacts,
    ModelList,
    ModelObject,
)

STATIC_DIR = Path(__file__).parent / "static"
# A request is one record, under the policy every reader of records follows (records.py); without
# a bound, one client could make the server hold a body of any size.
MAX_REQUEST_BYTES = MAX_RECORD_CHARS
LOOPBACK = ("127.0.0.1", "::1", "localhost")
# The playground loads nothing from elsewhere and runs no inline script.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Paths reported in metrics as themselves; anything else is "other", so a scan of random URLs
# cannot grow the label set without bound.
_ENDPOINTS = {
    "/",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/classify",
    "/v1/qa",
    "/v1/attention",
    "/openapi.json",
    "/docs",
}
# First path segments that need the API key when one is configured (/v1/... and /metrics): the
# routes create_app documents with `guard` must be under them.
_GUARDED = {"v1", "metrics"}


@dataclass(frozen=True)
class ServeOptions:
    """Everything `graft serve` takes; each default lives here."""

    checkpoint: Path
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    model_name: str | None = None  # default: the checkpoint path as given (as vLLM names models)
    max_batch: int = 8
    max_queue: int = 64
    # None: as many as the KV cache holds (max_batch full contexts), so a request that fits the
    # context always fits the engine.
    max_batch_tokens: int | None = None
    quantize: Literal["none", "int8"] = "none"
    compile: bool = False  # torch.compile the engine's decode step (float models)
    device: str = "cpu"
    log_level: str = "info"


def _endpoint(path: str) -> str:
    if path in _ENDPOINTS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return "/static" if path.startswith("/static/") else "other"


class _RequestMetrics:
    """ASGI middleware: each HTTP request's endpoint, status and time to its last byte (for a
    stream, the end of the stream, which a route-level timer would not see)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status, recorded = time.perf_counter(), 500, False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                seconds = time.perf_counter() - started
                self.metrics.observe_request(_endpoint(scope["path"]), status, seconds)

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record()

        try:
            await self.app(scope, receive, timed_send)
        finally:
            record()  # if not yet: the client left mid-stream, or the app failed before answering


class _BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before any route reads
    it, whether its Content-Length says so or its chunks add up to it. The body is read here and
    handed on whole (every route reads it whole anyway); later receive() calls, which wait for
    the client to leave, go to the server as before."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                first = message
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        pending = [first]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = APIError(
            413,
            f"request body: more than {self.limit:,} bytes; send a shorter prompt or conversation",
            code="request_too_large",
        )
        await error.response()(scope, receive, send)


class _RequireKey:
    """ASGI middleware: with an API key configured, a request for a guarded path without it is
    answered 401 before anything reads its body. As a route dependency the check would come
    after FastAPI has parsed the body, so a client without the key would learn whether its JSON
    parses, and could make the server read bodies for nothing."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].split("/")[1] not in _GUARDED:
            await self.app(scope, receive, send)
            return
        # Read as FastAPI's HTTPBearer reads it: scheme "Bearer" (any case), then the key.
        scheme, given = get_authorization_scheme_param(Headers(scope=scope).get("authorization"))
        if scheme.lower() != "bearer":
            given = ""
        if hmac.compare_digest(given.encode("utf-8"), self.key):
            await self.app(scope, receive, send)
            return
        problem = "wrong API key" if given else "missing API key"
        error = APIError(
            401,
            f"{problem}: send the server's key as the header 'Authorization: Bearer KEY'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await error.response()(scope, receive, send)


def _documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, each answered with OpenAI's error body."""
    return {status: {"model": ErrorResponse} for status in statuses}


def create_app(
    engine: Engine,
    info: ModelInfo,
    *,
    api_key: str | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> FastAPI:
    """The app over a built engine. The caller starts the engine (engine.start()) and stops it."""
    tokenizer: Tokenizer = engine.tokenizer
    metrics = ServeMetrics()
    app = FastAPI(
        title="graft serve",
        version="1",
        summary=f"OpenAI-compatible API serving {info.name}",
        description="OpenAI's completions, chat completions, embeddings and models endpoints, plus "
        "graft's /v1/classify, /v1/qa, /v1/attention and model facts. Errors use OpenAI's body: "
        '{"error": {"message", "type", "param", "code"}}.',
    )
    install_error_handlers(app)
    app.add_middleware(_BodyLimit, limit=max_request_bytes)
    if api_key is not None:  # outside _BodyLimit: a body sent without the key is never read
        app.add_middleware(_RequireKey, api_key=api_key)
    app.add_middleware(_RequestMetrics, metrics=metrics)  # outermost: it sees the 401s and 413s
    # _RequireKey checks the key; this dependency refuses nothing (auto_error off) and is there
    # to state the scheme in /openapi.json on the routes that need it.
    bearer = HTTPBearer(
        auto_error=False, description="The server's API key (--api-key or GRAFT_API_KEY)."
    )
    guard = [Depends(bearer)]
    add_routes = functools.partial(app.include_router, dependencies=guard)
    add_routes(
        completion_routes(engine, info, metrics),
        responses=_documented(400, 401, 404, 413, 429, 500),
    )
    add_routes(
        encoding_routes(engine, info, metrics), responses=_documented(400, 401, 404, 413, 500)
    )
    add_routes(
        attention_routes(engine, info, metrics), responses=_documented(400, 401, 404, 413, 500)
    )
    add_routes(qa_routes(engine, info, metrics), responses=_documented(400, 401, 404, 413, 500))
    get_openai = functools.partial(
        app.get, tags=["OpenAI"], dependencies=guard, responses=_documented(401, 404)
    )

    def model_object() -> ModelObject:
        return ModelObject(id=info.name, created=info.created)

    @get_openai("/v1/models", response_model=ModelList, summary="The served model")
    async def list_models() -> ModelList:
        return ModelList(data=[model_object()])

    @get_openai(
        "/v1/models/{model_id:path}",
        response_model=ModelDetail,
        summary="The served model, with graft's facts and its card (extension)",
    )
    async def get_model(model_id: str) -> ModelDetail:
        check_model(model_id, info)
        cfg = info.config
        facts = ModelFacts(
            kind=info.kind,
            parameters=info.parameters,
            context_length=cfg.max_seq_len,
            vocab_size=cfg.vocab_size or tokenizer.vocab_size,
            layers=cfg.n_layers,
            d_model=cfg.d_model,
            heads=cfg.n_heads,
            head=cfg.head,
            labels=list(cfg.labels),
            tokenizer=tokenizer.kind,
            chat_template=tokenizer.chat_template is not None,
            quantize=engine.config.quantize,
            max_batch=engine.config.max_batch,
            card=info.card,
        )
        return ModelDetail(**model_object().model_dump(), graft=facts)

    @app.get("/health", response_model=Health, tags=["graft"], summary="Liveness and queue figures")
    async def health() -> Health:
        stats = engine.stats
        return Health(model=info.name, running=stats.running, waiting=stats.waiting)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        tags=["graft"],
        dependencies=guard,
        responses=_documented(401),
        summary="Prometheus text exposition format",
    )
    async def prometheus() -> PlainTextResponse:
        stats = engine.stats
        text = metrics.render(
            Gauges(
                waiting=stats.waiting, running=stats.running, last_batch_size=stats.last_batch_size
            )
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> RedirectResponse:
        return RedirectResponse("/static/favicon.svg")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _drop_unreachable_422(app)
    return app


def _drop_unreachable_422(app: FastAPI) -> None:
    """FastAPI documents a 422 for every route with parameters, but validation errors are answered
    400 here (as OpenAI does); the schema should list the statuses a client can really get."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
            operations = [op for item in schema.get("paths", {}).values() for op in item.values()]
            for responses in (operation.get("responses", {}) for operation in operations):
                if responses.pop("422", None) is not None:
                    responses.setdefault("400", {"description": "Bad request", "content": error})
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    # FastAPI's documented way to customise the schema is to replace this method on the app.
    app.openapi = openapi  # type: ignore[method-assign]


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, made here so that a port in use is a one-line error, not uvicorn's
    exit."""
    if not 0 <= port <= 65535:
        raise GraftError(f"--port {port}: a port is 0..65535 (0 picks a free one)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        raise GraftError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def serve(options: ServeOptions, *, echo: Callable[[str], None] = print) -> None:
    """Load the checkpoint, start the engine and serve until Ctrl-C, which stops it cleanly
    (requests in flight get a few seconds to finish) and returns normally."""
    import uvicorn

    if options.api_key is not None and not options.api_key:
        raise GraftError("--api-key is empty; give a key, or leave it out to serve without one")
    for name in ("max_batch", "max_queue", "max_batch_tokens"):
        if (value := getattr(options, name)) is not None and value < 1:
            raise GraftError(f"--{name.replace('_', '-')} {value}: must be 1 or more")
    if options.compile and options.quantize == "int8":
        raise GraftError(
            "--compile and --quantize int8 do not combine "
            "(torch.compile cannot trace int8 linears); choose one"
        )
    sock = _listen(options.host, options.port)  # first: a port in use should not cost a model load
    try:
        model, tokenizer, source = load_model_for_serving(options.checkpoint, options.device)
        name = options.model_name or str(options.checkpoint)
        info = describe_model(model, tokenizer, source, name=name, created=int(time.time()))
        context = model.config.max_seq_len
        # ServeOptions holds every EngineConfig field, under the same name.
        settings = {f.name: getattr(options, f.name) for f in fields(EngineConfig)}
        settings["max_batch_tokens"] = options.max_batch_tokens or options.max_batch * context
        engine = Engine(model, tokenizer, EngineConfig(**settings))
    except BaseException:
        sock.close()
        raise
    app = create_app(engine, info, api_key=options.api_key)
    shown_host = f"[{options.host}]" if ":" in options.host else options.host
    echo(
        f"serving {name!r} ({info.kind}, {info.parameters:,} parameters, context {context}) on "
        f"http://{shown_host}:{sock.getsockname()[1]}/  "
        "(playground at /, API at /v1, schema at /docs)"
    )
    if options.host not in LOOPBACK and options.api_key is None:
        echo(
            "warning: listening beyond this machine with no API key; "
            "anyone who can reach it can use it (set --api-key or GRAFT_API_KEY)"
        )
    server = uvicorn.Server(
        uvicorn.Config(app, log_level=options.log_level, timeout_graceful_shutdown=5)
    )
    engine.start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shut down cleanly, then re-raised the Ctrl-C: stopping is the normal end of a
        # server, not an interruption of its work
        pass
    finally:
        engine.stop()
        sock.close()
    echo("stopped")
