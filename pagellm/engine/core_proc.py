"""The engine-core process: an EngineCore driven by messages over ZMQ.

``start_engine_core_process`` starts it with multiprocessing's "spawn" context. The only
thing Python pickles is the start-up arguments (the EngineConfig as msgspec JSON bytes and
two socket addresses); every request, output and control message afterwards is a msgspec
Struct from ``messages.py`` encoded with msgpack.

Sockets (the client binds both, on ipc:// paths in its private temp dir; the core connects):
    input   client PUSH -> core PULL   EngineCoreRequest | AbortRequests | UtilityCall
    output  core PUSH -> client PULL   EngineReady | EngineCoreOutputs | UtilityResult | EngineDead

Several clients (``--api-server-count N``: N API server processes, each a client of every
core): the core's one PULL socket connects to the N clients' input addresses (fair-queued), and
it holds one PUSH socket per client. A request carries the index of the client that sent it;
its outputs go back to that client only (``split_outputs``), while every client gets each
pushed ``EngineStats`` (every API server's load balancer sees every replica's load),
``EngineReady`` and ``EngineDead``; a utility result goes to its caller. A client whose
connection closes (its process died) has its requests aborted and gets nothing more.

Signals: SIGINT and SIGTERM are ignored (they reach the whole process group, e.g. from
Ctrl-C or a service manager; the API process, or the serve supervisor, decides how to shut
down: in-flight requests drain first); ``ENGINE_STOP_SIGNAL`` (SIGUSR1) stops the core as a
``shutdown`` call does, its executor and workers included.

Exit codes: 0 after a ``shutdown`` call or ``ENGINE_STOP_SIGNAL``, or when the parent process
is gone; 1 after an error, which is first reported to the clients as ``EngineDead``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback

import msgspec
import numpy as np
import zmq

from pagellm.config.engine_args import EngineConfig
from pagellm.engine.engine_core import EngineCore, make_engine_core
from pagellm.engine.messages import (AbortRequests, EngineCoreOutputs, EngineCoreRequest,
                                     EngineDead, EngineReady, UtilityCall, UtilityResult,
                                     client_message_decoder, encoder)
from pagellm.core.stats import EngineStats
from pagellm.errors import ClientError
from pagellm.logger import init_logging

logger = logging.getLogger(__name__)

ENGINE_STOP_SIGNAL = signal.SIGUSR1
IDLE_POLL_MS = 1000          # how often an idle core checks that its parent is still alive
MESSAGE_LINGER_MS = 2000    # time the last message (EngineDead, shutdown answer) may take


class _Shutdown(Exception):
    """A shutdown call arrived."""


class _ParentGone(Exception):
    """The API process exited; nobody is left to read outputs."""


def split_outputs(outputs: EngineCoreOutputs, client_of: dict[str, int],
                  num_clients: int) -> list[EngineCoreOutputs]:
    """``outputs`` split by the client each request came from (``client_of``: request id ->
    client index; a request not in it, e.g. aborted meanwhile, is dropped): one batch per
    client, in client order, each with the columns of its requests only (tokens and logprob
    rows sliced along) and ``stats``/``timestamp`` copied to every batch."""
    offsets = outputs.token_offsets()
    rows_of: list[list[int]] = [[] for _ in range(num_clients)]
    for row, request_id in enumerate(outputs.req_ids):
        client_index = client_of.get(request_id)
        if client_index is not None:
            rows_of[client_index].append(row)
    return [_select_rows(outputs, rows, offsets) for rows in rows_of]


def _select_rows(outputs: EngineCoreOutputs, rows: list[int],
                 offsets: list[int]) -> EngineCoreOutputs:
    """The requests at ``rows`` of ``outputs`` (``offsets``: its ``token_offsets()``)."""
    token_rows = [t for row in rows for t in range(offsets[row], offsets[row + 1])]
    req_ids = [outputs.req_ids[row] for row in rows]
    prompt_logprobs = {request_id: outputs.new_prompt_logprobs[request_id] for request_id in
                       req_ids if request_id in outputs.new_prompt_logprobs}
    logprobs = outputs.new_logprobs
    return EngineCoreOutputs(
        req_ids=req_ids,
        num_new_tokens=[outputs.num_new_tokens[row] for row in rows],
        new_token_ids=[outputs.new_token_ids[t] for t in token_rows],
        finish_reasons=[outputs.finish_reasons[row] for row in rows],
        stop_reasons=[outputs.stop_reasons[row] for row in rows],
        num_cached_tokens=[outputs.num_cached_tokens[row] for row in rows],
        first_scheduled_times=[outputs.first_scheduled_times[row] for row in rows],
        num_preemptions=[outputs.num_preemptions[row] for row in rows],
        new_logprobs=None if logprobs is None else logprobs.rows(
            np.asarray(token_rows, dtype=np.int64)),
        new_prompt_logprobs=prompt_logprobs, stats=outputs.stats, timestamp=outputs.timestamp)


class EngineCoreProc:
    """Runs in the engine-core process: drain input, step, send outputs, repeat.
    ``output_sockets``: one per client, by client index (see the module docstring)."""

    def __init__(self, engine_core: EngineCore, input_socket: zmq.Socket,
                 output_sockets: list[zmq.Socket]):
        self.engine_core = engine_core
        self.input_socket = input_socket
        self.output_sockets = output_sockets
        self.client_of: dict[str, int] = {}
        self.num_received = [0] * len(output_sockets)
        """Core requests received from each client since start (``EngineStats``)."""
        """Unfinished request id -> its client (only with several clients)."""
        self.parent_pid = os.getppid()
        self.monitors = ([socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
                          for socket in output_sockets] if len(output_sockets) > 1 else [])
        """With several clients: one monitor per output socket, reporting a client (API server
        process) that went away."""
        self.gone: set[int] = set()
        """Clients that disconnected: their requests were aborted; nothing is sent to them."""
        self.last_pushed: EngineStats | None = None
        self.iteration_tokens: list[int] = []     # per forward pass, since the last push
        engine_core.on_scheduled = self._push_stats_if_changed

    def run_busy_loop(self) -> None:
        """Returns on a shutdown call; raises _ParentGone when the API process is gone, and
        whatever a step raises. Pushes the outputs and stats of every step that ran a forward
        pass (see ``core.stats``), and stats alone when the gauges changed otherwise."""
        while True:
            try:
                self._drain_input()
            except _Shutdown:
                return
            if self.parent_pid != os.getppid():
                raise _ParentGone
            if self.monitors:
                self._abort_requests_of_gone_clients()
            if not self.engine_core.has_unfinished_requests():
                self._push_stats_if_changed()       # e.g. the last request was aborted
                continue
            num_steps = self.engine_core.num_steps
            outputs = self._step()
            if self.engine_core.num_steps != num_steps:
                self.iteration_tokens.append(self.engine_core.last_step_num_tokens)
            if outputs or self.iteration_tokens:
                self._push(outputs)

    def _step(self):
        """One engine step; a failure names the requests it was running."""
        try:
            return self.engine_core.step()
        except Exception:
            running = [request.request_id for request in self.engine_core.scheduler.running]
            logger.error("the step failed while running requests %s", running)
            raise

    def _abort_requests_of_gone_clients(self) -> None:
        """A client whose connection closed (its API server process exited or was killed,
        with ``--api-server-count`` > 1) will never read its outputs: abort its requests now
        instead of running them to max_tokens while the other servers drain, and stop
        sending to it (its queue would fill and block the core)."""
        from zmq.utils.monitor import recv_monitor_message

        for client_index, monitor in enumerate(self.monitors):
            while monitor.poll(0):
                event = recv_monitor_message(monitor)
                if event["event"] != zmq.EVENT_DISCONNECTED or client_index in self.gone:
                    continue
                self.gone.add(client_index)
                orphans = [request_id for request_id, client in self.client_of.items()
                           if client == client_index]
                aborted = self.engine_core.abort_requests(orphans)
                for request_id in orphans:
                    self.client_of.pop(request_id, None)
                logger.warning("API server %d disconnected: aborted its %d requests",
                               client_index, len(aborted))

    def _push(self, outputs) -> None:
        stats = self.engine_core.stats()
        stats.iteration_tokens, self.iteration_tokens = self.iteration_tokens, []
        stats.num_requests_received = list(self.num_received)
        self.last_pushed = stats
        outputs.stats, outputs.timestamp = stats, time.time()
        if len(self.output_sockets) == 1:
            return self._send(outputs)
        for client_index, batch in enumerate(
                split_outputs(outputs, self.client_of, len(self.output_sockets))):
            self._send(batch, client_index)
        for request_id in outputs.finished_req_ids():
            self.client_of.pop(request_id, None)

    def _push_stats_if_changed(self) -> None:
        """A stats-only push when running/waiting/KV usage moved since the last push (cheap:
        three numbers compared), so the API process shows a long step's batch during it."""
        if not self.engine_core.stats().same_gauges(self.last_pushed):
            self._push(EngineCoreOutputs())

    def _drain_input(self) -> None:
        """Handle every queued message; block (up to IDLE_POLL_MS) only when there is no work."""
        idle = not self.engine_core.has_unfinished_requests()
        if idle and not self.input_socket.poll(IDLE_POLL_MS):
            return
        while self.input_socket.poll(0):
            self._handle(client_message_decoder.decode(self.input_socket.recv(copy=False)))

    def _handle(self, message) -> None:
        core = self.engine_core
        if isinstance(message, EngineCoreRequest):
            if len(self.output_sockets) > 1:
                self.client_of[message.request_id] = message.client_index
            self.num_received[message.client_index] += 1
            core.add_request(message.to_request())
        elif isinstance(message, AbortRequests):
            aborted = core.abort_requests(message.request_ids)
            for request_id in message.request_ids:
                self.client_of.pop(request_id, None)
            if aborted and message.finished:
                logger.debug("freed requests finished by a stop string: %s", ", ".join(aborted))
            elif aborted:
                logger.info("aborted requests %s", ", ".join(aborted))
        elif isinstance(message, UtilityCall):
            self._handle_utility(message)

    def _handle_utility(self, call: UtilityCall) -> None:
        core = self.engine_core
        if call.method == "shutdown":
            core.abort_requests(list(core.scheduler.requests))
            self._send(UtilityResult(call.call_id), call.client_index)
            raise _Shutdown
        stats = core.stats() if call.method == "stats" else None
        self._send(UtilityResult(call.call_id, stats=stats), call.client_index)

    def _send(self, message, client_index: int = 0) -> None:
        if client_index not in self.gone:
            _send(self.output_sockets[client_index], message, self.parent_pid)


