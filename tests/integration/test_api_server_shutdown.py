"""Graceful shutdown of `pagellm serve`: after SIGTERM the server keeps its socket open with
/health at 503 and refuses new generation requests with 503, lets in-flight requests finish
(up to --drain-timeout), aborts the rest with a 503 error, and exits 0.

The engine core sleeps before every forward pass (PAGELLM_FAULT_INJECT_STEP_DELAY_S), so a
request is reliably still running when the signal arrives."""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest

from tests.helpers.server import running_server, start_server
from tests.helpers.tiny_models import make_tiny_model_dir

SLOW = {"PAGELLM_FAULT_INJECT_STEP_DELAY_S": "0.05"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("shutdown"), "llama")


def _events(lines):
    """The JSON payloads of an SSE line iterator, up to [DONE]."""
    for line in lines:
        if not line.startswith("data: "):
            continue
        payload = line[len("data: "):]
        if payload == "[DONE]":
            return
        yield json.loads(payload)


def _stream_body(max_tokens: int) -> dict:
    return {"model": "tiny", "prompt": "hello there", "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True}


def test_idle_server_exits_zero_on_sigterm(model_dir):
    proc, _ = start_server(model_dir)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def test_sigterm_drains_in_flight_requests_then_exits_zero(model_dir):
    with running_server(model_dir, "--drain-timeout", "60", env_extra=SLOW) as (proc, base):
        with httpx.stream("POST", base + "/v1/completions", json=_stream_body(40),
                          timeout=60) as response:
            events = _events(response.iter_lines())
            first = next(events)                    # generating now: ~40 x 50 ms to go
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)                         # the signal handler runs in the server loop
            assert proc.poll() is None
            assert httpx.get(base + "/health", timeout=10).status_code == 503
            refused = httpx.post(base + "/v1/completions", timeout=10,
                                 json={"model": "tiny", "prompt": "late", "max_tokens": 2})
            assert refused.status_code == 503
            assert "shutting down" in refused.json()["error"]["message"]
            rest = list(events)
        choices = [event["choices"][0] for event in [first, *rest] if event.get("choices")]
        assert choices[-1]["finish_reason"] == "length"
        assert "".join(choice["text"] for choice in choices)   # the full answer arrived
        assert proc.wait(timeout=60) == 0


def test_drain_timeout_aborts_the_rest_with_503_and_exits_zero(model_dir):
    with running_server(model_dir, "--drain-timeout", "1", env_extra=SLOW) as (proc, base):
        with httpx.stream("POST", base + "/v1/completions", json=_stream_body(200),
                          timeout=60) as response:
            events = _events(response.iter_lines())
            next(events)                            # ~200 x 50 ms = 10 s to go: too long
            started = time.time()
            proc.send_signal(signal.SIGTERM)
            rest = list(events)
        assert time.time() - started < 8            # ended by the 1 s drain timeout
        error = rest[-1]["error"]
        # the configured timeout, not the time left when the abort happened (0 s)
        assert error["code"] == 503 and "(drain timeout 1 s)" in error["message"]
        assert proc.wait(timeout=60) == 0


def test_drain_waits_for_a_request_admitted_but_still_tokenizing(model_dir, monkeypatch):
    """A request accepted before the signal but not yet in the engine (its prompt is still
    being tokenized in the pool) finishes normally; only later requests get the 503."""
    import asyncio

    from pagellm.engine.async_engine import AsyncLLM
    from pagellm.entrypoints.openai.api_server import ServerSettings, build_app, drain
    from pagellm.entrypoints.openai.serving_completion import OpenAIServingCompletion

    tokenize = OpenAIServingCompletion._tokenize_prompts

    def slow_tokenize(self, prompts):
        time.sleep(0.5)                             # a long prompt on a busy tokenizer pool
        return tokenize(self, prompts)

    monkeypatch.setattr(OpenAIServingCompletion, "_tokenize_prompts", slow_tokenize)
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 5, "ignore_eos": True}

    async def scenario():
        engine = await AsyncLLM.from_engine_args(
            model=str(model_dir), served_model_name="tiny", max_model_len=256,
            kv_cache_memory_bytes=16 * 2**20, tokenizer_pool_size=1)
        app = build_app(engine, ServerSettings(disable_log_requests=True))
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://pagellm") as client:
                admitted = asyncio.create_task(client.post("/v1/completions", json=body))
                await asyncio.sleep(0.2)
                assert app.state.num_admitting == 1 and engine.num_unfinished_requests == 0
                drained = asyncio.create_task(drain(app, engine, 30.0))
                await asyncio.sleep(0.05)
                late = await client.post("/v1/completions", json=body)
                health = await client.get("/health")
                response = await admitted
                aborted = await drained
        finally:
            await engine.shutdown()
        return response, late, health, aborted, drained

    response, late, health, aborted, _ = asyncio.run(scenario())
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 5
    assert late.status_code == 503 and health.status_code == 503
    assert aborted == []


def test_second_signal_stops_at_once_without_a_traceback(model_dir):
    """A second SIGINT during the drain: the in-flight stream ends with the engine-stopped
    503 within a second (the core is killed, not waited for), the server exits 0, and no
    ERROR traceback is logged (uvicorn's lifespan task is not left to be cancelled)."""
    with running_server(model_dir, "--drain-timeout", "60", env_extra=SLOW) as (proc, base):
        with httpx.stream("POST", base + "/v1/completions", json=_stream_body(200),
                          timeout=60) as response:
            events = _events(response.iter_lines())
            next(events)                            # ~10 s to go
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            started = time.time()
            proc.send_signal(signal.SIGINT)
            rest = list(events)
            ended = time.time() - started
        assert rest[-1]["error"]["code"] == 503, rest[-1]
        assert ended < 1.5, ended
        assert proc.wait(timeout=30) == 0
        log = proc.stdout.read()
        assert "second shutdown signal" in log
        assert "Traceback" not in log and "CancelledError" not in log, log[-2000:]
