"""The chat handler with tool calling and reasoning: tool_choice rules, the structured-output
schema for "required" / named choices, parsed messages in full responses, OpenAI-shaped
tool_calls deltas in streams that add up to the full response, and the message shapes of a
tool conversation. The handler runs against ``ScriptedEngine`` (one character per step), as
in test_openai_protocol; end-to-end runs are in tests/integration/test_tool_calling.py."""

from __future__ import annotations

import json

import pytest

from pagellm.entrypoints.openai.protocol import (ChatCompletionRequest, ChatCompletionResponse,
                                                 ErrorResponse)
from pagellm.entrypoints.openai.serving_chat import OpenAIServingChat
from pagellm.entrypoints.openai.tool_parsers import ToolParserManager
from pagellm.reasoning import ReasoningParserManager
from tests.unit.test_openai_protocol import ScriptedEngine, _collect, run

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {"name": "get_time"}}
TOOLS = [WEATHER_TOOL, TIME_TOOL]
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
HERMES_REPLY = ('Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": '
                '"Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}'
                '\n</tool_call>')


def serve(engine, tool_parser=None, reasoning_parser=None, auto=True):
    serving = OpenAIServingChat(engine)
    serving.enable_auto_tools = auto
    if tool_parser:
        serving.tool_parser = ToolParserManager.get_tool_parser(tool_parser)
    if reasoning_parser:
        serving.reasoning_parser = ReasoningParserManager.get_reasoning_parser(reasoning_parser)
    return serving


def ask(serving, **fields):
    async def go():
        result = await serving.create_chat_completion(ChatCompletionRequest(**fields), "r1")
        if isinstance(result, (ChatCompletionResponse, ErrorResponse)):
            return result
        return await _collect(result)
    return run(go())


def merged_stream(chunks: list) -> dict:
    """A streamed choice 0 put together the way OpenAI clients do: content and reasoning
    concatenated, tool calls merged by index (id, type and name from their first delta)."""
    merged = {"content": "", "reasoning_content": "", "reasoning": "", "tool_calls": {},
              "finish_reason": None}
    for chunk in chunks[:-1]:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            for key in ("content", "reasoning_content", "reasoning"):
                merged[key] += delta.get(key) or ""
            for call in delta.get("tool_calls") or ():
                if call["index"] not in merged["tool_calls"]:
                    assert set(call) == {"index", "id", "type", "function"}, call
                    assert call["function"]["arguments"] == ""
                    merged["tool_calls"][call["index"]] = {
                        "id": call["id"], "type": call["type"], "function": {
                            "name": call["function"]["name"], "arguments": ""}}
                else:
                    assert set(call) == {"index", "function"}, call
                    assert set(call["function"]) == {"arguments"}, call
                    merged["tool_calls"][call["index"]]["function"]["arguments"] += \
                        call["function"]["arguments"]
            merged["finish_reason"] = choice.get("finish_reason") or merged["finish_reason"]
    assert chunks[-1] == "[DONE]"
    merged["tool_calls"] = [merged["tool_calls"][i] for i in sorted(merged["tool_calls"])]
    return merged


def full_as_merged(response: ChatCompletionResponse) -> dict:
    choice = response.choices[0]
    message = choice.message
    return {"content": message.content or "", "reasoning_content": message.reasoning_content
            or "", "reasoning": message.reasoning or "",
            "tool_calls": [call.model_dump() for call in message.tool_calls],
            "finish_reason": choice.finish_reason}


def without_ids(merged: dict) -> dict:
    for call in merged["tool_calls"]:
        assert call["id"].startswith("chatcmpl-tool-") or len(call["id"]) == 9
        call["id"] = "-"
    return merged


def test_auto_with_hermes_parses_calls_and_streams_the_same():
    engine = ScriptedEngine(replies=(HERMES_REPLY,), finish_reason="stop")
    full = ask(serve(engine, "hermes"), messages=MESSAGES, tools=TOOLS)
    message = full.choices[0].message
    assert message.content == "Checking."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] \
        == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert full.choices[0].finish_reason == "tool_calls"
    assert len({call.id for call in message.tool_calls}) == 2
    chunks = ask(serve(engine, "hermes"), messages=MESSAGES, tools=TOOLS, stream=True)
    assert without_ids(merged_stream(chunks)) == without_ids(full_as_merged(full))
    # hermes keeps special tokens in the text (its tags are special tokens in Hermes models)
    assert engine.calls[0][1].skip_special_tokens is False


def test_auto_without_the_server_flags_is_vllms_400():
    for serving in (serve(ScriptedEngine(), None), serve(ScriptedEngine(), "hermes", auto=False)):
        error = ask(serving, messages=MESSAGES, tools=TOOLS)
        assert (error.error.code, error.error.param) == (400, "tool_choice")
        assert error.error.message == ('"auto" tool choice requires --enable-auto-tool-choice '
                                       'and --tool-call-parser to be set')
    # tool_choice none renders the tools and parses nothing
    response = ask(serve(ScriptedEngine(replies=(HERMES_REPLY,))), messages=MESSAGES,
                   tools=TOOLS, tool_choice="none")
    assert response.choices[0].message.content == HERMES_REPLY
    assert response.choices[0].message.tool_calls == []