def _send(socket: zmq.Socket, message, parent_pid: int) -> None:
    """Send, waiting while the client is slow to read but not once it is gone."""
    data = encoder.encode(message)
    while True:
        try:
            return socket.send(data, copy=False)
        except zmq.Again:
            if parent_pid != os.getppid():
                raise _ParentGone from None


def _exit_on_stop_signal(signum, frame) -> None:
    """``ENGINE_STOP_SIGNAL`` (vLLM's engine core does so on SIGTERM): leave the busy loop
    through SystemExit, so the executor and workers are shut down on the way out (exit 0)."""
    signal.signal(ENGINE_STOP_SIGNAL, signal.SIG_IGN)
    raise SystemExit(0)


def _connect_sockets(context: zmq.Context, input_addresses: list[str],
                     output_addresses: list[str]) -> tuple[zmq.Socket, list[zmq.Socket]]:
    """The core's PULL socket connected to every client's input address, and one PUSH socket
    per client output address (same order: the client index)."""
    input_socket = context.socket(zmq.PULL)
    for address in input_addresses:
        input_socket.connect(address)
    output_sockets = []
    for address in output_addresses:
        output_socket = context.socket(zmq.PUSH)
        output_socket.setsockopt(zmq.SNDTIMEO, IDLE_POLL_MS)
        output_socket.connect(address)
        output_sockets.append(output_socket)
    return input_socket, output_sockets


