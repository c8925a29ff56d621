"""SamplingParams: vLLM's field names and defaults, validated at construction.

This module owns every rule about a sampling parameter's own value (ranges, types, NaN); the
HTTP server builds its SamplingParams from the request and relies on these checks, so the
offline ``LLM`` and the server give the same message for the same value. Rules that depend on
the model or the prompt (context length, vocabulary, max_logprobs) belong to
``engine.input_processor.InputProcessor.validate``.
"""

from __future__ import annotations

import copy
import json as _json
import math
import re
from dataclasses import dataclass, field, fields

from pagellm.errors import ClientError

_MAX_SEED = 2**63 - 1
MAX_INT32 = 2**31 - 1
"""The largest count or token id a request may give: the engine keeps these per request in
int32/int64 arrays and msgpack messages, so a larger value must be a 400, never an overflow."""
_TOKEN_ID_KEY = re.compile("[0-9]+")     # ASCII digits only: not " 5", "5_0" or Arabic-Indic

_CONSTRAINT_FIELDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


@dataclass
class StructuredOutputsParams:
    """One constraint on a request's output (vLLM's ``StructuredOutputsParams``): exactly one
    of ``json``, ``regex``, ``choice``, ``grammar``, ``json_object``, ``structural_tag`` is
    set, else ``ClientError`` (param ``structured_outputs``). Only the constraint's form is
    checked here; whether the schema / grammar / regex compiles is the grammar backend's
    check (``pagellm.structured_output``), also a ``ClientError`` naming the problem."""

    json: dict | str | None = None
    """A JSON schema (object or its JSON text): the output is one JSON value that validates."""
    regex: str | None = None
    """The output matches this regular expression in full."""
    choice: list[str] | None = None
    """The output is exactly one of these strings."""
    grammar: str | None = None
    """An EBNF grammar (xgrammar's GBNF dialect, root rule ``root``)."""
    json_object: bool | None = None
    """True: the output is any JSON object (``response_format={"type": "json_object"}``)."""
    structural_tag: str | None = None
    """xgrammar's structural tag as JSON text: free text in which each trigger (e.g.
    ``<function=``) starts a segment constrained by its schema (tool calling)."""
    disable_any_whitespace: bool = False
    """JSON: no whitespace between tokens of the JSON text (compact output)."""
    disable_additional_properties: bool = False
    """JSON: objects without ``additionalProperties`` allow no extra keys."""
    whitespace_pattern: str | None = None
    """JSON: a regex for the whitespace between JSON tokens (vLLM's outlines option; xgrammar
    reads only whether it is the empty string, like ``disable_any_whitespace``)."""

    def __post_init__(self) -> None:
        given = [name for name in _CONSTRAINT_FIELDS if getattr(self, name) is not None]
        _check(len(given) == 1, "structured_outputs",
               "must set exactly one of json, regex, choice, grammar, json_object, "
               f"structural_tag; got {', '.join(given) if given else 'none'}")
        self._validate_kind(given[0])

    def _validate_kind(self, kind: str) -> None:
        value = getattr(self, kind)
        if kind == "json":
            _check(isinstance(value, (dict, str)), "structured_outputs",
                   f"json must be a JSON schema (an object or its JSON text), got {value!r}")
        elif kind == "choice":
            _check(isinstance(value, list) and value and all(isinstance(c, str) for c in value),
                   "structured_outputs", "choice must be a non-empty list of strings")
        elif kind == "json_object":
            _check(value is True, "structured_outputs", "json_object must be true when given")
        else:
            _check(isinstance(value, str) and value != "", "structured_outputs",
                   f"{kind} must be a non-empty string")
        _check(self.whitespace_pattern is None or isinstance(self.whitespace_pattern, str),
               "structured_outputs", "whitespace_pattern must be a string")
        # xgrammar (the one backend) has no whitespace regex: only "" (no whitespace) is exact
        _check(not self.whitespace_pattern, "structured_outputs",
               "whitespace_pattern other than \"\" is not supported by the xgrammar backend; "
               "use \"\" or disable_any_whitespace for compact JSON")

    @property
    def kind(self) -> str:
        """The constraint given: json | regex | choice | grammar | json_object |
        structural_tag."""
        return next(name for name in _CONSTRAINT_FIELDS if getattr(self, name) is not None)

    @property
    def compact_json(self) -> bool:
        """No whitespace in JSON output: ``disable_any_whitespace`` or an empty
        ``whitespace_pattern``."""
        return self.disable_any_whitespace or self.whitespace_pattern == ""

    def key(self) -> tuple[str, str, bool, bool]:
        """The grammar cache key: (kind, the constraint as canonical text, compact JSON,
        no additional properties). Equal keys compile to the same grammar."""
        value = getattr(self, self.kind)
        if not isinstance(value, str):
            value = _json.dumps(value, sort_keys=True, separators=(",", ":"))
        return (self.kind, value, self.compact_json, self.disable_additional_properties)


