"""What every tool-call parser shares: the segment model, the streaming loop and the registry.

A parser reads a model's output text and splits it, left to right, into *segments*: content
text, or complete tool calls (``ParsedToolCall``). Text arrives in arbitrary chunks; the parser
keeps the text so far and a position before which everything is decided, and ``feed`` returns
the segments that became certain with the new chunk. Text that may still turn into a tool call
(a partial start marker, an open call) is held back until it is decided. The full (non-streamed)
parse is one ``feed(text, final=True)`` on a fresh parser, so streamed and full responses hold
the same content and the same tool calls however the text was chunked.

A tool call is emitted only once it is complete and valid: a call cut off by ``max_tokens`` or
one whose JSON does not parse is never half-sent; its raw text comes back as content (vLLM
streams argument fragments as they are generated, and returns a malformed call as content only
in the full response).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class ParsedToolCall:
    """One complete tool call: the function's name and its arguments as JSON text (an object)."""

    name: str
    arguments: str


Segment = str | ParsedToolCall
"""Content text, or one complete tool call."""


class ToolParser:
    """Base of the parsers. One instance parses one choice's output (it keeps state).

    Subclasses implement ``next_segments(text, pos, final)``: the segments that start at
    ``pos`` and are certain given ``text`` (``final``: no more text will come), with the
    position after them (text that is neither, such as a marker, may be skipped); ``([], pos)``
    when nothing is certain yet. They must decide from the text alone, so that the result
    does not depend on how the text was chunked.
    """

    name: ClassVar[str] = ""
    skip_special_tokens: ClassVar[bool] = True
    """False when the format's markers are special tokens, which the text must then keep
    (vLLM's ``adjust_request`` for these parsers)."""
    tool_call_id_format: ClassVar[str] = "random"
    """'random' (``chatcmpl-tool-<hex>``) or 'mistral' (9 alphanumerics: Mistral's templates
    refuse other ids)."""

    def __init__(self) -> None:
        self.text = ""
        self.pos = 0
        """Everything before ``pos`` was returned by ``feed``."""

    def feed(self, delta: str, final: bool = False) -> list[Segment]:
        """Append ``delta``; returns the newly certain segments in order. With ``final``,
        everything left is decided (the rest of an unfinished call becomes content)."""
        self.text += delta
        segments: list[Segment] = []
        while self.pos < len(self.text):
            found, end = self.next_segments(self.text, self.pos, final)
            if end == self.pos:
                assert not found, f"{type(self).__name__} returned segments without progress"
                break
            segments.extend(found)
            self.pos = end
        if final and self.pos < len(self.text):
            segments.append(self.text[self.pos:])
            self.pos = len(self.text)
        return segments

    def next_segments(self, text: str, pos: int, final: bool) -> tuple[list[Segment], int]:
        raise NotImplementedError

    @classmethod
    def parse(cls, text: str) -> tuple[str, list[ParsedToolCall]]:
        """The full output's (content, tool calls): content is the content segments joined."""
        segments = cls().feed(text, final=True)
        content = "".join(s for s in segments if isinstance(s, str))
        return content, [s for s in segments if isinstance(s, ParsedToolCall)]


class ToolParserManager:
    """The parsers by their ``--tool-call-parser`` name (vLLM's registry)."""

    tool_parsers: ClassVar[dict[str, type[ToolParser]]] = {}

    @classmethod
    def register(cls, *names: str):
        def decorator(parser: type[ToolParser]) -> type[ToolParser]:
            for name in names:
                cls.tool_parsers[name] = parser
            return parser
        return decorator

    @classmethod
    def get_tool_parser(cls, name: str) -> type[ToolParser]:
        """The parser class named ``name``; KeyError naming the choices otherwise."""
        if name not in cls.tool_parsers:
            raise KeyError(f"invalid tool call parser: {name} (choose from "
                           f"{', '.join(sorted(cls.tool_parsers))})")
        return cls.tool_parsers[name]


# ---- helpers the parsers share ----------------------------------------------------------

def held_back(text: str, pos: int, marker: str) -> int:
    """How many characters at the end of ``text[pos:]`` could be the start of ``marker``
    (they must wait for the next chunk)."""
    for length in range(min(len(marker) - 1, len(text) - pos), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0


def content_until(text: str, pos: int, marker: str, final: bool) -> tuple[list[Segment], int]:
    """The content from ``pos`` up to the next ``marker`` (or the end, less a partial marker
    unless ``final``): ``([text], end)``, or ``([], pos)`` when there is none yet."""
    start = text.find(marker, pos)
    end = start if start >= 0 else len(text) - (0 if final else held_back(text, pos, marker))
    return ([text[pos:end]], end) if end > pos else ([], pos)


def json_call(value: Any, arguments_keys: tuple[str, ...] = ("arguments", "parameters")
              ) -> ParsedToolCall | None:
    """``{"name": str, "arguments": object}`` (or ``"parameters"``, or the arguments as JSON
    text of an object; missing: ``{}``) as a call, else None."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) \
            or not value["name"]:
        return None
    key = next((key for key in arguments_keys if key in value), None)
    arguments = {} if key is None else value[key]
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedToolCall(value["name"], json.dumps(arguments, ensure_ascii=False))


def json_calls(text: str) -> list[ParsedToolCall] | None:
    """The calls in ``text``: one JSON call object or a JSON array of them; None unless all of
    ``text`` (stripped) is that and every call is valid."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = [json_call(item) for item in items]
    return calls if calls and all(calls) else None


_decoder = json.JSONDecoder()


def decode_json_at(text: str, pos: int) -> tuple[Any, int] | None:
    """(value, end) of the JSON value starting at ``pos``, or None when the text there is not
    (yet) a complete JSON value. Values of these formats are objects or arrays: once one
    decodes, more text cannot change it."""
    try:
        return _decoder.raw_decode(text, pos)
    except ValueError:
        return None


def skip_whitespace(text: str, pos: int, also: str = "") -> int:
    while pos < len(text) and (text[pos].isspace() or text[pos] in also):
        pos += 1
    return pos


def next_array_call(text: str, pos: int, final: bool) -> tuple[str, ParsedToolCall | None, int]:
    """Inside a JSON array of calls, at ``pos`` (after ``[`` or after an item): ``('item',
    call, end)``, ``('close', None, end after "]")``, ``('wait', None, pos)`` when the next item
    is incomplete, or ``('bad', None, pos)`` when it is not a valid call (or, with ``final``,
    incomplete)."""
    start = skip_whitespace(text, pos, also=",")
    if start == len(text):
        return ("bad" if final else "wait"), None, pos
    if text[start] == "]":
        return "close", None, start + 1
    decoded = decode_json_at(text, start)
    if decoded is None:
        return ("bad" if final else "wait"), None, pos
    call = json_call(decoded[0])
    return ("bad", None, pos) if call is None else ("item", call, decoded[1])
