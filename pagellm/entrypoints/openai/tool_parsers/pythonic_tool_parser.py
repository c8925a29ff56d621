"""Pythonic tool calls (Llama 3.2 / Llama 4, ``pythonic``): an output that opens with a Python
list of calls, ``[get_weather(city="Paris", unit="celsius"), get_time()]``, optionally inside
``<|python_start|>`` ... ``<|python_end|>``. Arguments are keyword arguments whose values are
Python literals (strings, numbers, True/False/None, lists, dicts); they become JSON. An output
that opens otherwise, or whose list is not such calls, is content; text after the list is
content too.
"""

from __future__ import annotations

import ast
import json

from pagellm.entrypoints.openai.tool_parsers.abstract_tool_parser import (
    ParsedToolCall, Segment, ToolParser, ToolParserManager, skip_whitespace)

PYTHON_START = "<|python_start|>"
PYTHON_END = "<|python_end|>"
_OPENING = "([{"
_CLOSING = ")]}"


@ToolParserManager.register("pythonic")
class PythonicToolParser(ToolParser):
    name = "pythonic"

    def __init__(self) -> None:
        super().__init__()
        self.state = "open"
        """'open' until the output's opening decides, then 'list', 'after' (the list was
        calls) and 'content'."""

    def next_segments(self, text: str, pos: int, final: bool) -> tuple[list[Segment], int]:
        if self.state == "content":
            return [text[pos:]], len(text)
        if self.state == "open":
            return self._opening(text, pos, final)
        if self.state == "after":
            return self._closing(text, pos, final)
        end = _list_end(text, pos)
        if end is None:
            return ([text[pos:]], len(text)) if final else ([], pos)
        calls = parse_calls(text[pos:end])
        if calls is None:
            self.state = "content"
            return [text[pos:]], len(text)
        self.state = "after"
        return calls, end

    def _opening(self, text: str, pos: int, final: bool) -> tuple[list[Segment], int]:
        """Skip the spaces and ``<|python_start|>`` before a "["; else all is content."""
        start = skip_whitespace(text, pos)
        rest = text[start:]
        if not final and (not rest or PYTHON_START.startswith(rest)):
            return [], pos
        if rest.startswith(PYTHON_START):
            start = skip_whitespace(text, start + len(PYTHON_START))
            if start == len(text) and not final:
                return [], pos
        if not text.startswith("[", start):
            self.state = "content"
            return [text[pos:]], len(text)
        self.state = "list"            # the opening skipped before "[" is decided
        return self.next_segments(text, start, final)

    def _closing(self, text: str, pos: int, final: bool) -> tuple[list[Segment], int]:
        """After the list: skip a ``<|python_end|>``; the rest is content."""
        start = skip_whitespace(text, pos)
        if not final and PYTHON_END.startswith(text[start:]):
            return [], pos
        self.state = "content"
        if text.startswith(PYTHON_END, start):
            return [], start + len(PYTHON_END)
        return [text[pos:]], len(text)


def _list_end(text: str, start: int) -> int | None:
    """The index after the bracket that closes the one at ``start`` (strings and nested
    brackets skipped), or None when it is not closed yet."""
    depth, quote, index = 0, None, start
    while index < len(text):
        char = text[index]
        if quote is not None:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char in _OPENING:
            depth += 1
        elif char in _CLOSING:
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return None


def parse_calls(source: str) -> list[ParsedToolCall] | None:
    """The calls of a list such as ``[f(a=1), g()]``, or None unless every item is a call of a
    plain name with literal keyword arguments."""
    try:
        tree = ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError):
        return None
    if not isinstance(tree, ast.List) or not tree.elts:
        return None
    calls = []
    for item in tree.elts:
        if not isinstance(item, ast.Call) or not isinstance(item.func, ast.Name) or item.args:
            return None
        try:
            arguments = {keyword.arg: ast.literal_eval(keyword.value)
                         for keyword in item.keywords if keyword.arg is not None}
            text = json.dumps(arguments, ensure_ascii=False)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return None
        if len(arguments) != len(item.keywords):
            return None
        calls.append(ParsedToolCall(item.func.id, text))
    return calls
