"""Tool calling and reasoning against a real ``pagellm serve`` of the default model
(SmolLM2-135M-Instruct, whose chat template does not render tools: the server accepts them and
renders the conversation without them, as transformers does), through the official ``openai``
client and LangChain's ``ChatOpenAI.bind_tools``.

The named and "required" choices are enforced by structured outputs (constrained decoding);
``auto`` output of a real model cannot be scripted, so those tests assert well-formed
responses only (tests/unit/test_tool_parsers.py and test_serving_chat_tools.py carry the
parsing's correctness)."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest

from tests.helpers.server import running_server

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather of a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "pattern": "^[A-Za-z ]{1,20}$"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the time",
    "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server():
    with running_server("default", "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                        "--reasoning-parser", "qwen3") as (_, base):
        yield base


@pytest.fixture(scope="module")
def client(server):
    import openai
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)


def assert_valid_calls(tool_calls) -> None:
    assert tool_calls
    for call in tool_calls:
        assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_tool_choice_returns_a_valid_call(client):
    """Needs structured outputs (constrained decoding) in the engine."""
    response = client.chat.completions.create(
        model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=100, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert [call.function.name for call in choice.message.tool_calls] == ["get_weather"]
    assert_valid_calls(choice.message.tool_calls)


def test_a_bad_tool_schema_is_a_400_naming_tools(client):
    import openai

    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "wat"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=MESSAGES, tools=[bad],
                                       tool_choice="required", max_tokens=5)
    error = caught.value.body
    assert error["param"] == "tools" and "function parameters schema in tools" in error["message"]
    assert 'Unsupported type "wat"' in error["message"]


def test_required_tool_choice_streams_valid_calls(client):
    """Needs structured outputs (constrained decoding) in the engine."""
    stream = client.chat.completions.create(
        model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=120, temperature=0,
        tool_choice="required", stream=True)
    calls, finish_reason = {}, None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                if delta.index not in calls:
                    calls[delta.index] = delta.model_copy(deep=True)
                else:
                    calls[delta.index].function.arguments += delta.function.arguments
            finish_reason = choice.finish_reason or finish_reason
    assert finish_reason == "tool_calls"
    assert_valid_calls([calls[index] for index in sorted(calls)])


@pytest.mark.parametrize("stream", [False, True])
def test_auto_gives_well_formed_responses(client, stream):
    kwargs = dict(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=40, temperature=0)
    if not stream:
        choice = client.chat.completions.create(**kwargs).choices[0]
        content, tool_calls, finish_reason = (choice.message.content,
                                              choice.message.tool_calls, choice.finish_reason)
    else:
        content, tool_calls, finish_reason = "", [], None
        for chunk in client.chat.completions.create(**kwargs, stream=True):
            for choice in chunk.choices:
                content += choice.delta.content or ""
                tool_calls += choice.delta.tool_calls or []
                finish_reason = choice.finish_reason or finish_reason
    assert finish_reason in ("stop", "length", "tool_calls")
    assert (finish_reason == "tool_calls") == bool(tool_calls)
    assert content or tool_calls
    # the qwen3 reasoning parser leaves a model that does not think alone
    assert "<think>" not in (content or "")


def test_tool_conversation_round_trips(client):
    messages = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"}]
    response = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS,
                                              tool_choice="none", max_tokens=8, temperature=0)
    assert response.choices[0].message.content
    assert response.choices[0].message.tool_calls in (None, [])


def test_langchain_bind_tools_forcing_a_call(server):
    """Needs structured outputs (constrained decoding) in the engine."""
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class get_weather(BaseModel):  # noqa: N801 (the tool's name)
        """Get the current weather of a city."""

        city: str = Field(pattern="^[A-Za-z ]{1,20}$", description="the city")

    model = ChatOpenAI(base_url=server + "/v1", api_key="none", model="tiny", temperature=0,
                       max_tokens=60, max_retries=0)
    message = model.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Paris?")
    assert [call["name"] for call in message.tool_calls] == ["get_weather"]
    assert isinstance(message.tool_calls[0]["args"]["city"], str)
    assert not message.invalid_tool_calls


def test_langchain_with_structured_output_by_function_calling(server):
    """LangChain's function_calling method is a named tool choice. Needs structured outputs."""
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(pattern="^[A-Za-z ]{1,20}$")

    model = ChatOpenAI(base_url=server + "/v1", api_key="none", model="tiny", temperature=0,
                       max_tokens=60, max_retries=0)
    city = model.with_structured_output(City, method="function_calling").invoke(
        "Name the capital of France.")
    assert isinstance(city, City) and city.name


def test_auto_tool_choice_needs_a_parser_at_startup():
    result = subprocess.run([sys.executable, "-m", "pagellm", "serve", "--port", "0",
                             "--enable-auto-tool-choice"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "--enable-auto-tool-choice requires --tool-call-parser" in result.stderr