def run_engine_core(config_json: bytes, input_addresses: list[str],
                    output_addresses: list[str]) -> None:
    """Entry point of the spawned process; exits with the code documented above. One input
    and one output address per client (the client index is the position)."""
    # Ctrl-C reaches the whole process group: the API process decides how to shut down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(ENGINE_STOP_SIGNAL, _exit_on_stop_signal)
    # "engine-core", or "engine-core-<i>" for data-parallel replica i
    init_logging(multiprocessing.current_process().name.removeprefix("pagellm-"))
    context = zmq.Context()
    input_socket, output_sockets = _connect_sockets(context, input_addresses, output_addresses)
    parent_pid = os.getppid()
    exit_code = 0
    engine_core = None
    try:
        engine_core = _build_engine_core(config_json)
        # vLLM's freeze_gc_heap: the start-up objects (model, tokenizer, caches) leave the
        # cyclic collector's generations, so the collections that steps trigger scan only the
        # objects made since (shorter pauses: the step-time tail).
        gc.collect()
        gc.freeze()
        vocab_size = engine_core.executor.vocab_size
        ready = EngineReady(vocab_size, engine_core.num_blocks, os.getpid(),
                            engine_core.num_swap_blocks)
        for output_socket in output_sockets:
            _send(output_socket, ready, parent_pid)
        EngineCoreProc(engine_core, input_socket, output_sockets).run_busy_loop()
    except _ParentGone:
        logger.warning("engine core: the API process is gone; exiting")
    except Exception as error:      # reported to the client, then exit 1
        exit_code = 1
        client_error = isinstance(error, ClientError) and engine_core is None
        # A config the machine cannot serve (the KV cache does not fit) is the user's to fix:
        # one line, here and in the API process; anything else is a bug worth its traceback.
        logger.error("engine core failed: %s", error, exc_info=not client_error)
        dead = EngineDead(f"{type(error).__name__}: {error}" if not client_error else str(error),
                          "" if client_error else traceback.format_exc(), client_error=client_error)
        try:
            for output_socket in output_sockets:
                _send(output_socket, dead, parent_pid)
        except _ParentGone:
            pass
    finally:
        signal.signal(ENGINE_STOP_SIGNAL, signal.SIG_IGN)   # the shutdown below runs to its end
        if engine_core is not None:
            engine_core.shutdown()
        gc.unfreeze()       # let the exit's collection reach the start-up objects again
        input_socket.close(linger=0)
        for output_socket in output_sockets:
            output_socket.close(linger=MESSAGE_LINGER_MS)
        context.term()
    sys.exit(exit_code)


def _build_engine_core(config_json: bytes) -> EngineCore:
    from pagellm.models.hf_config import load_hf_config

    config = msgspec.json.decode(config_json, type=EngineConfig)
    return make_engine_core(config, load_hf_config(config.model.model))


def start_engine_core_process(config: EngineConfig, input_addresses: list[str],
                              output_addresses: list[str], env: dict[str, str] | None = None,
                              name: str = "pagellm-engine-core") -> multiprocessing.Process:
    """Spawn the engine-core process (not a daemon: it may start worker processes itself),
    a client of each (input, output) address pair. ``env``: variables set in the child (and
    its workers) only, from its first instruction: a data-parallel replica's
    ``CUDA_VISIBLE_DEVICES`` must be there before torch sees CUDA."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=run_engine_core, name=name,
                              args=(msgspec.json.encode(config), list(input_addresses),
                                    list(output_addresses)))
    with _environment(env or {}):      # a spawned child copies os.environ at start()
        process.start()
    return process


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
