"""``pagellm serve --api-server-count 2`` end to end on CPU: two API server processes share the
port and both answer requests; greedy outputs equal the in-process engine's (the single API
server's, as test_http_matches_llm shows); /metrics aggregates the processes (totals exact,
per replica ``engine`` series with -dp 2); SIGTERM stops every process with exit 0; killing an
engine core makes every API server fail its requests (503) and the server exit 1.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from pagellm import LLM, SamplingParams
from tests.helpers.server import running_server, start_server, stop_server
from tests.helpers.tiny_models import make_tiny_model_dir
from tests.integration.test_data_parallel import (complete, kill_replica_mid_generation,
                                                  metric, per_engine, start_long_requests)

PROMPTS = [f"prompt {index}: {'abc ' * (index % 5)}" for index in range(16)]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("asc"), "llama")


@pytest.fixture(scope="module")
def reference(model_dir):
    llm = LLM(str(model_dir), device="cpu", kv_cache_memory_bytes=4 * 2**20, max_model_len=256)
    try:
        outputs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                                                       ignore_eos=True), use_tqdm=False)
    finally:
        llm.shutdown()
    return [output.outputs[0].text for output in outputs]


def _stream(base: str, prompt: str) -> str:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0,
            "ignore_eos": True, "stream": True}
    text = []
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                text.append(httpx.Response(200, content=line[6:]).json()
                            ["choices"][0]["text"])
    return "".join(text)


def _serve_all(base: str) -> list[str]:
    """PROMPTS concurrently, half streamed, in order of PROMPTS."""
    def one(index: int) -> str:
        if index % 2:
            return _stream(base, PROMPTS[index])
        return complete(base, PROMPTS[index])["choices"][0]["text"]

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(one, range(len(PROMPTS))))


def _api_server_requests(text: str) -> list[float]:
    values = {}
    for line in text.splitlines():
        if line.startswith("pagellm:api_server_http_requests_total{"):
            values[line.split('api_server="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return [values.get(str(index), 0.0) for index in range(2)]


def _children(pid: int) -> tuple[list[int], list[int]]:
    """(API server pids, engine core pids): the API servers hold the listening socket
    (multiprocessing's resource tracker, the other child, is neither)."""
    servers, cores = [], []
    for child in psutil.Process(pid).children():
        if "spawn_main" not in " ".join(child.cmdline()):
            continue
        listening = any(c.status == psutil.CONN_LISTEN
                        for c in child.net_connections(kind="tcp"))
        (servers if listening else cores).append(child.pid)
    return servers, cores


def test_two_api_servers_share_the_port_outputs_metrics_and_clean_exit(model_dir, reference):
    proc, base = start_server(model_dir, "--api-server-count", "2")
    try:
        servers, cores = _children(proc.pid)
        assert len(servers) == 2 and len(cores) == 1
        assert _serve_all(base) == reference
        text = httpx.get(base + "/metrics", timeout=10).text
        served = _api_server_requests(text)
        assert min(served) >= 1 and sum(served) >= len(PROMPTS), served
        assert metric(text, "vllm:request_success_total", "0",
                      finished_reason="length") == len(PROMPTS)
        assert metric(text, "vllm:generation_tokens_total", "0") == len(PROMPTS) * MAX_TOKENS
        assert 'http_requests_total{handler="/v1/completions",method="POST",status="200"} ' \
            f"{float(len(PROMPTS))}" in text
        assert "process_cpu_seconds_total" not in text       # no multiprocess form of them
        assert stop_server(proc) == 0
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() !=
                       psutil.STATUS_ZOMBIE for pid in servers + cores)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


def test_dp2_with_two_api_servers_routes_over_replicas_then_a_killed_core_exits_1(
        model_dir, reference):
    # a slow step (fault injection) keeps the requests generating when a replica dies
    with running_server(model_dir, "-dp", "2", "--api-server-count", "2",
                        env_extra={"PAGELLM_FAULT_INJECT_STEP_DELAY_S": "0.02"}) as (proc, base):
        servers, cores = _children(proc.pid)
        assert len(servers) == 2 and len(cores) == 2
        assert _serve_all(base) == reference
        counts = per_engine(base, "vllm:request_success_total", finished_reason="length")
        assert sum(counts) == len(PROMPTS) and min(counts) >= 3, counts
        generated = per_engine(base, "vllm:generation_tokens_total")
        assert generated == [n * MAX_TOKENS for n in counts]
        assert min(_api_server_requests(httpx.get(base + "/metrics").text)) >= 1
        statuses, health, killed_at = kill_replica_mid_generation(base, cores[1], 6)
        assert statuses == [503] * 6, statuses
        assert health == 503
        assert proc.wait(timeout=60) == 1
        assert time.monotonic() - killed_at < 15
        for pid in servers + cores[:1]:
            assert not psutil.pid_exists(pid) or \
                psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_killed_api_server_has_its_requests_aborted_in_the_core(model_dir):
    """SIGKILL one of two API servers while both have long requests running: the core sees
    its connection close and aborts its requests at once (a tester found them running to
    max_tokens while the survivor drained), the survivor finishes its own and the server
    exits 1."""
    import os
    import re
    import signal

    with running_server(model_dir, "--api-server-count", "2",
                        env_extra={"PAGELLM_FAULT_INJECT_STEP_DELAY_S": "0.02"}) as (proc, base):
        servers, _ = _children(proc.pid)
        # the killed server's connections end as -1
        statuses, threads = start_long_requests(base, 16)
        deadline = time.monotonic() + 60
        running = lambda: sum(per_engine(base, "vllm:num_requests_running"))  # noqa: E731
        while time.monotonic() < deadline and running() < 16:
            time.sleep(0.05)
        assert running() == 16
        os.kill(servers[1], signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=120)
        assert proc.wait(timeout=60) == 1
        output = proc.stdout.read()
    aborted = re.search(r"API server 1 disconnected: aborted its (\d+) requests", output)
    assert aborted is not None, output[-3000:]
    orphans = statuses.count(-1)
    assert int(aborted.group(1)) == orphans >= 1, (aborted.group(0), statuses)
    assert statuses.count(200) == 16 - orphans
