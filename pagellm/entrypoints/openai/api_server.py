"""The OpenAI-compatible HTTP server: routes, API-key check, size limits, error bodies,
queue limit, metrics, health, access log, and the process lifecycle (engine death -> exit
non-zero, SIGTERM -> graceful drain -> exit 0).

The engine is an ``AsyncLLM`` whose core runs in its own process; this process does HTTP,
tokenization, chat templates, detokenization and SSE.

Every response carries ``X-Request-Id``: the client's own when it sent a valid one (1-128
characters of ``A-Z a-z 0-9 . _ : -``), else a new one. The access log line of a request
(method, path, status, latency, request id; never the prompt) and the engine's lines about it
(preemptions, aborts) name that id; the engine's id is the same, or the client's id plus a
unique suffix, so a client-chosen id can never collide with a request in flight.

``python -m pagellm.entrypoints.openai.api_server`` (vLLM's classic entry point) takes the same
flags as ``pagellm serve``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from pagellm import __version__
from pagellm.errors import ClientError, EngineDeadError
from pagellm.entrypoints.openai.advisor_route import add_advisor_route
from pagellm.entrypoints.openai.dashboard import add_dashboard_route
from pagellm.entrypoints.openai.errors import (error_from_exception, error_from_http_exception,
                                               error_from_validation, error_response)
from pagellm.entrypoints.openai.protocol import (ChatCompletionRequest, CompletionRequest,
                                                 LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest,
                                                 DetokenizeRequest, ErrorResponse, ModelCard,
                                                 ModelList, REQUIRED_FIELDS, TokenizeRequest)
from pagellm.entrypoints.openai.serving_chat import OpenAIServingChat
from pagellm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from pagellm.entrypoints.openai.serving_engine import make_tokenizer_pool
from pagellm.entrypoints.openai.serving_models import (OpenAIServingModels,
                                                       runtime_lora_updating_allowed)
from pagellm.entrypoints.openai.serving_tokenization import OpenAIServingTokenization
from pagellm.entrypoints.openai.tool_parsers import ToolParserManager
from pagellm.reasoning import ReasoningParserManager
from pagellm.metrics.prometheus import CONTENT_TYPE, PrometheusMetrics, cache_config_labels

logger = logging.getLogger("pagellm.server")
access_logger = logging.getLogger("pagellm.access")

REQUEST_ID_HEADER = "X-Request-Id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MAX_LOGGED_PATH = 200

UNAUTHENTICATED_PATHS = frozenset({"/health", "/dashboard"})
"""/dashboard is a static page without data: its own requests carry the key."""


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
    enable_auto_tool_choice: bool = False
    """tool_choice 'auto' parses tool calls out of the text (with tool_call_parser)."""
    tool_call_parser: str | None = None
    """A ``ToolParserManager`` name (--tool-call-parser)."""
    reasoning_parser: str | None = None
    """A ``ReasoningParserManager`` name (--reasoning-parser)."""
    lora_modules: tuple = ()
    """``LoRAModulePath`` entries (--lora-modules): adapters served by name."""
    api_server_index: int = 0
    """This process's index among the --api-server-count API servers."""
    prometheus_multiproc_dir: str | None = None
    """With several API servers: their shared prometheus_client multiprocess directory."""


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
            return await _send_error(send, "request headers are too large", 431)
        declared = next((v for k, v in headers if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit()
                                     or int(declared) > self.settings.max_body_bytes):
            return await _send_error(
                send, f"request body exceeds {self.settings.max_body_bytes} bytes", 413)
        if self.settings.api_key and scope["path"] not in UNAUTHENTICATED_PATHS:
            auth = next((v for k, v in headers if k == b"authorization"), b"").decode("latin-1")
            expected = f"Bearer {self.settings.api_key}"
            if not hmac.compare_digest(auth.encode(), expected.encode()):
                return await _send_error(send, "invalid or missing API key", 401)
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
    """A chunked body past the limit: the error handlers turn it into a 413 (Payload Too
    Large, as for a declared Content-Length past it)."""

    status_code = 413

    def __init__(self):
        super().__init__("request body is too large", param=None)


def request_id_from(headers) -> tuple[str, bool]:
    """(request id, whether the client chose it) from raw ASGI ``headers``: the client's
    X-Request-Id when valid (see the module docstring), else a new uuid4 hex."""
    sent = next((v for k, v in headers if k == b"x-request-id"), None)
    if sent is not None:
        text = sent.decode("latin-1")
        if _VALID_REQUEST_ID.fullmatch(text):
            return text, True
    return uuid.uuid4().hex, False


class _AccessLog:
    """Pure ASGI middleware, outermost: gives every HTTP request its id (``scope["state"]``
    and the X-Request-Id response header), then logs one line and feeds the HTTP metrics when
    the response is over (a stream included), whatever answered it: a route, the error
    handlers, or _Guard's 400/401. ``routes``: the app's routes, to label a request the guard
    answered (so the router never saw it) by the route its path would have reached."""

    def __init__(self, app, metrics: PrometheusMetrics, log: bool, routes: list):
        self.app = app
        self.metrics = metrics
        self.log = log
        self.routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id, client_chosen = request_id_from(scope.get("headers") or [])
        state = scope.setdefault("state", {})
        state["request_id"], state["request_id_from_client"] = request_id, client_chosen
        status = 500            # when the app fails before it starts a response
        start = time.perf_counter()

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, status, time.perf_counter() - start, request_id)

    def _record(self, scope, status: int, duration_s: float, request_id: str) -> None:
        path = scope.get("path", "")
        route = scope.get("route") or _matching_route(self.routes, scope)
        handler = getattr(route, "path", None) or "(unmatched)"     # a bounded label set
        self.metrics.observe_http(scope.get("method", "?"), handler, status, duration_s)
        if self.log:
            client = scope.get("client") or ("-", 0)
            access_logger.info("%s:%s \"%s %s\" %d %.1f ms request_id=%s", client[0], client[1],
                               scope.get("method", "?"), path[:_MAX_LOGGED_PATH], status,
                               duration_s * 1000, request_id)


