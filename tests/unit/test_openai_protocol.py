"""The OpenAI protocol models, error bodies, and the completion/chat handlers' formatting.

The handlers run against ``ScriptedEngine``, a test double with AsyncLLM's ``generate``
interface that streams prepared delta RequestOutputs (one character token per step), so these
tests check only formatting: SSE framing, indices, echo, logprobs shapes, usage, error mapping.
End-to-end tests with the real engine live in tests/integration.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from pagellm.entrypoints.openai.errors import (error_from_exception, error_from_validation,
                                               error_response)
from pagellm.entrypoints.openai.protocol import (REQUIRED_FIELDS, ChatCompletionRequest,
                                                 ChatCompletionResponse, ChatMessageParam, CompletionRequest,
                                                 CompletionResponse, DetokenizeRequest,
                                                 ErrorResponse, PromptLogprob, StreamOptions,
                                                 TokenizeChatRequest, TokenizeCompletionRequest)
from pagellm.entrypoints.openai.request_base import NOT_SUPPORTED_YET
from pagellm.entrypoints.openai.serving_chat import OpenAIServingChat
from pagellm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from pagellm.entrypoints.openai.serving_tokenization import OpenAIServingTokenization
from pagellm.errors import ClientError, EngineDeadError, NotSupportedError
from pagellm.metrics.prometheus import PrometheusMetrics
from pagellm.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from pagellm.sampling_params import SamplingParams

MAX_MODEL_LEN = 64


class CharTokenizer:
    """One token per character (id = code point); a chat template of ``<role>content``."""

    chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                     "{% if add_generation_prompt %}<assistant>{% endif %}")
    vocab_size = 256

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(char) for char in text]

    def decode(self, token_ids) -> str:
        return "".join(chr(token_id) for token_id in token_ids)

    def convert_ids_to_tokens(self, token_ids) -> list[str]:
        return [chr(token_id) for token_id in token_ids]


def _position(token_id: int, num_top: int) -> dict[int, Logprob]:
    """The sampled token at rank 1 with logprob -0.5, then ranks 2.. of the next ids."""
    position = {token_id: Logprob(-0.5, 1, chr(token_id))}
    for rank in range(2, num_top + 1):
        other = ord("a") + rank
        position[other] = Logprob(-1.0 * rank, rank, chr(other))
    return position


class ScriptedEngine:
    """Each choice i of a request generates ``replies[i % len(replies)]`` one character per
    step, then finishes with ``finish_reason``. ``error`` is raised before the first output,
    ``dead_after`` steps in, EngineDeadError."""

    def __init__(self, replies=("hi!",), finish_reason="length", error=None, dead_after=None):
        self.tokenizer = CharTokenizer()
        self.served_model_name = "tiny"
        self.max_model_len = MAX_MODEL_LEN
        self.config = SimpleNamespace(model=SimpleNamespace(max_logprobs=5))
        self.replies, self.finish_reason = replies, finish_reason
        self.error, self.dead_after = error, dead_after
        self.calls, self.closed = [], []

    async def generate(self, prompt, sampling_params, request_id, priority=0):
        self.calls.append((prompt, sampling_params, request_id, priority))
        try:
            if self.error is not None:
                raise self.error
            metrics = RequestMetrics(arrival_time=100.0, first_scheduled_time=100.5)
            replies = [self.replies[i % len(self.replies)] for i in range(sampling_params.n)]
            steps = max(len(reply) for reply in replies)
            for step in range(steps):
                if self.dead_after is not None and step == self.dead_after:
                    raise EngineDeadError("engine core died at /secret/path/engine.py")
                await asyncio.sleep(0)
                outputs = [self._delta(index, reply, step, sampling_params)
                           for index, reply in enumerate(replies)]
                finished = step == steps - 1
                metrics.first_token_time = metrics.first_token_time or 101.0
                metrics.last_token_time = 101.0 + step
                metrics.finished_time = 101.0 + step if finished else None
                prompt_logprobs = None
                if sampling_params.prompt_logprobs is not None:
                    prompt_logprobs = [None] + [_position(t, 1) for t in prompt[1:]]
                yield RequestOutput(request_id, None, list(prompt), prompt_logprobs, outputs,
                                    finished, metrics)
        finally:
            self.closed.append(request_id)

    def _delta(self, index, reply, step, params) -> CompletionOutput:
        if step >= len(reply):
            return CompletionOutput(index, "", [], finish_reason=self.finish_reason)
        token_id = ord(reply[step])
        logprobs = None if params.logprobs is None else [_position(token_id, params.logprobs)]
        finish = self.finish_reason if step == len(reply) - 1 else None
        return CompletionOutput(index, reply[step], [token_id], logprobs=logprobs,
                                finish_reason=finish)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


async def _collect(events) -> list:
    """The JSON payloads of an SSE iterator, '[DONE]' kept as a string."""
    payloads = []
    async for event in events:
        assert event.startswith("data: ") and event.endswith("\n\n"), event
        body = event[len("data: "):-2]
        payloads.append(body if body == "[DONE]" else json.loads(body))
    return payloads


def complete(engine, metrics=None, **fields):
    serving = OpenAIServingCompletion(engine, metrics=metrics)
    request = CompletionRequest(**fields)

    async def go():
        result = await serving.create_completion(request, request_id="r1")
        if isinstance(result, (CompletionResponse, ErrorResponse)):
            return result
        return await _collect(result)
    return run(go())


def chat(engine, **fields):
    serving = OpenAIServingChat(engine)
    request = ChatCompletionRequest(**fields)

    async def go():
        result = await serving.create_chat_completion(request, request_id="r1")
        if isinstance(result, (ChatCompletionResponse, ErrorResponse)):
            return result
        return await _collect(result)
    return run(go())


# ---- request models ------------------------------------------------------------------------

def test_unknown_fields_are_ignored_and_prompts_normalised():
    request = CompletionRequest(prompt="hello", frobnicate=3, metadata={"a": 1})
    assert request.prompts() == ["hello"]
    assert CompletionRequest(prompt=[1, 2, 3]).prompts() == [[1, 2, 3]]
    assert CompletionRequest(prompt=["a", "b"]).prompts() == ["a", "b"]
    assert CompletionRequest(prompt=[[1], [2, 3]]).prompts() == [[1], [2, 3]]


@pytest.mark.parametrize("fields, param", [
    ({"n": 129}, "n"),
    ({"stop": ["x"] * 17}, "stop"),
    ({"stop": "y" * 513}, "stop"),
    ({"prompt": [True, False]}, "prompt"),
    ({"prompt": [1, 2.5]}, "prompt"),
    ({"stop_token_ids": [1] * 129}, "stop_token_ids"),
    ({"logit_bias": {str(i): 1.0 for i in range(1025)}}, "logit_bias"),
])
def test_size_bounds_fail_parsing_with_the_field_named(fields, param):
    """What protects the server from huge inputs is checked at parsing."""
    with pytest.raises(ValidationError) as info:
        CompletionRequest(**{"prompt": "p", **fields})
    body = error_from_validation(info.value.errors())
    assert body.error.code == 400 and body.error.param == param
    assert body.error.message.startswith(param)


@pytest.mark.parametrize("fields, message", [
    ({"temperature": -1}, "temperature must be >= 0, got -1.0"),
    ({"temperature": float("nan")}, "temperature is not a number (NaN)"),
    ({"temperature": float("inf")}, "temperature must be a finite number, got inf"),
    ({"n": 0}, "n must be an integer in [1, 2147483647], got 0"),
    ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
    ({"max_tokens": 0}, "max_tokens must be an integer in [1, 2147483647], got 0"),
    ({"max_tokens": 2**31}, "max_tokens must be an integer in [1, 2147483647], got 2147483648"),
    ({"top_k": 2**63}, "top_k must be -1, 0 (all tokens) or a positive integer <= 2147483647, "
                       "got 9223372036854775808"),
    ({"top_k": 2**70}, "top_k must be -1, 0 (all tokens) or a positive integer <= 2147483647"),
    ({"min_tokens": 2**31}, "min_tokens must be an integer in [0, 2147483647], got 2147483648"),
    ({"seed": 2**64}, "seed must be an integer in [-2**63+1, 2**63-1], got 18446744073709551616"),
    ({"presence_penalty": 3}, "presence_penalty must be in [-2, 2], got 3.0"),
    ({"stop": [""]}, "stop must be a list of non-empty strings"),
    ({"logit_bias": {"abc": 1.0}}, "logit_bias keys must be token ids in [0, 2147483647], "
                                   "got 'abc'"),
    ({"logit_bias": {" 5": 1.0}}, "logit_bias keys must be token ids in [0, 2147483647], "
                                  "got ' 5'"),
    ({"logit_bias": {"5_0": 1.0}}, "logit_bias keys must be token ids in [0, 2147483647], "
                                   "got '5_0'"),
    ({"logit_bias": {"\u0665": 1.0}}, "logit_bias keys must be token ids in [0, 2147483647], "
                                      "got '\u0665'"),
    ({"logit_bias": {"-1": 1.0}}, "logit_bias keys must be token ids"),
    ({"logit_bias": {str(2**31): 1.0}}, "logit_bias keys must be token ids"),
    ({"logit_bias": {"5": 101.0}}, "logit_bias bias for token 5 must be in [-100, 100], got"),
    ({"stop_token_ids": [-1]}, "stop_token_ids must be a list of token ids in [0, 2147483647]"),
    ({"stop_token_ids": [2**63]}, "stop_token_ids must be a list of token ids in [0, "
                                  "2147483647]"),
])
def test_semantic_ranges_are_sampling_params_rules(fields, message):
    """Ranges are SamplingParams' rules: the request carries them there and the message is
    exactly the one SamplingParams gives the offline LLM for the same value."""
    request = CompletionRequest(prompt="p", **fields)
    with pytest.raises(ClientError) as http_info:
        request.to_sampling_params(MAX_MODEL_LEN, prompt_len=1)
    with pytest.raises(ClientError) as offline_info:
        SamplingParams(**fields)
    assert str(http_info.value).startswith(message)
    assert str(http_info.value) == str(offline_info.value)
    assert http_info.value.param == offline_info.value.param == next(iter(fields))


@pytest.mark.parametrize("field", ["n", "stream", "logprobs", "echo", "min_tokens",
                                   "ignore_eos", "skip_special_tokens", "max_tokens",
                                   "add_special_tokens", "spaces_between_special_tokens",
                                   "include_stop_str_in_output", "priority", "temperature",
                                   "stream_options", "prompt_logprobs", "use_beam_search"])
def test_completion_null_means_the_default(field):
    request = CompletionRequest(prompt="p", **{field: None})
    default = CompletionRequest.model_fields[field].default
    assert getattr(request, field) == default
    assert default is None or field not in request.model_fields_set


def test_only_an_assistant_message_may_lack_content():
    """OpenAI's rule: a user/system/tool message without content is a 400 naming the role;
    an assistant message may be empty (the reply's start) or carry only tool calls."""
    for role in ("user", "system", "tool"):
        with pytest.raises(ValidationError, match=f"a {role} message needs 'content'"):
            ChatMessageParam(role=role)
    assert ChatMessageParam(role="assistant").content is None


def test_every_optional_request_field_takes_null():
    """Audit: null for any optional field of any request model parses to its default."""
    chat_message = {"role": "user", "content": "x"}
    for model, required in [(CompletionRequest, {"prompt": "p"}),
                            (ChatCompletionRequest, {"messages": [chat_message]}),
                            (TokenizeCompletionRequest, {"prompt": "p"}),
                            (TokenizeChatRequest, {"messages": [chat_message]}),
                            (StreamOptions, {}), (ChatMessageParam, {"role": "assistant"})]:
        optional = [name for name, field in model.model_fields.items()
                    if not field.is_required()]
        parsed = model(**required, **{name: None for name in optional})
        for name in optional:
            assert getattr(parsed, name) == model.model_fields[name].default, (model, name)
    messages = [{"role": "user", "content": "x"}]
    request = ChatCompletionRequest(messages=messages, n=None, logprobs=None,
                                    add_generation_prompt=None, echo=None, stream=True,
                                    stream_options={"include_usage": None})
    assert (request.n, request.logprobs, request.add_generation_prompt) == (1, False, True)
    assert request.stream_options.include_usage is False
    with pytest.raises(ValueError, match="stream_options can only be set when stream is true"):
        ChatCompletionRequest(messages=messages, stream_options={"include_usage": True})


SURROGATE_BODIES = [
    (CompletionRequest, {"prompt": "hi", "stop": ["\ud800"]}, "stop[0]"),
    (CompletionRequest, {"prompt": ["ok", "a\udfffb"]}, "prompt[1]"),
    (CompletionRequest, {"prompt": "hi", "user": "\ud800"}, "user"),
    (CompletionRequest, {"prompt": "hi", "model": "m\ud800"}, "model"),
    (CompletionRequest, {"prompt": "hi", "logit_bias": {"\ud800": 1}}, "logit_bias.<key>"),
    (CompletionRequest, {"prompt": "hi", "suffix": "\udc00"}, "suffix"),
    (ChatCompletionRequest, {"messages": [{"role": "user", "content": "x\udc00y"}]},
     "messages[0].content"),
    (ChatCompletionRequest, {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "\ud800"}]}]}, "messages[0].content[0].text"),
    (ChatCompletionRequest, {"messages": [{"role": "user", "content": "x",
                                           "name": "\ud800"}]}, "messages[0].name"),
    (ChatCompletionRequest, {"messages": [{"role": "\ud800", "content": "x"}]},
     "messages[0].role"),
    (ChatCompletionRequest, {"messages": [{"role": "assistant", "tool_calls": [
        {"function": {"arguments": "\ud800"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    (ChatCompletionRequest, {"messages": [{"role": "user", "content": "x"}],
                             "chat_template_kwargs": {"flag": "\ud800"}},
     "chat_template_kwargs.flag"),
    (ChatCompletionRequest, {"messages": [{"role": "user", "content": "x"}],
                             "tools": [{"type": "function", "name": "\ud800"}]},
     "tools[0].name"),
    (TokenizeChatRequest, {"messages": [{"role": "user", "content": "\udc00"}]},
     "messages[0].content"),
    (TokenizeCompletionRequest, {"prompt": "\udc00"}, "prompt"),
    (DetokenizeRequest, {"tokens": [1], "model": "\udc00"}, "model"),
]


@pytest.mark.parametrize("model, body, path", SURROGATE_BODIES,
                         ids=[path for _, _, path in SURROGATE_BODIES])
def test_lone_surrogates_anywhere_are_a_400_naming_the_field(model, body, path):
    with pytest.raises(ValidationError) as info:
        model.model_validate(json.loads(json.dumps(body)))
    error = error_from_validation(info.value.errors()).error
    assert error.code == 400
    assert error.message.startswith(f"{path} holds a lone UTF-16 surrogate"), error.message
    assert error.param == path.split("[")[0].split(".")[0]
    error.model_dump_json()     # the message itself encodes (the character is escaped)


@pytest.mark.parametrize("body, message", [
    ({}, "prompt is required"),
    ({"prompt": [1, "a"]}, "prompt[1] must be a token id (an integer), got str"),
    ({"prompt": None}, "prompt must be a non-empty string"),
    ({"prompt": "p", "n": "x"}, "n must be an integer, got 'x'"),
    ({"prompt": "p", "stop": 5}, "stop must be a string or a list, got 5"),
    ({"prompt": "p", "logit_bias": {"1": "a"}}, "logit_bias['1'] must be a number, got 'a'"),
    ({"prompt": "p", "stream_options": {"include_usage": "zz"}},
     "stream_options.include_usage must be true or false, got 'zz'"),
])
def test_validation_messages_speak_the_users_terms(body, message):
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate(body)
    assert error_from_validation(info.value.errors()).error.message.startswith(message)


def test_chat_validation_messages_name_nested_fields():
    def message(body):
        with pytest.raises(ValidationError) as info:
            ChatCompletionRequest.model_validate(body)
        return error_from_validation(info.value.errors()).error.message
    assert message({}) == "messages is required"
    assert message({"messages": []}) == "messages must not be empty"
    assert message({"messages": [{"content": "x"}]}) == "messages[0].role is required"
    assert message({"messages": [{"role": "user", "content": 5}]}) == \
        "messages[0].content must be a string or a list, got 5"


def test_an_empty_body_names_the_required_field():
    errors = [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
    body = error_from_validation(errors, REQUIRED_FIELDS["/v1/chat/completions"])
    assert (body.error.message, body.error.param) == ("messages is required", "messages")


def test_chat_bounds():
    with pytest.raises(ValidationError):
        ChatCompletionRequest(messages=[])
    with pytest.raises(ValidationError):
        ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], top_logprobs=21)


def test_completion_sampling_params():
    request = CompletionRequest(prompt="p", temperature=0.5, top_k=-1, stop="end", seed=7,
                                logit_bias={"3": -1.0}, stream=True, min_tokens=2)
    params = request.to_sampling_params(MAX_MODEL_LEN, prompt_len=10)
    assert (params.temperature, params.top_k, params.stop, params.seed) == (0.5, 0, ["end"], 7)
    assert params.logit_bias == {3: -1.0}
    assert params.max_tokens == 16 and params.min_tokens == 2
    # Built once, final: the server sums deltas itself whether or not it streams.
    assert params.output_kind == "delta" and params.detokenize
    assert CompletionRequest(prompt="p").to_sampling_params(64, 10).output_kind == "delta"
    assert not CompletionRequest(prompt="p").to_sampling_params(64, 10, False).detokenize


def test_completion_max_tokens_default_shrinks_explicit_is_the_engines_to_check():
    assert CompletionRequest(prompt="p").to_sampling_params(64, 60).max_tokens == 4
    assert CompletionRequest(prompt="p", max_tokens=None).to_sampling_params(64, 60)\
        .max_tokens == 4
    # An explicit value goes as is: InputProcessor.validate owns the context-length rule.
    assert CompletionRequest(prompt="p", max_tokens=5).to_sampling_params(64, 60)\
        .max_tokens == 5
    assert CompletionRequest(prompt="p").to_sampling_params(64, 64).max_tokens == 16


def test_echo_asks_for_prompt_logprobs_unless_prompt_logprobs_says():
    params = CompletionRequest(prompt="p", logprobs=2, echo=True).to_sampling_params(64, 1)
    assert (params.logprobs, params.prompt_logprobs) == (2, 2)
    params = CompletionRequest(prompt="p", logprobs=2, echo=True, prompt_logprobs=0)\
        .to_sampling_params(64, 1)
    assert (params.logprobs, params.prompt_logprobs) == (2, 0)
    assert CompletionRequest(prompt="p", prompt_logprobs=3).to_sampling_params(64, 1)\
        .prompt_logprobs == 3


def test_unsupported_completion_options_are_rejected():
    with pytest.raises(NotSupportedError) as info:
        CompletionRequest(prompt="p", n=1, best_of=3).prompts()
    assert info.value.param == "best_of"
    with pytest.raises(ClientError) as info:
        CompletionRequest(prompt=["a"] * 65).prompts()
    assert info.value.param == "prompt"
    with pytest.raises(ClientError) as info:
        CompletionRequest(prompt="p", prompt_logprobs=1, stream=True).prompts()
    assert info.value.param == "prompt_logprobs"


def test_chat_sampling_params():
    messages = [{"role": "user", "content": "hi"}]
    request = ChatCompletionRequest(messages=messages, max_tokens=3, max_completion_tokens=5,
                                    logprobs=True, top_logprobs=2)
    params = request.to_sampling_params(64, 10, 5)
    assert (params.max_tokens, params.logprobs, params.output_kind) == (5, 2, "delta")
    # No max_tokens: None, which the engine resolves to the room the prompt leaves.
    assert ChatCompletionRequest(messages=messages).to_sampling_params(64, 10).max_tokens is None
    assert ChatCompletionRequest(messages=messages, logprobs=True)\
        .to_sampling_params(64, 10, 5).logprobs == 0
    with pytest.raises(ClientError) as info:
        ChatCompletionRequest(messages=messages, top_logprobs=2).to_sampling_params(64, 10, 5)
    assert info.value.param == "top_logprobs"
    with pytest.raises(ValidationError, match="tools.0.function"):
        ChatCompletionRequest(messages=messages, tools=[{"type": "function"}])


# ---- error bodies --------------------------------------------------------------------------

def test_error_bodies_by_blame():
    body = error_from_exception(ClientError("bad top_p", param="top_p"))
    assert body.model_dump() == {"error": {"message": "bad top_p", "type": "BadRequestError",
                                           "param": "top_p", "code": 400}}
    dead = error_from_exception(EngineDeadError("core died in /opt/x.py"))
    assert dead.error.code == 503 and "/opt" not in dead.error.message
    internal = error_from_exception(RuntimeError("boom at /home/me/secret.py line 3"), "r9")
    assert internal.error.code == 500 and internal.error.type == "InternalServerError"
    assert "secret" not in internal.error.message and "r9" in internal.error.message
    assert error_response("x", 404).error.type == "NotFoundError"


# ---- /v1/completions -----------------------------------------------------------------------

def test_completion_full_response():
    response = complete(ScriptedEngine(), prompt="ab", max_tokens=3)
    assert response.id == "cmpl-r1" and response.object == "text_completion"
    assert response.model == "tiny"
    assert [(c.index, c.text, c.finish_reason) for c in response.choices] == [(0, "hi!", "length")]
    assert response.usage.model_dump() == {"prompt_tokens": 2, "completion_tokens": 3,
                                           "total_tokens": 5}


def test_completion_batch_and_n_indices():
    engine = ScriptedEngine(replies=("x", "yz"))
    response = complete(engine, prompt=["ab", "c"], n=2)
    assert [(c.index, c.text) for c in response.choices] == [(0, "x"), (1, "yz"), (2, "x"),
                                                             (3, "yz")]
    assert [call[0] for call in engine.calls] == [[97, 98], [99]]
    assert [call[2] for call in engine.calls] == ["cmpl-r1-0", "cmpl-r1-1"]
    assert all(call[1].output_kind == "delta" for call in engine.calls)
    assert response.usage.prompt_tokens == 3 and response.usage.completion_tokens == 6


def test_completion_stream_events_usage_and_done():
    events = complete(ScriptedEngine(replies=("ab",)), prompt=[1, 2], stream=True,
                      stream_options={"include_usage": True}, max_tokens=2)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["a", "b"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, "length"]
    assert all(c["id"] == "cmpl-r1" and c["object"] == "text_completion" for c in chunks)
    assert len({c["created"] for c in chunks}) == 1
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 2,
                                   "total_tokens": 4}


def test_completion_stream_without_usage_ends_with_done():
    events = complete(ScriptedEngine(replies=("ab",)), prompt="q", stream=True)
    assert events[-1] == "[DONE]"
    assert all(chunk["usage"] is None and chunk["choices"] for chunk in events[:-1])


def test_completion_echo():
    response = complete(ScriptedEngine(replies=("ok",)), prompt="say ", echo=True)
    assert response.choices[0].text == "say ok"
    events = complete(ScriptedEngine(replies=("ok",)), prompt=[104, 105], echo=True, stream=True)
    assert "".join(c["choices"][0]["text"] for c in events[:-1]) == "hiok"
    assert events[0]["choices"][0]["text"] == "hio"


def test_completion_logprobs_shape():
    response = complete(ScriptedEngine(replies=("hi",)), prompt="q", logprobs=2)
    logprobs = response.choices[0].logprobs.model_dump()
    assert logprobs == {"tokens": ["h", "i"], "token_logprobs": [-0.5, -0.5],
                        "top_logprobs": [{"h": -0.5, "c": -2.0}, {"i": -0.5, "c": -2.0}],
                        "text_offset": [0, 1]}


def test_completion_streamed_logprobs_offsets_run_on():
    events = complete(ScriptedEngine(replies=("hi",)), prompt="q", logprobs=0, stream=True)
    offsets = [c["choices"][0]["logprobs"]["text_offset"] for c in events[:-1]]
    assert offsets == [[0], [1]]


def test_completion_echo_with_logprobs_includes_prompt_tokens():
    response = complete(ScriptedEngine(replies=("z",)), prompt="ab", logprobs=1, echo=True)
    logprobs = response.choices[0].logprobs
    assert logprobs.tokens == ["a", "b", "z"]
    assert logprobs.token_logprobs == [None, -0.5, -0.5]
    assert logprobs.top_logprobs[0] is None
    assert logprobs.text_offset == [0, 1, 2]


def test_completion_client_errors_become_400_before_streaming():
    engine = ScriptedEngine(error=ClientError("token id 999 is out of the vocabulary",
                                              param="prompt"))
    result = complete(engine, prompt=[999], stream=True)
    assert isinstance(result, ErrorResponse)
    assert (result.error.code, result.error.param) == (400, "prompt")
    assert complete(ScriptedEngine(), prompt="p", model="other").error.code == 404
    assert complete(ScriptedEngine(), prompt=[[]]).error.param == "prompt"


def test_engine_death_mid_stream_is_an_error_event_without_internals():
    engine = ScriptedEngine(replies=("abcd",), dead_after=2)
    events = complete(engine, prompt="p", stream=True)
    assert [c["choices"][0]["text"] for c in events[:2]] == ["a", "b"]
    assert events[2]["error"]["code"] == 503
    assert "secret" not in json.dumps(events[2])
    assert events[3] == "[DONE]"
    full = complete(ScriptedEngine(replies=("abcd",), dead_after=2), prompt="p")
    assert full.error.code == 503


def test_internal_errors_do_not_leak():
    result = complete(ScriptedEngine(error=KeyError("/etc/passwd")), prompt="p")
    assert result.error.code == 500 and "passwd" not in result.error.message


def test_closing_a_stream_aborts_every_engine_request():
    engine = ScriptedEngine(replies=("abcdef",))
    serving = OpenAIServingCompletion(engine)

    async def go():
        events = await serving.create_completion(
            CompletionRequest(prompt=["a", "b"], stream=True), request_id="r2")
        await anext(events)
        await events.aclose()
    run(go())
    assert sorted(engine.closed) == ["cmpl-r2-0", "cmpl-r2-1"]


def test_handlers_feed_the_metrics():
    metrics = PrometheusMetrics("tiny")
    complete(ScriptedEngine(replies=("abc",)), metrics=metrics, prompt="pq", n=2)
    assert (metrics.totals.prompt_tokens, metrics.totals.generation_tokens) == (2, 6)
    value = metrics.registry.get_sample_value
    labels = {"model_name": "tiny", "engine": "0"}
    assert value("vllm:request_success_total", {**labels, "finished_reason": "length"}) == 2
    assert value("vllm:time_to_first_token_seconds_sum", labels) == 1.0
    assert value("vllm:inter_token_latency_seconds_count", labels) == 2


# ---- /v1/chat/completions ------------------------------------------------------------------

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def test_chat_full_response_applies_the_template():
    engine = ScriptedEngine(replies=("yo",), finish_reason="stop")
    response = chat(engine, messages=MESSAGES)
    rendered = "<system>be brief<user>hi<assistant>"
    assert engine.calls[0][0] == [ord(char) for char in rendered]
    assert response.id == "chatcmpl-r1" and response.object == "chat.completion"
    choice = response.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == \
        ("assistant", "yo", "stop")
    assert response.usage.prompt_tokens == len(rendered)


def test_chat_stream_role_first_then_content_usage_done():
    events = chat(ScriptedEngine(replies=("yo",)), messages=MESSAGES, stream=True, n=2,
                  stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [
        {"role": "assistant", "content": ""}] * 2
    assert [c["choices"][0]["index"] for c in chunks[:2]] == [0, 1]
    content = {0: "", 1: ""}
    for chunk in chunks[2:-1]:
        choice = chunk["choices"][0]
        content[choice["index"]] += choice["delta"].get("content", "")
    assert content == {0: "yo", 1: "yo"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_chat_logprobs_shape():
    response = chat(ScriptedEngine(replies=("h",)), messages=MESSAGES, logprobs=True,
                    top_logprobs=2)
    assert response.choices[0].logprobs.model_dump() == {"content": [{
        "token": "h", "logprob": -0.5, "bytes": [104],
        "top_logprobs": [{"token": "h", "logprob": -0.5, "bytes": [104]},
                         {"token": "c", "logprob": -2.0, "bytes": [99]}]}]}


def test_chat_echo_and_continuation_role():
    messages = MESSAGES + [{"role": "assistant", "content": "Sure: "}]
    response = chat(ScriptedEngine(replies=("ok",)), messages=messages,
                    add_generation_prompt=False, echo=True)
    assert response.choices[0].message.model_dump() == {
        "role": "assistant", "content": "Sure: ok", "reasoning_content": None,
        "reasoning": None, "tool_calls": []}


def test_chat_errors():
    result = chat(ScriptedEngine(), messages=MESSAGES, chat_template_kwargs={"tokenize": True})
    assert (result.error.code, result.error.param) == (400, "chat_template_kwargs")
    no_tokenizer = ScriptedEngine()
    no_tokenizer.tokenizer = None
    assert chat(no_tokenizer, messages=MESSAGES).error.code == 400
    assert chat(ScriptedEngine(), messages=MESSAGES,
                response_format={"type": "xml"}).error.param == "response_format"


def test_shapes_parse_as_the_openai_clients_types():
    openai_types = pytest.importorskip("openai.types")
    chat_types = pytest.importorskip("openai.types.chat")
    completion = complete(ScriptedEngine(replies=("hi",)), prompt="q", logprobs=1, n=2)
    parsed = openai_types.Completion.model_validate(completion.model_dump())
    assert parsed.choices[1].text == "hi" and parsed.choices[0].logprobs.tokens == ["h", "i"]
    # The client builds completion chunks without validation (their finish_reason is null
    # until the last); the last chunk of a choice and the usage chunk validate.
    chunks = complete(ScriptedEngine(), prompt="q", stream=True,
                      stream_options={"include_usage": True})[:-1]
    for chunk in chunks[-2:]:
        openai_types.Completion.model_validate(chunk)
    reply = chat(ScriptedEngine(), messages=MESSAGES, logprobs=True, top_logprobs=1)
    parsed_chat = chat_types.ChatCompletion.model_validate(reply.model_dump())
    assert parsed_chat.choices[0].logprobs.content[0].top_logprobs[0].token == "h"
    for chunk in chat(ScriptedEngine(), messages=MESSAGES, stream=True,
                      stream_options={"include_usage": True})[:-1]:
        chat_types.ChatCompletionChunk.model_validate(chunk)


# ---- /tokenize, /detokenize ----------------------------------------------------------------

def test_tokenize_and_detokenize():
    serving = OpenAIServingTokenization(ScriptedEngine())
    tokens = run(serving.tokenize(TokenizeCompletionRequest(prompt="ab")))
    assert tokens.model_dump() == {"count": 2, "max_model_len": MAX_MODEL_LEN, "tokens": [97, 98],
                                   "token_strs": None}
    with_strs = run(serving.tokenize(TokenizeCompletionRequest(prompt="ab",
                                                               return_token_strs=True)))
    assert with_strs.token_strs == ["a", "b"]
    chat_tokens = run(serving.tokenize(TokenizeChatRequest(messages=[{"role": "user",
                                                                      "content": "x"}])))
    assert chat_tokens.tokens == [ord(char) for char in "<user>x<assistant>"]
    assert run(serving.detokenize(DetokenizeRequest(tokens=[104, 105]))).prompt == "hi"
    bad = run(serving.detokenize(DetokenizeRequest(tokens=[300])))
    assert (bad.error.code, bad.error.param) == (400, "tokens")
    assert run(serving.tokenize(TokenizeCompletionRequest(prompt="a", model="x"))).error.code \
        == 404


# ---- the field audit (docs/openai_api_fields.md) -------------------------------------------

REJECTED = {  # field: a value that asks for the feature
    "use_beam_search": True, "length_penalty": 0.5, "allowed_token_ids": [1, 2],
    "bad_words": ["x"], "logits_processors": ["x"], "return_tokens_as_token_ids": True, "return_token_ids": True,
    "cache_salt": "s", "kv_transfer_params": {"a": 1}, "vllm_xargs": {"a": 1},
    "request_id": "mine", "prompt_embeds": "AAAA", "mm_processor_kwargs": {"a": 1},
    "documents": [{"text": "d"}], "reasoning_effort": "high", "web_search_options": {},
    "audio": {"voice": "alloy"}, "modalities": ["text", "audio"], "functions": [{"name": "f"}],
    "function_call": "auto", "store": True, "service_tier": "flex", "verbosity": "low",
}
CHAT_ONLY = {"mm_processor_kwargs", "documents", "reasoning_effort", "web_search_options",
             "audio", "modalities", "functions", "function_call", "store", "service_tier",
             "verbosity"}


def test_every_not_supported_yet_field_is_tested():
    assert set(REJECTED) == set(NOT_SUPPORTED_YET)


@pytest.mark.parametrize("field", sorted(REJECTED))
def test_known_unbuilt_fields_are_a_400_naming_them(field):
    bodies = []
    if field != "prompt_embeds":
        bodies.append((ChatCompletionRequest, {"messages": [{"role": "user", "content": "x"}]}))
    if field not in CHAT_ONLY:
        bodies.append((CompletionRequest, {"prompt": "p"}))
    for model, body in bodies:
        model.model_validate({**body, field: NOT_SUPPORTED_YET[field][0][-1]})  # "off": fine
        with pytest.raises(ValidationError) as info:
            model.model_validate({**body, field: REJECTED[field]})
        error = error_from_validation(info.value.errors()).error
        assert (error.code, error.param) == (400, field)
        assert error.message.startswith(f"{field} is not supported yet"), error.message


@pytest.mark.parametrize("fields, param", [
    ({"add_special_tokens": True}, "add_special_tokens"),
    ({"prompt_logprobs": 1}, "prompt_logprobs"),
    ({"truncate_prompt_tokens": 4}, "truncate_prompt_tokens"),
    ({"stream": True, "stream_options": {"include_usage": True,
                                         "continuous_usage_stats": True}}, "stream_options"),
])
def test_chat_fields_built_for_completions_only_are_rejected_on_chat(fields, param):
    result = chat(ScriptedEngine(), messages=MESSAGES, **fields)
    assert isinstance(result, ErrorResponse)
    assert (result.error.code, result.error.param) == (400, param)
    assert "not supported" in result.error.message


def test_tokenize_chat_rejects_what_it_cannot_honour():
    for field, value in [("add_special_tokens", True), ("tools", [{"type": "function"}]),
                         ("chat_template_kwargs", {"a": 1}), ("mm_processor_kwargs", {"a": 1}),
                         ("documents", [{"text": "d"}])]:
        with pytest.raises(ValidationError) as info:
            TokenizeChatRequest(messages=MESSAGES, **{field: value})
        assert error_from_validation(info.value.errors()).error.param == field


def test_accepted_and_ignored_fields_parse():
    """Fields whose OpenAI meaning this server satisfies by doing nothing (see the audit)."""
    request = ChatCompletionRequest(
        messages=MESSAGES, user="u1", store=False, metadata={"k": "v"}, service_tier="auto",
        parallel_tool_calls=True, include_reasoning=False, prediction={"type": "content",
                                                                       "content": "x"},
        prompt_cache_key="k", safety_identifier="s", modalities=["text"])
    assert request.to_sampling_params(64, 10).max_tokens is None


def test_completion_prompt_logprobs_in_every_choice_of_the_prompt():
    response = complete(ScriptedEngine(), prompt="abc", prompt_logprobs=0, n=2)
    for choice in response.choices:
        positions = choice.prompt_logprobs
        assert positions[0] is None and len(positions) == 3
        assert positions[1] == {ord("b"): PromptLogprob(logprob=-0.5, rank=1,
                                                        decoded_token="b")}
    body = json.loads(response.model_dump_json())
    assert body["choices"][0]["prompt_logprobs"][2] == {
        str(ord("c")): {"logprob": -0.5, "rank": 1, "decoded_token": "c"}}
    assert complete(ScriptedEngine(), prompt="abc").choices[0].prompt_logprobs is None


def test_completion_add_special_tokens_and_truncation_reach_the_engine():
    class BosTokenizer(CharTokenizer):
        def encode(self, text, add_special_tokens=True):
            return ([1] if add_special_tokens else []) + super().encode(text)
    engine = ScriptedEngine()
    engine.tokenizer = BosTokenizer()
    complete(engine, prompt="abc")
    complete(engine, prompt="abc", add_special_tokens=False)
    complete(engine, prompt="abcdef", truncate_prompt_tokens=2, echo=True)
    assert [call[0] for call in engine.calls] == [[1, 97, 98, 99], [97, 98, 99], [101, 102]]
    response = complete(ScriptedEngine(), prompt="abcdef", truncate_prompt_tokens=2, echo=True,
                        max_tokens=1)
    assert response.choices[0].text.startswith("ef")   # echo shows what the model saw
    assert response.usage.prompt_tokens == 2


def test_completion_continuous_usage_stats_in_every_chunk():
    events = complete(ScriptedEngine(replies=("abc",)), prompt="pp", stream=True,
                      stream_options={"include_usage": True, "continuous_usage_stats": True})
    chunks = [event for event in events[:-1] if event["choices"]]
    assert [chunk["usage"]["completion_tokens"] for chunk in chunks] == [1, 2, 3]
    assert all(chunk["usage"]["prompt_tokens"] == 2 for chunk in chunks)
    plain = complete(ScriptedEngine(replies=("abc",)), prompt="pp", stream=True,
                     stream_options={"include_usage": True})
    assert all(event["usage"] is None for event in plain[:-2])


def test_unknown_response_format_type_is_a_400_listing_the_types():
    expected = ("response_format.type must be one of ['text', 'json_object', 'json_schema', "
                "'structural_tag'], got 'xml'")
    result = chat(ScriptedEngine(), messages=MESSAGES, response_format={"type": "xml"})
    assert (result.error.code, result.error.message) == (400, expected)
    result = complete(ScriptedEngine(), prompt="p", response_format={"type": "xml"})
    assert (result.error.code, result.error.param) == (400, "response_format")


def test_tokenize_refuses_prompt_and_messages_together():
    from pydantic import TypeAdapter, ValidationError

    from pagellm.entrypoints.openai.protocol import TokenizeRequest

    adapter = TypeAdapter(TokenizeRequest)
    with pytest.raises(ValidationError) as caught:
        adapter.validate_python({"prompt": "hi", "messages": [{"role": "user", "content": "x"}]})
    error = error_from_validation(caught.value.errors()).error
    assert error.param == "prompt"
    assert error.message == ("prompt must not be sent together with messages: /tokenize takes "
                             "one of the two")
    # either one alone, and an explicit null prompt beside messages, are fine
    assert isinstance(adapter.validate_python({"prompt": "hi"}), TokenizeCompletionRequest)
    assert isinstance(adapter.validate_python(
        {"prompt": None, "messages": [{"role": "user", "content": "x"}]}), TokenizeChatRequest)


@pytest.mark.parametrize("requested", [None, "", "tiny"])
def test_an_empty_model_name_means_the_served_model(requested):
    from pagellm.entrypoints.openai.errors import check_model

    check_model(requested, "tiny")
    with pytest.raises(ClientError, match="does not exist") as caught:
        check_model("other", "tiny")
    assert caught.value.status_code == 404
