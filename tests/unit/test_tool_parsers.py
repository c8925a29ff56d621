"""Tool-call parsers on golden model outputs (well-formed and malformed), in full and streamed
in every chunking: split at every character boundary, one character at a time, and random
chunks all give the full parse's content and calls."""

from __future__ import annotations

import json
import random

import pytest

from pagellm.entrypoints.openai.tool_parsers import (JsonArrayToolParser, ParsedToolCall,
                                                     ToolParserManager)

W = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
T = '{"name": "get_time", "arguments": {}}'
WEATHER = ("get_weather", {"city": "Paris", "unit": "celsius"})
TIME = ("get_time", {})

# (parser, model output, expected content, expected calls as (name, arguments))
GOLDEN = [
    # hermes (Hermes 2 Pro, Qwen2.5, Qwen3)
    ("hermes", "The weather is fine.", "The weather is fine.", []),
    ("hermes", f"<tool_call>\n{W}\n</tool_call>", "", [WEATHER]),
    ("hermes", f"Let me check.\n<tool_call>\n{W}\n</tool_call>\n<tool_call>\n{T}\n</tool_call>",
     "Let me check.\n\n", [WEATHER, TIME]),
    ("hermes", f"<tool_call>\n{W}", "", [WEATHER]),                      # no closing tag
    ("hermes", '<tool_call>{"name": "f", "parameters": {"x": [1, {"y": "}"}]}}</tool_call>', "",
     [("f", {"x": [1, {"y": "}"}]})]),
    ("hermes", '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>', "",
     [("f", {"x": 1})]),                                                  # arguments as text
    ("hermes", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par",
     "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par", []),  # cut off
    ("hermes", "<tool_call>{not json}</tool_call> and text", "<tool_call>{not json}</tool_call>"
     " and text", []),
    ("hermes", f"<tool_call>{{\"arguments\": {{}}}}</tool_call><tool_call>{T}</tool_call>",
     "<tool_call>{\"arguments\": {}}</tool_call>", [TIME]),               # no name: content
    ("hermes", f"<tool_call>{W} trailing</tool_call>", f"<tool_call>{W} trailing</tool_call>",
     []),
    ("hermes", "a <tool_ca", "a <tool_ca", []),                           # partial marker
    ("qwen3", f"<tool_call>\n{T}\n</tool_call>", "", [TIME]),
    ("qwen2_5", f"<tool_call>\n{T}\n</tool_call>", "", [TIME]),
    # llama3_json
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
     "", [WEATHER]),
    ("llama3_json", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", '
     '"unit": "celsius"}}; {"name": "get_time", "parameters": {}}', "", [WEATHER, TIME]),
    ("llama3_json", ' \n{"name": "get_time", "parameters": {}}\n', "\n", [TIME]),
    ("llama3_json", "It is sunny {\"name\": \"x\"}", "It is sunny {\"name\": \"x\"}", []),
    ("llama3_json", '{"name": "get_time", "parameters": {}} and more',
     " and more", [TIME]),
    ("llama3_json", '{"city": "Paris"}', '{"city": "Paris"}', []),            # not a call
    ("llama3_json", '{"name": "get_weather", "parameters": {"ci', '{"name": "get_weather", '
     '"parameters": {"ci', []),
    ("llama3_json", "", "", []),
    # mistral: array (tokenizers < v11) and name[ARGS]{...} (v11+)
    ("mistral", "Sunny.", "Sunny.", []),
    ("mistral", f"[TOOL_CALLS][{W}, {T}]", "", [WEATHER, TIME]),
    ("mistral", f"Checking. [TOOL_CALLS] [{W}]", "Checking. ", [WEATHER]),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}'
     '[TOOL_CALLS]get_time[ARGS]{}', "", [WEATHER, TIME]),
    ("mistral", '[TOOL_CALLS][{"name": "f"', '[TOOL_CALLS][{"name": "f"', []),   # cut off
    ("mistral", "[TOOL_CALLS] no calls here", "[TOOL_CALLS] no calls here", []),
    ("mistral", "[TOOL_CALLS][]", "[TOOL_CALLS][]", []),
    ("mistral", '[TOOL_CALLS]get_time[ARGS]{"a": }', '[TOOL_CALLS]get_time[ARGS]{"a": }', []),
    ("mistral", "x [TOOL_C", "x [TOOL_C", []),
    # pythonic
    ("pythonic", '[get_weather(city="Paris", unit="celsius"), get_time()]', "",
     [WEATHER, TIME]),
    ("pythonic", '<|python_start|>[get_weather(city="Paris", unit=\'celsius\')]<|python_end|>',
     "", [WEATHER]),
    ("pythonic", '[f(a=[1, 2], b={"k": None}, c=True, d=-1.5, e="x)]")]',
     "", [("f", {"a": [1, 2], "b": {"k": None}, "c": True, "d": -1.5, "e": "x)]"})]),
    ("pythonic", "[1] is a citation.", "[1] is a citation.", []),
    ("pythonic", "[f(x)]", "[f(x)]", []),                                 # positional
    ("pythonic", "[f(a=g())]", "[f(a=g())]", []),                         # not a literal
    ("pythonic", '[get_weather(city="Par', '[get_weather(city="Par', []),  # cut off
    ("pythonic", "Sure: [get_time()]", "Sure: [get_time()]", []),        # must open the output
    ("pythonic", "[get_time()] Done.", " Done.", [TIME]),
]


