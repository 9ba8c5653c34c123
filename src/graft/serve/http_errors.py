"""Every error the server answers with, in OpenAI's body:
{"error": {"message", "type", "param", "code"}}.

A request the server refuses raises `APIError`; FastAPI's own validation errors (malformed JSON,
a wrong type, a value out of range) become 400s naming the offending field; unknown routes and
methods keep their 404/405 in the same body. Anything else is a bug: it is logged with its
traceback and answered with a 500 in the same shape, so a client never sees an HTML error page
and the worker keeps serving.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("graft.serve")

# Union members appear in pydantic's error locations as type tags ('str', 'list[int]', 'TextPart');
# field names are lower snake case and never one of these.
_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}

# Fields whose range message ("less than or equal to 1") would not say why.
_HINTS = {
    "n": "only n=1 is supported (one choice per request)",
    "best_of": "only best_of=1 is supported",
}


class APIError(Exception):
    """A request the server refuses, with what OpenAI's clients read from the error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        default = "server_error" if status >= 500 else "invalid_request_error"
        self.type = type or ("rate_limit_error" if status == 429 else default)
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(
            error_body(self.message, self.type, self.param, self.code),
            status_code=self.status,
            headers=self.headers,
        )


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _param(loc: Sequence[int | str]) -> str | None:
    """`messages[0].content` from ('body', 'messages', 0, 'content', 'str'); None for the body
    itself."""
    path = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _FIELD.fullmatch(part) and part not in _TYPE_TAGS:
            path += f".{part}" if path else part
    return path or None


def validation_error(exc: RequestValidationError, content_type: str | None = None) -> APIError:
    """One 400 for FastAPI's list of validation errors: the first field named, its messages
    joined. `content_type` is the request's, named when it kept the body from being read as
    JSON."""
    errors = list(exc.errors())
    if not errors:
        return APIError(400, "invalid request body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "not valid JSON")
        return APIError(400, f"the request body is not valid JSON ({detail})", code="invalid_json")
    # Of a union's failed branches, the one that got deepest into the value says most (a list of
    # token ids with one negative id: "prompt[1]", not "prompt is not a string").
    params = [_param(error.get("loc", ())) for error in errors]
    param = max(params, key=lambda p: -1 if p is None else p.count(".") + p.count("["))
    first = errors[params.index(param)]
    if param is None and isinstance(first.get("input"), bytes):
        # FastAPI parses only bodies declared as JSON (or undeclared) and hands on the others
        # as bytes: curl -d sends application/x-www-form-urlencoded unless told otherwise.
        return APIError(
            400,
            "send the body as JSON with Content-Type: application/json "
            f"(got {content_type or 'no Content-Type'})",
            code="invalid_content_type",
        )
    if param is None:
        return APIError(
            400, f"the request body must be a JSON object ({first.get('msg', 'invalid')})"
        )
    messages: list[str] = []
    for error in errors:
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if _param(error.get("loc", ())) == param and message not in messages:
            messages.append(message)
    hint = _HINTS.get(param)
    detail = hint if hint else "; or ".join(messages)
    if len(messages) > 1:  # a union's branches each failed: say what came instead
        detail += f" (got {_json_type(first.get('input'))})"
    return APIError(400, f"{param}: {detail}", param=param, code="invalid_value")


def _json_type(value: object) -> str:
    names = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc, request.headers.get("content-type")).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /openapi.json"
        return APIError(exc.status_code, message, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)
        return APIError(
            500, f"internal error ({type(exc).__name__}); the server logged it", type="server_error"
        ).response()
