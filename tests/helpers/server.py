"""A real ``pagellm serve`` subprocess for end-to-end tests: ``start_server(model_dir, *flags)``
returns (process, base URL) once /health answers 200; ``stop_server(process)`` sends SIGTERM
and returns the exit status."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DrainedOutput:
    """A server's stdout read continuously by a thread, so a chatty server (an access-log line
    per request) never blocks on a full pipe; ``read()`` waits for the end of the output (the
    process exited) and returns all of it, like the pipe's own ``read()``."""

    def __init__(self, pipe):
        self._lines: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe) -> None:
        for line in pipe:
            self._lines.append(line)
        pipe.close()

    def read(self, timeout_s: float = 60.0) -> str:
        self._thread.join(timeout_s)
        return "".join(self._lines)


SERVE_COMMAND = ("-m", "pagellm.entrypoints.cli.main", "serve")
"""The default launch: ``python -m pagellm.entrypoints.cli.main serve`` (= ``pagellm serve``)."""


def start_server(model_dir, *extra: str, env_extra: dict | None = None, log_stats: bool = False,
                 launch: tuple[str, ...] = SERVE_COMMAND) -> tuple[subprocess.Popen, str]:
    """Serve ``model_dir`` as model "tiny" (256-token context, 16 MiB KV cache) plus ``extra``
    flags (and --disable-log-stats unless ``log_stats``), started as ``python *launch --model
    DIR ...``. Raises RuntimeError, with the server's output, when it exits or never gets
    healthy."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.getcwd(), **(env_extra or {})}
    proc = subprocess.Popen(
        [sys.executable, *launch, "--model", str(model_dir), "--port", str(port),
         "--kv-cache-memory-bytes", str(16 * 2**20), "--max-model-len", "256",
         "--served-model-name", "tiny", *([] if log_stats else ["--disable-log-stats"]), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc.stdout = DrainedOutput(proc.stdout)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + STARTUP_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{proc.stdout.read()}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not become healthy")


@contextlib.contextmanager
def running_server(model_dir, *extra: str, **kwargs):
    """``start_server`` as a context: yields (process, base URL) and kills the process on the
    way out if the test left it running."""
    proc, base = start_server(model_dir, *extra, **kwargs)
    try:
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


@contextlib.contextmanager
def tiny_server(tmp_path_factory, name: str, *extra: str, **kwargs):
    """A tiny random Llama served for one test module: yields (process, base URL); on the
    way out a server still running must stop cleanly (SIGTERM -> exit 0)."""
    from tests.helpers.tiny_models import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp(name), "llama")
    proc, base = start_server(model_dir, *extra, **kwargs)
    yield proc, base
    if proc.poll() is None:
        assert stop_server(proc) == 0


def stop_server(proc: subprocess.Popen) -> int:
    """SIGTERM (graceful drain) and the exit status; kills it after 60 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
