"""``pagellm serve --api-server-count N`` (vLLM's flag, alias ``-asc``) with N > 1: N API
server processes in front of the engine cores.

The serve process becomes a supervisor. It binds the listening socket (``serve.bind_socket``),
resolves the engine configuration, starts the ``data_parallel_size`` engine cores for N
clients (``dp_client.start_engine_cores``), then spawns N API server processes that inherit
the socket: each one is a whole OpenAI front end (tokenization, detokenization, SSE, its own
DP load balancer) and a client of every core (client index = its API server index; each core
sends a request's outputs back to the API server that sent it, and its stats to all). They
start listening together, once every one of them is connected (a barrier), and the kernel
spreads the connections over them. ``/metrics`` aggregates all processes through
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``: the user's, or a private
temporary directory removed at exit; see ``metrics.prometheus``).

Lifecycle, supervised here:
- SIGTERM / SIGINT reach the supervisor, which sends ``DRAIN_SIGNAL`` to every API server:
  each drains as a single server does (a second signal stops them at once). Once all have
  exited, the engine cores get ``ENGINE_STOP_SIGNAL`` (they shut their executors down) and
  the supervisor exits 0. The API servers and cores ignore SIGTERM and SIGINT themselves, so
  a signal sent to the whole process group (Ctrl-C, a service manager) counts once.
- An engine core that dies: every API server sees it (``/health`` 503) and exits 1 within
  ``serve.DEAD_ENGINE_HEALTH_S``; the supervisor stops what is left and exits 1.
- An API server that exits on its own (a crash, or a start-up error): the others are stopped
  and the supervisor exits with its status (2 for a ClientError at start-up, else 1 or more).
  Each engine core sees that server's connection close and aborts its requests at once (no
  one would read their outputs), so the others drain only their own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass

import msgspec

from pagellm.config.cli_args import engine_kwargs_from_args
from pagellm.errors import ClientError

logger = logging.getLogger("pagellm.server")

PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
DRAIN_SIGNAL = signal.SIGUSR2
"""What the supervisor sends an API server to start its drain (a second one: stop now)."""
SERVER_EXIT_GRACE_S = 10.0
"""After an engine core died: how long the API servers get to exit by themselves (they
answer /health 503 for ``DEAD_ENGINE_HEALTH_S`` first) before they are killed."""
CORE_STOP_TIMEOUT_S = 10.0
"""How long a SIGTERMed engine core may take to shut down before it is killed."""


@dataclass
class APIServerRole:
    """What API server ``index`` of ``count`` needs (pickled into its process)."""

    index: int
    count: int
    config_json: bytes
    """The resolved EngineConfig as msgspec JSON (the same the cores got)."""
    socket_dir: str
    core_pids: list[int]
    prometheus_dir: str
    barrier: object
    """A spawn-context Barrier(count): every API server listens once all are connected."""
    startup_timeout_s: float = 600.0

    @property
    def drain_signal(self) -> int:
        return DRAIN_SIGNAL

    async def connect_engine(self):
        """This API server's ``AsyncLLM``, a client of every core (``AsyncLLM.connect``)."""
        from pagellm.config.engine_args import EngineConfig
        from pagellm.engine.async_engine import AsyncLLM

        config = msgspec.json.decode(self.config_json, type=EngineConfig)
        return await AsyncLLM.connect(config, self.socket_dir, self.core_pids, self.index,
                                      self.startup_timeout_s)

    async def wait_for_peers(self) -> None:
        """Block until every API server is connected; BrokenBarrierError when the
        supervisor gave up (another one failed)."""
        await asyncio.to_thread(self.barrier.wait, self.startup_timeout_s)


def run_api_servers(args: argparse.Namespace, sock: socket.socket) -> int:
    """The supervisor (see the module docstring); returns the exit status."""
    from pagellm.engine.dp_client import start_engine_cores
    from pagellm.engine.llm_engine import resolve_config
    from pagellm.metrics.stats_logger import interval_from_env

    if not args.disable_log_stats:
        interval_from_env()                     # a bad value fails before anything starts
    engine_kwargs = engine_kwargs_from_args(args)
    if args.model_tag is not None:
        engine_kwargs["model"] = args.model_tag
    config, _ = resolve_config(**engine_kwargs)
    prometheus_dir, own_dir = _prometheus_dir()
    cores = start_engine_cores(config, args.api_server_count)
    try:
        barrier = multiprocessing.get_context("spawn").Barrier(args.api_server_count)
        servers = _spawn_api_servers(args, sock, msgspec.json.encode(config), cores.socket_dir,
                                     cores.pids, prometheus_dir, barrier)
        logger.info("%d API server processes (pids %s) in front of engine cores (pids %s)",
                    len(servers), [p.pid for p in servers], cores.pids)
        return _Supervisor(cores.processes, servers, barrier).run()
    finally:
        _stop_cores(cores.processes)
        shutil.rmtree(cores.socket_dir, ignore_errors=True)
        if own_dir:
            shutil.rmtree(prometheus_dir, ignore_errors=True)


