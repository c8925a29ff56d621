"""Clients of the engine core with one set of calls: ``InprocClient`` steps a core in this
process (offline LLM); ``MPClient`` talks to a core in its own process over ZMQ (server):
a core it started (``MPClient.start``), or, with ``--api-server-count N``, one that the serve
parent started for N clients, this API server being client ``client_index``
(``MPClient.connect``)."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import select
import shutil
import stat
import tempfile
import time
import weakref
from pathlib import Path

import zmq
import zmq.asyncio

from pagellm.config.engine_args import EngineConfig
from pagellm.core.request import Request
from pagellm.engine.core_proc import ENGINE_STOP_SIGNAL, start_engine_core_process
from pagellm.core.stats import EngineStats
from pagellm.engine.engine_core import EngineCore
from pagellm.engine.messages import (AbortRequests, EngineCoreOutputs, EngineCoreRequest,
                                     EngineDead, EngineReady, UtilityCall, UtilityResult,
                                     core_message_decoder, encoder)
from pagellm.errors import ClientError, EngineDeadError, ServerError
from pagellm.zmq_context import make_context

EXIT_GRACE_S = 0.5      # after the core process exits, how long its EngineDead may take to arrive


class InprocClient:
    """Drives an EngineCore living in this process: ``get_output`` runs one step."""

    def __init__(self, engine_core: EngineCore):
        self.engine_core = engine_core

    def add_request(self, request: Request) -> None:
        self.engine_core.add_request(request)

    def add_requests(self, requests: list[Request]) -> int:
        """One prompt's core requests (its n > 1 children); returns the engine index, 0."""
        for request in requests:
            self.engine_core.add_request(request)
        return 0

    def abort_requests(self, request_ids, finished: bool = False) -> None:
        if request_ids:
            self.engine_core.abort_requests(request_ids)

    def get_output(self) -> EngineCoreOutputs:
        return self.engine_core.step()

    def has_unfinished_requests(self) -> bool:
        return self.engine_core.has_unfinished_requests()

    def stats(self) -> EngineStats:
        return self.engine_core.stats()

    def shutdown(self) -> None:
        self.engine_core.shutdown()