@dataclass
class SamplingParams:
    """How to sample one prompt's completions. Out-of-range values raise ``ClientError``
    (a ``ValueError``) whose message starts with the field's name, e.g. ``temperature must be
    >= 0, got -1``: the same message the HTTP server returns for the same value."""

    n: int = 1
    """Number of completions to return for the prompt."""
    presence_penalty: float = 0.0
    """Penalize tokens that already appeared in the output (-2..2)."""
    frequency_penalty: float = 0.0
    """Penalize tokens by how often they appeared in the output (-2..2)."""
    repetition_penalty: float = 1.0
    """Multiplicative penalty on tokens in prompt or output (>0; 1 = off)."""
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose mass reaches top_p (0, 1]."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 or -1 = all."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p × the top token's [0, 1]."""
    seed: int | None = None
    """Per-request random seed: same seed gives the same text in any batch."""
    stop: list[str] | None = None
    """Strings that end generation; not included in the output unless include_stop_str_in_output."""
    stop_token_ids: list[int] | None = None
    """Token ids that end generation (the token is kept in token_ids)."""
    ignore_eos: bool = False
    """Keep generating past the EOS token."""
    max_tokens: int | None = 16
    """Maximum number of generated tokens; None = up to max_model_len."""
    min_tokens: int = 0
    """Generate at least this many tokens before EOS or stop ids can end the output."""
    logprobs: int | None = None
    """Number of top logprobs returned per generated token (plus the sampled one)."""
    prompt_logprobs: int | None = None
    """Number of top logprobs returned per prompt token."""
    detokenize: bool = True
    """Produce text as well as token ids."""
    skip_special_tokens: bool = True
    """Drop special tokens from the text."""
    spaces_between_special_tokens: bool = True
    """Put spaces between special tokens in the text."""
    include_stop_str_in_output: bool = False
    """Keep the matched stop string at the end of the text."""
    logit_bias: dict[int, float] | None = None
    """Added to the logits of the given token ids before sampling (-100..100)."""
    structured_outputs: StructuredOutputsParams | None = None
    """Constrain the output to a JSON schema, regex, choice, grammar or structural tag
    (constrained decoding: disallowed tokens are masked before sampling)."""
    output_kind: str = "final"
    """internal: 'final' or 'delta' (streaming)."""
    all_stop_token_ids: set[int] = field(default_factory=set, repr=False)
    """internal: stop_token_ids plus EOS (filled by the input processor)."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = _as_list(self.stop, "stop")
        self.stop_token_ids = _as_list(self.stop_token_ids, "stop_token_ids")
        if self.logit_bias:
            self.logit_bias = _parse_logit_bias(self.logit_bias)
        if self.top_k == -1:
            self.top_k = 0
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        for name in _FLOAT_FIELDS:      # 1 and 1.0 read the same everywhere, messages included
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, _as_float(value, name))
        self._validate()
        if self.temperature < 1e-5:
            # Greedy: the other sampling knobs do not apply.
            self.temperature, self.top_p, self.top_k, self.min_p = 0.0, 1.0, 0, 0.0

    def _validate(self) -> None:
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and not isinstance(value, bool), name,
                   f"must be a number, got {value!r}")
            _check(not math.isnan(value), name, "is not a number (NaN)")
            _check(math.isfinite(value), name, f"must be a finite number, got {value}")
            _check(abs(value) <= FLOAT32_MAX, name, f"must be a float32 number (magnitude <= "
                   f"{FLOAT32_MAX:.6g}: the sampler computes in float32), got {value}")
        _check_int(self.n, "n", 1)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(-2.0 <= value <= 2.0, name, f"must be in [-2, 2], got {value}")
        _check(self.repetition_penalty > 0.0, "repetition_penalty",
               f"must be > 0, got {self.repetition_penalty}")
        _check(self.temperature >= 0.0, "temperature", f"must be >= 0, got {self.temperature}")
        _check(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check_int(self.top_k, "top_k", 0, what="-1, 0 (all tokens) or a positive integer")
        _check(0.0 <= self.min_p <= 1.0, "min_p", f"must be in [0, 1], got {self.min_p}")
        _check(self.seed is None or (_is_int(self.seed) and -_MAX_SEED <= self.seed <= _MAX_SEED),
               "seed", f"must be an integer in [-2**63+1, 2**63-1], got {self.seed!r}")
        _check_int(self.max_tokens, "max_tokens", 1, optional=True)
        _check_int(self.min_tokens, "min_tokens", 0)
        _check(self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
               f"must be <= max_tokens={self.max_tokens}, got {self.min_tokens}")
        for name in ("logprobs", "prompt_logprobs"):
            _check_int(getattr(self, name), name, 0, optional=True)
        _check(all(isinstance(s, str) and s for s in self.stop), "stop",
               "must be a list of non-empty strings")
        _check(all(_is_int(t) and 0 <= t <= MAX_INT32 for t in self.stop_token_ids),
               "stop_token_ids", f"must be a list of token ids in [0, {MAX_INT32}]")
        for token_id, bias in (self.logit_bias or {}).items():
            _check(-100.0 <= bias <= 100.0, "logit_bias",
                   f"bias for token {token_id} must be in [-100, 100], got {bias}")
        _check(self.structured_outputs is None
               or isinstance(self.structured_outputs, StructuredOutputsParams),
               "structured_outputs", "must be a StructuredOutputsParams")
        _check(self.output_kind in ("final", "delta"), "output_kind", "must be 'final' or 'delta'")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def clone(self, **changes) -> "SamplingParams":
        """A deep copy with some fields changed (validated again)."""
        values = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}
        values.update(changes)
        return SamplingParams(**values)

    @classmethod
    def from_validated(cls, **values) -> "SamplingParams":
        """Rebuild params that were validated where they were made (the engine-core process
        receives them over the wire): every field given, nothing checked again."""
        params = cls.__new__(cls)
        for name, value in values.items():
            setattr(params, name, value)
        return params


FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite float32: sampling values go into float32 tensors, where anything larger
becomes inf (a temperature of 1e308 would sample uniformly at random)."""