def test_malformed_auto_output_is_content_and_not_a_call():
    reply = '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'
    engine = ScriptedEngine(replies=(reply,), finish_reason="stop")
    full = ask(serve(engine, "hermes"), messages=MESSAGES, tools=TOOLS)
    assert full.choices[0].message.content == reply
    assert full.choices[0].message.tool_calls == []
    assert full.choices[0].finish_reason == "stop"
    chunks = ask(serve(engine, "hermes"), messages=MESSAGES, tools=TOOLS, stream=True)
    assert merged_stream(chunks) == full_as_merged(full)


def test_named_choice_constrains_to_the_parameters_and_returns_one_call():
    arguments = '{"city": "Paris"}'
    engine = ScriptedEngine(replies=(arguments,), finish_reason="stop")
    named = {"type": "function", "function": {"name": "get_weather"}}
    full = ask(serve(engine), messages=MESSAGES, tools=TOOLS, tool_choice=named)
    params = engine.calls[0][1]
    assert params.structured_outputs.json == WEATHER_TOOL["function"]["parameters"]
    (call,) = full.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", arguments)
    assert full.choices[0].message.content is None
    assert full.choices[0].finish_reason == "stop"          # OpenAI's and vLLM's for named
    chunks = ask(serve(engine), messages=MESSAGES, tools=TOOLS, tool_choice=named, stream=True)
    fragments = [c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                 for c in chunks[1:-1] if c["choices"][0]["delta"].get("tool_calls")]
    assert fragments == ["", *arguments]                   # streamed as generated
    assert without_ids(merged_stream(chunks)) == without_ids(full_as_merged(full))


def test_required_choice_schema_and_parsed_array():
    reply = '[{"name": "get_time", "parameters": {}}, {"name": "get_weather", ' \
            '"parameters": {"city": "Oslo"}}]'
    engine = ScriptedEngine(replies=(reply,), finish_reason="stop")
    full = ask(serve(engine), messages=MESSAGES, tools=TOOLS, tool_choice="required")
    schema = engine.calls[0][1].structured_outputs.json
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    assert schema["items"]["anyOf"][0] == {
        "properties": {"name": {"type": "string", "enum": ["get_weather"]},
                       "parameters": WEATHER_TOOL["function"]["parameters"]},
        "required": ["name", "parameters"]}
    assert schema["items"]["anyOf"][1]["properties"]["parameters"] == {
        "type": "object", "properties": {}}
    message = full.choices[0].message
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] \
        == [("get_time", {}), ("get_weather", {"city": "Oslo"})]
    assert message.content is None and full.choices[0].finish_reason == "tool_calls"
    chunks = ask(serve(engine), messages=MESSAGES, tools=TOOLS, tool_choice="required",
                 stream=True)
    assert without_ids(merged_stream(chunks)) == without_ids(full_as_merged(full))


def test_parallel_tool_calls_false_keeps_one_call():
    engine = ScriptedEngine(replies=(HERMES_REPLY,), finish_reason="stop")
    full = ask(serve(engine, "hermes"), messages=MESSAGES, tools=TOOLS,
               parallel_tool_calls=False)
    assert [c.function.name for c in full.choices[0].message.tool_calls] == ["get_weather"]
    ask(serve(engine), messages=MESSAGES, tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False)
    assert engine.calls[-1][1].structured_outputs.json["maxItems"] == 1


def test_mistral_ids_are_nine_alphanumerics():
    reply = '[TOOL_CALLS][{"name": "get_time", "arguments": {}}]'
    full = ask(serve(ScriptedEngine(replies=(reply,), finish_reason="stop"), "mistral"),
               messages=MESSAGES, tools=TOOLS)
    (call,) = full.choices[0].message.tool_calls
    assert len(call.id) == 9 and call.id.isalnum()


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_is_split_from_content(stream):
    engine = ScriptedEngine(replies=("<think>2+2 is 4</think>\n\nIt is 4.",),
                            finish_reason="stop")
    result = ask(serve(engine, reasoning_parser="qwen3"), messages=MESSAGES, stream=stream)
    merged = merged_stream(result) if stream else full_as_merged(result)
    assert (merged["reasoning_content"], merged["reasoning"], merged["content"]) == (
        "2+2 is 4", "2+2 is 4", "\n\nIt is 4.")
    hidden = ask(serve(engine, reasoning_parser="qwen3"), messages=MESSAGES, stream=stream,
                 include_reasoning=False)
    merged = merged_stream(hidden) if stream else full_as_merged(hidden)
    assert (merged["reasoning_content"], merged["content"]) == ("", "\n\nIt is 4.")


