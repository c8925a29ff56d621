"""Exceptions -> OpenAI error bodies ``{"error": {"message", "type", "param", "code"}}``, by blame.

``ClientError`` -> 400 (404 for an unknown model) with the error's own message; the engine has
stopped (``EngineDeadError``) -> 503; anything else -> 500 with a fixed message, the details only
in the server log, so no stack trace or file path reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from pagellm.entrypoints.openai.protocol import ErrorInfo, ErrorResponse
from pagellm.errors import ClientError, EngineDeadError, ServiceUnavailableError

logger = logging.getLogger(__name__)

SSE_DONE = "data: [DONE]\n\n"
_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
          405: "MethodNotAllowedError", 413: "PayloadTooLargeError",
          431: "RequestHeaderFieldsTooLargeError", 500: "InternalServerError",
          503: "ServiceUnavailableError"}
"""HTTP status -> the error body's ``type``: one per status, whoever answers (a route, the
framework, the size and key guard), named like vLLM's types and the openai client's
exception classes."""
_MAX_VALIDATION_MESSAGES = 3


class ModelNotFoundError(ClientError):
    """The request names a model this server does not serve (HTTP 404)."""

    status_code = 404


def error_response(message: str, status_code: int = 400, param: str | None = None) -> ErrorResponse:
    return ErrorResponse(error=ErrorInfo(message=message, type=_TYPES.get(status_code, "Error"),
                                         param=param, code=status_code))


def error_from_exception(error: BaseException, request_id: str | None = None) -> ErrorResponse:
    """The error body for an exception raised while serving a request. Unexpected errors are
    logged here with their traceback."""
    if isinstance(error, ClientError):
        return error_response(str(error), getattr(error, "status_code", 400), error.param)
    if isinstance(error, EngineDeadError):
        logger.error("request %s failed: the engine has stopped", request_id)
        return error_response("the engine has stopped; the server must be restarted", 503)
    if isinstance(error, ServiceUnavailableError):
        return error_response(str(error), 503)
    logger.error("request %s failed", request_id, exc_info=error)
    suffix = f" (request {request_id})" if request_id else ""
    return error_response(f"internal server error{suffix}; see the server log", 500)


def error_from_validation(errors: Iterable[Mapping], required_fields: Sequence[str] = (),
                          content_type: str | None = None) -> ErrorResponse:
    """A 400 body from pydantic's (or FastAPI's RequestValidationError's) ``errors()``, in the
    user's terms: the first few problems as ``messages[0].content must be a string``, the
    alternatives of a union merged (``must be a string or a list``); ``param`` is the top-level
    field of the first. ``required_fields``: what a missing body lacks (FastAPI reports an empty
    body as the body missing, not as its required fields). ``content_type``: the request's
    header; a body sent without a JSON content type reaches validation unparsed (as bytes), and
    the message says what to send instead."""
    errors = list(errors)
    for error in errors:
        if _unparsed_body(error):
            return error_response("the request body must be a JSON object sent with "
                                  "'Content-Type: application/json' (got "
                                  f"{ascii(content_type) if content_type else 'none'})", 400)
        if error.get("type") == "json_invalid":     # loc is a character offset, not a field
            detail = (error.get("ctx") or {}).get("error") or "JSON decode error"
            return error_response(f"the request body is not valid JSON: {detail} at "
                                  f"character {error.get('loc', ('', '?'))[-1]}", 400)
    phrases: dict[str, list[str]] = {}    # location -> phrases, in order of appearance
    params: dict[str, str | None] = {}
    gots: dict[str, str] = {}
    for error in errors:
        location, param = _location(error)
        if error.get("type") == "missing" and not location and required_fields:
            for name in required_fields:
                phrases.setdefault(name, []).append("is required")
                params.setdefault(name, name.split()[0])
                gots.setdefault(name, "")
            continue
        phrase = _phrase(error)
        if phrase not in phrases.setdefault(location, []):
            phrases[location].append(phrase)
        params.setdefault(location, param)
        gots.setdefault(location, _got(error))
    messages = [_sentence(location, found, gots[location]) for location, found in phrases.items()]
    messages = messages[:_MAX_VALIDATION_MESSAGES]
    param = next(iter(params.values()), None)
    return error_response("; ".join(messages) or "invalid request", 400, param)


# pydantic error type -> the phrase after the field's name ({...}: the error's ctx)
_PHRASES = {
    "missing": "is required", "string_type": "must be a string",
    "int_type": "must be an integer", "int_parsing": "must be an integer",
    "int_from_float": "must be an integer", "float_type": "must be a number",
    "float_parsing": "must be a number", "finite_number": "must be a finite number",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false",
    "list_type": "must be a list", "dict_type": "must be an object",
    "model_type": "must be an object", "model_attributes_type": "must be an object",
    "greater_than_equal": "must be >= {ge}", "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}", "less_than": "must be < {lt}",
    "too_long": "must have at most {max_length} items",
    "too_short": "must have at least {min_length} items",
    "string_too_long": "must be at most {max_length} characters",
    "string_too_short": "must be at least {min_length} characters",
    "literal_error": "must be {expected}", "enum": "must be {expected}",
}
# Our own error types (protocol.py) whose message already names the field.
_SELF_NAMED = frozenset({"string_surrogate", "not_supported", "prompt_type", "prompt_too_long"})
_TAGS = frozenset({"body", "completion", "chat"})   # FastAPI's and TokenizeRequest's tags
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "any"})


def _unparsed_body(error: Mapping) -> bool:
    """The whole body failed as raw bytes: FastAPI parses JSON only under a JSON content type."""
    return (isinstance(error.get("input"), (bytes, bytearray))
            and all(isinstance(part, str) and part in _TAGS for part in error.get("loc", ())))


def _location(error: Mapping) -> tuple[str, str | None]:
    """(``messages[0].content``, top-level field) of an error; union member tags that pydantic
    puts in ``loc`` (``str``, ``list[int]``, ``function-after[...]``) are dropped."""
    ctx = error.get("ctx") or {}
    if "field" in ctx:
        return "", ctx.get("param") or str(ctx["field"]).split("[")[0].split(".")[0]
    location, param = "", None
    for part in error.get("loc", ()):
        if isinstance(part, int):
            location += f"[{part}]"
        elif _is_tag(part):
            continue
        elif part.isidentifier():
            location = f"{location}.{part}" if location else part
            param = param or part
        else:                               # a dict key, such as a logit_bias token id
            location += f"[{part!r}]"
    return location, param


def _is_tag(part: str) -> bool:
    """A union member's tag in ``loc`` rather than a field: a type (``str``,
    ``list[int]``), a validator (``function-after[...]``), a model class, or a route tag."""
    return (part in _TAGS or part in _TYPE_TAGS or "[" in part or "-" in part
            or (part.isidentifier() and not part.islower()))


def _phrase(error: Mapping) -> str:
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    message = str(error.get("msg", "is invalid"))
    if kind in _SELF_NAMED:
        return message
    template = _PHRASES.get(kind)
    if template is None:
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return message[:1].lower() + message[1:]
    if kind == "too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    return template.format(**{key: str(value) for key, value in ctx.items()})


def _got(error: Mapping) -> str:
    """', got <value>' for a scalar input of a type or range error, else ''."""
    if error.get("type") not in _PHRASES or error.get("type") == "missing":
        return ""
    value = error.get("input")
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = ascii(value)
    elif isinstance(value, (int, float)):
        text = str(value)
    else:
        return ""
    return f", got {text if len(text) <= 40 else text[:37] + '...'}"


def _sentence(location: str, phrases: list[str], got: str) -> str:
    """``location`` followed by its phrases; alternatives of a union joined by 'or'."""
    if not location or phrases[0].startswith(location):     # self-named
        return "; ".join(phrases)
    joined = phrases[0]
    for phrase in phrases[1:]:
        joined += " or " + phrase.removeprefix("must be ")
    return f"{location} {joined}{got}"


def error_from_http_exception(status_code: int, detail: object,
                              cause: BaseException | None = None) -> ErrorResponse:
    """The error body for an HTTP error the web framework raises itself: an unknown path (404),
    a wrong method (405), a request body it cannot read (400). When the framework wrapped a
    ``ClientError`` (a chunked body past the size limit fails while the body is read), that
    error's own message and status are kept."""
    if isinstance(cause, ClientError):
        return error_from_exception(cause)
    return error_response(str(detail), status_code)


def check_model(requested: str | None, served_model_name: str) -> None:
    """ModelNotFoundError unless ``requested`` is None, empty (the served model, as vLLM
    treats it) or the served model's name."""
    if requested and requested != served_model_name:
        raise ModelNotFoundError(f"The model `{requested}` does not exist.", param="model")


def sse_event(json_text: str) -> str:
    """One server-sent event carrying ``json_text``."""
    return f"data: {json_text}\n\n"
