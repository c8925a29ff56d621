"""Reasoning parsers (``--reasoning-parser``): a reasoning model's output text split into its
reasoning (between ``<think>`` and ``</think>``) and its content (the rest), for the chat API's
``reasoning_content`` / ``reasoning`` fields.

Like the tool-call parsers, a parser keeps one choice's text so far and returns, per chunk, the
pieces that became certain: ``(is_reasoning, text)``; a partial marker waits for the next chunk.
The full response is one ``feed(text, final=True)``, so streamed and full responses split the
same way however the text was chunked. Markers are dropped from both parts.

Where the reasoning starts:
- ``deepseek_r1``: always at the start of the output (R1 always reasons; its templates open
  ``<think>`` in the prompt, and a ``<think>`` the model writes itself is skipped). Without
  ``</think>`` all of the output is reasoning (vLLM's rule).
- ``qwen3`` and the generic ``think``: only when the output opens with ``<think>`` (leading
  whitespace allowed) or the prompt ends inside an open ``<think>`` (templates that open it for
  the model, such as Qwen3-2507 thinking models'); otherwise everything is content. With
  ``chat_template_kwargs={"enable_thinking": false}`` nothing is reasoning (the template told
  the model not to think). An output cut off inside ``<think>`` is all reasoning, streamed or
  not (vLLM's full response calls it content instead).
"""

from __future__ import annotations

from typing import ClassVar

THINK_START = "<think>"
THINK_END = "</think>"

Piece = tuple[bool, str]
"""(is_reasoning, text)."""


class ReasoningParser:
    """Base of the think-tag parsers; one instance per choice (it keeps state)."""

    start_token: ClassVar[str] = THINK_START
    end_token: ClassVar[str] = THINK_END
    name: ClassVar[str] = ""

    def __init__(self, prompt_text: str = "", chat_template_kwargs: dict | None = None):
        """``prompt_text``: the rendered prompt (does it open a think block?);
        ``chat_template_kwargs``: the request's (``enable_thinking``)."""
        self.text = ""
        self.pos = 0
        self.state = self.initial_state(prompt_text, chat_template_kwargs or {})
        """'open' (the output's opening decides), 'start' (reasoning; a leading start token is
        skipped), 'reasoning' or 'content'."""

    def initial_state(self, prompt_text: str, chat_template_kwargs: dict) -> str:
        if chat_template_kwargs.get("enable_thinking") is False:
            return "content"
        if prompt_text.rstrip().endswith(self.start_token):
            return "start"
        return "open"

    def feed(self, delta: str, final: bool = False) -> list[Piece]:
        """Append ``delta``; the newly certain pieces in order (with ``final``, all)."""
        self.text += delta
        pieces: list[Piece] = []
        while self.pos < len(self.text):
            piece, end = self._next(self.text, self.pos, final)
            if end == self.pos:
                break
            if piece is not None and piece[1]:
                pieces.append(piece)
            self.pos = end
        return pieces

    def _next(self, text: str, pos: int, final: bool) -> tuple[Piece | None, int]:
        if self.state == "content":
            return (False, text[pos:]), len(text)
        if self.state in ("open", "start"):
            return self._opening(text, pos, final)
        end_at = text.find(self.end_token, pos)
        if end_at == pos:
            self.state = "content"
            return None, pos + len(self.end_token)
        end = end_at if end_at >= 0 else len(text) - (0 if final else _held_back(
            text, pos, self.end_token))
        return ((True, text[pos:end]), end) if end > pos else (None, pos)

    def _opening(self, text: str, pos: int, final: bool) -> tuple[Piece | None, int]:
        """Skip a leading start token (and the whitespace before it); decide the state."""
        start = pos
        while start < len(text) and text[start].isspace():
            start += 1
        rest = text[start:]
        if not final and self.start_token.startswith(rest):
            return None, pos
        if rest.startswith(self.start_token):
            self.state = "reasoning"
            return None, start + len(self.start_token)
        self.state = "reasoning" if self.state == "start" else "content"
        return self._next(text, pos, final)

    @classmethod
    def parse(cls, text: str, prompt_text: str = "", chat_template_kwargs: dict | None = None
              ) -> tuple[str | None, str | None]:
        """(reasoning, content) of a full output; None for a part that is empty."""
        pieces = cls(prompt_text, chat_template_kwargs).feed(text, final=True)
        reasoning = "".join(piece for is_reasoning, piece in pieces if is_reasoning)
        content = "".join(piece for is_reasoning, piece in pieces if not is_reasoning)
        return reasoning or None, content or None


def _held_back(text: str, pos: int, marker: str) -> int:
    for length in range(min(len(marker) - 1, len(text) - pos), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0


class ReasoningParserManager:
    """The parsers by their ``--reasoning-parser`` name (vLLM's registry)."""

    reasoning_parsers: ClassVar[dict[str, type[ReasoningParser]]] = {}

    @classmethod
    def register(cls, *names: str):
        def decorator(parser: type[ReasoningParser]) -> type[ReasoningParser]:
            for name in names:
                cls.reasoning_parsers[name] = parser
            return parser
        return decorator

    @classmethod
    def get_reasoning_parser(cls, name: str) -> type[ReasoningParser]:
        if name not in cls.reasoning_parsers:
            raise KeyError(f"invalid reasoning parser: {name} (choose from "
                           f"{', '.join(sorted(cls.reasoning_parsers))})")
        return cls.reasoning_parsers[name]


@ReasoningParserManager.register("think")
class ThinkReasoningParser(ReasoningParser):
    """Generic ``<think>...</think>``: reasoning only where a think block opens."""

    name = "think"


@ReasoningParserManager.register("qwen3")
class Qwen3ReasoningParser(ThinkReasoningParser):
    """Qwen3: the generic rules (``enable_thinking`` is Qwen3's template switch)."""

    name = "qwen3"


@ReasoningParserManager.register("deepseek_r1")
class DeepSeekR1ReasoningParser(ReasoningParser):
    """DeepSeek-R1: the output starts in reasoning, whatever the prompt or template kwargs."""

    name = "deepseek_r1"

    def initial_state(self, prompt_text: str, chat_template_kwargs: dict) -> str:
        return "start"
