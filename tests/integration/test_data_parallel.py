"""Data parallelism end to end on CPU: two engine-core processes behind one LLM or one server
give DP=1's greedy outputs and share the requests; a shared prompt prefix stays on one replica
(and hits its prefix cache) while unrelated requests alternate; n > 1 children stay together;
/metrics has a series per replica; a killed replica fails the requests and the server exits 1.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from pagellm import LLM, SamplingParams
from tests.helpers.server import running_server, start_server
from tests.helpers.tiny_models import make_tiny_model_dir

ENGINE = dict(device="cpu", kv_cache_memory_bytes=4 * 2**20, max_num_seqs=8, max_model_len=256)
PROMPTS = ["hello world", "the quick brown fox", "a", "1, 2, 3, 4,", "xyz", "foo bar baz",
           "zebra", "once upon a time"]
MAX_TOKENS = 8
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
SHARED_PREFIX = "You are a helpful assistant. Answer briefly and never repeat yourself. " * 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("dp"), "llama")


@pytest.fixture(scope="module")
def reference(model_dir):
    """DP=1 greedy outputs of PROMPTS (in-process engine)."""
    llm = LLM(str(model_dir), **ENGINE)
    try:
        return llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    finally:
        llm.shutdown()


def test_offline_dp2_equals_dp1_spreads_requests_and_keeps_n_children_together(
        model_dir, reference):
    llm = LLM(str(model_dir), data_parallel_size=2, **ENGINE)
    try:
        assert llm.llm_engine.engine_core is None      # the cores run in their own processes
        outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
        core = llm.llm_engine.core
        # spread over both (4/4 when routed faster than stats arrive, 5/3 when a push lands
        # between two routings: both are the balancer's rule)
        routed = [r.num_routed for r in core.client.balancer.replicas]
        assert sum(routed) == len(PROMPTS) and min(routed) >= 3, routed
        before = core.stats_per_engine()
        [sampled] = llm.generate(["n children"], SamplingParams(n=3, max_tokens=5, seed=1,
                                                                ignore_eos=True), use_tqdm=False)
        after = core.stats_per_engine()
    finally:
        llm.shutdown()
    assert [o.request_id for o in outputs] == [str(i) for i in range(len(PROMPTS))]
    assert [o.outputs[0].token_ids for o in outputs] == \
        [o.outputs[0].token_ids for o in reference]
    assert [o.outputs[0].text for o in outputs] == [o.outputs[0].text for o in reference]
    # each replica generated for exactly the requests routed to it
    assert [s.generation_tokens for s in before] == [n * MAX_TOKENS for n in routed]
    assert len(sampled.outputs) == 3
    grown = sorted(a.generation_tokens - b.generation_tokens for a, b in zip(after, before))
    assert grown == [0, 15]                            # all three children on one replica


# ---- the server ------------------------------------------------------------------------------


def metric(text: str, name: str, engine: str, **labels) -> float:
    """The value of ``name`` for replica ``engine`` (and ``labels``) in an exposition."""
    wanted = [f'engine="{engine}"', 'model_name="tiny"',
              *(f'{key}="{value}"' for key, value in labels.items())]
    for line in text.splitlines():
        if line.startswith(name + "{") and all(label in line for label in wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def per_engine(base: str, name: str, **labels) -> list[float]:
    text = httpx.get(base + "/metrics", timeout=10).text
    return [metric(text, name, engine, **labels) for engine in ("0", "1")]


def complete(base: str, prompt: str, **extra) -> dict:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0,
            "ignore_eos": True, **extra}
    response = httpx.post(base + "/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_server_dp2_outputs_routing_affinity_and_metrics(model_dir, reference):
    with running_server(model_dir, "-dp", "2") as (proc, base):
        text = httpx.get(base + "/metrics", timeout=10).text
        for engine in ("0", "1"):
            assert f'vllm:num_requests_running{{engine="{engine}",model_name="tiny"}}' in text
        success = "vllm:request_success_total"
        # concurrent unrelated requests: DP=1's greedy text, spread over both replicas
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            results = list(pool.map(lambda p: complete(base, p), PROMPTS))
        assert [r["choices"][0]["text"] for r in results] == \
            [o.outputs[0].text for o in reference]
        counts = per_engine(base, success, finished_reason="length")
        assert sum(counts) == len(PROMPTS) and min(counts) >= 2, counts
        # sequential requests sharing a 9-block prefix: all on one replica, which hits its cache
        hits_before = per_engine(base, "vllm:prefix_cache_hits_total")
        for index in range(4):
            complete(base, f"{SHARED_PREFIX}question {index}?")
        after_shared = per_engine(base, success, finished_reason="length")
        grown = [a - b for a, b in zip(after_shared, counts)]
        assert sorted(grown) == [0, 4], grown
        affine = grown.index(4)
        hits = [a - b for a, b in zip(per_engine(base, "vllm:prefix_cache_hits_total"),
                                      hits_before)]
        assert hits[affine] >= 3 * 9 * 16 and hits[1 - affine] == 0, hits
        # unrelated short sequential requests (no full block): the replicas take turns
        for index in range(4):
            complete(base, f"q{index}")
        final = per_engine(base, success, finished_reason="length")
        assert [a - b for a, b in zip(final, after_shared)] == [2, 2]
        # n=2: both children on one replica (its engine-side prefix lookups grow, not the other's)
        queries_before = per_engine(base, "vllm:prefix_cache_queries_total")
        assert len(complete(base, "two children please", n=2, temperature=1.0)["choices"]) == 2
        queries = [a - b for a, b in zip(per_engine(base, "vllm:prefix_cache_queries_total"),
                                         queries_before)]
        assert sorted(queries)[0] == 0 and sorted(queries)[1] > 0, queries


def _engine_core_pids(server_pid: int) -> list[int]:
    return [child.pid for child in psutil.Process(server_pid).children()
            if "spawn_main" in " ".join(child.cmdline())]


def start_long_requests(base: str, num_requests: int
                        ) -> tuple[list[int], list[threading.Thread]]:
    """Start ``num_requests`` completions of 200 tokens (EOS ignored), one thread each;
    returns (their HTTP statuses as they end, -1 for a dropped connection; the threads)."""
    statuses: list[int] = []

    def long_request(index: int) -> None:
        body = {"model": "tiny", "prompt": f"long {index}", "max_tokens": 200,
                "ignore_eos": True}
        try:
            statuses.append(httpx.post(base + "/v1/completions", json=body,
                                       timeout=120).status_code)
        except httpx.TransportError:
            statuses.append(-1)

    threads = [threading.Thread(target=long_request, args=(i,)) for i in range(num_requests)]
    for thread in threads:
        thread.start()
    return statuses, threads


def kill_replica_mid_generation(base: str, pid: int, num_requests: int
                                ) -> tuple[list[int], int | None, float]:
    """Send ``num_requests`` long completions from threads, wait until every replica runs one,
    SIGKILL the engine core ``pid``; returns (the requests' HTTP statuses, -1 for a dropped
    connection; ``/health`` after the kill, see ``_health_after_kill``; the kill's
    ``time.monotonic()``)."""
    statuses, threads = start_long_requests(base, num_requests)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and min(per_engine(
            base, "vllm:num_requests_running")) < 1:
        time.sleep(0.05)                        # every replica is generating
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    health = _health_after_kill(base)
    for thread in threads:
        thread.join(timeout=60)
    return statuses, health, killed_at


def _health_after_kill(base: str) -> int | None:
    """The first non-200 /health status within 5 s (None: the server stopped listening)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            status = httpx.get(base + "/health", timeout=2).status_code
        except httpx.TransportError:
            return None
        if status != 200:
            return status
        time.sleep(0.02)
    return 200


def test_killing_one_replica_fails_requests_and_the_server_exits_1(model_dir):
    # a slow step (fault injection) keeps every request generating when the replica dies
    proc, base = start_server(model_dir, "-dp", "2",
                              env_extra={"PAGELLM_FAULT_INJECT_STEP_DELAY_S": "0.05"})
    try:
        pids = _engine_core_pids(proc.pid)
        assert len(pids) == 2
        statuses, health, _ = kill_replica_mid_generation(base, pids[1], 4)
        assert statuses == [503] * 4, statuses
        assert health == 503
        assert proc.wait(timeout=60) == 1
        assert not psutil.pid_exists(pids[0]) or \
            psutil.Process(pids[0]).status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
