"""Reasoning parsers (``--reasoning-parser``); see ``abs_reasoning_parsers``."""

from pagellm.reasoning.abs_reasoning_parsers import (DeepSeekR1ReasoningParser, ReasoningParser,
                                                     ReasoningParserManager,
                                                     Qwen3ReasoningParser, ThinkReasoningParser)

__all__ = ["DeepSeekR1ReasoningParser", "Qwen3ReasoningParser", "ReasoningParser",
           "ReasoningParserManager", "ThinkReasoningParser"]
