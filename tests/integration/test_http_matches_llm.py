"""HTTP output equals offline ``LLM`` output: the same prompts with the same greedy params give
the same text, finish reasons and token counts through ``/v1/completions`` (one batched
request) and ``/v1/chat/completions`` as through ``LLM.generate`` and ``LLM.chat`` in-process.

A tiny random Llama with the same engine settings on both sides (the default model takes
minutes here for the same proof): its text is arbitrary but deterministic, so equality still
holds and any difference in how the two paths build prompts, params or text shows."""

from __future__ import annotations

import httpx
import pytest

from pagellm import LLM, SamplingParams
from tests.helpers.server import running_server
from tests.integration.conftest import PROMPTS

MAX_TOKENS = 24
ENGINE_ARGS = dict(kv_cache_memory_bytes=64 * 2**20, max_model_len=512, dtype="float32")
ENGINE_FLAGS = ("--kv-cache-memory-bytes", str(64 * 2**20), "--max-model-len", "512",
                "--dtype", "float32")
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a pirate."},
     {"role": "user", "content": "Say hello in one sentence."}],
    [{"role": "user", "content": "Count to five."},
     {"role": "assistant", "content": "1, 2, 3, 4, 5."},
     {"role": "user", "content": "Now backwards."}],
]


@pytest.fixture(scope="module")
def base_url(tiny_model_dirs):
    with running_server(tiny_model_dirs["llama"], *ENGINE_FLAGS) as (_, base):
        yield base


@pytest.fixture(scope="module")
def llm(tiny_model_dirs):
    return LLM(str(tiny_model_dirs["llama"]), **ENGINE_ARGS)


def _post(base_url: str, route: str, body: dict) -> dict:
    response = httpx.post(base_url + route, json={"model": "tiny", "temperature": 0,
                                                   "max_tokens": MAX_TOKENS, **body}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_completions_equal_llm_generate(base_url, llm):
    body = _post(base_url, "/v1/completions", {"prompt": PROMPTS})
    choices = sorted(body["choices"], key=lambda c: c["index"])
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
                                   use_tqdm=False)
    assert [c["text"] for c in choices] == [o.outputs[0].text for o in outputs]
    assert [c["finish_reason"] for c in choices] == [o.outputs[0].finish_reason for o in outputs]
    assert body["usage"]["completion_tokens"] == sum(len(o.outputs[0].token_ids) for o in outputs)
    assert body["usage"]["prompt_tokens"] == sum(len(o.prompt_token_ids) for o in outputs)
    assert all(c["text"] for c in choices)


def test_chat_completions_equal_llm_chat(base_url, llm):
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    for messages in CONVERSATIONS:
        body = _post(base_url, "/v1/chat/completions", {"messages": messages})
        (output,) = llm.chat(messages, params, use_tqdm=False)
        (choice,) = body["choices"]
        assert choice["message"]["content"] == output.outputs[0].text, messages
        assert choice["finish_reason"] == output.outputs[0].finish_reason
        assert body["usage"] == {
            "prompt_tokens": len(output.prompt_token_ids),
            "completion_tokens": len(output.outputs[0].token_ids),
            "total_tokens": len(output.prompt_token_ids) + len(output.outputs[0].token_ids)}
        assert output.outputs[0].text
