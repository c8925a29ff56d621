"""Operating `pagellm serve`: entry points, fail-fast socket errors, logs, metrics from pushed
engine stats, and 503 (never 500) right after the engine core dies."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.server import running_server, start_server, stop_server
from tests.helpers.tiny_models import make_tiny_model_dir

API_KEY = "ops-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
BODY = {"model": "tiny", "prompt": "hello there", "max_tokens": 3, "ignore_eos": True}
# every line the server prints starts with a level and a timestamp
LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} "
                      r"(api-server|engine-core) \S+: ")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("ops"), "llama")


@pytest.fixture(scope="module")
def served(model_dir):
    """A server with an API key, for the tests up to the log test (which stops it)."""
    with running_server(model_dir, "--api-key", API_KEY) as (proc, base):
        yield proc, base


def _engine_core_pid(server_pid: int) -> int:
    """The server's engine-core child (a multiprocessing spawn child)."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    for child in children:
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmdline:
            return int(child)
    raise AssertionError(f"no engine-core child among {children}")


def _run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


# ---- metrics -------------------------------------------------------------------------------


def _sample(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{key}="{value}"' in line for key, value in labels.items()) or not wanted:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in the exposition")


def test_metrics_names_and_they_move(served):
    _, base = served
    before = httpx.get(base + "/metrics", headers=AUTH, timeout=10).text
    assert httpx.post(base + "/v1/completions", json={**BODY, "n": 2}, headers=AUTH,
                      timeout=60).status_code == 200
    after = httpx.get(base + "/metrics", headers=AUTH, timeout=10).text
    assert "_created" not in after
    model = {"model_name": "tiny"}
    for name in ("vllm:request_params_n_count", "vllm:request_params_max_tokens_count",
                 "vllm:request_inference_time_seconds_count",
                 "vllm:request_queue_time_seconds_count"):
        assert _sample(after, name, **model) == _sample(before, name, **model) + 1, name
    # 3 steps at least (prefill + 2 decodes) for n=2, max_tokens=3
    steps = _sample(after, "vllm:iteration_tokens_total_count", **model) - \
        _sample(before, "vllm:iteration_tokens_total_count", **model)
    assert steps >= 3
    assert _sample(after, "vllm:request_params_n_sum", **model) - \
        _sample(before, "vllm:request_params_n_sum", **model) == 2
    assert _sample(after, "vllm:request_params_max_tokens_sum", **model) - \
        _sample(before, "vllm:request_params_max_tokens_sum", **model) == 3
    assert _sample(after, "vllm:cache_config_info", block_size=16, cache_dtype="auto") == 1
    assert _sample(after, "process_cpu_seconds_total") > 0
    completions = {"method": "POST", "handler": "/v1/completions", "status": 200}
    assert _sample(after, "http_requests_total", **completions) == 1
    assert _sample(after, "http_request_duration_seconds_count", **completions) == 1


def test_metrics_answer_fast_during_a_slow_step(model_dir):
    """The engine core sleeps 4 s before each forward pass: /metrics answers well within that
    and already shows the request in the running batch."""
    with running_server(model_dir, env_extra={"PAGELLM_FAULT_INJECT_STEP_DELAY_S": "4"}
                        ) as (proc, base):
        thread = threading.Thread(target=httpx.post, args=(base + "/v1/completions",),
                                  kwargs={"json": {**BODY, "max_tokens": 1}, "timeout": 60})
        thread.start()
        time.sleep(1.0)                     # the request is inside its first (4 s) step
        start = time.monotonic()
        text = httpx.get(base + "/metrics", timeout=10).text
        elapsed = time.monotonic() - start
        thread.join()
        assert elapsed < 1.0, elapsed
        assert _sample(text, "vllm:num_requests_running", model_name="tiny") == 1
        assert stop_server(proc) == 0


# ---- engine death --------------------------------------------------------------------------


def test_requests_right_after_engine_core_kill_get_503_never_500(model_dir):
    with running_server(model_dir) as (proc, base):
        os.kill(_engine_core_pid(proc.pid), signal.SIGKILL)
        statuses = []
        deadline = time.monotonic() + 1.0
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                try:
                    response = client.post(base + "/v1/completions", json=BODY)
                except httpx.TransportError:
                    statuses.append("refused")      # the server already stopped
                    continue
                statuses.append(response.status_code)
                if response.status_code == 503:
                    assert response.json()["error"]["code"] == 503
        assert statuses and set(statuses) <= {503, "refused"}, statuses
        assert 503 in statuses
        assert proc.wait(timeout=60) == 1


# ---- entry points and start-up errors ------------------------------------------------------


@pytest.mark.parametrize("launch", [("-m", "pagellm.entrypoints.openai.api_server"),
                                    ("-m", "pagellm", "serve")])
def test_entry_points_serve_like_pagellm_serve(model_dir, launch):
    with running_server(model_dir, launch=launch) as (proc, base):
        response = httpx.post(base + "/v1/completions", json=BODY, timeout=60)
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] == 3
        assert stop_server(proc) == 0