def _prometheus_dir() -> tuple[str, bool]:
    """(the multiprocess directory, whether it is ours to remove); exported in this
    process's environment so that the API servers spawned next inherit it."""
    existing = os.environ.get(PROMETHEUS_DIR_ENV)
    if existing:
        os.makedirs(existing, exist_ok=True)
        return existing, False
    path = tempfile.mkdtemp(prefix="pagellm-prometheus-")
    os.environ[PROMETHEUS_DIR_ENV] = path
    return path, True


def _spawn_api_servers(args, sock, config_json: bytes, socket_dir: str, core_pids: list[int],
                       prometheus_dir: str, barrier) -> list[multiprocessing.Process]:
    context = multiprocessing.get_context("spawn")
    count = args.api_server_count
    servers = []
    for index in range(count):
        role = APIServerRole(index, count, config_json, socket_dir, core_pids,
                             prometheus_dir, barrier)
        # the socket travels as a duplicated file descriptor (multiprocessing's reduction)
        process = context.Process(target=_api_server_main, args=(args, sock, role),
                                  name=f"pagellm-api-server-{index}")
        process.start()
        servers.append(process)
    return servers


def _api_server_main(args: argparse.Namespace, sock: socket.socket, role: APIServerRole) -> None:
    """Entry point of an API server process: serve until drained (0), the engine's death
    (1) or a start-up error (2 for a ClientError)."""
    from pagellm.entrypoints.cli.serve import run_server
    from pagellm.errors import EngineDeadError
    from pagellm.logger import init_logging

    init_logging(f"api-server-{role.index}")
    for sig in (signal.SIGINT, signal.SIGTERM):     # the supervisor's DRAIN_SIGNAL instead
        signal.signal(sig, signal.SIG_IGN)
    try:
        code = asyncio.run(run_server(args, sock, role))
    except ClientError as error:
        logger.error("API server %d: %s", role.index, error)
        code = 2
    except (EngineDeadError, threading.BrokenBarrierError) as error:
        logger.error("API server %d could not start: %s", role.index, error or "peer failed")
        code = 1
    # Everything is closed by now; the interpreter's own teardown took seconds here after an
    # engine core died (blocked in C, no Python frame), which only delays the exit status.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Supervisor:
    """Waits on the engine cores and API servers and applies the module docstring's rules."""

    def __init__(self, cores: list[multiprocessing.Process],
                 servers: list[multiprocessing.Process], barrier):
        self.cores = cores
        self.servers = servers
        self.barrier = barrier
        self.num_signals = 0
        self.exit_code = 0

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while any(server.is_alive() for server in self.servers):
                self._wait_once()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.exit_code

    def _on_signal(self, signum, frame) -> None:
        self.num_signals += 1
        logger.info("signal %d: stopping the API servers%s", signum,
                    " at once" if self.num_signals > 1 else " (drain)")
        self._signal_servers(DRAIN_SIGNAL)

    def _signal_servers(self, signum: int) -> None:
        for server in self.servers:
            if server.is_alive():
                os.kill(server.pid, signum)

    def _wait_once(self) -> None:
        processes = [*self.cores, *self.servers]
        multiprocessing.connection.wait([p.sentinel for p in processes if p.is_alive()]
                                        or [], timeout=1.0)
        dead_core = next((i for i, core in enumerate(self.cores) if not core.is_alive()), None)
        if dead_core is not None:
            return self._on_core_death(dead_core)
        for index, server in enumerate(self.servers):
            if not server.is_alive() and server.exitcode != 0 and self.exit_code == 0:
                self._on_server_failure(index, server.exitcode)

    def _on_core_death(self, engine_index: int) -> None:
        core = self.cores[engine_index]
        logger.error("engine core %d (pid %d) exited with code %s; waiting for the API "
                     "servers to exit", engine_index, core.pid, core.exitcode)
        self.exit_code = self.exit_code or 1
        for server in self.servers:
            server.join(SERVER_EXIT_GRACE_S)
            if server.is_alive():
                server.kill()
                server.join(5)

    def _on_server_failure(self, index: int, exitcode: int | None) -> None:
        logger.error("API server %d exited with code %s; stopping the others", index, exitcode)
        self.exit_code = exitcode if exitcode and exitcode > 0 else 1
        self.barrier.abort()        # the others, still starting, give up instead of waiting
        self._signal_servers(DRAIN_SIGNAL)


def _stop_cores(cores: list[multiprocessing.Process]) -> None:
    """Stop every live core (a clean shutdown of its executor), then kill stragglers."""
    from pagellm.engine.core_client import stop_core_process

    for core in cores:
        if core.is_alive():
            stop_core_process(core)
    for core in cores:
        core.join(CORE_STOP_TIMEOUT_S)
        if core.is_alive():
            logger.warning("engine core pid %d did not stop in %g s: killing it", core.pid,
                           CORE_STOP_TIMEOUT_S)
            core.kill()
            core.join(5)
