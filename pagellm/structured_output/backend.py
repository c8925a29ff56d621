"""The grammar-engine interface (vLLM's ``StructuredOutputBackend`` / ``StructuredOutputGrammar``).

A backend turns a request's ``StructuredOutputsParams`` into a compiled grammar (once per
distinct constraint, cached by the manager) and a compiled grammar into one matcher per
request. Only xgrammar is built in (``xgrammar_backend.py``); another engine (llguidance,
outlines-core) is one more subclass pair.

Bitmask layout (xgrammar's, shared by every backend): int32 words, bit ``t % 32`` of word
``t // 32`` set = token ``t`` allowed; one row per sampled position, ``ceil(vocab_size / 32)``
words, where ``vocab_size`` is the model's logits width (it may exceed the tokenizer's: the
extra ids are never allowed).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from pagellm.sampling_params import StructuredOutputsParams


def bitmask_words(vocab_size: int) -> int:
    """int32 words per bitmask row for a vocabulary of ``vocab_size`` tokens."""
    return (vocab_size + 31) // 32


class StructuredOutputGrammar(ABC):
    """One request's matcher: the grammar state after the tokens accepted so far. Not
    thread-safe; the engine-core loop alone touches it."""

    @abstractmethod
    def accept_tokens(self, token_ids: list[int]) -> bool:
        """Advance over ``token_ids`` in order; False (state unchanged from the first
        rejected token on) when one is not allowed."""

    @abstractmethod
    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Write the allowed next tokens into ``bitmask[row]`` ([rows, words] int32)."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """True once a stop token ended the grammar (nothing more may follow)."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last ``num_tokens`` accepted tokens (speculative decoding's rejected
        drafts)."""


class StructuredOutputBackend(ABC):
    """Compiles constraints for one tokenizer and model vocabulary."""

    @staticmethod
    @abstractmethod
    def validate(params: StructuredOutputsParams) -> None:
        """``ClientError`` naming the problem when the constraint cannot compile (bad JSON
        schema, regex, grammar or structural tag). Needs no tokenizer: the API process runs
        it on every request before the request reaches the engine."""

    @abstractmethod
    def compile(self, params: StructuredOutputsParams) -> object:
        """The compiled grammar (opaque, shareable between requests); slow (milliseconds to
        seconds): call it off the engine loop. Raises ``ClientError`` like ``validate``."""

    @abstractmethod
    def new_grammar(self, compiled: object, stop_token_ids: list[int]) -> StructuredOutputGrammar:
        """A fresh matcher over ``compiled`` that ends on any of ``stop_token_ids`` and can
        roll back any number of accepted tokens."""

    def fill_bitmasks(self, grammars: list[StructuredOutputGrammar], bitmask: np.ndarray,
                      rows: list[int]) -> None:
        """Write each grammar's allowed next tokens into its row of ``bitmask`` ([rows,
        words] int32): one row per grammar, ``rows[i]`` for ``grammars[i]``. A backend may
        fill them in parallel (one step's whole batch at once); this default loops."""
        for grammar, row in zip(grammars, rows):
            grammar.fill_bitmask(bitmask, row)
