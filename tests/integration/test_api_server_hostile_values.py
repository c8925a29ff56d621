"""A hostile client's values against a real server (tiny model): integers past what the engine
holds, malformed bodies and keys, huge /tokenize prompts. Each must be a 400 naming the problem,
and the server must keep serving afterwards."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.server import tiny_server

API_KEY = "sk-hostile"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tiny server whose max_logprobs exceeds its vocabulary (259 tokens)."""
    with tiny_server(tmp_path_factory, "hostile", "--max-logprobs", "100000") as (proc, base):
        yield proc, base


def _post(base: str, path: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(base + path, json=body, timeout=60, **kwargs)


def _assert_still_serving(proc, base: str) -> None:
    assert proc.poll() is None
    response = _post(base, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("field, value, message", [
    ("top_k", 2**63, "top_k must be -1, 0 (all tokens) or a positive integer <= 2147483647, "
                     "got 9223372036854775808"),
    ("top_k", 2**65, "top_k must be -1, 0 (all tokens) or a positive integer <= 2147483647"),
    ("min_tokens", 2**63, "min_tokens must be an integer in [0, 2147483647]"),
    ("max_tokens", 2**64, "max_tokens must be an integer in [1, 2147483647]"),
    ("seed", 2**64, "seed must be an integer in [-2**63+1, 2**63-1]"),
    ("stop_token_ids", [2**63], "stop_token_ids must be a list of token ids in [0, 2147483647]"),
    ("stop_token_ids", [300], "stop_token_ids[0] must be a token id in [0, 259), got 300"),
    ("logit_bias", {str(2**63): 1}, "logit_bias keys must be token ids in [0, 2147483647]"),
    ("logit_bias", {"300": 1}, "logit_bias[0] must be a token id in [0, 259), got 300"),
    ("logit_bias", {" 5": 1}, "logit_bias keys must be token ids in [0, 2147483647], got ' 5'"),
    ("logit_bias", {"5_0": 1}, "logit_bias keys must be token ids in [0, 2147483647], got '5_0'"),
    ("logit_bias", {"\u0665": 1}, "logit_bias keys must be token ids in [0, 2147483647]"),
])
def test_out_of_range_integers_are_a_400_and_the_server_lives(server, route, field, value,
                                                              message):
    proc, base = server
    body = {"max_tokens": 2, field: value}
    if route == "/v1/completions":
        body["prompt"] = "hi"
    else:
        body["messages"] = [{"role": "user", "content": "hi"}]
    response = _post(base, route, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"].startswith(message), error
    assert error["param"] == field and error["type"] == "BadRequestError"
    _assert_still_serving(proc, base)


@pytest.mark.parametrize("field", ["logprobs", "prompt_logprobs"])
def test_logprobs_above_the_vocabulary_are_a_400_and_the_server_lives(server, field):
    """max_logprobs (100000) allows it, but a top-k past the vocabulary would fail the step."""
    proc, base = server
    response = _post(base, "/v1/completions", {"prompt": "hi", "max_tokens": 2, field: 5000})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == (
        f"{field}=5000 exceeds the model's vocabulary size 259")
    _assert_still_serving(proc, base)


def test_top_k_above_the_vocabulary_means_all_tokens(server):
    proc, base = server
    body = {"prompt": "hi", "max_tokens": 4, "temperature": 1.0, "seed": 7}
    everything = _post(base, "/v1/completions", {**body, "top_k": 2**31 - 1})
    assert everything.status_code == 200, everything.text
    assert everything.json()["choices"][0]["text"] == (
        _post(base, "/v1/completions", body).json()["choices"][0]["text"])


@pytest.mark.parametrize("form", ["prompt", "messages"])
def test_tokenize_refuses_a_multi_megabyte_prompt_before_tokenizing(server, form):
    """The same early refusal as completions and chat (3.9 MB, under the body cap)."""
    proc, base = server
    text = "hello world " * 325_000
    body = {"prompt": text} if form == "prompt" else {"messages": [{"role": "user",
                                                                    "content": text}]}
    response = _post(base, "/tokenize", body)
    assert response.status_code == 400, response.text[:200]
    error = response.json()["error"]
    assert error["message"].startswith("This model's maximum context length is 256 tokens, but "
                                       "the prompt has at least ")
    assert error["param"] == form and error["type"] == "BadRequestError"
    _assert_still_serving(proc, base)


def test_tokenize_counts_a_prompt_a_little_over_the_context(server):
    """As vLLM: the count comes back with max_model_len for the client to compare."""
    _, base = server
    response = _post(base, "/tokenize", {"prompt": "hello " * 200})
    assert response.status_code == 200, response.text
    assert response.json()["count"] > response.json()["max_model_len"] == 256


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize",
                                  "/detokenize"])
@pytest.mark.parametrize("content_type, shown", [
    (None, "none"), ("text/plain", "'text/plain'"),
    ("application/x-www-form-urlencoded", "'application/x-www-form-urlencoded'")])
def test_a_json_body_without_a_json_content_type_says_what_to_send(server, path, content_type,
                                                                  shown):
    """What curl -d sends without -H: FastAPI leaves such a body unparsed."""
    _, base = server
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(base + path, content=b'{"prompt": "hi", "max_tokens": 2}',
                          headers=headers, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {
        "message": "the request body must be a JSON object sent with 'Content-Type: "
                   f"application/json' (got {shown})",
        "type": "BadRequestError", "param": None, "code": 400}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_in_chat_template_kwargs_are_a_400(server, literal):
    """Python's JSON parser reads these literals; they are not JSON data for a template."""
    _, base = server
    body = ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, '
            f'"chat_template_kwargs": {{"x": [{literal}]}}}}')
    response = httpx.post(base + "/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "chat_template_kwargs"
    assert error["message"].startswith("chat_template_kwargs values must be finite numbers")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A tiny server behind an API key, with a 1000-byte body limit."""
    with tiny_server(tmp_path_factory, "guarded", "--api-key", API_KEY,
                     "--max-body-bytes", "1000") as (_, base):
        yield base


def _chunks(size: int):
    yield b"{" + b" " * size + b"}"


KEY = {"Authorization": f"Bearer {API_KEY}"}
ERROR_SHAPES = [   # (method, path, request kwargs, status, type): whoever answers
    ("POST", "/v1/completions", {}, 401, "AuthenticationError"),
    ("GET", "/docs", {}, 401, "AuthenticationError"),
    ("GET", "/redoc", {}, 401, "AuthenticationError"),
    ("GET", "/openapi.json", {}, 401, "AuthenticationError"),
    ("POST", "/v1/completions", {"headers": KEY, "content": b"{" + b" " * 2000 + b"}"}, 413,
     "PayloadTooLargeError"),
    ("POST", "/v1/completions", {"headers": KEY, "content": _chunks(2000)}, 413,
     "PayloadTooLargeError"),
    ("POST", "/v1/completions", {"headers": {**KEY, "X-Big": "x" * 20000}}, 431,
     "RequestHeaderFieldsTooLargeError"),
    ("POST", "/v1/completions", {"headers": {**KEY, "content-type": "application/json"},
                                 "content": b"{not json"}, 400, "BadRequestError"),
    ("POST", "/v1/completions", {"headers": KEY, "json": {"prompt": "hi", "model": "other"}},
     404, "NotFoundError"),
    ("GET", "/v1/nothing", {"headers": KEY}, 404, "NotFoundError"),
    ("GET", "/v1/completions", {"headers": KEY}, 405, "MethodNotAllowedError"),
]


@pytest.mark.parametrize("method, path, kwargs, status, error_type", ERROR_SHAPES)
def test_every_error_has_one_type_per_status(guarded, method, path, kwargs, status,
                                             error_type):
    response = httpx.request(method, guarded + path, timeout=60, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (error_type, status)


def _http_counts(base: str) -> dict[str, float]:
    """http_requests_total series (labels as text) -> value, the scrapes' own left out."""
    text = httpx.get(base + "/metrics", headers=KEY, timeout=60).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("http_requests_total{") and 'handler="/metrics"' not in line}


def test_http_metrics_label_guarded_requests_by_their_route(guarded):
    """The key check answers before routing; the label is still the route's template."""
    before = _http_counts(guarded)
    for path in ("/v1/completions", "/docs", "/redoc", "/openapi.json", "/v1/nothing"):
        assert httpx.post(guarded + path, timeout=60).status_code == 401
    after = _http_counts(guarded)
    grown = {series: after[series] - before.get(series, 0.0) for series in after
             if after[series] != before.get(series, 0.0)}
    assert grown == {f'http_requests_total{{handler="{handler}",method="POST",status="401"}}': 1.0
                     for handler in ("/v1/completions", "/docs", "/redoc", "/openapi.json",
                                     "(unmatched)")}
