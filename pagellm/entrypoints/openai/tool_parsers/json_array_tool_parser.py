"""The output of ``tool_choice="required"``: a JSON array ``[{"name": ..., "parameters":
{...}}, ...]`` (vLLM's format, which the structured-output schema of
``protocol_tools.required_tool_schema`` enforces). Each item becomes a call as soon as it is
complete; from the first text that is not a valid item on, the output is content (a call cut
off by ``max_tokens``, or an unconstrained model's free text).
"""

from __future__ import annotations

from pagellm.entrypoints.openai.tool_parsers.abstract_tool_parser import (
    Segment, ToolParser, next_array_call, skip_whitespace)


class JsonArrayToolParser(ToolParser):
    name = "json_array"

    def __init__(self) -> None:
        super().__init__()
        self.state = "open"
        """'open' (before the "["), 'items', or 'content' (everything else is content)."""
        self.content_from = 0
        """Where the content starts if the next item is bad: the output's start until an item
        was a call (the skipped "[" included), then the item's own start."""

    def next_segments(self, text: str, pos: int, final: bool) -> tuple[list[Segment], int]:
        if self.state == "content":
            return [text[pos:]], len(text)
        if self.state == "open":
            start = skip_whitespace(text, pos)
            if start == len(text) and not final:
                return [], pos
            self.state = "items" if text.startswith("[", start) else "content"
            return ([], start + 1) if self.state == "items" else ([text[pos:]], len(text))
        kind, call, end = next_array_call(text, pos, final)
        if kind == "item":
            self.content_from = end
            return [call], end
        if kind == "close":
            self.state = "content"
            return [], end
        if kind == "bad":
            self.state = "content"
            return [text[self.content_from:]], len(text)
        return [], pos
