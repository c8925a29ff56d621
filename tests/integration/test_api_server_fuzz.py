"""Schemathesis over the server's own /openapi.json against a real ``pagellm serve`` process on
a tiny model: whatever a client sends, the answer is never a 5xx (bad input is a 4xx with an
OpenAI error body, not a crash).

Two generation modes: POSITIVE draws schema-valid requests; NEGATIVE draws schema-invalid ones
(wrong types, missing required fields, out-of-range values, ...) for every operation with a
request body. In both, every 4xx must carry ``{"error": {"message", "type", "param", "code"}}``.

Each operation gets its own bounded Hypothesis run (``schemathesis.pytest.from_fixture`` does
not work under pytest 9, so the loop over operations is written out here)."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.helpers.server import tiny_server

# Per operation and mode; keeps the file well under 90 s on 2 shared CPU cores.
MAX_EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 50}
ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    with tiny_server(tmp_path_factory, "fuzz", "--disable-log-requests") as (_, base):
        yield base


def openai_error_body_on_4xx(ctx, response, case) -> None:
    """Schemathesis check: a 4xx answer is an OpenAI error body whose ``code`` is the status."""
    if not 400 <= response.status_code < 500:
        return
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} with a non-JSON body: "
                             f"{response.content[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and ERROR_FIELDS <= set(error), \
        f"{response.status_code} without an OpenAI error body: {body!r:.300}"
    assert isinstance(error["message"], str) and error["message"], error
    assert error["code"] == response.status_code, error


def _fuzz(operation, base_url: str, mode: GenerationMode) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES[mode], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(base_url=base_url, timeout=30,
                               checks=[not_a_server_error, openai_error_body_on_4xx])

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=lambda mode: mode.value)
def test_no_input_makes_a_server_error(fuzz_server, mode):
    api = schemathesis.openapi.from_url(fuzz_server + "/openapi.json")
    labels = []
    for result in api.get_all_operations():
        operation = result.ok()
        # Negative data needs something to break; the GETs here take no input at all.
        if mode is GenerationMode.NEGATIVE and not len(operation.body):
            continue
        labels.append(operation.label)
        _fuzz(operation, fuzz_server, mode)
    assert {"POST /v1/completions", "POST /v1/chat/completions", "POST /tokenize",
            "POST /detokenize"} <= set(labels)


def _assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS and error["code"] == status
    return error


def test_framework_errors_have_openai_bodies(fuzz_server):
    """Found by negative fuzzing: FastAPI's own errors came back as ``{"detail": ...}``."""
    undecodable = httpx.post(fuzz_server + "/v1/completions", content=b"\xff\xfe{",
                             headers={"Content-Type": "application/json"})
    assert _assert_openai_error(undecodable, 400)["type"] == "BadRequestError"
    malformed = httpx.post(fuzz_server + "/v1/completions", content=b'{"prompt": ',
                           headers={"Content-Type": "application/json"})
    error = _assert_openai_error(malformed, 400)
    assert error["param"] is None and "not valid JSON" in error["message"]
    _assert_openai_error(httpx.get(fuzz_server + "/v1/no-such-route"), 404)
    wrong_method = httpx.get(fuzz_server + "/v1/completions")
    assert _assert_openai_error(wrong_method, 405)["type"] == "MethodNotAllowedError"
    assert wrong_method.headers["allow"] == "POST"


def test_chunked_body_past_the_limit_keeps_its_message(fuzz_server):
    """A chunked body (no Content-Length) past --max-body-bytes fails while FastAPI reads it;
    the 413 names the real cause, not FastAPI's generic 'error parsing the body'."""
    def body():
        for _ in range(5):
            yield b" " * 2**20           # 5 MiB against the default 4 MiB limit
    response = httpx.post(fuzz_server + "/v1/completions", content=body(),
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert _assert_openai_error(response, 413)["message"] == "request body is too large"