class MPClient:
    """Drives an engine core in its own process over ZMQ (asyncio). Create with ``start``.

    Outputs arrive on a background reader task and wait in ``get_output``'s queue. When the
    core dies (it sends ``EngineDead``, or its process exits without a shutdown call) every
    pending and later call raises ``EngineDeadError`` with the core's error text.
    """

    def __init__(self, process: "multiprocessing.Process | CoreProcessHandle",
                 context: zmq.asyncio.Context, input_socket: zmq.asyncio.Socket,
                 output_socket: zmq.asyncio.Socket, socket_dir: str, client_index: int = 0):
        self.process = process
        self.client_index = client_index
        """This client's index at the core: its requests' outputs come back here."""
        self.owns_process = not isinstance(process, CoreProcessHandle)
        """False for a core the serve parent started: shutdown then leaves it running."""
        self.context = context
        self.input_socket = input_socket
        self.output_socket = output_socket
        self.socket_dir = socket_dir
        self.ready: EngineReady | None = None
        self.dead_error: EngineDeadError | None = None
        self._outputs: asyncio.Queue[EngineCoreOutputs | EngineDeadError] = asyncio.Queue()
        self._pending_calls: dict[int, asyncio.Future] = {}
        self._call_ids = itertools.count()
        self._reader: asyncio.Task | None = None
        self._shutting_down = False
        # Last resort when shutdown() is never awaited: stop the child at interpreter exit.
        self._finalizer = (weakref.finalize(self, _kill_process, process, socket_dir)
                           if self.owns_process else weakref.finalize(self, process.close))

    @classmethod
    async def start(cls, config: EngineConfig, startup_timeout_s: float = 600.0,
                    env: dict[str, str] | None = None, name: str = "pagellm-engine-core"
                    ) -> "MPClient":
        """Spawn the core (process ``name``, extra environment ``env``: see
        ``start_engine_core_process``) and wait for its ready message. Raises ClientError when
        the core rejected the config at start-up, EngineDeadError when it failed otherwise,
        exited, or was not ready within ``startup_timeout_s`` (the process is then stopped)."""
        socket_dir = make_socket_dir()
        input_address, output_address = client_addresses(socket_dir, 0, 0)
        context, input_socket, output_socket = _bind_sockets(input_address, output_address)
        process = start_engine_core_process(config, [input_address], [output_address], env,
                                            name)
        client = cls(process, context, input_socket, output_socket, socket_dir)
        await client._wait_ready_or_close(startup_timeout_s)
        return client

    @classmethod
    async def connect(cls, socket_dir: str, engine_index: int, pid: int, client_index: int,
                      startup_timeout_s: float = 600.0) -> "MPClient":
        """Be client ``client_index`` of the core ``pid`` (replica ``engine_index``) that the
        serve parent started with ``start_engine_core_process`` on the ``client_addresses``
        of ``socket_dir``; wait for its ready message. The same errors as ``start``; the
        core process is not this client's to stop."""
        input_address, output_address = client_addresses(socket_dir, engine_index, client_index)
        context, input_socket, output_socket = _bind_sockets(input_address, output_address)
        try:
            process = CoreProcessHandle(pid)
        except ProcessLookupError:
            for sock in (input_socket, output_socket):
                sock.close(linger=0)
            context.term()
            raise EngineDeadError(f"the engine core process {pid} is gone") from None
        client = cls(process, context, input_socket, output_socket, socket_dir, client_index)
        await client._wait_ready_or_close(startup_timeout_s)
        return client

    async def _wait_ready_or_close(self, startup_timeout_s: float) -> None:
        try:
            self.ready = await self._wait_ready(startup_timeout_s)
        except BaseException:
            self._close(kill=True)
            raise
        loop = asyncio.get_running_loop()
        loop.add_reader(self.process.sentinel, self._on_process_exit)
        self._reader = asyncio.create_task(self._read_outputs(), name="pagellm-core-reader")

    async def _wait_ready(self, timeout_s: float) -> EngineReady:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.output_socket.poll(200):
                message = core_message_decoder.decode(await self.output_socket.recv())
                if isinstance(message, EngineReady):
                    return message
                if isinstance(message, EngineDead):
                    text = f"the engine core failed to start: {message.error}"
                    if message.client_error:
                        raise ClientError(text)
                    raise EngineDeadError(f"{text}\n{message.traceback}")
            elif not self.process.is_alive():
                raise EngineDeadError(f"the engine core exited during start-up with code "
                                      f"{self.process.exitcode} and no error message")
        raise EngineDeadError(f"the engine core was not ready within {timeout_s:.0f} s")

    # ---- the same calls as InprocClient, awaited ----------------------------------------------

    async def add_request(self, request: Request) -> None:
        await self._send(EngineCoreRequest.from_request(request, self.client_index))

    async def abort_requests(self, request_ids, finished: bool = False) -> None:
        """Free ``request_ids`` in the core; ``finished``: they ended here (a stop string),
        which the core logs as no abort."""
        if request_ids and self.dead_error is None:
            await self._send(AbortRequests(list(request_ids), finished))

    async def get_output(self) -> EngineCoreOutputs:
        """The next batch of outputs (with the stats after that step); waits for one."""
        item = await self._outputs.get()
        if isinstance(item, EngineDeadError):
            self._outputs.put_nowait(item)      # for the next caller too
            raise item
        return item

    async def stats(self) -> EngineStats:
        return (await self._call("stats")).stats

    async def ping(self) -> None:
        """Returns once the core answers; EngineDeadError when it cannot."""
        await self._call("ping")

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        """Ask the core to exit, wait up to ``timeout_s`` for it, then kill it (a core this
        client does not own is left to its parent: only this client closes). ``timeout_s``
        <= 0 (a second shutdown signal): SIGKILL at once, no clean exit (which takes a busy
        CPU core ~1.7 s of interpreter teardown). Pending and later calls raise
        EngineDeadError. Idempotent."""
        if self._shutting_down:
            return
        self._shutting_down = True
        if not self.owns_process:
            self._set_dead("the engine was shut down")
            return self._close(kill=True)
        if timeout_s <= 0:
            if self.process.is_alive():
                self.process.kill()
            timeout_s = 5.0                         # only the reaping of the killed process
        elif self.dead_error is None and self.process.is_alive():
            try:
                await asyncio.wait_for(self._call("shutdown"), timeout_s)
            except (EngineDeadError, asyncio.TimeoutError):
                pass
        # A core that answered, died on an error or was killed is exiting: let it finish.
        await asyncio.to_thread(self.process.join, timeout_s)
        self._set_dead("the engine was shut down")
        self._close(kill=True)

    def raise_if_dead(self) -> None:
        """EngineDeadError when the core died, was shut down, or its process has exited, even
        in the moment before that exit is reported (EXIT_GRACE_S): nothing sent to a core that
        is gone would ever be answered."""
        if self.dead_error is not None:
            raise self.dead_error
        if not self.process.is_alive():
            raise EngineDeadError(f"the engine core process exited (exit code "
                                  f"{_exit_code_text(self.process)})")

    # ---- internals ----------------------------------------------------------------------------

    async def _send(self, message) -> None:
        self.raise_if_dead()
        await self.input_socket.send(encoder.encode(message), copy=False)

    async def _call(self, method: str) -> UtilityResult:
        call_id = next(self._call_ids)
        future = asyncio.get_running_loop().create_future()
        self._pending_calls[call_id] = future
        try:
            await self._send(UtilityCall(call_id, method, self.client_index))
            return await future
        finally:
            self._pending_calls.pop(call_id, None)

    async def _read_outputs(self) -> None:
        try:
            while True:
                message = core_message_decoder.decode(await self.output_socket.recv())
                if isinstance(message, EngineCoreOutputs):
                    self._outputs.put_nowait(message)
                elif isinstance(message, UtilityResult):
                    future = self._pending_calls.get(message.call_id)
                    if future is not None and not future.done():
                        future.set_result(message)
                elif isinstance(message, EngineDead):
                    self._set_dead(f"the engine core died: {message.error}")
                    return
        except asyncio.CancelledError:
            raise
        except Exception as error:      # a bad message or a closed socket: nothing more comes
            self._set_dead(f"reading engine-core outputs failed: {error!r}")

    def _on_process_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self.process.sentinel)
        if not self._shutting_down:
            asyncio.create_task(self._report_exit())

    async def _report_exit(self) -> None:
        await asyncio.sleep(EXIT_GRACE_S)   # an EngineDead sent just before exiting wins
        self.process.join(0)
        self._set_dead(f"the engine core process exited unexpectedly "
                       f"(exit code {_exit_code_text(self.process)})")

    def _set_dead(self, text: str) -> None:
        """Fail every waiter once; later calls see the first error."""
        if self.dead_error is not None:
            return
        self.dead_error = EngineDeadError(text)
        for future in self._pending_calls.values():
            if not future.done():
                future.set_exception(self.dead_error)
        self._outputs.put_nowait(self.dead_error)

    def _close(self, kill: bool) -> None:
        if self._reader is not None:
            self._reader.cancel()
        try:
            asyncio.get_running_loop().remove_reader(self.process.sentinel)
        except (RuntimeError, ValueError):
            pass
        self.input_socket.close(linger=0)
        self.output_socket.close(linger=0)
        self.context.term()
        if kill:
            self._finalizer()