def _calls(calls: list[ParsedToolCall]) -> list[tuple[str, dict]]:
    return [(call.name, json.loads(call.arguments)) for call in calls]


def _feed_chunks(parser_class, chunks: list[str]) -> tuple[str, list[ParsedToolCall]]:
    parser = parser_class()
    segments = []
    for index, chunk in enumerate(chunks):
        segments += parser.feed(chunk, final=index == len(chunks) - 1)
    content = "".join(s for s in segments if isinstance(s, str))
    return content, [s for s in segments if isinstance(s, ParsedToolCall)]


@pytest.mark.parametrize("name, text, content, calls", GOLDEN,
                         ids=[f"{g[0]}-{i}" for i, g in enumerate(GOLDEN)])
def test_golden_outputs_parse_to_the_expected_calls(name, text, content, calls):
    got_content, got_calls = ToolParserManager.get_tool_parser(name).parse(text)
    assert got_content == content
    assert _calls(got_calls) == calls
    for call in got_calls:
        assert call.arguments == json.dumps(json.loads(call.arguments), ensure_ascii=False)


@pytest.mark.parametrize("name, text, content, calls", GOLDEN,
                         ids=[f"{g[0]}-{i}" for i, g in enumerate(GOLDEN)])
def test_every_chunking_streams_the_full_parse(name, text, content, calls):
    parser_class = ToolParserManager.get_tool_parser(name)
    full = parser_class.parse(text)
    for cut in range(len(text) + 1):
        assert _feed_chunks(parser_class, [text[:cut], text[cut:]]) == full, cut
    assert _feed_chunks(parser_class, [*text, ""]) == full
    assert _feed_chunks(parser_class, [*text] if text else [""]) == full
    rng = random.Random(len(text))
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 6))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert _feed_chunks(parser_class, chunks) == full, chunks


def test_calls_come_out_as_soon_as_they_are_complete():
    parser = ToolParserManager.get_tool_parser("hermes")()
    assert parser.feed("Hi <tool") == ["Hi "]
    assert parser.feed(f"_call>{W}") == []                   # an open call waits
    assert parser.feed("</tool_call>\n<") == [ParsedToolCall("get_weather", json.dumps(
        WEATHER[1])), "\n"]
    assert parser.feed("", final=True) == ["<"]


REQUIRED = [
    ('[{"name": "get_time", "parameters": {}}]', "", [TIME]),
    ('  [{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}, '
     '{"name": "get_time", "parameters": {}}] ', " ", [WEATHER, TIME]),
    ('[{"name": "get_time", "parameters": {}}, {"name": "get_wea', ', {"name": "get_wea', [TIME]),
    ("no json at all", "no json at all", []),
    ('[{"nom": 1}]', '[{"nom": 1}]', []),
]


@pytest.mark.parametrize("text, content, calls", REQUIRED)
def test_required_array_items_are_calls_and_the_rest_content(text, content, calls):
    full = JsonArrayToolParser.parse(text)
    assert full[0] == content and _calls(full[1]) == calls
    for cut in range(len(text) + 1):
        assert _feed_chunks(JsonArrayToolParser, [text[:cut], text[cut:]]) == full


def test_unknown_parser_names_the_choices():
    with pytest.raises(KeyError, match="hermes, llama3_json, mistral, pythonic, qwen2_5, qwen3"):
        ToolParserManager.get_tool_parser("nope")
