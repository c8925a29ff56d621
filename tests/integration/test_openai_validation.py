"""Request validation end to end: the same invalid value gets the same message from the HTTP
server and from the offline LLM (one owner per rule), lone surrogates and nulls on every route,
messages in the user's terms, and LLM.generate tokenizing each prompt once."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from pagellm import LLM, SamplingParams
from pagellm.errors import ClientError
from tests.helpers.server import tiny_server
from tests.helpers.tiny_models import make_tiny_model_dir

MAX_MODEL_LEN = 256     # what tests.helpers.server serves with


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_server(tmp_path_factory, "validation") as (_, base):
        yield base


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("validation-llm"), "llama")
    return LLM(str(model_dir), kv_cache_memory_bytes=16 * 2**20, max_model_len=MAX_MODEL_LEN)


def _post(base: str, path: str, body: dict | str) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(base + path, content=content, timeout=60,
                      headers={"content-type": "application/json"})


def _error(response: httpx.Response) -> dict:
    assert response.status_code == 400, response.text
    return response.json()["error"]


def _offline_error(llm: LLM, prompt, **params) -> ClientError:
    with pytest.raises(ClientError) as info:
        llm.generate([prompt], SamplingParams(**params), use_tqdm=False)
    return info.value


@pytest.mark.parametrize("prompt, params", [
    ([1, 2, 3], {"temperature": -1}),
    ([1, 2, 3], {"top_p": 0}),
    ([1, 2, 3], {"temperature": math.nan}),
    ([1, 2, 3], {"max_tokens": 300}),
    ([1, 2, 3], {"max_tokens": 2, "logprobs": 1000}),
    ([1, -1, 2], {"max_tokens": 2}),
    ([1, 10**9, 2], {"max_tokens": 2}),
    ([1, 2, 3], {"max_tokens": 2, "stop_token_ids": [10**9]}),
], ids=["temperature", "top_p", "nan", "context", "max_logprobs", "negative-id", "id-past-vocab",
        "stop-id-past-vocab"])
def test_http_and_llm_give_the_same_message(server, llm, prompt, params):
    offline = _offline_error(llm, prompt, **params)
    # json.dumps writes NaN as the bare literal NaN, which the server's JSON parser accepts.
    error = _error(_post(server, "/v1/completions", {"prompt": prompt, **params}))
    assert error["message"] == str(offline)
    assert error["param"] == offline.param


def test_token_id_messages_name_the_position_and_the_vocabulary(server, llm):
    vocab_size = llm.llm_engine.input_processor.vocab_size
    error = _error(_post(server, "/v1/completions", {"prompt": [1, -1, 2], "max_tokens": 2}))
    assert error["message"] == f"prompt[1] must be a token id in [0, {vocab_size}), got -1"
    assert _error(_post(server, "/v1/completions", {"prompt": [1, "x"]}))["message"] == \
        "prompt[1] must be a token id (an integer), got str"


@pytest.mark.parametrize("path, body, field", [
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "stop": ["\ud800"]}, "stop[0]"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "user": "\udfff"}, "user"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x\udc00y"}],
                              "max_tokens": 2}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "\ud800"}]}], "max_tokens": 2}, "messages[0].content[0].text"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
                              "chat_template_kwargs": {"k": "\ud800"}},
     "chat_template_kwargs.k"),
    ("/tokenize", {"messages": [{"role": "user", "content": "x\udc00y"}]},
     "messages[0].content"),
    ("/tokenize", {"prompt": "\ud800"}, "prompt"),
    ("/detokenize", {"tokens": [1], "model": "\ud800"}, "model"),
])
def test_lone_surrogates_are_400s_naming_the_field(server, path, body, field):
    error = _error(_post(server, path, body))   # json.dumps escapes them as \ud800
    assert error["message"].startswith(f"{field} holds a lone UTF-16 surrogate")


def test_null_means_the_default_on_every_route(server):
    nulls = {name: None for name in ("n", "stream", "echo", "min_tokens", "ignore_eos",
                                     "skip_special_tokens", "logprobs", "temperature",
                                     "stream_options", "user", "seed", "stop", "priority")}
    response = _post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 2, **nulls})
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 1
    chat = _post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi", "name": None}], "max_tokens": 2,
        "add_generation_prompt": None, "max_completion_tokens": None, "top_logprobs": None,
        **nulls})
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["logprobs"] is None
    tokenize = _post(server, "/tokenize", {"prompt": "hi", "add_special_tokens": None})
    assert tokenize.status_code == 200, tokenize.text


@pytest.mark.parametrize("path, body, message", [
    ("/v1/completions", "", "prompt is required"),
    ("/v1/chat/completions", "", "messages is required"),
    ("/v1/completions", "{}", "prompt is required"),
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, "messages[0].role is required"),
    ("/v1/completions", '{"prompt": "hi", "temperature": NaN}',
     "temperature is not a number (NaN)"),
    ("/v1/completions", {"prompt": "hi", "use_beam_search": True},
     "use_beam_search is not supported yet"),
    ("/tokenize", {"messages": []}, "messages must not be empty"),
])
def test_messages_in_the_users_terms(server, path, body, message):
    assert _error(_post(server, path, body))["message"] == message


def test_prompt_logprobs_and_return_token_strs(server):
    body = {"prompt": [5, 6, 7], "max_tokens": 1, "prompt_logprobs": 1}
    choice = httpx.post(server + "/v1/completions", json=body, timeout=60).json()["choices"][0]
    positions = choice["prompt_logprobs"]
    assert positions[0] is None and len(positions) == 3
    assert str(6) in positions[1] and str(7) in positions[2]
    tokens = httpx.post(server + "/tokenize", json={"prompt": "hello world",
                                                    "return_token_strs": True}).json()
    assert len(tokens["token_strs"]) == tokens["count"] > 0


def test_llm_generate_tokenizes_each_prompt_once(llm):
    class CountingTokenizer:
        """The real tokenizer, counting encode calls."""

        def __init__(self, tokenizer):
            self.tokenizer, self.encodes = tokenizer, []

        def encode(self, text, *args, **kwargs):
            self.encodes.append(text)
            return self.tokenizer.encode(text, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.tokenizer, name)

    processor = llm.llm_engine.input_processor
    real = processor.tokenizer
    processor.tokenizer = counting = CountingTokenizer(real)
    try:
        outputs = llm.generate(["one prompt", "another prompt"],
                               SamplingParams(max_tokens=2, temperature=0), use_tqdm=False)
    finally:
        processor.tokenizer = real
    assert counting.encodes == ["one prompt", "another prompt"]
    assert [output.prompt for output in outputs] == ["one prompt", "another prompt"]
    assert outputs[0].prompt_token_ids == real.encode("one prompt")
