"""What every OpenAI request body shares, owned once for every route and field: lone UTF-16
surrogates anywhere in the body are refused naming the field, an explicit ``null`` for an
optional field means its default (as in the OpenAI API), and fields vLLM or OpenAI define that
this server does not build yet are refused naming them (``NOT_SUPPORTED_YET``).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from pydantic_core import PydanticCustomError


_SURROGATE = re.compile("[\ud800-\udfff]")


class OpenAIBaseModel(BaseModel):
    """Unknown fields are ignored, as OpenAI clients send fields this server does not use."""

    model_config = ConfigDict(extra="ignore")


# ---- request parsing shared by every route ------------------------------------------------

NOT_SUPPORTED_YET: dict[str, tuple[tuple, str]] = {
    # field: (values that mean "off" and are accepted, hint added to the 400 message)
    "use_beam_search": ((None, False), ""),
    "length_penalty": ((None, 1, 1.0), " (it only applies to beam search)"),
    "allowed_token_ids": ((None,), ""),
    "bad_words": ((None, []), ""),
    "logits_processors": ((None, []), ""),
    "return_tokens_as_token_ids": ((None, False), ""),
    "return_token_ids": ((None, False), ""),
    "cache_salt": ((None,), ""),
    "kv_transfer_params": ((None,), ""),
    "vllm_xargs": ((None,), ""),
    "request_id": ((None,), "; send the X-Request-Id header instead"),
    "prompt_embeds": ((None,), ""),
    "mm_processor_kwargs": ((None,), " (this server serves text-only models)"),
    "documents": ((None,), ""),
    "reasoning_effort": ((None,), ""),
    "web_search_options": ((None,), ""),
    "audio": ((None,), ""),
    "modalities": ((None, ["text"]), "; only ['text'] is"),
    "functions": ((None, []), "; the deprecated function calling is not built"),
    "function_call": ((None, "none"), "; the deprecated function calling is not built"),
    "store": ((None, False), "; this server stores nothing, send store=false"),
    "service_tier": ((None, "auto", "default"), "; only 'auto' and 'default' are"),
    "verbosity": ((None,), ""),
}


def _path(parent: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def find_lone_surrogate(value: Any, path: str = "") -> tuple[str, str] | None:
    """(path such as ``messages[0].content``, the character) of the first string in a parsed
    JSON ``value`` (keys included) holding a lone UTF-16 surrogate, else None. Such strings
    cannot be encoded as UTF-8, so they must never reach the tokenizer or the engine."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        return (path, found.group()) if found else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and _SURROGATE.search(key):
                return _path(path, "<key>"), _SURROGATE.search(key).group()
            found = find_lone_surrogate(item, _path(path, key))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if type(item) is int:     # token ids: the common long list
                continue
            found = find_lone_surrogate(item, _path(path, index))
            if found:
                return found
    return None


class OpenAIRequest(OpenAIBaseModel):
    """Base of request bodies and of the objects nested in them: ``null`` for a field whose
    default is not null means that default. Top-level bodies (``check_strings``) also refuse
    lone surrogates anywhere in the body, naming the field."""

    check_strings: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if cls.check_strings:
            found = find_lone_surrogate(data)
            if found:
                path, char = found
                raise PydanticCustomError(
                    "string_surrogate", "{field} holds a lone UTF-16 surrogate ({char}); every "
                    "string must be valid Unicode", {"field": path, "char": ascii(char)[1:-1],
                                                     "param": re.split(r"[.\[]", path)[0]})
        return {key: value for key, value in data.items()
                if value is not None or _null_allowed(cls, key)}

    @field_validator(*NOT_SUPPORTED_YET, check_fields=False)
    @classmethod
    def _not_supported_yet(cls, value: Any, info) -> Any:
        accepted, hint = NOT_SUPPORTED_YET[info.field_name]
        if not any(value is ok or (type(value) is type(ok) and value == ok) for ok in accepted):
            raise PydanticCustomError("not_supported", "{field} is not supported yet{hint}",
                                      {"field": info.field_name, "hint": hint})
        return value


def _null_allowed(cls: type[BaseModel], name: str) -> bool:
    """True unless ``name`` is an optional field whose default is not None."""
    field = cls.model_fields.get(name)
    return field is None or field.is_required() or field.default is None
