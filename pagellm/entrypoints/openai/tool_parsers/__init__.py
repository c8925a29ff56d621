"""Tool-call parsers (``--tool-call-parser``): model output text -> content and tool calls.
Importing this package registers every parser with ``ToolParserManager``."""

from pagellm.entrypoints.openai.tool_parsers.abstract_tool_parser import (ParsedToolCall,
                                                                          ToolParser,
                                                                          ToolParserManager)
from pagellm.entrypoints.openai.tool_parsers.hermes_tool_parser import Hermes2ProToolParser
from pagellm.entrypoints.openai.tool_parsers.json_array_tool_parser import JsonArrayToolParser
from pagellm.entrypoints.openai.tool_parsers.llama_tool_parser import Llama3JsonToolParser
from pagellm.entrypoints.openai.tool_parsers.mistral_tool_parser import MistralToolParser
from pagellm.entrypoints.openai.tool_parsers.pythonic_tool_parser import PythonicToolParser

__all__ = ["Hermes2ProToolParser", "JsonArrayToolParser", "Llama3JsonToolParser",
           "MistralToolParser", "ParsedToolCall", "PythonicToolParser", "ToolParser",
           "ToolParserManager"]
