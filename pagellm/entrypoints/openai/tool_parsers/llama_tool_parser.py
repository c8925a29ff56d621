"""Llama 3.1 / 3.2 JSON tool calls (``llama3_json``): an output that opens with a JSON object
(after optional whitespace and ``<|python_tag|>``) is a list of calls
``{"name": ..., "parameters": {...}}`` separated by ``;`` or whitespace. Anything else is
content: an output that does not open with ``{``, and whatever follows the calls once a
value is not a valid call (vLLM returns the whole output as content then).
"""

from __future__ import annotations

from pagellm.entrypoints.openai.tool_parsers.abstract_tool_parser import (
    Segment, ToolParser, ToolParserManager, decode_json_at, json_call, skip_whitespace)

PYTHON_TAG = "<|python_tag|>"


@ToolParserManager.register("llama3_json")
class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"

    def __init__(self) -> None:
        super().__init__()
        self.calls_mode: bool | None = None
        """None until the output's opening decides: True while calls may follow."""

    def next_segments(self, text: str, pos: int, final: bool) -> tuple[list[Segment], int]:
        if self.calls_mode is None:
            return self._opening(text, pos, final)
        if not self.calls_mode:
            return [text[pos:]], len(text)
        start = skip_whitespace(text, pos, also=";")
        if start == len(text):
            return ([text[pos:]], len(text)) if final else ([], pos)
        if text[start] != "{":
            self.calls_mode = False
            return [text[pos:]], len(text)
        decoded = decode_json_at(text, start)
        if decoded is None:
            return ([text[pos:]], len(text)) if final else ([], pos)
        call = json_call(decoded[0])
        if call is None:
            self.calls_mode = False
            return [text[pos:]], len(text)
        return [call], decoded[1]

    def _opening(self, text: str, pos: int, final: bool) -> tuple[list[Segment], int]:
        """Decide from the first non-space characters whether the output is tool calls."""
        start = skip_whitespace(text, pos)
        rest = text[start:]
        if not final and (not rest or PYTHON_TAG.startswith(rest)):
            return [], pos
        if rest.startswith(PYTHON_TAG):
            self.calls_mode = True
            return [], start + len(PYTHON_TAG)   # no segment; made progress
        self.calls_mode = rest.startswith("{")
        return self.next_segments(text, pos, final)
