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
                                     client_message_decoder, encoder, output_to_msg,
                                     request_from_msg)
from pagellm.errors import ClientError

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

    def run_busy_loop(self) -> None:
        """Returns on a shutdown call; raises _ParentGone when the API process is gone, and
        whatever a step raises."""
        while True:
            try:
                self._drain_input()
            except _Shutdown:
                return
            if self.parent_pid != os.getppid():
                raise _ParentGone
            outputs = self.engine_core.step() if self.engine_core.has_unfinished_requests() else []
            if outputs:
                self._send(EngineCoreOutputs([output_to_msg(o) for o in outputs],
                                             self.engine_core.stats(), time.time()))

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
            core.add_request(request_from_msg(message))
        elif isinstance(message, AbortRequests):
            core.abort_requests(message.request_ids)
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine-core %(message)s")
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
        vocab_size = engine_core.executor.worker.model.vocab_size
        _send(output_socket, EngineReady(vocab_size, engine_core.num_blocks, os.getpid()),
              parent_pid)
        EngineCoreProc(engine_core, input_socket, output_socket).run_busy_loop()
    except _ParentGone:
        logger.warning("engine core: the API process is gone; exiting")
    except Exception as error:      # reported to the client, then exit 1
        exit_code = 1
        logger.error("engine core failed: %s", error, exc_info=True)
        dead = EngineDead(f"{type(error).__name__}: {error}", traceback.format_exc(),
                          client_error=isinstance(error, ClientError) and engine_core is None)
        try:
            _send(output_socket, dead, parent_pid)
        except _ParentGone:
            pass
    finally:
        if engine_core is not None:
            engine_core.shutdown()
        input_socket.close(linger=0)
        output_socket.close(linger=MESSAGE_LINGER_MS)
        context.term()
    sys.exit(exit_code)


def _build_engine_core(config_json: bytes) -> EngineCore:
    from pagellm.models.hf_config import load_hf_config

    config = msgspec.json.decode(config_json, type=EngineConfig)
    return make_engine_core(config, load_hf_config(config.model.model))


def start_engine_core_process(config: EngineConfig, input_address: str,
                              output_address: str) -> multiprocessing.Process:
    """Spawn the engine-core process (not a daemon: it may start worker processes itself)."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=run_engine_core, name="pagellm-engine-core",
                              args=(msgspec.json.encode(config), input_address, output_address))
    process.start()
    return process
