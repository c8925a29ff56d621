"""Incremental detokenization and stop strings, one ``IncrementalDetokenizer`` per request.

Each new token is decoded in a small window of ids (vLLM's prefix/read offsets): the text of
``ids[prefix_offset:read_offset]`` was already emitted, so the new text is what decoding
``ids[prefix_offset:]`` adds beyond it. Decoding a window that starts a few tokens back lets
the tokenizer see the context it needs (leading spaces, byte-level merges), and a window whose
text ends in U+FFFD is an incomplete UTF-8 character: nothing is emitted until a later token
completes it.
"""

from __future__ import annotations

from typing import Any

# Prompt tokens decoded as context before the first output token (vLLM's choice).
INITIAL_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns one request's output token ids into text as they arrive.

    Mutates on ``update`` and ``flush``: ``output_token_ids`` (every id given to ``update``),
    ``output_text`` (the full text so far, truncated at a matched stop string), ``stop_reason``.
    ``get_delta_text`` flushes when told the request finished and otherwise only advances its
    own streaming offset. After a stop string matched, ``update`` records ids but adds no text.
    """

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], *,
                 skip_special_tokens: bool = True, spaces_between_special_tokens: bool = True,
                 stop: list[str] | None = None, include_stop_str_in_output: bool = False,
                 min_tokens: int = 0):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # Only slow (Python) tokenizers honour this; fast ones ignore it in decode.
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self.stop = list(stop or [])
        self.include_stop_str_in_output = include_stop_str_in_output
        self.min_tokens = min_tokens
        # The decode buffer: a few prompt ids of context, then the decoded output ids.
        self._ids: list[int] = self._context_ids(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self._read_offset = len(self._ids)
        self._prefix_offset = max(self._read_offset - INITIAL_CONTEXT_TOKENS, 0)
        self._prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        self.output_text = ""
        self.stop_reason: str | None = None
        # Stream nothing a stop string could still claim (unless the stop string is shown).
        self._stop_holdback = 0
        if self.stop and not include_stop_str_in_output:
            self._stop_holdback = max(len(s) for s in self.stop) - 1
        self._streamed_offset = 0
        self._token_text_cache: dict[int, str] = {}

    def _context_ids(self, prompt_token_ids: list[int]) -> list[int]:
        # The last few prompt ids give the first output token its context (leading space,
        # merges). A prompt that ends inside a UTF-8 character (only possible with raw token
        # ids) is cut back to a character boundary, so output bytes are never absorbed into it.
        context = list(prompt_token_ids[-(INITIAL_CONTEXT_TOKENS + 2):])
        while context and self._decode(context).endswith(_REPLACEMENT_CHAR):
            context.pop()
        return context

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def stopped(self) -> bool:
        """A stop string matched; the text is final."""
        return self.stop_reason is not None

    def update(self, new_token_ids: list[int], stop_terminated: bool = False) -> str | None:
        """Append ``new_token_ids`` and extend ``output_text``.

        Returns the stop string that matched in the new text (``output_text`` is then cut
        before it, or after it with ``include_stop_str_in_output``), else None. Stop strings are
        not looked for while at most ``min_tokens`` tokens have been generated; text produced
        by then never counts towards a match. ``stop_terminated``: the last id is an EOS or
        stop token id that ended the request; like vLLM, its text is left out unless
        ``include_stop_str_in_output``.
        """
        self.output_token_ids.extend(new_token_ids)
        if self.stopped:
            return None
        hide_last = stop_terminated and not self.include_stop_str_in_output
        to_decode = new_token_ids[:-1] if hide_last else new_token_ids
        search_from = len(self.output_text)
        num_before = len(self.output_token_ids) - len(new_token_ids)
        for num_generated, token_id in enumerate(to_decode, start=num_before + 1):
            self._ids.append(token_id)
            self.output_text += self._decode_next()
            if num_generated <= self.min_tokens:
                search_from = len(self.output_text)
        if not self.stop or len(self.output_token_ids) <= self.min_tokens:
            return None
        return self._check_stop_strings(search_from)

    def _decode_next(self) -> str:
        # Window text with and without the new tokens; emit the difference once it is whole.
        new_text = self._decode(self._ids[self._prefix_offset:])
        if len(new_text) <= len(self._prefix_text) or new_text.endswith(_REPLACEMENT_CHAR):
            return ""
        emitted = new_text[len(self._prefix_text):]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        return emitted

    def _check_stop_strings(self, search_from: int) -> str | None:
        # A match may begin up to len(stop) - 1 characters before the new text.
        earliest: tuple[int, str] | None = None
        for stop_str in self.stop:
            index = self.output_text.find(stop_str, max(search_from - len(stop_str) + 1, 0))
            if index != -1 and (earliest is None or index < earliest[0]):
                earliest = (index, stop_str)
        if earliest is None:
            return None
        index, stop_str = earliest
        end = index + len(stop_str) if self.include_stop_str_in_output else index
        self.output_text = self.output_text[:end]
        self.stop_reason = stop_str
        return stop_str

    def flush(self) -> str:
        """Emit text still held back at the end of a request: a trailing incomplete UTF-8
        character decodes to U+FFFD, exactly as a full decode would show it. Call once the
        request has finished; returns the text added to ``output_text``."""
        if self.stopped or self._read_offset == len(self._ids):
            return ""
        new_text = self._decode(self._ids[self._prefix_offset:])
        emitted = new_text[len(self._prefix_text):] if new_text.startswith(self._prefix_text) \
            else ""
        self._prefix_offset = self._read_offset = len(self._ids)
        self._prefix_text = ""
        self.output_text += emitted
        return emitted

    def get_delta_text(self, finished: bool = False) -> str:
        """Text added since the last call, for streaming.

        While not ``finished`` the last ``max(len(stop)) - 1`` characters are held back, so a
        stop string is never streamed in part; ``finished=True`` flushes and releases all.
        """
        if finished or self.stopped:
            self.flush()
            end = len(self.output_text)
        else:
            end = len(self.output_text) - self._stop_holdback
        if end <= self._streamed_offset:
            return ""
        delta = self.output_text[self._streamed_offset:end]
        self._streamed_offset = end
        return delta

    def decode_token(self, token_id: int) -> str:
        """The text of one token on its own (special tokens included), for logprobs."""
        text = self._token_text_cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._token_text_cache[token_id] = text
        return text

    def _decode(self, token_ids: list[int]) -> str:
        if not token_ids:
            return ""
        return self.tokenizer.decode(
            token_ids, skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            clean_up_tokenization_spaces=False)