def _matching_route(routes: list, scope):
    """The route the router would pick for ``scope``: the first that matches path and method,
    else the first that matches the path (a 405); None when no path matches."""
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial


async def _send_error(send, message: str, status: int):
    """The same error body as the routes' (``error_response``), sent before any routing."""
    body = error_response(message, status).model_dump_json().encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def build_app(engine, settings: ServerSettings, chat_template: str | None = None) -> FastAPI:
    """The FastAPI app for one engine. Handlers never see the engine's internals."""
    app = FastAPI(title="pagellm", version=__version__)
    lora = engine.config.lora
    metrics = PrometheusMetrics(engine.served_model_name, engine.max_model_len,
                                num_engines=engine.num_engines,
                                max_lora=lora.max_loras if lora.enable_lora else 0,
                                multiprocess_dir=settings.prometheus_multiproc_dir,
                                api_server_index=settings.api_server_index)
    metrics.set_cache_config_info(cache_config_labels(
        engine.config.cache, engine.num_gpu_blocks, engine.num_cpu_blocks))
    engine.stats_listeners.append(metrics.update_from_stats)
    for engine_index, stats in enumerate(engine.engine_stats):
        if stats is not None:
            metrics.update_from_stats(stats, engine_index)
    app.add_middleware(_Guard, settings=settings)
    # added last = outermost: it sees (and logs) _Guard's own 400/401 answers too
    app.add_middleware(_AccessLog, metrics=metrics, log=not settings.disable_log_requests,
                       routes=app.router.routes)       # the list the routes below join
    pool = make_tokenizer_pool(engine.config.model.tokenizer_pool_size)
    completion = OpenAIServingCompletion(engine, metrics=metrics, tokenizer_pool=pool)
    chat = OpenAIServingChat(engine, metrics=metrics, tokenizer_pool=pool)
    tokenization = OpenAIServingTokenization(engine, tokenizer_pool=pool)
    if chat_template is not None:
        chat.chat_template = tokenization.chat_template = chat_template
    chat.trust_request_chat_template = settings.trust_request_chat_template
    _set_chat_parsers(chat, settings)
    tokenization.trust_request_chat_template = settings.trust_request_chat_template
    serving_models = OpenAIServingModels(engine, settings.lora_modules)
    completion.models = chat.models = tokenization.models = serving_models
    app.state.engine, app.state.metrics, app.state.draining = engine, metrics, False
    app.state.drain_task = None             # set by the server's shutdown signal handler
    app.state.num_admitting = 0             # admitted requests not yet in the engine (see drain)
    app.state.tokenizer_pool = pool         # run_server shuts it down after the server stops
    add_advisor_route(app, engine, metrics)     # GET /advisor; app.state.advisor

    @app.exception_handler(RequestValidationError)
    async def _validation(raw: Request, exc: RequestValidationError):
        return _json(error_from_validation(exc.errors(), REQUIRED_FIELDS.get(raw.url.path, ()),
                                           raw.headers.get("content-type")))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_, exc: StarletteHTTPException):
        # The framework's own errors (no such route, wrong method, unreadable body) get the
        # OpenAI error body too, not FastAPI's {"detail": ...}.
        response = _json(error_from_http_exception(exc.status_code, exc.detail, exc.__cause__))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _unexpected(raw: Request, exc: Exception):
        return _json(_blame_dead_engine(engine, error_from_exception(
            exc, getattr(raw.state, "request_id", None))))

    @app.get("/health")
    async def health():
        healthy = engine.is_healthy() and not app.state.draining
        return Response(status_code=200 if healthy else 503)

    @app.get("/version")
    async def version():
        return {"version": __version__}

    @app.get("/v1/models")
    async def models():
        return ModelList(data=serving_models.model_cards(ModelCard, engine.config.model.model,
                                                         engine.max_model_len))

    if runtime_lora_updating_allowed():
        add_lora_routes(app, serving_models)

    add_dashboard_route(app)        # GET /dashboard: live charts of /metrics and /advisor

    @app.get("/metrics")
    async def prometheus():
        # The engine pushes its stats each step (stats_listeners): nothing here waits on it.
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
        try:
            engine.check_alive()
        except EngineDeadError as error:
            return _json(error_from_exception(error, raw.state.request_id))
        request_id = raw.state.request_id
        if raw.state.request_id_from_client:    # unique in the engine, still greppable
            request_id = f"{request_id}-{uuid.uuid4().hex[:8]}"
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
        if isinstance(result, ErrorResponse):
            result = _blame_dead_engine(engine, result)
        return _result(result)

    return app


