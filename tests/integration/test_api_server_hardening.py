"""A hostile client against a real server (tiny model): request chat templates refused without
--trust-request-chat-template; with it, a template that would build 300 MB or loop forever gets
a 400 fast while other requests are answered; multi-MB prompts are refused without tokenizing
while /health stays responsive. Then continue_final_message on the default model, offline."""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest

from tests.helpers.server import tiny_server

MESSAGES = [{"role": "user", "content": "x"}]
HUGE = "{{ 'x' * 300000000 }}"
ENDLESS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
BENIGN = "{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}"
HEALTH_BOUND_S = 0.5


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    with tiny_server(tmp_path_factory, "plain") as (_, base):
        yield base


@pytest.fixture(scope="module")
def trusting(tmp_path_factory):
    with tiny_server(tmp_path_factory, "trusting", "--trust-request-chat-template") as (_, base):
        yield base


def _chat(base: str, **fields) -> httpx.Response:
    body = {"messages": MESSAGES, "max_tokens": 2, **fields}
    return httpx.post(base + "/v1/chat/completions", json=body, timeout=60)


def _tokenize(base: str, **fields) -> httpx.Response:
    return httpx.post(base + "/tokenize", json={"messages": MESSAGES, **fields}, timeout=60)


def _health_latencies(base: str, stop: threading.Event) -> list[float]:
    """Poll /health until ``stop`` (at least once); the latency of each poll."""
    latencies = []
    with httpx.Client(timeout=30) as client:
        while not latencies or not stop.is_set():
            started = time.perf_counter()
            assert client.get(base + "/health").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
    return latencies


def _while_polling_health(base: str, work) -> tuple[object, list[float]]:
    stop, latencies = threading.Event(), []
    poller = threading.Thread(target=lambda: latencies.extend(_health_latencies(base, stop)))
    poller.start()
    try:
        result = work()
    finally:
        stop.set()
        poller.join(30)
    return result, latencies


def test_request_templates_are_refused_without_the_flag(plain):
    for response in (_chat(plain, chat_template=BENIGN), _tokenize(plain, chat_template=BENIGN)):
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "chat_template"
        assert "--trust-request-chat-template" in error["message"]
    assert _chat(plain).status_code == 200      # the model's own template still works


def test_a_benign_request_template_works_with_the_flag(trusting):
    response = _tokenize(trusting, chat_template=BENIGN)
    assert response.status_code == 200
    expected = httpx.post(trusting + "/tokenize", json={"prompt": "<|im_start|>x",
                                                       "add_special_tokens": False}).json()
    assert response.json()["tokens"] == expected["tokens"]
    assert _chat(trusting, chat_template=BENIGN).status_code == 200


@pytest.mark.parametrize("route", [_chat, _tokenize])
def test_a_300_million_character_template_is_a_fast_400(trusting, route):
    def attack():
        started = time.perf_counter()
        response = route(trusting, chat_template=HUGE)
        return response, time.perf_counter() - started

    (response, elapsed), latencies = _while_polling_health(trusting, attack)
    assert response.status_code == 400
    assert "300000000 characters" in response.json()["error"]["message"]
    assert elapsed < 2.0
    assert _chat(trusting).status_code == 200
    assert latencies and max(latencies) < HEALTH_BOUND_S


def test_an_endless_template_is_stopped_while_other_requests_are_served(trusting):
    results: dict[str, httpx.Response] = {}
    attack = threading.Thread(target=lambda: results.update(bad=_chat(trusting,
                                                                      chat_template=ENDLESS)))

    def work():
        attack.start()
        time.sleep(0.2)
        served = [_chat(trusting).status_code for _ in range(3)]   # answered meanwhile
        attack.join(30)
        return served

    served, latencies = _while_polling_health(trusting, work)
    assert served == [200, 200, 200]
    assert results["bad"].status_code == 400
    assert "longer than 2 s" in results["bad"].json()["error"]["message"]
    assert max(latencies) < HEALTH_BOUND_S


