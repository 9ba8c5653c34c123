"""Bad input never reaches a 500: each is a 4xx in OpenAI's error body naming the field, and the
server goes on answering. Also the OpenAPI schema describes what the routes accept."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from graft.data.tokenizer import Tokenizer

from .conftest import CONTEXT, MODEL_NAME, Served, build, tiny_model

LONG = "the quick brown fox " * 200  # far beyond the 128-token context
USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    with TestClient(served.app, raise_server_exceptions=False) as c:
        yield c


def assert_error(response, status: int, param: str | None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, (
        body
    )
    error = body["error"]
    assert error["param"] == param, error
    assert error["message"] and isinstance(error["type"], str)
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert param.split("[")[0].split(".")[0] in error["message"], (
            error
        )  # the message names it too
    return error


COMPLETION_CASES = [
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, -3]}, "prompt[1]"),
    ({"prompt": [10**6]}, "prompt"),  # outside the vocabulary
    ({}, "prompt"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "temperature": -0.1}, "temperature"),
    ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_p": 1.01}, "top_p"),
    ({"prompt": "x", "top_k": -1}, "top_k"),
    ({"prompt": "x", "min_p": 2}, "min_p"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),  # 0 only with echo
    ({"prompt": "x", "max_tokens": -5}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    ({"prompt": "x", "max_tokens": CONTEXT * 10}, "max_tokens"),
    ({"prompt": "x", "frequency_penalty": 3}, "frequency_penalty"),
    ({"prompt": "x", "presence_penalty": -2.5}, "presence_penalty"),
    ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "seed": "seven"}, "seed"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "logit_bias": {"5": 10}}, "logit_bias"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "stop": 3}, "stop"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
]


@pytest.mark.parametrize(("body", "param"), COMPLETION_CASES, ids=[p for _, p in COMPLETION_CASES])
def test_bad_completion_fields_are_400_naming_the_field(client: TestClient, body: dict, param: str):
    assert_error(client.post("/v1/completions", json={"model": MODEL_NAME, **body}), 400, param)


CHAT_CASES = [
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        },
        "messages[0].content[0].type",
    ),
    ({"messages": [{"role": "user", "content": "a <|endoftext|> b"}]}, "messages[0].content"),
    ({"messages": USER, "temperature": -1}, "temperature"),
    ({"messages": USER, "top_p": 0}, "top_p"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "max_completion_tokens": CONTEXT}, "max_completion_tokens"),
    ({"messages": USER, "top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ({"messages": USER, "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"messages": USER, "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": USER, "n": 3}, "n"),
]


@pytest.mark.parametrize(("body", "param"), CHAT_CASES, ids=[p for _, p in CHAT_CASES])
def test_bad_chat_fields_are_400_naming_the_field(client: TestClient, body: dict, param: str):
    assert_error(
        client.post("/v1/chat/completions", json={"model": MODEL_NAME, **body}), 400, param
    )


def test_prompt_longer_than_the_context(client: TestClient):
    assert_error(
        client.post("/v1/completions", json={"prompt": LONG}),
        400,
        "prompt",
        "context_length_exceeded",
    )
    long_chat = [{"role": "user", "content": LONG}]
    assert_error(
        client.post("/v1/chat/completions", json={"messages": long_chat}),
        400,
        "messages",
        "context_length_exceeded",
    )
    assert_error(
        client.post("/v1/embeddings", json={"input": LONG}), 400, "input", "context_length_exceeded"
    )


def test_max_tokens_beyond_what_is_left_of_the_context(client: TestClient, tokenizer: Tokenizer):
    prompt = "the quick brown fox"
    room = CONTEXT - len(tokenizer.encode(prompt))
    error = assert_error(
        client.post("/v1/completions", json={"prompt": prompt, "max_tokens": room + 1}),
        400,
        "max_tokens",
        "context_length_exceeded",
    )
    assert str(room) in error["message"]
    ok = client.post(
        "/v1/completions", json={"prompt": prompt, "max_tokens": room, "temperature": 0}
    )
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= room


def test_unknown_model_is_404_naming_model(client: TestClient):
    for path, body in (
        ("/v1/completions", {"prompt": "x"}),
        ("/v1/chat/completions", {"messages": USER}),
        ("/v1/embeddings", {"input": "x"}),
        ("/v1/classify", {"input": "x"}),
        ("/v1/qa", {"question": "x", "context": "y"}),
    ):
        assert_error(
            client.post(path, json={"model": "gpt-4o", **body}), 404, "model", "model_not_found"
        )
    assert_error(client.get("/v1/models/gpt-4o"), 404, "model", "model_not_found")


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b"[1, 2]", b'"text"', b"null", b'{"prompt": NaN}']
)
def test_malformed_bodies_are_400(client: TestClient, raw: bytes):
    response = client.post(
        "/v1/completions", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_embedding_inputs(client: TestClient):
    assert_error(client.post("/v1/embeddings", json={"input": ""}), 400, "input")
    assert_error(client.post("/v1/embeddings", json={"input": ["ok", ""]}), 400, "input")
    assert_error(client.post("/v1/embeddings", json={"input": []}), 400, "input")
    assert_error(client.post("/v1/embeddings", json={"input": [[1, 2], [10**6]]}), 400, "input")
    assert_error(
        client.post("/v1/embeddings", json={"input": "x", "dimensions": 7}), 400, "dimensions"
    )
    assert_error(
        client.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"}),
        400,
        "encoding_format",
    )
    ok = client.post("/v1/embeddings", json={"input": [[1, 2, 3], [4]]})
    assert ok.status_code == 200 and len(ok.json()["data"]) == 2


def test_qa_without_a_span_head_is_a_clear_400(client: TestClient):
    body = {"question": "who?", "context": "the fox"}
    error = assert_error(client.post("/v1/qa", json=body), 400, "model", "no_span_head")
    assert "graft finetune qa" in error["message"]
    assert_error(client.post("/v1/qa", json={**body, "question": ""}), 400, "question")


def test_classify_without_a_head_is_a_clear_400(client: TestClient):
    error = assert_error(
        client.post("/v1/classify", json={"input": "the fox"}),
        400,
        "model",
        "no_classification_head",
    )
    assert "classification head" in error["message"]


def test_classify_with_a_head(tokenizer: Tokenizer):
    served = build(tokenizer, tiny_model(tokenizer, labels=("ham", "spam")), start=False)
    with TestClient(served.app) as client:
        result = client.post("/v1/classify", json={"input": ["the fox", "buy now"]}).json()
        assert [d["index"] for d in result["data"]] == [0, 1]
        for item in result["data"]:
            assert set(item["probabilities"]) == {"ham", "spam"}
            assert abs(sum(item["probabilities"].values()) - 1) < 1e-5
            assert item["label"] == max(item["probabilities"], key=item["probabilities"].get)
        # A classifier cannot generate: a 400 that says so, not an engine error.
        assert_error(
            client.post("/v1/completions", json={"prompt": "x"}),
            400,
            "model",
            "model_cannot_generate",
        )
        assert client.get(f"/v1/models/{MODEL_NAME}").json()["graft"]["labels"] == ["ham", "spam"]


def test_unknown_routes_and_methods_keep_the_error_shape(client: TestClient):
    assert_error(client.get("/v1/nothing"), 404, None)
    assert_error(client.get("/v1/completions"), 405, None)


def test_an_unexpected_failure_is_a_500_in_the_same_shape_and_the_server_goes_on(
    client: TestClient, served: Served, monkeypatch: pytest.MonkeyPatch
):
    def broken(batch):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(served.engine, "embed", broken)
    error = assert_error(client.post("/v1/embeddings", json={"input": "x"}), 500, None)
    assert (
        error["type"] == "server_error" and "simulated bug" not in error["message"]
    )  # no internals leak
    monkeypatch.undo()
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 200


def test_empty_prompt_starts_a_document(client: TestClient):
    result = client.post(
        "/v1/completions", json={"prompt": "", "max_tokens": 4, "temperature": 0}
    ).json()
    assert result["usage"]["prompt_tokens"] == 1  # the end-of-text token


def test_stop_strings_end_the_text(client: TestClient):
    free = client.post(
        "/v1/completions", json={"prompt": "the", "max_tokens": 30, "temperature": 0}
    ).json()
    text = free["choices"][0]["text"]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    if len(stop) < 2:
        pytest.skip("the greedy continuation is too short to cut")
    cut = client.post(
        "/v1/completions", json={"prompt": "the", "max_tokens": 30, "temperature": 0, "stop": stop}
    ).json()
    assert cut["choices"][0]["text"] == text[: text.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_openapi_schema_models_the_request_bodies(client: TestClient):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/classify"):
        post = paths[path]["post"]
        assert "$ref" in post["requestBody"]["content"]["application/json"]["schema"]
        assert "422" not in post["responses"] and "400" in post["responses"]
    completion = schema["components"]["schemas"]["CompletionRequest"]["properties"]
    assert (
        completion["temperature"]["minimum"] == 0 and completion["top_p"]["exclusiveMinimum"] == 0
    )
    assert (
        "text/event-stream" in paths["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    )
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