def test_busy_port_fails_fast_before_the_model_loads(model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_cli("-m", "pagellm", "serve", str(model_dir), "--port", str(port))
    assert result.returncode == 2
    assert f"--port {port} on --host 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Loaded" not in result.stderr and "Serving" not in result.stderr


@pytest.mark.parametrize("flags, message", [
    (("--port", "99999"), "argument --port: invalid port 99999: must be in 0..65535"),
    (("--host", "no-such-host.invalid"), "--host 'no-such-host.invalid' cannot be resolved")])
def test_bad_port_or_host_is_a_one_line_error(model_dir, flags, message):
    result = _run_cli("-m", "pagellm", "serve", str(model_dir), *flags)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "Loaded" not in result.stderr


def test_kv_cache_too_small_is_one_clean_error(model_dir):
    result = _run_cli("-m", "pagellm", "serve", str(model_dir), "--max-model-len", "256",
                      "--kv-cache-memory-bytes", "4096", "--port", "0")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "the KV cache holds" in line]
    assert errors and errors[-1].startswith("pagellm serve: error: the engine core failed to "
                                            "start: the KV cache holds")


# ---- socket directory ----------------------------------------------------------------------


def test_socket_dir_is_private_and_stale_ones_are_removed(served, tmp_path, monkeypatch):
    from pagellm.engine.core_client import make_socket_dir, socket_root

    proc, _ = served
    root = socket_root()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    live = list(root.glob(f"ipc-{proc.pid}-*"))
    assert len(live) == 1 and stat.S_IMODE(live[0].stat().st_mode) == 0o700
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = root / f"ipc-{dead.pid}-leftover"
    stale.mkdir()
    (stale / "input").write_text("")
    made = Path(make_socket_dir())
    try:
        assert not stale.exists()
        assert live[0].exists()                          # a live server's dir stays
        assert stat.S_IMODE(made.stat().st_mode) == 0o700
    finally:
        made.rmdir()


# ---- logs ----------------------------------------------------------------------------------


def test_request_id_header_and_access_log(served):
    _, base = served
    mine = httpx.post(base + "/v1/completions", json=BODY, timeout=60,
                      headers={**AUTH, "X-Request-Id": "client-id.7"})
    assert mine.headers["x-request-id"] == "client-id.7"
    assert mine.json()["id"].startswith("cmpl-client-id.7-")
    bad = httpx.post(base + "/v1/completions", json=BODY, timeout=60,
                     headers={**AUTH, "X-Request-Id": "bad id\twith spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])
    unauthorized = httpx.get(base + "/v1/models", timeout=10, headers={"X-Request-Id": "no-key"})
    assert unauthorized.status_code == 401 and unauthorized.headers["x-request-id"] == "no-key"


def test_server_log_format_and_content(served):
    """Checked once the module's server stopped (its whole output is known then)."""
    proc, base = served
    # one aborted stream: the engine's abort line names the request id
    with httpx.stream("POST", base + "/v1/completions", headers={**AUTH, "X-Request-Id": "gone"},
                      json={**BODY, "max_tokens": 200, "stream": True}, timeout=60) as response:
        next(response.iter_lines())
    # one request ended by a stop string: the core frees it, and that is no abort
    greedy = {**BODY, "max_tokens": 8, "temperature": 0}
    text = httpx.post(base + "/v1/completions", json=greedy, headers=AUTH,
                      timeout=60).json()["choices"][0]["text"]
    stopped = httpx.post(base + "/v1/completions", json={**greedy, "stop": [text[0]]},
                         headers={**AUTH, "X-Request-Id": "stopped"}, timeout=60).json()
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] < 8
    time.sleep(1.0)
    assert stop_server(proc) == 0
    log = proc.stdout.read()
    assert "cmpl-stopped" not in log
    lines = [line for line in log.splitlines() if line.strip()]
    assert [line for line in lines if not LOG_LINE.match(line)] == []
    assert "deprecat" not in log.lower()
    assert re.search(r'api-server pagellm\.access: 127\.0\.0\.1:\d+ "POST /v1/completions" 200 '
                     r'[\d.]+ ms request_id=client-id\.7$', log, re.M)
    assert re.search(r'"GET /v1/models" 401 [\d.]+ ms request_id=no-key$', log, re.M)
    assert re.search(r"engine-core \S+: aborted requests cmpl-gone-[0-9a-f]{8}$", log, re.M)
    assert "hello there" not in log                      # no prompt text
    kv_line = next(line for line in lines if "KV cache:" in line)
    assert "swap" not in kv_line                          # recompute mode reserves none
    assert "Uvicorn running" not in log
    serving = next(i for i, line in enumerate(lines) if "Serving tiny on http://127.0.0.1:" in line)
    assert "Started server process" in lines[serving - 1]    # no lifespan: nothing between
