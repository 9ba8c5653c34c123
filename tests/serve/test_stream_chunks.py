"""Streamed responses are built from their schemas: every chunk parses as the documented chunk
model, and each has exactly the fields OpenAI's streams send (a final chat delta is `{}`)."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from graft.data.tokenizer import Tokenizer
from graft.serve.schemas import ChatCompletionChunk, CompletionResponse

from .conftest import MODEL_NAME, build


def _events(client: TestClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_streamed_chunks_follow_their_schemas(tokenizer: Tokenizer) -> None:
    served = build(tokenizer)
    common = {
        "model": MODEL_NAME,
        "max_tokens": 5,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        with TestClient(served.app) as client:
            chat = _events(
                client,
                "/v1/chat/completions",
                {**common, "messages": [{"role": "user", "content": "the fox"}], "logprobs": True},
            )
            text = _events(
                client, "/v1/completions", {**common, "prompt": "the fox", "logprobs": 1}
            )
    finally:
        served.engine.stop()

    for chunk in chat:
        ChatCompletionChunk.model_validate(chunk)
        assert {"id", "object", "created", "model", "choices"} <= chunk.keys()
    assert chat[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    *tokens, last, usage = chat
    assert all(c["choices"][0]["delta"].keys() == {"content"} for c in tokens[1:])
    assert all(c["choices"][0]["logprobs"]["content"] for c in tokens[1:])
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5

    for chunk in text:
        CompletionResponse.model_validate(chunk)
        assert "usage" not in chunk or chunk["choices"] == []
    assert text[-2]["choices"][0]["finish_reason"] == "length"
    assert text[-1]["usage"]["total_tokens"] == text[-1]["usage"]["prompt_tokens"] + 5
    assert "".join(c["choices"][0]["text"] for c in text[:-1])  # it wrote something
