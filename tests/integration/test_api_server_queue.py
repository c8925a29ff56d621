"""--max-num-queued-requests end to end: with one batch slot (--max-num-seqs 1) and a queue of
one, a second request waits, a third gets 503 with Retry-After and an OpenAI error body, and
the server serves again once the queue has drained."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.helpers.server import tiny_server

MAX_TOKENS = 480        # a few seconds of decoding each on CPU: the others arrive meanwhile
SLOW = {"model": "tiny", "prompt": "a", "max_tokens": MAX_TOKENS, "ignore_eos": True}


@pytest.fixture(scope="module")
def queue_server(tmp_path_factory):
    with tiny_server(tmp_path_factory, "queue", "--max-num-seqs", "1",
                     "--max-num-queued-requests", "1", "--max-model-len", "512") as (_, base):
        yield base


def _post_in_background(base: str, results: dict, name: str) -> threading.Thread:
    def post():
        results[name] = httpx.post(base + "/v1/completions", json=SLOW, timeout=120)
    thread = threading.Thread(target=post)
    thread.start()
    return thread


def test_full_queue_is_503_with_retry_after_then_serves_again(queue_server):
    results: dict[str, httpx.Response] = {}
    with httpx.stream("POST", queue_server + "/v1/completions", json={**SLOW, "stream": True},
                      timeout=120) as running:
        lines = running.iter_lines()
        next(lines)                       # generating: the one batch slot is taken
        waiting = _post_in_background(queue_server, results, "waiting")
        time.sleep(0.3)                   # it reaches the server and waits for the slot
        rejected = httpx.post(queue_server + "/v1/completions", json=SLOW, timeout=30)
        for _ in lines:
            pass
    waiting.join(timeout=120)
    assert rejected.status_code == 503
    assert rejected.headers["Retry-After"] == "1"
    error = rejected.json()["error"]
    assert error["code"] == 503 and error["type"] == "ServiceUnavailableError"
    assert "queued requests" in error["message"] and error["param"] is None
    assert results["waiting"].status_code == 200       # queued, not turned away
    assert results["waiting"].json()["usage"]["completion_tokens"] == MAX_TOKENS
    after = httpx.post(queue_server + "/v1/completions", timeout=30,
                       json={"model": "tiny", "prompt": "b", "max_tokens": 3})
    assert after.status_code == 200 and after.json()["choices"][0]["text"] is not None
