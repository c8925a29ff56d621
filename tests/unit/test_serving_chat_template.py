"""The chat and /tokenize handlers: a request's own chat_template only with
--trust-request-chat-template, chat_template_kwargs only plain JSON that cannot set the
renderer's arguments, continue_final_message, and the early refusal of a too-long rendering."""

from __future__ import annotations

import pytest

from pagellm.entrypoints.openai.protocol import (ChatCompletionRequest, ChatCompletionResponse,
                                                 ErrorResponse, TokenizeChatRequest,
                                                 TokenizeResponse)
from pagellm.entrypoints.openai.serving_chat import OpenAIServingChat
from pagellm.entrypoints.openai.serving_tokenization import OpenAIServingTokenization
from tests.unit.test_openai_protocol import ScriptedEngine, run

MESSAGES = [{"role": "user", "content": "hi"}]
REQUEST_TEMPLATE = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"


def _chat(trusted: bool = False, **fields):
    serving = OpenAIServingChat(ScriptedEngine(replies=("ok",)))
    serving.trust_request_chat_template = trusted
    return run(serving.create_chat_completion(
        ChatCompletionRequest(**{"messages": MESSAGES, "max_tokens": 2, **fields}), "r1"))


def _tokenize(trusted: bool = False, **fields):
    serving = OpenAIServingTokenization(ScriptedEngine())
    serving.trust_request_chat_template = trusted
    return run(serving.tokenize(TokenizeChatRequest(**{"messages": MESSAGES, **fields})))


def test_a_request_template_is_refused_without_the_flag():
    for result in (_chat(chat_template=REQUEST_TEMPLATE),
                   _tokenize(chat_template=REQUEST_TEMPLATE)):
        assert isinstance(result, ErrorResponse)
        assert (result.error.code, result.error.param) == (400, "chat_template")
        assert "--trust-request-chat-template" in result.error.message


def test_a_request_template_renders_with_the_flag():
    result = _tokenize(trusted=True, chat_template=REQUEST_TEMPLATE)
    assert isinstance(result, TokenizeResponse)
    assert result.tokens == [ord(c) for c in "[hi]"]
    assert isinstance(_chat(trusted=True, chat_template=REQUEST_TEMPLATE), ChatCompletionResponse)


@pytest.mark.parametrize("serve", [_chat, _tokenize])
def test_a_huge_request_template_is_a_400_even_when_trusted(serve):
    result = serve(trusted=True, chat_template="{{ 'x' * 300000000 }}")
    assert isinstance(result, ErrorResponse)
    assert (result.error.code, result.error.param) == (400, "chat_template")
    assert "300000000 characters" in result.error.message


@pytest.mark.parametrize("kwargs, words", [
    ({"continue_final_message": True}, "may not set continue_final_message"),
    ({"messages": []}, "may not set messages"),
    ({"tools": []}, "may not set tools"),
    ({"x": {"y": object()}}, "plain JSON data"),
    ({"x": {1: "y"}}, "keys must be strings"),
    ({"x": [[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]}, "nested too deeply"),
    ({"x": float("nan")}, "values must be finite numbers, got nan"),
    ({"x": [1.0, float("inf")]}, "values must be finite numbers, got inf"),
    ({"x": {"y": float("-inf")}}, "values must be finite numbers, got -inf"),
])
def test_template_kwargs_must_be_plain_data_that_sets_no_renderer_argument(kwargs, words):
    request = ChatCompletionRequest(messages=MESSAGES, max_tokens=2)
    request.chat_template_kwargs = kwargs       # as a Python caller could; JSON cannot hold object()
    serving = OpenAIServingChat(ScriptedEngine())
    result = run(serving.create_chat_completion(request, "r1"))
    assert isinstance(result, ErrorResponse)
    assert (result.error.code, result.error.param) == (400, "chat_template_kwargs")
    assert words in result.error.message


def test_template_kwargs_reach_the_template():
    result = _tokenize(trusted=True, chat_template="{{ greeting }}")
    assert result.tokens == []                      # undefined renders empty
    serving = OpenAIServingChat(ScriptedEngine())
    serving.chat_template = "{{ greeting }}{{ messages[0]['content'] }}"
    request = ChatCompletionRequest(messages=MESSAGES, max_tokens=2,
                                    chat_template_kwargs={"greeting": "hello "})
    assert serving.render_prompt(request) == [ord(c) for c in "hello hi"]


def test_continue_final_message_ends_the_prompt_inside_the_last_message():
    messages = [*MESSAGES, {"role": "assistant", "content": "The capital"}]
    result = _tokenize(messages=messages, add_generation_prompt=False,
                       continue_final_message=True)
    assert "".join(chr(t) for t in result.tokens) == "<user>hi<assistant>The capital"
    both = _chat(messages=messages, continue_final_message=True)     # add_generation_prompt
    assert isinstance(both, ErrorResponse) and both.error.code == 400  # defaults to true
    assert "add_generation_prompt and continue_final_message" in both.error.message
    user_last = _chat(add_generation_prompt=False, continue_final_message=True)
    assert isinstance(user_last, ErrorResponse) and user_last.error.code == 400


def test_a_rendering_certainly_too_long_is_refused_before_encoding():
    from tests.helpers.tiny_models import build_tiny_tokenizer

    engine = ScriptedEngine()
    engine.tokenizer = build_tiny_tokenizer()       # byte-level: at most 13 chars per token
    engine.max_model_len = 16
    encoded = []
    original = engine.tokenizer.encode
    engine.tokenizer.encode = lambda text, **kw: encoded.append(len(text)) or original(text, **kw)
    serving = OpenAIServingChat(engine)

    def render(content: str):
        request = ChatCompletionRequest(messages=[{"role": "user", "content": content}],
                                        max_tokens=1)
        return run(serving.create_chat_completion(request, "r1"))

    result = render("x" * 13 * 16)       # the rendering is longer than 13 * 16 characters
    assert isinstance(result, ErrorResponse) and result.error.param == "messages"
    assert "maximum context length is 16 tokens" in result.error.message
    assert encoded == []                 # refused without tokenizing
    result = render("x")                 # within the bound: tokenized, then checked exactly
    assert len(encoded) == 1
