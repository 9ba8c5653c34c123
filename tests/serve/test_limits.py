"""API keys (401), the engine's bounded queue (429), clients that disconnect (their request is
cancelled and its slot freed), and the Prometheus metrics."""

from __future__ import annotations

import json
import re
import socket
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from graft.data.tokenizer import Tokenizer
from graft.infer.engine import Request, RequestHandle
from graft.infer.sampling import SamplingParams

from .conftest import MODEL_NAME, Served, build, live_server, slow_down, tiny_model, wait_for

KEY = "sk-graft-test"
USER = [{"role": "user", "content": "the quick brown fox"}]


def record_handles(served: Served, monkeypatch: pytest.MonkeyPatch) -> list[RequestHandle]:
    handles: list[RequestHandle] = []
    submit = served.engine.submit

    def spy(request: Request) -> RequestHandle:
        handles.append(submit(request))
        return handles[-1]

    monkeypatch.setattr(served.engine, "submit", spy)
    return handles


# -- API keys ---------------------------------------------------------------------------------


def test_api_key_guards_the_api_but_not_the_page_or_health(tokenizer: Tokenizer):
    served = build(tokenizer, api_key=KEY)
    try:
        with TestClient(served.app) as client:
            for method, path, body in (
                ("GET", "/v1/models", None),
                ("GET", f"/v1/models/{MODEL_NAME}", None),
                ("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2}),
                ("POST", "/v1/chat/completions", {"messages": USER, "max_tokens": 2}),
                ("POST", "/v1/embeddings", {"input": "x"}),
                ("POST", "/v1/classify", {"input": "x"}),
                ("GET", "/metrics", None),
            ):
                for headers in (
                    {},
                    {"Authorization": "Bearer wrong"},
                    {"Authorization": KEY},
                    {"Authorization": f"Basic {KEY}"},
                ):
                    response = client.request(method, path, json=body, headers=headers)
                    assert response.status_code == 401, (path, headers, response.text)
                    assert response.json()["error"]["code"] == "invalid_api_key"
                    assert response.headers["WWW-Authenticate"] == "Bearer"
                response = client.request(
                    method, path, json=body, headers={"Authorization": f"Bearer {KEY}"}
                )
                assert response.status_code in (200, 400), (
                    path,
                    response.text,
                )  # 400: classify, no head
            # A bad body with no key is refused for the key first: nothing about the API leaks.
            response = client.post("/v1/completions", json={"prompt": 5})
            assert response.status_code == 401
            for path in ("/", "/health", "/openapi.json", "/static/playground.js"):
                assert client.get(path).status_code == 200, path
    finally:
        served.engine.stop()


def test_no_key_configured_means_open(served: Served):
    with TestClient(served.app) as client:
        assert client.get("/v1/models").status_code == 200
        assert (
            client.get("/v1/models", headers={"Authorization": "Bearer anything"}).status_code
            == 200
        )


# -- request bodies ---------------------------------------------------------------------------


def test_a_body_past_the_limit_is_a_413_whether_declared_or_streamed(served: Served):
    from graft.serve.app import create_app

    app = create_app(served.engine, served.info, max_request_bytes=2000)
    small = json.dumps({"model": MODEL_NAME, "prompt": "the quick", "max_tokens": 2}).encode()
    big = json.dumps({"model": MODEL_NAME, "prompt": "the quick " * 300, "max_tokens": 2}).encode()
    assert len(small) < 2000 < len(big)
    with TestClient(app, headers={"Content-Type": "application/json"}) as client:
        ok = client.post("/v1/completions", content=small)
        assert ok.status_code == 200, ok.text
        declared = client.post("/v1/completions", content=big)
        # No Content-Length: the chunks are counted as they come.
        streamed = client.post("/v1/completions", content=iter([big[:1500], big[1500:]]))
    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "request_too_large" and "more than 2,000 bytes" in error["message"]


# -- the bounded queue ------------------------------------------------------------------------


def test_a_full_queue_is_429_and_frees_when_it_drains(tokenizer: Tokenizer):
    # Not started: nothing leaves the queue until the test steps the engine.
    served = build(tokenizer, start=False, max_queue=2)
    params = SamplingParams(max_new_tokens=2, temperature=0)
    waiting = [served.engine.submit(Request(tokenizer.encode("the"), params)) for _ in range(2)]
    try:
        with TestClient(served.app) as client:
            for path, body in (
                ("/v1/completions", {"prompt": "x", "max_tokens": 2}),
                ("/v1/chat/completions", {"messages": USER, "max_tokens": 2, "stream": True}),
            ):
                response = client.post(path, json=body)
                assert response.status_code == 429, response.text
                assert response.headers["Retry-After"] == "1"
                error = response.json()["error"]
                assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
            metrics = client.get("/metrics").text
            assert "graft_queue_depth 2" in metrics.splitlines()
            assert (
                'graft_requests_total{endpoint="/v1/completions",status="429"} 1'
                in metrics.splitlines()
            )
            while not all(h.done for h in waiting):
                served.engine.step()
            served.engine.start()
            response = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            assert response.status_code == 200, response.text
    finally:
        served.engine.stop()


# -- clients that go away ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow(tokenizer: Tokenizer):
    """A live server whose every engine step takes 30 ms more: requests run long enough to leave."""
    model = tiny_model(tokenizer)
    slow_down(model, 0.03)
    served = build(tokenizer, model, max_batch=2)
    with live_server(served.app) as url:
        yield served, url
    served.engine.stop()


@pytest.mark.slow
def test_a_stream_whose_client_disconnects_is_cancelled(slow, monkeypatch: pytest.MonkeyPatch):
    served, url = slow
    handles = record_handles(served, monkeypatch)
    before = served.engine.stats.completion_tokens
    body = {"messages": USER, "max_tokens": 60, "temperature": 0.8, "seed": 3, "stream": True}
    with httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            received = 0
            for line in response.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get(
                    "content"
                ):
                    received += 1
                    if received == 2:
                        break  # leave mid-stream: closing the response closes the connection
    assert len(handles) == 1
    assert wait_for(lambda: handles[0].done and served.engine.stats.running == 0), (
        served.engine.stats
    )
    assert handles[0].cancelled
    generated = served.engine.stats.completion_tokens - before
    assert generated < 30, f"{generated} tokens: the request ran on after its client left"


@pytest.mark.slow
def test_a_non_streaming_client_that_disconnects_is_cancelled(
    slow, monkeypatch: pytest.MonkeyPatch
):
    served, url = slow
    handles = record_handles(served, monkeypatch)
    before = served.engine.stats.completion_tokens
    port = int(url.rsplit(":", 1)[1])
    payload = json.dumps({"prompt": "the river", "max_tokens": 80, "temperature": 0}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
        )
        assert wait_for(lambda: served.engine.stats.running == 1, 5)
        time.sleep(0.1)
    assert wait_for(
        lambda: len(handles) == 1 and handles[0].done and served.engine.stats.running == 0
    )
    assert handles[0].cancelled
    assert served.engine.stats.completion_tokens - before < 30


@pytest.mark.slow
def test_the_slot_of_a_departed_client_goes_to_the_next_request(slow):
    """Two slots, both taken by clients that leave; a third request is then served at once."""
    served, url = slow
    with httpx.Client(base_url=url, timeout=30) as client:
        body = {"prompt": "the", "max_tokens": 80, "stream": True}
        for _ in range(2):
            with client.stream("POST", "/v1/completions", json=body) as response:
                next(line for line in response.iter_lines() if line.startswith("data: {"))
        assert wait_for(lambda: served.engine.stats.running == 0)
        started = time.perf_counter()
        response = client.post(
            "/v1/completions", json={"prompt": "the", "max_tokens": 3, "temperature": 0}
        )
        assert response.status_code == 200
        assert time.perf_counter() - started < 5


# -- metrics ----------------------------------------------------------------------------------

SAMPLE = re.compile(
    r"^[a-zA-Z_:][a-zA-Z0-9_:]*"
    r'(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*\})? '
    r"(-?[0-9.]+(e[+-]?[0-9]+)?|\+Inf)$"
)


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ ", line), line
            continue
        assert SAMPLE.match(line), line
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def test_metrics_count_requests_tokens_and_time_to_first_token(tokenizer: Tokenizer):
    served = build(tokenizer)
    try:
        with TestClient(served.app) as client:
            usage = [
                client.post("/v1/completions", json={"prompt": "the", "max_tokens": 5}).json()[
                    "usage"
                ],
                client.post(
                    "/v1/chat/completions", json={"messages": USER, "max_tokens": 4}
                ).json()["usage"],
            ]
            streamed = client.post(
                "/v1/chat/completions",
                json={
                    "messages": USER,
                    "max_tokens": 4,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
            )
            usage.append(json.loads(streamed.text.split("data: ")[-2])["usage"])
            client.post("/v1/completions", json={"prompt": "x", "temperature": -1})
            client.get("/no/such/path")
            response = client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        m = samples(response.text)
        assert m['graft_requests_total{endpoint="/v1/completions",status="200"}'] == 1
        assert m['graft_requests_total{endpoint="/v1/completions",status="400"}'] == 1
        assert m['graft_requests_total{endpoint="/v1/chat/completions",status="200"}'] == 2
        assert m['graft_requests_total{endpoint="other",status="404"}'] == 1
        assert m["graft_completion_tokens_total"] == sum(u["completion_tokens"] for u in usage)
        assert m["graft_prompt_tokens_total"] == sum(u["prompt_tokens"] for u in usage)
        assert m['graft_time_to_first_token_seconds_count{endpoint="/v1/chat/completions"}'] == 2
        chat = [
            v
            for k, v in m.items()
            if k.startswith('graft_request_duration_seconds_bucket{endpoint="/v1/chat')
        ]
        assert (
            chat == sorted(chat)
            and chat[-1]
            == m['graft_request_duration_seconds_count{endpoint="/v1/chat/completions"}']
            == 2
        )
        for gauge in ("graft_queue_depth", "graft_running_requests", "graft_batch_size"):
            assert gauge in m
    finally:
        served.engine.stop()
