"""`pagellm serve` end to end: a real server process (API process + engine-core process) on a
tiny random Llama, driven through the official `openai` client and raw HTTP."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.helpers.server import running_server
from tests.helpers.server import start_server as _start
from tests.helpers.server import stop_server as _stop
from tests.helpers.tiny_models import make_tiny_model_dir

API_KEY = "test-key-123"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("srv"), "llama")


@pytest.fixture(scope="module")
def server(model_dir):
    proc, base = _start(model_dir, "--api-key", API_KEY)
    yield base
    assert _stop(proc) == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY)


def test_completion_greedy_and_usage(client):
    a = client.completions.create(model="tiny", prompt="hello", max_tokens=8, temperature=0)
    b = client.completions.create(model="tiny", prompt="hello", max_tokens=8, temperature=0)
    assert a.choices[0].text == b.choices[0].text
    assert a.choices[0].finish_reason in ("stop", "length")
    assert a.usage.prompt_tokens == 5 and 1 <= a.usage.completion_tokens <= 8


def test_streaming_matches_full(client):
    full = client.completions.create(model="tiny", prompt="abc", max_tokens=10, temperature=0,
                                     extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(
        model="tiny", prompt="abc", max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == 10


def test_chat_n_logprobs_seed(client):
    messages = [{"role": "user", "content": "hi"}]
    out = client.chat.completions.create(model="tiny", messages=messages, n=3, max_tokens=6,
                                         temperature=1.0, seed=42, logprobs=True, top_logprobs=2)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert all(len(c.logprobs.content[0].top_logprobs) == 2 for c in out.choices)
    again = client.chat.completions.create(model="tiny", messages=messages, n=3, max_tokens=6,
                                           temperature=1.0, seed=42)
    assert [c.message.content for c in again.choices] == [c.message.content for c in out.choices]
    stream = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=4,
                                                 stream=True))
    assert stream[0].choices[0].delta.role == "assistant"


def test_bad_input_is_400_and_server_lives(client, server):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="x", max_tokens=10**6)
    body = info.value.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert "Traceback" not in info.value.response.text and "/work" not in info.value.response.text
    for payload in ({"prompt": "x", "n": 10**6}, {"prompt": "x", "logprobs": 10**3},
                    {"prompt": "x", "stop": ["s"] * 1000}, {"prompt": "x", "temperature": -1}):
        r = httpx.post(server + "/v1/completions", json={"model": "tiny", **payload},
                       headers={"Authorization": f"Bearer {API_KEY}"})
        assert r.status_code == 400, payload
    big = httpx.post(server + "/v1/completions", content=b"x" * (5 * 2**20),
                     headers={"Authorization": f"Bearer {API_KEY}",
                              "Content-Type": "application/json"})
    assert big.status_code == 413
    assert client.completions.create(model="tiny", prompt="ok", max_tokens=2).choices


def test_api_key_required_everywhere_but_health(server):
    assert httpx.get(server + "/health").status_code == 200
    for path in ("/v1/models", "//v1/models", "/v1%2Fmodels", "/metrics", "/version"):
        assert httpx.get(server + path).status_code == 401, path
        assert httpx.get(server + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.get(server + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "tiny"


def test_metrics_use_vllm_names(client, server):
    client.completions.create(model="tiny", prompt="m", max_tokens=3)
    text = httpx.get(server + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    samples = {line.split("{")[0].split(" ")[0]: line for line in text.splitlines()
               if line.startswith("vllm:")}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:num_preemptions_total", "vllm:prefix_cache_queries_total",
                 "vllm:prefix_cache_hits_total", "vllm:request_success_total",
                 "vllm:time_to_first_token_seconds_bucket",
                 "vllm:inter_token_latency_seconds_bucket",
                 "vllm:time_per_output_token_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_bucket",
                 "vllm:request_queue_time_seconds_bucket"):
        assert name in samples, name
        assert 'model_name="tiny"' in samples[name], samples[name]
    assert float(samples["vllm:generation_tokens_total"].rsplit(" ", 1)[1]) >= 3


def _kv_usage(server) -> float:
    text = httpx.get(server + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    line = next(l for l in text.splitlines() if l.startswith("vllm:kv_cache_usage_perc"))
    return float(line.rsplit(" ", 1)[1])


def test_client_disconnect_frees_kv_blocks(server):
    assert _kv_usage(server) == 0.0
    with httpx.stream("POST", server + "/v1/completions", timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"model": "tiny", "prompt": "a" * 100, "max_tokens": 150,
                            "ignore_eos": True, "stream": True}) as response:
        for _ in response.iter_lines():
            if _kv_usage(server) > 0:
                break                      # generating: blocks held; now hang up
    deadline = time.time() + 10
    while _kv_usage(server) > 0 and time.time() < deadline:
        time.sleep(0.1)
    assert _kv_usage(server) == 0.0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_disconnect_mid_generation_frees_blocks_within_a_step(model_dir, stream):
    """The engine sleeps 50 ms per step, so 200 tokens take 10 s; the client hangs up after
    about 1 s and the blocks must be back long before the generation would have ended."""
    with running_server(model_dir, env_extra={"PAGELLM_FAULT_INJECT_STEP_DELAY_S": "0.05"}
                        ) as (proc, base):
        body = {"model": "tiny", "prompt": "a" * 50, "max_tokens": 200, "ignore_eos": True,
                "stream": stream}
        outcome: list[BaseException | None] = []

        def client():
            try:
                with httpx.stream("POST", base + "/v1/completions", json=body,
                                  timeout=httpx.Timeout(30, read=1.5)) as response:
                    started = time.time()
                    for _ in response.iter_lines():
                        if time.time() - started > 1.0:
                            break               # streaming: hang up mid-stream
                outcome.append(None)
            except httpx.ReadTimeout as error:  # non-streaming: give up waiting for the body
                outcome.append(error)

        thread = threading.Thread(target=client)
        thread.start()
        deadline = time.time() + 5
        while _kv_usage(base) == 0 and time.time() < deadline:
            time.sleep(0.05)
        assert _kv_usage(base) > 0          # generating, blocks held
        thread.join(10)
        assert outcome and (outcome[0] is None) == stream
        hung_up = time.time()
        while _kv_usage(base) > 0 and time.time() - hung_up < 2.0:
            time.sleep(0.05)
        assert _kv_usage(base) == 0.0       # ~8 s of generation left, yet the blocks are free
        assert _stop(proc) == 0


def test_engine_death_fails_requests_and_exits_nonzero(model_dir):
    proc, base = _start(model_dir, env_extra={"PAGELLM_FAULT_INJECT_STEP": "3"})
    response = httpx.post(base + "/v1/completions", timeout=60,
                          json={"model": "tiny", "prompt": "boom", "max_tokens": 20})
    assert response.status_code >= 500
    assert proc.wait(timeout=60) != 0

