"""``pagellm serve [MODEL]``: the OpenAI-compatible HTTP server.

Every engine argument is a flag (generated from the config dataclasses), plus the server's
own: --host, --port, --api-key (or PAGELLM_API_KEY), --chat-template,
--trust-request-chat-template, --enable-auto-tool-choice, --tool-call-parser,
--reasoning-parser, --lora-modules, --disable-log-requests, --disable-log-stats, --drain-timeout,
--api-server-count (N > 1: N API server processes share the port, see ``api_servers``).
Exit status: 0 after a clean shutdown, 1 when the engine core died, 2 for a bad option (a port
out of range, a busy port or an unknown host is found before the model loads: the socket is
bound first; the server listens once the model is ready).
``--config FILE`` reads flags from a YAML/JSON file (keys are flag names); flags typed on the
command line override the file (``pagellm.entrypoints.cli.config_file``).
Same as ``python -m pagellm serve`` and ``python -m pagellm.entrypoints.openai.api_server``.

Shutdown (SIGTERM or SIGINT): the listening socket stays open while /health answers 503 (so a
load balancer takes the server out) and new generation requests get 503; requests already in
flight run to completion for up to --drain-timeout seconds; the rest are aborted with a 503
error; then the server stops. A second signal stops it at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
from pathlib import Path

from pagellm.config.cli_args import add_engine_args, engine_kwargs_from_args
from pagellm.entrypoints.openai.serving_models import parse_lora_modules
from pagellm.errors import ClientError, EngineDeadError

logger = logging.getLogger("pagellm.server")

_CLOSE_TIMEOUT_S = 5.0
"""After the drain: how long uvicorn waits for responses still being written (the aborted
requests' error bodies) before it closes their connections."""


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                        help="model directory, .gguf file or 'default' (same as --model)")
    server = parser.add_argument_group("server")
    server.add_argument("--config", metavar="FILE", default=None,
                        help="a YAML or JSON file of flags (keys are flag names, e.g. "
                             "'max-num-seqs: 128'); flags on the command line win over it")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    server.add_argument("--port", type=port_number, default=8000,
                        help="port to listen on, 0..65535 (0: any free port)")
    server.add_argument("--api-key", default=os.environ.get("PAGELLM_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on every route but /health "
                             "(default: $PAGELLM_API_KEY)")
    server.add_argument("--chat-template", default=None,
                        help="a Jinja chat template, or a file holding one, for every chat request")
    server.add_argument("--trust-request-chat-template", action="store_true",
                        help="accept a chat_template sent in a request (chat and /tokenize); "
                             "without it such requests get a 400. Every template renders in a "
                             "Jinja sandbox with time, memory and size bounds either way")
    add_chat_parser_args(server)
    server.add_argument("--lora-modules", nargs="+", default=None, metavar="NAME=PATH",
                        help="LoRA adapters served by name (needs --enable-lora): name=path or "
                             'JSON {"name": .., "path": .., "base_model_name": ..}; a request '
                             "selects one with its 'model' field")
    server.add_argument("--disable-log-requests", action="store_true", help="no per-request log line")
    server.add_argument("--disable-log-stats", action="store_true", help="no periodic stats log line")
    server.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds to let in-flight requests finish after SIGTERM")
    server.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024,
                        help="largest request body accepted")
    server.add_argument("--api-server-count", "-asc", type=api_server_count, default=1,
                        help="API server processes sharing the port, each a client of every "
                             "engine core (tokenization, detokenization and SSE spread over "
                             "processes: for data parallel at high request rates); >= 1")
    add_engine_args(parser)


def add_chat_parser_args(group) -> None:
    """vLLM's tool-calling and reasoning flags (the parsers' names are their registries')."""
    from pagellm.entrypoints.openai.tool_parsers import ToolParserManager
    from pagellm.reasoning import ReasoningParserManager

    group.add_argument("--enable-auto-tool-choice", action="store_true",
                       help="let tool_choice 'auto' (the default when a request sends tools) "
                            "parse tool calls out of the model's text; needs --tool-call-parser")
    group.add_argument("--tool-call-parser", default=None,
                       choices=sorted(ToolParserManager.tool_parsers),
                       help="the model's tool call format (qwen2_5 and qwen3 are hermes)")
    group.add_argument("--reasoning-parser", default=None,
                       choices=sorted(ReasoningParserManager.reasoning_parsers),
                       help="split <think> reasoning into reasoning_content / reasoning")


def check_chat_parser_args(args: argparse.Namespace) -> None:
    """ClientError for --enable-auto-tool-choice without --tool-call-parser (vLLM's rule)."""
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise ClientError("--enable-auto-tool-choice requires --tool-call-parser",
                          param="tool_call_parser")