def test_enable_thinking_false_reaches_the_template_and_turns_the_split_off():
    engine = ScriptedEngine(replies=("<think>x</think>y",), finish_reason="stop")
    serving = serve(engine, reasoning_parser="qwen3")
    serving.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                             "{% if enable_thinking is false %}<think></think>{% endif %}")
    response = ask(serving, messages=MESSAGES,
                   chat_template_kwargs={"enable_thinking": False})
    assert engine.calls[0][0] == [ord(c) for c in "Weather in Paris?<think></think>"]
    message = response.choices[0].message
    assert (message.reasoning_content, message.content) == (None, "<think>x</think>y")


def test_reasoning_then_tool_call():
    reply = '<think>I need the weather.</think>\n<tool_call>{"name": "get_weather", ' \
            '"arguments": {"city": "Rome"}}</tool_call>'
    engine = ScriptedEngine(replies=(reply,), finish_reason="stop")
    full = ask(serve(engine, "hermes", "qwen3"), messages=MESSAGES, tools=TOOLS)
    message = full.choices[0].message
    assert message.reasoning_content == "I need the weather."
    assert message.content is None
    assert [c.function.name for c in message.tool_calls] == ["get_weather"]
    chunks = ask(serve(engine, "hermes", "qwen3"), messages=MESSAGES, tools=TOOLS, stream=True)
    assert without_ids(merged_stream(chunks)) == without_ids(full_as_merged(full))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("constraint", [
    {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"response_format": {"type": "json_schema", "json_schema": {
        "name": "w", "schema": WEATHER_TOOL["function"]["parameters"]}}}])
def test_constrained_output_is_not_filed_as_reasoning(constraint, stream):
    """With deepseek_r1 (all text before </think> is reasoning) a constrained request's JSON,
    which the grammar forces from the first token, stays the call's arguments or the content."""
    engine = ScriptedEngine(replies=('{"city": "Paris"}',), finish_reason="stop")
    result = ask(serve(engine, "hermes", "deepseek_r1"), messages=MESSAGES, stream=stream,
                 **constraint)
    merged = merged_stream(result) if stream else full_as_merged(result)
    assert merged["reasoning_content"] == "" and merged["reasoning"] == ""
    if "tools" in constraint:
        assert [json.loads(c["function"]["arguments"]) for c in merged["tool_calls"]] == [
            {"city": "Paris"}]
    else:
        assert json.loads(merged["content"]) == {"city": "Paris"}


TOOL_TEMPLATE = (
    "{% if tools %}TOOLS:{% for t in tools %}{{ t | tojson }};{% endfor %}{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}[{{ c.id }}:{{ c.function.name }}"
    "({{ c.function.arguments.city }})]{% endfor %}"
    "{% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %}{% endfor %}")


def test_a_tool_conversation_round_trips_through_the_template():
    engine = ScriptedEngine(replies=("ok",))
    serving = serve(engine)
    serving.chat_template = TOOL_TEMPLATE
    messages = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    ask(serving, messages=messages, tools=[TIME_TOOL], tool_choice="none")
    prompt = "".join(chr(t) for t in engine.calls[0][0])
    assert prompt == ('TOOLS:{"type": "function", "function": {"name": "get_time"}};'
                      "<user>Weather in Paris?<assistant>[call_1:get_weather(Paris)]"
                      "<tool>sunny#call_1")


@pytest.mark.parametrize("fields, param, message", [
    ({"tool_choice": "required"}, "tool_choice", "When using `tool_choice`, `tools` must be"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "The tool specified in `tool_choice` does not match"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages", "messages[0] has role 'tool' but no"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": {
        "name": "f", "arguments": "{nope"}}]}]}, "messages",
     "messages[0].tool_calls[0].function.arguments must be JSON text"),
])
def test_tool_request_errors_are_400s_naming_the_field(fields, param, message):
    error = ask(serve(ScriptedEngine()), **{"messages": MESSAGES, **fields})
    assert (error.error.code, error.error.param) == (400, param)
    assert error.error.message.startswith(message), error.error.message


def test_required_with_an_empty_tools_list_is_a_400():
    engine = ScriptedEngine(replies=("hi",))
    error = ask(serve(engine), messages=MESSAGES, tools=[], tool_choice="required")
    assert (error.error.code, error.error.param) == (400, "tool_choice")
    assert "at least one tool" in error.error.message
    assert not engine.calls


@pytest.mark.parametrize("message", [
    {"role": "user", "content": "x", "tool_calls": [{"id": "a", "function": {"name": "f"}}]},
    {"role": "user", "content": "x", "tool_call_id": "a"},
    {"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]},
])
def test_misplaced_tool_fields_fail_validation(message):
    with pytest.raises(Exception) as info:
        ChatCompletionRequest(messages=[message])
    assert "messages.0" in str(info.value)
