"""One chat choice's output text -> reasoning, content and tool calls, as streamed deltas and
as the full message.

The text goes through the reasoning parser (when the server has one), then its content part
through the tool stage of the request's tool choice:

- ``none``: content as it comes;
- ``auto``: the server's ``--tool-call-parser``; ``required``: the JSON array the structured
  output enforces (``JsonArrayToolParser``). A call is sent as two deltas (``id``, ``type``,
  ``function.name`` with ``arguments: ""``, then the arguments) once it is complete; content
  whitespace around calls is dropped when the choice has calls (held back while streaming
  until it is known);
- a named function: all of the content is the call's arguments, streamed as they come.

The full response is one ``feed(text, final=True)`` on a fresh parser, so it holds exactly what
the stream's deltas add up to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagellm.entrypoints.openai.protocol import DeltaMessage
from pagellm.entrypoints.openai.protocol_tools import (ChatCompletionNamedToolChoiceParam,
                                                       DeltaFunctionCall, DeltaToolCall,
                                                       FunctionCall, ToolCall, new_tool_call_id)
from pagellm.entrypoints.openai.tool_parsers import (JsonArrayToolParser, ParsedToolCall,
                                                     ToolParser)
from pagellm.reasoning import ReasoningParser


@dataclass
class ChatOutputOptions:
    """What shapes a request's choices (the same for each of them)."""

    tool_choice: Any = "none"
    """'none', 'auto', 'required' or a ChatCompletionNamedToolChoiceParam (resolved)."""
    tool_parser: type[ToolParser] | None = None
    """The server's parser, for 'auto'."""
    reasoning_parser: type[ReasoningParser] | None = None
    prompt_text: str = ""
    chat_template_kwargs: dict = field(default_factory=dict)
    include_reasoning: bool = True
    parallel_tool_calls: bool | None = None

    @property
    def parses(self) -> bool:
        """False when the text is content as it comes (no parser of any kind runs)."""
        return self.reasoning_parser is not None or self.tool_choice != "none"


class ChatOutputParser:
    """Parses one choice; ``feed`` mutates it. After the final feed, ``content``,
    ``reasoning`` and ``tool_calls`` hold the full message."""

    def __init__(self, options: ChatOutputOptions):
        self.options = options
        self.reasoning_parser = None if options.reasoning_parser is None else \
            options.reasoning_parser(options.prompt_text, options.chat_template_kwargs)
        choice = options.tool_choice
        self.named = choice.function.name if isinstance(
            choice, ChatCompletionNamedToolChoiceParam) else None
        parser_class = {"auto": options.tool_parser, "required": JsonArrayToolParser}.get(
            choice) if self.named is None else None
        self.tool_parser = None if parser_class is None else parser_class()
        self.id_format = getattr(parser_class, "tool_call_id_format", "random")
        self.content = ""
        self.reasoning = ""
        self.tool_calls: list[ToolCall] = []
        self._held_whitespace = ""

    def feed(self, delta: str, final: bool = False) -> list[DeltaMessage]:
        """The deltas that ``delta`` (the next output text) makes certain, in order."""
        if self.reasoning_parser is None:
            pieces = [(False, delta)] if delta else []
        else:
            pieces = self.reasoning_parser.feed(delta, final)
        messages: list[DeltaMessage] = []
        for is_reasoning, text in pieces:
            if is_reasoning:
                messages += self._reasoning(text)
            else:
                messages += self._content(text, final=False)
        if final:
            messages += self._content("", final=True)
        return messages

    def finish_reason(self, engine_reason: str | None) -> str | None:
        """'tool_calls' when an auto or required choice stopped after calling tools."""
        if engine_reason == "stop" and self.tool_calls and self.named is None:
            return "tool_calls"
        return engine_reason

    def _reasoning(self, text: str) -> list[DeltaMessage]:
        if not self.options.include_reasoning:
            return []
        self.reasoning += text
        return [DeltaMessage(reasoning_content=text, reasoning=text)]

    def _content(self, text: str, final: bool) -> list[DeltaMessage]:
        if self.named is not None:
            return self._named_arguments(text, final)
        if self.tool_parser is None:
            return self._plain(text) if text else []
        messages = []
        for segment in self.tool_parser.feed(text, final):
            if isinstance(segment, ParsedToolCall):
                messages += self._call(segment)
            else:
                messages += self._held_back_content(segment)
        if final and self._held_whitespace and not self.tool_calls:
            messages += self._plain(self._held_whitespace)
        return messages

    def _plain(self, text: str) -> list[DeltaMessage]:
        self.content += text
        return [DeltaMessage(content=text)]

    def _held_back_content(self, text: str) -> list[DeltaMessage]:
        """Content, less trailing whitespace (sent once more content follows it)."""
        text = self._held_whitespace + text
        sendable = text.rstrip()
        self._held_whitespace = text[len(sendable):]
        return self._plain(sendable) if sendable else []

    def _call(self, call: ParsedToolCall) -> list[DeltaMessage]:
        if self.options.parallel_tool_calls is False and self.tool_calls:
            return []                       # vLLM keeps only the first call
        index = len(self.tool_calls)
        self.tool_calls.append(ToolCall(id=new_tool_call_id(self.id_format),
                                        function=FunctionCall(name=call.name,
                                                              arguments=call.arguments)))
        return [self._call_header(index), DeltaMessage(tool_calls=[DeltaToolCall(
            index=index, function=DeltaFunctionCall(arguments=call.arguments))])]

    def _call_header(self, index: int) -> DeltaMessage:
        call = self.tool_calls[index]
        return DeltaMessage(tool_calls=[DeltaToolCall(
            index=index, id=call.id, type="function",
            function=DeltaFunctionCall(name=call.function.name, arguments=""))])

    def _named_arguments(self, text: str, final: bool) -> list[DeltaMessage]:
        """A named function's arguments: the header first, then the text as it comes."""
        messages = []
        if not self.tool_calls and (text or final):
            self.tool_calls.append(ToolCall(id=new_tool_call_id(), function=FunctionCall(
                name=self.named, arguments="")))
            messages.append(self._call_header(0))
        if text:
            self.tool_calls[0].function.arguments += text
            messages.append(DeltaMessage(tool_calls=[DeltaToolCall(
                index=0, function=DeltaFunctionCall(arguments=text))]))
        return messages