def _bind_sockets(input_address: str, output_address: str):
    """(context, input PUSH socket, output PULL socket) of a client, bound to the addresses."""
    context = make_context(use_asyncio=True)
    input_socket = context.socket(zmq.PUSH)
    input_socket.bind(input_address)
    output_socket = context.socket(zmq.PULL)
    output_socket.bind(output_address)
    return context, input_socket, output_socket


def client_addresses(socket_dir: str, engine_index: int, client_index: int) -> tuple[str, str]:
    """The ipc:// (input, output) addresses client ``client_index`` binds in ``socket_dir``
    for core ``engine_index`` (the core connects to them)."""
    stem = os.path.join(socket_dir, f"engine{engine_index}-client{client_index}")
    return f"ipc://{stem}-input", f"ipc://{stem}-output"


class CoreProcessHandle:
    """An engine-core process another process started (the serve parent with
    ``--api-server-count`` > 1), with the calls ``MPClient`` makes on a
    ``multiprocessing.Process``: ``sentinel`` is a pidfd (Linux >= 5.3) that turns readable
    when the process exits. Its exit code is only its parent's to read (``exitcode``: None).
    ProcessLookupError when ``pid`` is not running."""

    def __init__(self, pid: int):
        self.pid = pid
        self.sentinel = os.pidfd_open(pid)
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        return self.sentinel >= 0 and not select.select([self.sentinel], [], [], 0)[0]

    def join(self, timeout: float | None = None) -> None:
        if self.sentinel >= 0:
            select.select([self.sentinel], [], [], timeout)

    def close(self) -> None:
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


