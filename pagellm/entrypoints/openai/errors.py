"""Exceptions -> OpenAI error bodies ``{"error": {"message", "type", "param", "code"}}``, by blame.

``ClientError`` -> 400 (404 for an unknown model) with the error's own message; the engine has
stopped (``EngineDeadError``) -> 503; anything else -> 500 with a fixed message, the details only
in the server log, so no stack trace or file path reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from pagellm.entrypoints.openai.protocol import ErrorInfo, ErrorResponse
from pagellm.errors import ClientError, EngineDeadError, ServiceUnavailableError

logger = logging.getLogger(__name__)

SSE_DONE = "data: [DONE]\n\n"
_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowedError",
          500: "InternalServerError", 503: "ServiceUnavailableError"}
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


def error_from_validation(errors: Iterable[Mapping]) -> ErrorResponse:
    """A 400 body from pydantic's (or FastAPI's RequestValidationError's) ``errors()``: the
    first few ``field: message`` pairs; ``param`` is the first field named."""
    messages, param = [], None
    for error in errors:
        if error.get("type") == "json_invalid":     # loc is a character offset, not a field
            detail = (error.get("ctx") or {}).get("error") or "JSON decode error"
            return error_response(f"the request body is not valid JSON: {detail} at "
                                  f"character {error.get('loc', ('', '?'))[-1]}", 400)
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        if param is None and location:
            param = location[0]
        text = f"{'.'.join(location)}: {error.get('msg', 'invalid value')}" if location \
            else str(error.get("msg", "invalid request"))
        if text not in messages:
            messages.append(text)
        if len(messages) == _MAX_VALIDATION_MESSAGES:
            break
    return error_response("; ".join(messages) or "invalid request", 400, param)


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
    """ModelNotFoundError unless ``requested`` is None or the served model's name."""
    if requested is not None and requested != served_model_name:
        raise ModelNotFoundError(f"The model `{requested}` does not exist.", param="model")


def sse_event(json_text: str) -> str:
    """One server-sent event carrying ``json_text``."""
    return f"data: {json_text}\n\n"