def port_number(text: str) -> int:
    """argparse type of --port: an integer in 0..65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: not an integer") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: must be in 0..65535")
    return port


def api_server_count(text: str) -> int:
    """argparse type of --api-server-count: an integer >= 1."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: not an integer") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"invalid count {count}: must be >= 1")
    return count


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) but not yet listening (connections are refused until
    uvicorn listens, once the model is loaded). ClientError naming the host or port when the
    host does not resolve or the port is taken or not ours to use."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ClientError(f"--host {host!r} cannot be resolved: {error.strerror}",
                          param="host") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            reason = "is already in use"
        elif error.errno == errno.EADDRNOTAVAIL:
            reason = "is not an address of this machine"
        else:
            reason = f"cannot be bound: {error.strerror}"
        raise ClientError(f"--port {port} on --host {host} {reason}", param="port") from None
    sock.set_inheritable(True)
    return sock


def main(args: argparse.Namespace) -> int:
    check_chat_parser_args(args)
    _precheck_lora_modules(args)                # a bad adapter fails before the model loads
    sock = bind_socket(args.host, args.port)     # before the model loads: fail fast
    try:
        if args.api_server_count > 1:
            from pagellm.entrypoints.cli.api_servers import run_api_servers
            return run_api_servers(args, sock)
        return asyncio.run(run_server(args, sock))
    finally:
        sock.close()


def _precheck_lora_modules(args: argparse.Namespace) -> None:
    """``--lora-modules`` checked before the model loads: well formed, ``--enable-lora`` on,
    each adapter's files, PEFT options and rank (``max_lora_rank``). ClientError otherwise;
    the checks that need the base model's shapes run when the server registers them."""
    from pagellm.lora.peft import precheck_adapter

    modules = parse_lora_modules(args.lora_modules)
    if not modules:
        return
    kwargs = engine_kwargs_from_args(args)
    if not kwargs.get("enable_lora"):
        raise ClientError("--lora-modules needs --enable-lora", param="lora_modules")
    names = [module.name for module in modules]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ClientError(f"--lora-modules names {repeated} more than once", param="lora_modules")
    base_name = (kwargs.get("served_model_name") or args.model_tag or kwargs.get("model")
                 or "default")
    if base_name in names:
        raise ClientError(f"--lora-modules {base_name!r} is the base model's name: give the "
                          "adapter another name", param="lora_modules")
    for module in modules:
        precheck_adapter(module.path, kwargs.get("max_lora_rank", 16))


async def run_server(args: argparse.Namespace, sock: socket.socket | None = None,
                     role=None) -> int:
    """Load the engine, then serve on ``sock`` (bound by ``bind_socket``; bound here from
    --host/--port when None) until a drain or the engine's death; returns the exit status.
    ``role``: an ``api_servers.APIServerRole`` when this is one API server of several (it
    connects to the cores the supervisor started, and drains on SIGTERM only)."""
    import uvicorn

    from pagellm.engine.async_engine import AsyncLLM
    from pagellm.entrypoints.openai.api_server import ServerSettings, build_app
    from pagellm.metrics.stats_logger import StatsLogger, interval_from_env

    # a bad value fails before the engine starts
    stats_interval_s = None if args.disable_log_stats else interval_from_env()

    if sock is None:
        sock = bind_socket(args.host, args.port)
    engine_kwargs = engine_kwargs_from_args(args)
    if args.model_tag is not None:
        engine_kwargs["model"] = args.model_tag
    if role is None:
        engine = await AsyncLLM.from_engine_args(**engine_kwargs)
    else:
        engine = await role.connect_engine()
    first = role is None or role.index == 0     # logs once what every API server would
    _apply_scenario_server_flags(args, engine.config.scenario.scenario, first)
    if first:
        _log_config_lint(engine.config)
    settings = ServerSettings(api_key=args.api_key, max_body_bytes=args.max_body_bytes,
                              max_num_queued_requests=engine.config.scheduler.max_num_queued_requests,
                              disable_log_requests=args.disable_log_requests,
                              trust_request_chat_template=args.trust_request_chat_template,
                              enable_auto_tool_choice=args.enable_auto_tool_choice,
                              tool_call_parser=args.tool_call_parser,
                              reasoning_parser=args.reasoning_parser,
                              lora_modules=parse_lora_modules(args.lora_modules),
                              api_server_index=0 if role is None else role.index,
                              prometheus_multiproc_dir=None if role is None else
                              role.prometheus_dir)
    app = build_app(engine, settings, _chat_template(args.chat_template))
    # log_config=None: uvicorn's loggers go through pagellm's format (logger.init_logging);
    # access_log=False: the app's own access log line carries the request id and latency.
    # lifespan="off": the app has no startup/shutdown handlers, and a forced exit (a second
    # signal) skips uvicorn's lifespan shutdown, leaving its task to be cancelled at loop close
    # with an ERROR traceback.
    config = uvicorn.Config(app, log_config=None, log_level="info", access_log=False,
                            timeout_graceful_shutdown=_CLOSE_TIMEOUT_S, lifespan="off")
    server = _Server(config, f"Serving {engine.served_model_name} on "
                             f"{_url(sock.getsockname())}")
    loop = asyncio.get_running_loop()
    # several API servers: the supervisor forwards SIGTERM/SIGINT as its drain signal
    for sig in (signal.SIGTERM, signal.SIGINT) if role is None else (role.drain_signal,):
        loop.add_signal_handler(sig, _begin_drain, server, app, engine, args.drain_timeout)
    tasks = [asyncio.create_task(_watch_engine(engine, server))]
    if not args.disable_log_stats and first:
        stats_logger = StatsLogger(app.state.metrics, stats_interval_s,
                                   extra_line=_advisor_line(app.state.advisor))
        tasks.append(asyncio.create_task(stats_logger.run()))
    try:
        if role is not None:
            await role.wait_for_peers()     # all listen together (each holds the engine now)
        # returns once the drain (or engine death) set should_exit
        await server.serve(sockets=[sock])
    finally:
        app.state.draining = True
        if app.state.drain_task is not None:
            tasks.append(app.state.drain_task)
        for task in tasks:
            task.cancel()
        died = engine.dead_error
        if died is None and not engine.is_healthy():
            try:    # not errored yet when a core was killed a moment ago (reported late)
                engine.check_alive()
            except EngineDeadError as error:
                died = error
        # a second signal asked to stop now: the core is killed at once (its clean exit took
        # 1.7 s on this CPU, with the event loop blocked and in-flight requests waiting)
        await engine.shutdown(FORCED_SHUTDOWN_S if server.force_exit else 10.0)
        app.state.tokenizer_pool.shutdown(wait=False, cancel_futures=True)
    if died:
        logger.error("the engine core died: %s", died)
        return 1
    return 0


