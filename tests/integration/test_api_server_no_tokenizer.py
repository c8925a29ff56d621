"""`pagellm serve --skip-tokenizer-init` (how W4 serves random-weight shapes): token-id prompts
work, streamed or not, with exact token counts; what needs a tokenizer is a clear 400."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers.server import tiny_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_server(tmp_path_factory, "notok", "--skip-tokenizer-init") as (_, base):
        yield base


def _complete(server, **body):
    return httpx.post(server + "/v1/completions", timeout=60,
                      json={"model": "tiny", "max_tokens": 7, "ignore_eos": True, **body})


def test_token_id_prompt_generates_exact_counts(server):
    response = _complete(server, prompt=[5, 6, 7, 8])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (4, 7, 11)


def test_token_id_prompt_streams_one_event_per_token(server):
    with httpx.stream("POST", server + "/v1/completions", timeout=60,
                      json={"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 7,
                            "ignore_eos": True, "stream": True,
                            "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    token_events = [event for event in events if event.get("choices")]
    assert len(token_events) == 7
    assert token_events[-1]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["usage"]["completion_tokens"] == 7


@pytest.mark.parametrize("body, param", [
    ({"prompt": "text needs a tokenizer"}, "prompt"),
    ({"prompt": [5, 6], "stop": ["x"]}, "stop"),
    ({"prompt": [5, 6], "echo": True}, "echo"),
])
def test_what_needs_a_tokenizer_is_a_400(server, body, param):
    response = _complete(server, **body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert _complete(server, prompt=[5, 6]).status_code == 200     # still serving


def test_chat_without_tokenizer_is_a_400(server):
    response = httpx.post(server + "/v1/chat/completions", timeout=60,
                          json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400
    assert "tokenizer" in response.json()["error"]["message"]


def test_reader_behind_still_gets_one_event_per_token(tiny_model_dirs):
    """A stream whose reader falls behind the engine gets the new tokens of several steps in
    one read (one wake-up, one write of several events), and still one event per token:
    without text, clients count tokens by events."""
    import asyncio

    from pagellm.engine.async_engine import AsyncLLM
    from pagellm.entrypoints.openai.protocol import CompletionRequest
    from pagellm.entrypoints.openai.serving_completion import OpenAIServingCompletion

    max_tokens = 12

    async def slow_reader():
        engine = await AsyncLLM.from_engine_args(
            model=str(tiny_model_dirs["llama"]), skip_tokenizer_init=True,
            kv_cache_memory_bytes=8 * 2**20, dtype="float32")
        try:
            body = await OpenAIServingCompletion(engine).create_completion(CompletionRequest(
                model=engine.served_model_name, prompt=[5, 6, 7], max_tokens=max_tokens,
                ignore_eos=True, stream=True, stream_options={"include_usage": True}))
            writes = []
            async for text in body:
                writes.append(text)
                await asyncio.sleep(0.2)
            return writes
        finally:
            await engine.shutdown()

    writes = asyncio.run(slow_reader())
    events = [json.loads(line[6:]) for text in writes for line in text.split("\n\n")
              if line.startswith("data: ") and line != "data: [DONE]"]
    token_events = [event for event in events if event.get("choices")]
    assert len(token_events) == max_tokens
    assert [event["choices"][0]["finish_reason"] for event in token_events] == (
        [None] * (max_tokens - 1) + ["length"])
    assert events[-1]["usage"]["completion_tokens"] == max_tokens
    assert any(text.count("data: ") > 1 for text in writes)     # merged reads happened