# Loaded by the test server's Python at startup (site imports ``sitecustomize`` from
# PYTHONPATH): gives chat templates ``block_in_c()``, which blocks in C code (a lock acquire)
# where no interrupt lands, standing in for a sandbox escape that hangs a render. Production
# code has no such callable.
_BLOCK_IN_C_SITECUSTOMIZE = """
import threading

import pagellm.engine.chat_template as chat_template

_forever = threading.Lock()
_forever.acquire()
_make_environment = chat_template._environment


def block_in_c():
    _forever.acquire()


def _environment(limits):
    environment = _make_environment(limits)
    environment.globals["block_in_c"] = block_in_c
    return environment


chat_template._environment = _environment
"""
STUCK = "{{ block_in_c() }}"


def test_renders_stuck_in_c_get_a_400_the_pool_keeps_serving_and_sigterm_exits_0(
        tmp_path_factory):
    from tests.helpers.server import running_server, stop_server
    from tests.helpers.tiny_models import make_tiny_model_dir

    site_dir = tmp_path_factory.mktemp("block_in_c")
    (site_dir / "sitecustomize.py").write_text(_BLOCK_IN_C_SITECUSTOMIZE)
    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("stuck"), "llama")
    env = {"PYTHONPATH": f"{site_dir}{os.pathsep}{os.getcwd()}"}
    # two tokenizer-pool threads, both sent a render that never stops
    with running_server(model_dir, "--trust-request-chat-template", "--tokenizer-pool-size",
                        "2", env_extra=env) as (proc, base):
        stuck: list[tuple[httpx.Response, float]] = []

        def send_stuck(route):
            started = time.perf_counter()
            response = route(base, chat_template=STUCK)
            stuck.append((response, time.perf_counter() - started))

        senders = [threading.Thread(target=send_stuck, args=(route,))
                   for route in (_chat, _tokenize)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(30)
        assert len(stuck) == 2
        for response, elapsed in stuck:
            assert response.status_code == 400
            message = response.json()["error"]["message"]
            assert "longer than 2 s to render; it did not stop and was abandoned" in message
            assert 3.0 <= elapsed < 6.0          # timeout_s 2 + stop_grace_s 1
        # both render threads are still stuck; every route of the pool still answers at once
        started = time.perf_counter()
        assert _chat(base).status_code == 200
        assert _tokenize(base, chat_template=BENIGN).status_code == 200
        assert httpx.post(base + "/v1/completions", json={"prompt": "hello", "max_tokens": 2},
                          timeout=60).status_code == 200
        assert time.perf_counter() - started < 5
        started = time.perf_counter()
        assert stop_server(proc) == 0            # the stuck daemon threads do not hold it
        assert time.perf_counter() - started < 20


def test_multi_megabyte_prompts_are_refused_early_and_health_stays_fast(plain):
    prompt = "hello world " * 325_000            # 3.9 MB, under the 4 MiB body cap

    def flood():
        responses: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: responses.append(httpx.post(
            plain + "/v1/completions", json={"prompt": prompt, "max_tokens": 2}, timeout=60)))
            for _ in range(4)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        return responses, time.perf_counter() - started

    (responses, elapsed), latencies = _while_polling_health(plain, flood)
    assert [r.status_code for r in responses] == [400] * 4
    assert all("maximum context length is 256 tokens" in r.json()["error"]["message"]
               for r in responses)
    assert elapsed < 10
    assert max(latencies) < HEALTH_BOUND_S


@pytest.mark.slow
def test_continue_final_message_on_the_default_model(default_llm):
    from pagellm import SamplingParams

    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "The capital of France is"}]
    tokenizer = default_llm.get_tokenizer()
    output, = default_llm.chat(messages, SamplingParams(temperature=0, max_tokens=8),
                               use_tqdm=False, add_generation_prompt=False,
                               continue_final_message=True)
    prompt = tokenizer.decode(output.prompt_token_ids)
    assert prompt.endswith("The capital of France is")
    assert output.outputs[0].text.strip() and "Paris" in output.outputs[0].text