def _set_chat_parsers(chat: OpenAIServingChat, settings: ServerSettings) -> None:
    """The tool-call and reasoning parsers named by ``settings`` (KeyError naming the choices
    for an unknown name)."""
    chat.enable_auto_tools = settings.enable_auto_tool_choice
    if settings.tool_call_parser is not None:
        chat.tool_parser = ToolParserManager.get_tool_parser(settings.tool_call_parser)
    if settings.reasoning_parser is not None:
        chat.reasoning_parser = ReasoningParserManager.get_reasoning_parser(
            settings.reasoning_parser)


def _blame_dead_engine(engine, error: ErrorResponse) -> ErrorResponse:
    """A 500 that happened while the engine core was dying (a send to a core that just
    exited, a socket closed under a request) is the engine's death, not a bug: 503."""
    if error.error.code != 500 or engine.is_healthy():
        return error
    return error_from_exception(engine.dead_error or EngineDeadError("the engine core is gone"))


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
    return await engine.drain(max(0.0, deadline - loop.time()), drain_timeout_s=timeout_s)


async def _unless_disconnected(raw: Request, task: asyncio.Future):
    """The handler's result, or None after cancelling it when the client went away (the
    cancelled engine stream aborts the request and frees its KV blocks). One task waits for
    the client's ``http.disconnect`` (the body is already read, so ``receive`` blocks until
    then), as vLLM's ``with_cancellation`` does: no polling while a request waits in the
    queue, which cost tens of microseconds per waiting request every 50 ms."""
    listener = asyncio.ensure_future(_wait_for_disconnect(raw.receive))
    try:
        await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        listener.cancel()
    if not task.done() and listener.exception() is not None:   # no disconnect seen
        return await task
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    return task.result()


async def _wait_for_disconnect(receive) -> None:
    """Return once ``receive`` (an ASGI receive whose request body was read) reports
    ``http.disconnect``."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _result(result):
    if isinstance(result, ErrorResponse):
        return _json(result)
    if hasattr(result, "__aiter__"):
        return StreamingResponse(result, media_type="text/event-stream")
    return result


def _json(error: ErrorResponse) -> JSONResponse:
    return JSONResponse(error.model_dump(), status_code=error.status_code)


if __name__ == "__main__":
    import sys

    from pagellm.entrypoints.cli.main import main

    sys.exit(main(["serve", *sys.argv[1:]]))


def add_lora_routes(app: FastAPI, models: OpenAIServingModels) -> None:
    """vLLM's runtime adapter routes (only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True):
    200 with a text line, 400 for an adapter that cannot load or a taken name, 404 for
    unloading an unknown name."""

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(body: LoadLoRAAdapterRequest):
        try:
            await asyncio.to_thread(models.add_adapter, body.lora_name, body.lora_path)
        except Exception as error:
            return _json(error_from_exception(error))
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadLoRAAdapterRequest):
        try:
            models.remove_adapter(body.lora_name)
        except Exception as error:
            return _json(error_from_exception(error))
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