_FLOAT_FIELDS = ("presence_penalty", "frequency_penalty", "repetition_penalty", "temperature",
                 "top_p", "min_p")


def _as_list(value, param: str) -> list:
    try:
        return list(value or [])
    except TypeError:
        raise ClientError(f"{param} must be a list, got {value!r}", param=param) from None


def _parse_logit_bias(logit_bias) -> dict[int, float]:
    """Token id -> bias. JSON gives string keys ("50256": -100), which must be plain ASCII
    digits; a bad key or value is the client's error."""
    try:
        items = dict(logit_bias).items()
    except (TypeError, ValueError):
        raise ClientError("logit_bias must map token ids (integers) to numbers",
                          param="logit_bias") from None
    parsed = {}
    for key, bias in items:
        token_id = int(key) if isinstance(key, str) and _TOKEN_ID_KEY.fullmatch(key) else key
        _check(_is_int(token_id) and 0 <= token_id <= MAX_INT32, "logit_bias",
               f"keys must be token ids in [0, {MAX_INT32}], got {key!r}")
        _check(isinstance(bias, (int, float)) and not isinstance(bias, bool), "logit_bias",
               f"bias for token {token_id} must be a number, got {bias!r}")
        parsed[token_id] = _as_float(bias, "logit_bias")
    _check(all(math.isfinite(bias) for bias in parsed.values()), "logit_bias",
           "biases must be finite numbers")
    return parsed


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_float(value: int | float, param: str) -> float:
    """``value`` as a float; an integer too large for one is the client's error."""
    try:
        return float(value)
    except OverflowError:
        raise ClientError(f"{param} must be a finite number, got an integer of "
                          f"{len(str(abs(value)))} digits", param=param) from None


def _check_int(value, param: str, minimum: int, optional: bool = False,
               what: str | None = None) -> None:
    """ClientError unless ``value`` is an integer in [minimum, MAX_INT32] (or None when
    ``optional``); ``what`` replaces "an integer in [minimum, ..." in the message."""
    if optional and value is None:
        return
    rule = f"{what} <= {MAX_INT32}" if what else f"an integer in [{minimum}, {MAX_INT32}]"
    _check(_is_int(value) and minimum <= value <= MAX_INT32, param,
           f"must be {rule}, got {value!r}")


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise ClientError(f"{param} {message}", param=param)