def _apply_scenario_server_flags(args: argparse.Namespace, scenario: str | None,
                                 log: bool = True) -> None:
    """Turn on the server flags a scenario preset asks for (batch_processing:
    --disable-log-requests)."""
    from pagellm.config.presets import SCENARIOS

    for flag in SCENARIOS[scenario].server_flags if scenario else ():
        if not getattr(args, flag):
            setattr(args, flag, True)
            if log:
                logger.info("scenario %s: --%s on", scenario, flag.replace("_", "-"))


def _log_config_lint(config) -> None:
    """Log the guides' anti-patterns this configuration shows (warnings; notes at INFO)."""
    from pagellm.tuning.linter import lint_config

    for finding in lint_config(config):
        level = logging.WARNING if finding.severity == "warning" else logging.INFO
        logger.log(level, "config lint: %s", finding.line())


def _advisor_line(monitor):
    from pagellm.tuning.advisor import format_line

    return lambda interval_s: format_line(monitor.report(interval_s).findings)


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises a captured SIGTERM at exit (status -15); pagellm drains and exits 0,
        so it installs its own handlers instead. ``serving_line`` is logged once the socket
        listens."""

        serving_line = ""

        @contextlib.contextmanager
        def capture_signals(self):
            yield

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                logger.info("%s", self.serving_line)

    return Server


def _Server(config, serving_line: str = ""):
    server = _server_class()(config)
    server.serving_line = serving_line
    return server


def _url(address) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _begin_drain(server, app, engine, timeout_s: float) -> None:
    """SIGTERM/SIGINT: start the drain (see the module docstring); a second signal exits now."""
    if app.state.draining:
        logger.warning("second shutdown signal: stopping without waiting for requests")
        server.force_exit = server.should_exit = True
        return
    logger.info("shutdown requested: draining in-flight requests (up to %g s)", timeout_s)
    app.state.draining = True
    app.state.drain_task = asyncio.get_running_loop().create_task(
        _drain_then_stop(server, app, engine, timeout_s))


async def _drain_then_stop(server, app, engine, timeout_s: float) -> None:
    from pagellm.entrypoints.openai.api_server import drain

    try:
        aborted = await drain(app, engine, timeout_s)
        if aborted:
            logger.warning("drain timeout (%g s): aborted %d unfinished requests", timeout_s,
                           len(aborted))
        else:
            logger.info("drained: no request in flight")
    except Exception:           # a failed drain must still stop the server
        logger.exception("the drain failed; stopping now")
    finally:
        server.should_exit = True


FORCED_SHUTDOWN_S = 0.0
"""After a second SIGTERM/SIGINT, how long the engine core gets to exit before it is killed."""

DEAD_ENGINE_HEALTH_S = 1.0
"""After the engine core dies, how long the server still answers (/health 503, requests 503)
before it stops listening and exits 1: a health probe polling every few hundred ms sees the
503 instead of only a refused connection."""


async def _watch_engine(engine, server) -> None:
    """Stop the server when the engine core dies, so the process exits non-zero."""
    while not engine.errored and engine.is_healthy():
        await asyncio.sleep(0.2)
    logger.error("engine core is gone; shutting the server down in %.1f s", DEAD_ENGINE_HEALTH_S)
    await asyncio.sleep(DEAD_ENGINE_HEALTH_S)
    server.should_exit = True


def _chat_template(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value)
    return path.read_text() if path.is_file() else value
