"""The engine-core process: an EngineCore driven by messages over ZMQ.

``start_engine_core_process`` starts it with multiprocessing's "spawn" context. The only
thing Python pickles is the start-up arguments (the EngineConfig as msgspec JSON bytes and
two socket addresses); every request, output and control message afterwards is a msgspec
Struct from ``messages.py`` encoded with msgpack.

Sockets (the client binds both, on ipc:// paths in its private temp dir; the core connects):
    input   client PUSH -> core PULL   EngineCoreRequest | AbortRequests | UtilityCall
    output  core PUSH -> client PULL   EngineReady | EngineCoreOutputs | UtilityResult | EngineDead

Exit codes: 0 after a ``shutdown`` call (or when the parent process is gone); 1 after an
error, which is first reported to the client as ``EngineDead``.
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

IDLE_POLL_MS = 1000          # how often an idle core checks that its parent is still alive
MESSAGE_LINGER_MS = 2000    # time the last message (EngineDead, shutdown answer) may take


class _Shutdown(Exception):
    """A shutdown call arrived."""


class _ParentGone(Exception):
    """The API process exited; nobody is left to read outputs."""


class EngineCoreProc:
    """Runs in the engine-core process: drain input, step, send outputs, repeat."""

    def __init__(self, engine_core: EngineCore, input_socket: zmq.Socket,
                 output_socket: zmq.Socket):
        self.engine_core = engine_core
        self.input_socket = input_socket
        self.output_socket = output_socket
        self.parent_pid = os.getppid()
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

    def _push(self, outputs) -> None:
        stats = self.engine_core.stats()
        stats.iteration_tokens, self.iteration_tokens = self.iteration_tokens, []
        self.last_pushed = stats
        outputs.stats, outputs.timestamp = stats, time.time()
        self._send(outputs)

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
            core.add_request(message.to_request())
        elif isinstance(message, AbortRequests):
            aborted = core.abort_requests(message.request_ids)
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
            self._send(UtilityResult(call.call_id))
            raise _Shutdown
        stats = core.stats() if call.method == "stats" else None
        self._send(UtilityResult(call.call_id, stats=stats))

    def _send(self, message) -> None:
        _send(self.output_socket, message, self.parent_pid)


def _send(socket: zmq.Socket, message, parent_pid: int) -> None:
    """Send, waiting while the client is slow to read but not once it is gone."""
    data = encoder.encode(message)
    while True:
        try:
            return socket.send(data, copy=False)
        except zmq.Again:
            if parent_pid != os.getppid():
                raise _ParentGone from None


def run_engine_core(config_json: bytes, input_address: str, output_address: str) -> None:
    """Entry point of the spawned process; exits with the code documented above."""
    # Ctrl-C reaches the whole process group: the API process decides how to shut down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # "engine-core", or "engine-core-<i>" for data-parallel replica i
    init_logging(multiprocessing.current_process().name.removeprefix("pagellm-"))
    context = zmq.Context()
    output_socket = context.socket(zmq.PUSH)
    output_socket.setsockopt(zmq.SNDTIMEO, IDLE_POLL_MS)
    output_socket.connect(output_address)
    input_socket = context.socket(zmq.PULL)
    input_socket.connect(input_address)
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
        _send(output_socket, EngineReady(vocab_size, engine_core.num_blocks, os.getpid(),
                                         engine_core.num_swap_blocks), parent_pid)
        EngineCoreProc(engine_core, input_socket, output_socket).run_busy_loop()
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
            _send(output_socket, dead, parent_pid)
        except _ParentGone:
            pass
    finally:
        if engine_core is not None:
            engine_core.shutdown()
        gc.unfreeze()       # let the exit's collection reach the start-up objects again
        input_socket.close(linger=0)
        output_socket.close(linger=MESSAGE_LINGER_MS)
        context.term()
    sys.exit(exit_code)


def _build_engine_core(config_json: bytes) -> EngineCore:
    from pagellm.models.hf_config import load_hf_config

    config = msgspec.json.decode(config_json, type=EngineConfig)
    return make_engine_core(config, load_hf_config(config.model.model))


def start_engine_core_process(config: EngineConfig, input_address: str,
                              output_address: str, env: dict[str, str] | None = None,
                              name: str = "pagellm-engine-core") -> multiprocessing.Process:
    """Spawn the engine-core process (not a daemon: it may start worker processes itself).
    ``env``: variables set in the child (and its workers) only, from its first instruction:
    a data-parallel replica's ``CUDA_VISIBLE_DEVICES`` must be there before torch sees CUDA."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=run_engine_core, name=name,
                              args=(msgspec.json.encode(config), input_address, output_address))
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
