"""The OpenAI-compatible HTTP server: routes, API-key check, size limits, error bodies,
queue limit, metrics, health, and the process lifecycle (engine death -> exit non-zero,
SIGTERM -> graceful drain -> exit 0).

The engine is an ``AsyncLLM`` whose core runs in its own process; this process does HTTP,
tokenization, chat templates, detokenization and SSE.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pagellm import __version__
from pagellm.errors import ClientError
from pagellm.entrypoints.openai.errors import (error_from_exception, error_from_http_exception,
                                               error_from_validation, error_response)
from pagellm.entrypoints.openai.protocol import (ChatCompletionRequest, CompletionRequest,
                                                 DetokenizeRequest, ErrorResponse, ModelCard,
                                                 ModelList, REQUIRED_FIELDS, TokenizeRequest)
from pagellm.entrypoints.openai.serving_chat import OpenAIServingChat
from pagellm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from pagellm.entrypoints.openai.serving_engine import make_tokenizer_pool
from pagellm.entrypoints.openai.serving_tokenization import OpenAIServingTokenization
from pagellm.metrics.prometheus import CONTENT_TYPE, PrometheusMetrics

logger = logging.getLogger("pagellm.server")

UNAUTHENTICATED_PATHS = frozenset({"/health"})


@dataclass(frozen=True)
class ServerSettings:
    api_key: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_num_queued_requests: int | None = None
    disable_log_requests: bool = False
    trust_request_chat_template: bool = False
    """Let requests send their own chat_template (vLLM's --trust-request-chat-template); it
    still renders in the bounded sandbox."""


class _Guard:
    """Pure ASGI middleware: header/body size limits and the API key, before any routing.

    Every path except /health needs the key (deny by default), so odd spellings such as
    ``//v1/models`` or encoded slashes cannot route around the check."""

    def __init__(self, app, settings: ServerSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope.get("headers") or []
        if sum(len(k) + len(v) for k, v in headers) > self.settings.max_header_bytes:
            return await _send_error(send, "request headers are too large", 400)
        declared = next((v for k, v in headers if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit()
                                     or int(declared) > self.settings.max_body_bytes):
            return await _send_error(
                send, f"request body exceeds {self.settings.max_body_bytes} bytes", 400)
        if self.settings.api_key and scope["path"] not in UNAUTHENTICATED_PATHS:
            auth = next((v for k, v in headers if k == b"authorization"), b"").decode("latin-1")
            expected = f"Bearer {self.settings.api_key}"
            if not hmac.compare_digest(auth.encode(), expected.encode()):
                return await _send_error(send, "invalid or missing API key", 401,
                                         error_type="authentication_error")
        return await self.app(scope, _limited(receive, self.settings.max_body_bytes), send)


def _limited(receive, limit: int):
    """A receive() that fails a chunked body growing past ``limit``."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
        return message
    return wrapped


class _BodyTooLarge(ClientError):
    """A chunked body past the limit: the error handlers turn it into a 400."""

    def __init__(self):
        super().__init__("request body is too large", param=None)


async def _send_error(send, message: str, status: int, error_type: str = "invalid_request_error"):
    body = ErrorResponse.model_validate(
        {"error": {"message": message, "type": error_type, "param": None, "code": status}}
    ).model_dump_json().encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def build_app(engine, settings: ServerSettings, chat_template: str | None = None) -> FastAPI:
    """The FastAPI app for one engine. Handlers never see the engine's internals."""
    app = FastAPI(title="pagellm", version=__version__)
    app.add_middleware(_Guard, settings=settings)
    metrics = PrometheusMetrics(engine.served_model_name, engine.max_model_len)
    pool = make_tokenizer_pool(engine.config.model.tokenizer_pool_size)
    completion = OpenAIServingCompletion(engine, metrics=metrics, tokenizer_pool=pool)
    chat = OpenAIServingChat(engine, metrics=metrics, tokenizer_pool=pool)
    tokenization = OpenAIServingTokenization(engine, tokenizer_pool=pool)
    if chat_template is not None:
        chat.chat_template = tokenization.chat_template = chat_template
    chat.trust_request_chat_template = settings.trust_request_chat_template
    tokenization.trust_request_chat_template = settings.trust_request_chat_template
    app.state.engine, app.state.metrics, app.state.draining = engine, metrics, False
    app.state.drain_task = None             # set by the server's shutdown signal handler
    app.state.num_admitting = 0             # admitted requests not yet in the engine (see drain)
    app.state.tokenizer_pool = pool         # run_server shuts it down after the server stops

    @app.exception_handler(RequestValidationError)
    async def _validation(raw: Request, exc: RequestValidationError):
        return _json(error_from_validation(exc.errors(),
                                           REQUIRED_FIELDS.get(raw.url.path, ())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_, exc: StarletteHTTPException):
        # The framework's own errors (no such route, wrong method, unreadable body) get the
        # OpenAI error body too, not FastAPI's {"detail": ...}.
        response = _json(error_from_http_exception(exc.status_code, exc.detail, exc.__cause__))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_, exc: Exception):
        return _json(error_from_exception(exc))

    @app.get("/health")
    async def health():
        healthy = engine.is_healthy() and not app.state.draining
        return Response(status_code=200 if healthy else 503)

    @app.get("/version")
    async def version():
        return {"version": __version__}

    @app.get("/v1/models")
    async def models():
        card = ModelCard(id=engine.served_model_name, root=engine.config.model.model,
                         max_model_len=engine.max_model_len)
        return ModelList(data=[card])

    @app.get("/metrics")
    async def prometheus():
        if engine.is_healthy():
            metrics.update_from_stats(await engine.stats())
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, raw: Request):
        return await _serve(raw, lambda rid: completion.create_completion(body, request_id=rid))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, raw: Request):
        return await _serve(raw, lambda rid: chat.create_chat_completion(body, request_id=rid))

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        return _result(await tokenization.tokenize(body))

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        return _result(await tokenization.detokenize(body))

    async def _serve(raw: Request, handler):
        if app.state.draining:
            response = _json(error_response(
                "the server is shutting down and takes no new requests", 503))
            response.headers["Connection"] = "close"
            return response
        limit = settings.max_num_queued_requests
        # The limit is on waiting requests (SchedulerConfig.max_num_queued_requests), not on
        # running ones: a server with free batch slots must not turn requests away.
        if limit is not None and engine.num_waiting_requests >= limit:
            response = _json(error_response(
                f"the server is at its limit of {limit} queued requests; retry later", 503))
            response.headers["Retry-After"] = "1"
            return response
        if not engine.is_healthy():
            return _json(error_from_exception(engine.dead_error or RuntimeError("engine down")))
        request_id = uuid.uuid4().hex
        if not settings.disable_log_requests:
            logger.info("request %s %s", request_id, raw.url.path)
        # Admitted: a drain that starts now waits for this request. When the handler returns,
        # the request is either finished or registered in the engine (a stream in flight),
        # where the engine's own drain sees it.
        app.state.num_admitting += 1
        try:
            task = asyncio.ensure_future(handler(request_id))
            result = await _unless_disconnected(raw, task)
        finally:
            app.state.num_admitting -= 1
        if result is None:
            return Response(status_code=499)
        return _result(result)

    return app


async def drain(app: FastAPI, engine, timeout_s: float) -> list[str]:
    """Graceful shutdown of ``app``: from now on /health and new generation requests answer
    503; requests already admitted (still being tokenized, or generating) get up to
    ``timeout_s`` seconds to finish; the rest are aborted and end with a 503 error. Returns
    the ids of the aborted engine requests."""
    app.state.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while app.state.num_admitting and not engine.errored and loop.time() < deadline:
        await asyncio.sleep(0.05)
    return await engine.drain(max(0.0, deadline - loop.time()))


async def _unless_disconnected(raw: Request, task: asyncio.Future):
    """The handler's result, or None after cancelling it when the client went away (the
    cancelled engine stream aborts the request and frees its KV blocks)."""
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=0.05)
        if not done and await raw.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return None
    return task.result()


def _result(result):
    if isinstance(result, ErrorResponse):
        return _json(result)
    if hasattr(result, "__aiter__"):
        return StreamingResponse(result, media_type="text/event-stream")
    return result


def _json(error: ErrorResponse) -> JSONResponse:
    return JSONResponse(error.model_dump(), status_code=error.status_code)