def _exit_code_text(process) -> str:
    if isinstance(process, CoreProcessHandle):
        return "unknown: the serve parent's child"
    return str(process.exitcode)


SOCKET_DIR_PREFIX = "ipc-"


def socket_root() -> Path:
    """The directory holding every server's socket directory: ``$XDG_RUNTIME_DIR/pagellm``
    when that is set, else ``<tmp>/pagellm-<uid>``; created mode 0700 and owned by this user
    (ServerError otherwise, e.g. another user created it first to read our sockets)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        root = Path(runtime) / "pagellm"
    else:
        root = Path(tempfile.gettempdir()) / f"pagellm-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    info = root.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ServerError(f"{root} is not a directory owned by this user; remove it or set "
                          "XDG_RUNTIME_DIR to a private directory")
    if stat.S_IMODE(info.st_mode) != 0o700:
        root.chmod(0o700)
    return root


def make_socket_dir() -> str:
    """A new private directory (mode 0700) for this process's ipc:// sockets, named
    ``ipc-<pid>-<random>`` under ``socket_root()``; first removes those left behind by
    processes that are gone (an API server killed with SIGKILL cannot clean up)."""
    root = socket_root()
    remove_stale_socket_dirs(root)
    return tempfile.mkdtemp(prefix=f"{SOCKET_DIR_PREFIX}{os.getpid()}-", dir=root)


def remove_stale_socket_dirs(root: Path) -> list[Path]:
    """Remove the socket directories in ``root`` whose owning process is dead; returns them.
    Directories of live processes, and names not ours, are left alone."""
    removed = []
    for path in root.glob(f"{SOCKET_DIR_PREFIX}*-*"):
        owner = path.name[len(SOCKET_DIR_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not _pid_alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # alive, another user's
        return True
    return True


def stop_core_process(process: multiprocessing.Process) -> None:
    """Ask an engine-core process to shut down (``ENGINE_STOP_SIGNAL``: it ignores SIGTERM)."""
    try:
        os.kill(process.pid, ENGINE_STOP_SIGNAL)
    except ProcessLookupError:
        pass


def _kill_process(process: multiprocessing.Process, socket_dir: str) -> None:
    if process.is_alive():
        stop_core_process(process)
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
    shutil.rmtree(socket_dir, ignore_errors=True)
