"""The xgrammar backend: JSON schema, regex, choice, EBNF and structural tags.

xgrammar (imported on first use: it takes seconds and pulls in torch) compiles a constraint
against a ``TokenizerInfo`` built from the Hugging Face tokenizer once, with the model's
vocabulary size, so ids past the tokenizer's are always masked. Error messages from its C++
core lose their ``[time] file.cc:line:`` prefix before they reach the client.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable

import numpy as np

from pagellm.errors import ClientError
from pagellm.sampling_params import StructuredOutputsParams
from pagellm.structured_output.backend import StructuredOutputBackend, StructuredOutputGrammar

_CPP_PREFIX = re.compile(r"^\[[0-9:]+\] \S+\.cc:[0-9]+: (Check failed: .*? is false: )?")


class XgrammarGrammar(StructuredOutputGrammar):
    __slots__ = ("matcher",)

    def __init__(self, matcher):
        self.matcher = matcher

    def accept_tokens(self, token_ids: list[int]) -> bool:
        return all(self.matcher.accept_token(token_id) for token_id in token_ids)

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def is_terminated(self) -> bool:
        return self.matcher.is_terminated()

    def rollback(self, num_tokens: int) -> None:
        self.matcher.rollback(num_tokens)


class XgrammarBackend(StructuredOutputBackend):
    """``tokenizer_loader`` is called once, on the first compile (in a compile thread), and
    returns the Hugging Face tokenizer; ``vocab_size`` is the model's logits width."""

    def __init__(self, tokenizer_loader: Callable[[], object], vocab_size: int,
                 max_threads: int = 2):
        self._tokenizer_loader = tokenizer_loader
        self.vocab_size = vocab_size
        self._max_threads = max_threads
        self._compiler = None
        self._batch_matcher = None      # xgrammar.BatchGrammarMatcher, made on first use
        self._lock = threading.Lock()

    @staticmethod
    def validate(params: StructuredOutputsParams) -> None:
        xgr = _xgrammar()
        with _client_errors(params.kind):
            _build(xgr, params)

    def compile(self, params: StructuredOutputsParams) -> object:
        compiler = self._get_compiler()
        with _client_errors(params.kind):
            return compiler.compile_grammar(_build(_xgrammar(), params))

    def new_grammar(self, compiled: object, stop_token_ids: list[int]) -> XgrammarGrammar:
        # xgrammar >= 0.2 keeps every accepted token for rollback (no max_rollback_tokens)
        matcher = _xgrammar().GrammarMatcher(compiled,
                                             override_stop_tokens=stop_token_ids or None)
        return XgrammarGrammar(matcher)

    def fill_bitmasks(self, grammars: list[XgrammarGrammar], bitmask: np.ndarray,
                      rows: list[int]) -> None:
        """xgrammar's ``BatchGrammarMatcher``: the rows filled by its C++ threads (half the
        host's cores, GIL released), one call for the step's batch."""
        if len(grammars) < 2:
            super().fill_bitmasks(grammars, bitmask, rows)
            return
        if self._batch_matcher is None:
            self._batch_matcher = _xgrammar().BatchGrammarMatcher(max_threads="auto")
        self._batch_matcher.batch_fill_next_token_bitmask([g.matcher for g in grammars],
                                                          bitmask, rows)

    def _get_compiler(self):
        with self._lock:
            if self._compiler is None:
                xgr = _xgrammar()
                info = xgr.TokenizerInfo.from_huggingface(self._tokenizer_loader(),
                                                          vocab_size=self.vocab_size)
                self._compiler = xgr.GrammarCompiler(info, max_threads=self._max_threads)
            return self._compiler


def _xgrammar():
    import xgrammar
    return xgrammar


def _build(xgr, params: StructuredOutputsParams):
    """The xgrammar ``Grammar`` of a constraint (raises xgrammar's errors)."""
    kind = params.kind
    if kind == "json":
        schema = params.json
        if isinstance(schema, dict) and params.disable_additional_properties:
            schema = _no_additional_properties(schema)
        return xgr.Grammar.from_json_schema(
            schema if isinstance(schema, str) else json.dumps(schema),
            any_whitespace=not params.compact_json, strict_mode=True)
    if kind == "json_object":
        return xgr.Grammar.from_json_schema('{"type": "object"}',
                                            any_whitespace=not params.compact_json)
    if kind == "regex":
        return xgr.Grammar.from_regex(params.regex)
    if kind == "choice":
        return xgr.Grammar.from_regex("|".join(f"(?:{re.escape(c)})" for c in params.choice))
    if kind == "grammar":
        return xgr.Grammar.from_ebnf(params.grammar)
    return _structural_tag(xgr, params.structural_tag)


def _structural_tag(xgr, text: str):
    """vLLM's two structural-tag forms: the older ``{"structures": [{"begin", "schema",
    "end"}], "triggers": [...]}`` and xgrammar's own ``{"type": "structural_tag", "format":
    ...}``."""
    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise ClientError(f"invalid structured outputs structural_tag: not JSON ({exc})",
                          param="structured_outputs") from None
    if isinstance(spec, dict) and "structures" in spec:
        structures, triggers = spec["structures"], spec.get("triggers")
        if not (isinstance(structures, list) and structures
                and all(isinstance(s, dict) and {"begin", "schema", "end"} <= s.keys()
                        for s in structures)):
            raise ClientError('invalid structured outputs structural_tag: "structures" must be '
                              'a non-empty list of {"begin", "schema", "end"} objects',
                              param="structured_outputs")
        if not (isinstance(triggers, list) and triggers
                and all(isinstance(t, str) and t for t in triggers)):
            raise ClientError('invalid structured outputs structural_tag: "triggers" must be a '
                              "non-empty list of strings (prefixes of the begin tags)",
                              param="structured_outputs")
        tags = [xgr.StructuralTagItem(begin=s["begin"], schema=json.dumps(s["schema"]),
                                      end=s["end"]) for s in structures]
        return xgr.Grammar.from_structural_tag(tags, triggers)
    return xgr.Grammar.from_structural_tag(text)


def _no_additional_properties(schema):
    """``schema`` with ``additionalProperties: false`` on every object that does not say."""
    if isinstance(schema, list):
        return [_no_additional_properties(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: _no_additional_properties(value) for key, value in schema.items()}
    if result.get("type") == "object" and "additionalProperties" not in result:
        result["additionalProperties"] = False
    return result


class _client_errors:
    """Turn xgrammar's errors (RuntimeError, ValueError, its own types) and malformed JSON
    into ``ClientError(param="structured_outputs")`` naming the constraint kind."""

    def __init__(self, kind: str):
        self.kind = kind

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, ClientError) or not isinstance(exc, Exception):
            return False
        message = _CPP_PREFIX.sub("", str(exc).strip().splitlines()[0] if str(exc).strip()
                                  else type(exc).__name__)
        raise ClientError(f"invalid structured outputs {self.kind}: {message}",
                          param="structured_outputs") from exc
