"""Hermes-format tool calls (Hermes 2 Pro, Qwen2.5, Qwen3): each call is a JSON object
``{"name": ..., "arguments": {...}}`` between ``<tool_call>`` and ``</tool_call>``, anywhere in
the text; the text around the calls is content. The last call may lack its ``</tool_call>``
(vLLM accepts that too). A call whose JSON is malformed stays in the content, tags included.

Names: ``hermes`` (vLLM's), and ``qwen2_5`` / ``qwen3`` for the same format as Qwen2.5 and
Qwen3 chat templates write it (vLLM's ``qwen3_xml`` / ``qwen3_coder`` are Qwen3-Coder's other,
XML format, not built here).
"""

from __future__ import annotations

from pagellm.entrypoints.openai.tool_parsers.abstract_tool_parser import (
    Segment, ToolParser, ToolParserManager, content_until, json_call, decode_json_at)

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"


@ToolParserManager.register("hermes", "qwen2_5", "qwen3")
class Hermes2ProToolParser(ToolParser):
    name = "hermes"
    skip_special_tokens = False

    def next_segments(self, text: str, pos: int, final: bool) -> tuple[list[Segment], int]:
        if not text.startswith(TOOL_CALL_START, pos):
            return content_until(text, pos, TOOL_CALL_START, final)
        body_start = pos + len(TOOL_CALL_START)
        close = text.find(TOOL_CALL_END, body_start)
        if close < 0 and not final:
            return [], pos
        body_end = len(text) if close < 0 else close
        end = len(text) if close < 0 else close + len(TOOL_CALL_END)
        call = _body_call(text[body_start:body_end])
        return [call if call is not None else text[pos:end]], end


def _body_call(body: str):
    """The call in a ``<tool_call>`` body: exactly one JSON object, whitespace around it."""
    stripped = body.strip()
    decoded = decode_json_at(stripped, 0)
    if decoded is None or decoded[1] != len(stripped):
        return None
    return json_call(decoded[0])
