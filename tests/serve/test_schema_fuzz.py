"""Generated requests never get a 5xx. Schemathesis, driven by the served /openapi.json against the
app in-process, sends valid and invalid requests and checks statuses, content types and response
schemas against the document; its valid requests are mostly minimal, so a Hypothesis test of our own
covers the valid sampling settings in combination."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from graft.data.tokenizer import Tokenizer

from .conftest import CONTEXT, build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(tokenizer: Tokenizer) -> Iterator[schemathesis.BaseSchema]:
    served = build(tokenizer, max_queue=64)
    yield schemathesis.openapi.from_asgi("/openapi.json", served.app)
    served.engine.stop()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ]
    )


@pytest.fixture(scope="module")
def client(tokenizer: Tokenizer) -> Iterator[TestClient]:
    served = build(tokenizer)
    with TestClient(served.app) as c:
        yield c
    served.engine.stop()


VALID_SAMPLING = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1, exclude_min=True),
        "top_k": st.integers(0, 1000),
        "min_p": st.floats(0, 1),
        "frequency_penalty": st.floats(-2, 2),
        "presence_penalty": st.floats(-2, 2),
        "repetition_penalty": st.floats(0.01, 10),
        "seed": st.integers(0, 2**63 - 1),
        "max_tokens": st.integers(1, 12),
        "stream": st.booleans(),
        "stop": st.one_of(
            st.none(),
            st.text(min_size=1, max_size=3),
            st.lists(st.text(min_size=1, max_size=3), max_size=4),
        ),
    },
)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(sampling=VALID_SAMPLING, chat=st.booleans(), logprobs=st.integers(0, 20) | st.none())
def test_every_valid_sampling_setting_is_answered(
    client: TestClient, sampling: dict, chat: bool, logprobs: int | None
) -> None:
    """Within the documented limits, any combination of sampling settings gets a 200 and a
    completion no longer than asked (extreme penalties and truncations included)."""
    if chat:
        body = {"messages": [{"role": "user", "content": "the quick brown fox"}], **sampling}
        if logprobs is not None:
            body |= {"logprobs": True, "top_logprobs": logprobs}
        response = client.post("/v1/chat/completions", json=body)
    else:
        body = {"prompt": "the quick brown fox", "logprobs": logprobs, **sampling}
        response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, (body, response.text)
    if sampling.get("stream"):
        assert response.text.endswith("data: [DONE]\n\n")
        assert '"error"' not in response.text
    else:
        usage = response.json()["usage"]
        assert 1 <= usage["completion_tokens"] <= sampling.get("max_tokens", CONTEXT)
