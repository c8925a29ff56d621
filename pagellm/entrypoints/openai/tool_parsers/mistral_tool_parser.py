"""Mistral tool calls: content, then ``[TOOL_CALLS]`` followed by a JSON array of calls
``[{"name": ..., "arguments": {...}}, ...]`` (tokenizers before v11) or by
``name[ARGS]{...}`` (v11 and later; one ``[TOOL_CALLS]`` per call). ``[TOOL_CALLS]`` is a
special token, so the text keeps special tokens while this parser runs. Tool call ids are 9
alphanumerics, the only ids Mistral's chat templates accept back. A call that does not parse
stays in the content, marker included.
"""

from __future__ import annotations

import re

from pagellm.entrypoints.openai.tool_parsers.abstract_tool_parser import (
    Segment, ToolParser, ToolParserManager, content_until, decode_json_at, json_call,
    next_array_call, skip_whitespace)

TOOL_CALLS = "[TOOL_CALLS]"
ARGS = "[ARGS]"
_NAME = re.compile(r"[A-Za-z0-9_.\-]*")


@ToolParserManager.register("mistral")
class MistralToolParser(ToolParser):
    name = "mistral"
    skip_special_tokens = False
    tool_call_id_format = "mistral"

    def next_segments(self, text: str, pos: int, final: bool) -> tuple[list[Segment], int]:
        if not text.startswith(TOOL_CALLS, pos):
            return content_until(text, pos, TOOL_CALLS, final)
        start = skip_whitespace(text, pos + len(TOOL_CALLS))
        if start == len(text):
            return ([text[pos:]], len(text)) if final else ([], pos)
        if text[start] == "[":
            return self._array(text, pos, start + 1, final)
        return self._named(text, pos, start, final)

    def _array(self, text: str, pos: int, items_at: int, final: bool
               ) -> tuple[list[Segment], int]:
        """``[TOOL_CALLS][...]``: all of the array's calls, once it is closed."""
        calls, at = [], items_at
        while True:
            kind, call, at = next_array_call(text, at, final)
            if kind == "item":
                calls.append(call)
            elif kind == "close" and calls:
                return calls, at
            elif kind == "wait":
                return [], pos
            else:                               # not calls: the marker and the rest is text
                return _as_content(text, pos, final)

    def _named(self, text: str, pos: int, start: int, final: bool
               ) -> tuple[list[Segment], int]:
        """``[TOOL_CALLS]name[ARGS]{...}``."""
        name_end = _NAME.match(text, start).end()
        if name_end == len(text) or (not text.startswith(ARGS, name_end)
                                     and ARGS.startswith(text[name_end:])):
            return ([text[pos:]], len(text)) if final else ([], pos)
        if not text.startswith(ARGS, name_end) or name_end == start:
            return _as_content(text, pos, final)
        decoded = decode_json_at(text, name_end + len(ARGS))
        if decoded is None:
            return ([text[pos:]], len(text)) if final else ([], pos)
        call = json_call({"name": text[start:name_end], "arguments": decoded[0]})
        return ([call], decoded[1]) if call is not None else _as_content(text, pos, final)


def _as_content(text: str, pos: int, final: bool) -> tuple[list[Segment], int]:
    """The marker at ``pos`` and the text up to the next marker, as content."""
    end = text.find(TOOL_CALLS, pos + len(TOOL_CALLS))
    if end < 0:
        found, end = content_until(text, pos + len(TOOL_CALLS), TOOL_CALLS, final)
        end = end if found else pos + len(TOOL_CALLS)
    return [text[pos:end]], end
