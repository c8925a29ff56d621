"""The request fields that ask for structured outputs -> one ``StructuredOutputsParams``.

Three spellings, as vLLM reads them, in this precedence:
  1. ``structured_outputs``: ``{"json" | "regex" | "choice" | "grammar" | "json_object" |
     "structural_tag": ..., "disable_any_whitespace", "disable_additional_properties",
     "whitespace_pattern"}`` (vLLM >= 0.10.2);
  2. the older ``guided_json``, ``guided_regex``, ``guided_choice``, ``guided_grammar``,
     ``guided_whitespace_pattern`` (and ``guided_decoding_backend``: xgrammar or auto only);
  3. OpenAI's ``response_format``: ``{"type": "json_object"}``, ``{"type": "json_schema",
     "json_schema": {"name", "schema", "strict"}}``, or vLLM's ``{"type": "structural_tag",
     ...}``; ``{"type": "text"}`` asks for nothing.
Whether the constraint compiles is checked later, once, by the input processor (the same
check as the offline ``LLM``). Every error is a ClientError naming the field.
"""

from __future__ import annotations

import json
from typing import Any

from pagellm.errors import ClientError
from pagellm.sampling_params import StructuredOutputsParams
from pagellm.structured_output import REQUEST_BACKENDS

_STRUCTURED_OUTPUTS_KEYS = ("json", "regex", "choice", "grammar", "json_object",
                            "structural_tag", "disable_any_whitespace",
                            "disable_additional_properties", "whitespace_pattern",
                            "disable_fallback")
_GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                  "guided_grammar": "grammar"}
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema", "structural_tag")


def structured_outputs_of(request: Any) -> StructuredOutputsParams | None:
    """The constraint a chat or completion request asks for (None: free text)."""
    _check_backend(getattr(request, "guided_decoding_backend", None))
    guided = {key: getattr(request, name) for name, key in _GUIDED_FIELDS.items()
              if getattr(request, name) is not None}
    if not guided and request.guided_whitespace_pattern is not None:
        # never ignored silently: it only shapes a guided_* constraint
        raise ClientError("guided_whitespace_pattern applies only together with a guided_* "
                          "field (guided_json, ...); with structured_outputs use its "
                          "whitespace_pattern / disable_any_whitespace keys",
                          param="guided_whitespace_pattern")
    if request.structured_outputs is not None:
        return _from_structured_outputs(request.structured_outputs)
    if guided:
        pattern = request.guided_whitespace_pattern
        return _params("guided_" + next(iter(guided)), **guided, whitespace_pattern=pattern)
    return _from_response_format(request.response_format)


def _from_structured_outputs(value: Any) -> StructuredOutputsParams:
    if not isinstance(value, dict):
        raise ClientError("structured_outputs must be an object", param="structured_outputs")
    unknown = sorted(set(value) - set(_STRUCTURED_OUTPUTS_KEYS))
    if unknown:
        raise ClientError(f"structured_outputs has unknown keys {unknown}; known: "
                          f"{list(_STRUCTURED_OUTPUTS_KEYS)}", param="structured_outputs")
    fields = {key: item for key, item in value.items()
              if item is not None and key != "disable_fallback"}
    return _params("structured_outputs", **fields)


def _from_response_format(response_format: Any) -> StructuredOutputsParams | None:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in RESPONSE_FORMAT_TYPES:
        raise ClientError(f"response_format.type must be one of {list(RESPONSE_FORMAT_TYPES)}"
                          f", got {kind!r}", param="response_format")
    if kind == "text":
        return None
    if kind == "json_object":
        return _params("response_format", json_object=True)
    if kind == "structural_tag":
        return _params("response_format", structural_tag=json.dumps(response_format))
    json_schema = response_format.get("json_schema")
    if not isinstance(json_schema, dict) or not isinstance(json_schema.get("schema"), dict):
        raise ClientError("response_format of type json_schema needs json_schema.schema, a "
                          "JSON schema object", param="response_format")
    return _params("response_format", json=json_schema["schema"])


def _params(field: str, **values) -> StructuredOutputsParams:
    """StructuredOutputsParams, its errors blamed on the request field they came from."""
    try:
        return StructuredOutputsParams(**values)
    except (ClientError, TypeError) as exc:
        message = str(exc).removeprefix("structured_outputs ")
        raise ClientError(f"{field}: {message}", param=field) from None


def _check_backend(backend: Any) -> None:
    if backend not in REQUEST_BACKENDS:
        raise ClientError(f"guided_decoding_backend {backend!r} is not available: this server "
                          "compiles grammars with xgrammar (send 'xgrammar', 'auto' or "
                          "nothing)", param="guided_decoding_backend")
