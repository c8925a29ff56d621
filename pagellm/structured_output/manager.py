"""StructuredOutputManager: compiles grammars off the engine loop and builds each step's
token bitmask (vLLM V1's ``StructuredOutputManager``, in the engine-core process).

Lifecycle of a constrained request (the scheduler drives it):
  1. ``grammar_init`` (on ``add_request``): the compile is submitted to a thread pool, or an
     earlier request's compile of the same constraint (``StructuredOutputsParams.key``) is
     shared; the request waits with status ``WAITING_FOR_FSM`` and is skipped, not blocking
     the requests behind it, until ``StructuredOutputRequest.is_ready``.
  2. ``grammar_bitmask`` (in ``schedule``): one int32 row per position the runner samples
     for a constrained request, ``-1`` (all allowed) rows never sent; shipped to the runner
     in ``SchedulerOutput.grammar_bitmask`` with ``structured_output_request_ids`` (request
     id -> its first row), or under async scheduling in the late ``GrammarOutput``. The rows
     of requests without drafts are filled in one ``backend.fill_bitmasks`` call (xgrammar:
     its BatchGrammarMatcher's threads).
  3. ``accept_tokens`` (in ``update_from_output``): the matcher advances over the sampled
     token; a stop token ends the grammar (``is_terminated``) and the request.

Speculative decoding seam: ``grammar_bitmask`` takes each request's draft tokens; a request
with k drafts gets k + 1 consecutive rows (row i: the tokens allowed after drafts[:i]), filled
by advancing the matcher over the drafts and rolling it back. The runner then masks the
target model's k + 1 logits rows the same way; the scheduler accepts the verified tokens
only. A draft the grammar rejects ends the filling: its own row masks it (the verifier
rejects it there and samples a valid token instead), the rows after it stay -1 (never used:
verification stops at the first rejected draft; -1 keeps them free of all-masked NaNs).

Preemption needs nothing: a preempted request keeps its output tokens, and its matcher has
accepted exactly those; recompute re-runs the KV, not the grammar.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait, FIRST_COMPLETED
from collections.abc import Callable

import numpy as np

from pagellm.errors import ClientError
from pagellm.sampling_params import SamplingParams
from pagellm.structured_output.backend import (StructuredOutputBackend,
                                               StructuredOutputGrammar, bitmask_words)

logger = logging.getLogger(__name__)

GRAMMAR_CACHE_SIZE = 1024
"""Distinct compiled constraints kept (least recently used dropped first)."""


class StructuredOutputRequest:
    """A request's constraint: the compile in flight, then its own matcher. ``error`` holds
    the message when the compile failed (the request then ends with finish_reason
    ``error``)."""

    __slots__ = ("params", "future", "grammar", "error", "_make_grammar")

    def __init__(self, params: SamplingParams, future: Future,
                 make_grammar: Callable[[object], StructuredOutputGrammar]):
        self.params = params
        self.future = future
        self.grammar: StructuredOutputGrammar | None = None
        self.error: str | None = None
        self._make_grammar = make_grammar

    def is_ready(self) -> bool:
        """True once the compile is done (its matcher made, or ``error`` set); never blocks."""
        if self.grammar is not None or self.error is not None:
            return True
        if not self.future.done():
            return False
        try:
            self.grammar = self._make_grammar(self.future.result())
        except Exception as exc:      # a compile error reaches the request, not the engine
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("structured outputs: grammar compile failed: %s", self.error)
        return True


class StructuredOutputManager:
    """Owned by the EngineCore; the scheduler calls it. ``backend`` compiles; ``vocab_size``
    is the model's logits width (the bitmask covers all of it)."""

    def __init__(self, backend: StructuredOutputBackend, vocab_size: int,
                 max_workers: int = 2):
        self.backend = backend
        self.vocab_size = vocab_size
        self.num_words = bitmask_words(vocab_size)
        self.executor = ThreadPoolExecutor(max_workers, thread_name_prefix="pagellm-grammar")
        self._compiled: OrderedDict[tuple, Future] = OrderedDict()
        self.num_compiles = 0
        """Compiles submitted (cache misses); a test reads it to see the cache work."""

    def grammar_init(self, params: SamplingParams) -> StructuredOutputRequest:
        """Start (or share) the compile of ``params.structured_outputs``; returns at once."""
        constraint = params.structured_outputs
        key = constraint.key()
        future = self._compiled.get(key)
        if future is None or (future.done() and future.exception() is not None):
            future = self.executor.submit(self.backend.compile, constraint)
            self.num_compiles += 1
            self._compiled[key] = future
            if len(self._compiled) > GRAMMAR_CACHE_SIZE:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(key)
        stop_ids = sorted(set(params.all_stop_token_ids) | set(params.stop_token_ids))
        return StructuredOutputRequest(
            params, future,
            lambda compiled: self.backend.new_grammar(compiled, stop_ids))

    def grammar_bitmask(self, requests: list, draft_token_ids: dict[str, list[int]] | None = None
                        ) -> tuple[dict[str, int], np.ndarray]:
        """Rows for ``requests`` (core Requests whose ``structured_output`` is ready and
        that sample this step): (request id -> first row, bitmask [rows, num_words] int32).
        A request with drafts in ``draft_token_ids`` gets 1 + len(drafts) rows."""
        drafts = draft_token_ids or {}
        num_rows = sum(1 + len(drafts.get(r.request_id, ())) for r in requests)
        bitmask = np.full((num_rows, self.num_words), -1, dtype=np.int32)  # [rows, words]
        first_rows, row = {}, 0
        single_grammars, single_rows = [], []      # requests without drafts: one batch fill
        for request in requests:
            first_rows[request.request_id] = row
            grammar = request.structured_output.grammar
            if request.request_id in drafts:
                row = self._fill_rows(grammar, bitmask, row, drafts[request.request_id])
            else:
                single_grammars.append(grammar)
                single_rows.append(row)
                row += 1
        if single_grammars:
            self.backend.fill_bitmasks(single_grammars, bitmask, single_rows)
        return first_rows, bitmask

    @staticmethod
    def _fill_rows(grammar: StructuredOutputGrammar, bitmask: np.ndarray, row: int,
                   drafts) -> int:
        """Fill 1 + len(drafts) rows from ``row``; the matcher ends where it began."""
        accepted = 0
        for index in range(len(drafts) + 1):
            grammar.fill_bitmask(bitmask, row + index)
            if index == len(drafts) or not grammar.accept_tokens([drafts[index]]):
                break
            accepted += 1
        if accepted:
            grammar.rollback(accepted)
        return row + len(drafts) + 1

    def wait_for_compiles(self, requests, timeout_s: float) -> None:
        """Block up to ``timeout_s`` until one of ``requests``' compiles finishes (the engine
        loop calls it when nothing else can run, instead of spinning)."""
        pending = [r.structured_output.future for r in requests
                   if r.structured_output is not None and not r.structured_output.future.done()]
        if pending:
            wait(pending, timeout=timeout_s, return_when=FIRST_COMPLETED)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def make_backend(name: str, tokenizer_loader: Callable[[], object],
                 vocab_size: int) -> StructuredOutputBackend:
    """The backend ``--structured-outputs-backend`` names (auto = xgrammar)."""
    if name in ("auto", "xgrammar"):
        from pagellm.structured_output.xgrammar_backend import XgrammarBackend
        return XgrammarBackend(tokenizer_loader, vocab_size)
    raise ClientError(f"structured_outputs_backend {name!r} is not installed; use xgrammar",
                      param="structured_outputs_backend")
