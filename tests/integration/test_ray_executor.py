"""The Ray executor on a local Ray cluster on CPU (2 CPUs, gloo): TP=2 as two Ray actors gives
the mp executor's greedy tokens and logprobs and per-rank shards, a killed actor fails the
generation instead of hanging, a cluster too small is a clear error before any actor starts,
and pagellm imports ray only when the ray backend is selected.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import ray

from pagellm import LLM, ClientError, EngineDeadError, SamplingParams
from pagellm.distributed.executor import MultiprocExecutor
from pagellm.distributed.ray_executor import RayDistributedExecutor
from tests.integration.test_tensor_parallel import (ENGINE, GREEDY, PROMPTS,
                                                    assert_same_generation, kill_after_steps)


@pytest.fixture(scope="module")
def ray_cluster():
    """A fresh local Ray instance with 2 CPUs (never one already running on this host)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_llm(ray_cluster, tiny_model_dirs):
    llm = LLM(str(tiny_model_dirs["llama"]), tensor_parallel_size=2,
              distributed_executor_backend="ray", **ENGINE)
    yield llm
    llm.shutdown()


def test_ray_tp2_equals_mp_tp2(ray_llm, tiny_model_dirs):
    mp_llm = LLM(str(tiny_model_dirs["llama"]), tensor_parallel_size=2,
                 distributed_executor_backend="mp", **ENGINE)
    try:
        assert isinstance(mp_llm.llm_engine.engine_core.executor, MultiprocExecutor)
        reference = mp_llm.generate(PROMPTS, GREEDY, use_tqdm=False)
        mp_stats = mp_llm.llm_engine.engine_core.executor.load_stats
    finally:
        mp_llm.shutdown()
    executor = ray_llm.llm_engine.engine_core.executor
    assert isinstance(executor, RayDistributedExecutor)
    assert len(executor.workers) == 2
    assert len(set(executor.worker_pids) | {os.getpid()}) == 3    # two actor processes
    table = ray.util.placement_group_table(executor._placement_group)
    assert (table["strategy"], len(table["bundles"])) == ("STRICT_PACK", 2)   # one node holds both
    assert executor.load_stats == mp_stats                         # the same shard per rank
    assert_same_generation(reference, ray_llm.generate(PROMPTS, GREEDY, use_tqdm=False))


def test_killed_actor_fails_generation_quickly(ray_llm):
    engine_core = ray_llm.llm_engine.engine_core
    executor = engine_core.executor
    start_steps = engine_core.num_steps
    killer = kill_after_steps(engine_core, executor.worker_pids[1])
    long = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    started = time.monotonic()
    with pytest.raises(EngineDeadError, match=r"worker rank 1 \(pid \d+ .*\) died"):
        ray_llm.generate(PROMPTS, long, use_tqdm=False)
    killer.join()
    assert time.monotonic() - started < 30
    assert start_steps + 3 <= engine_core.num_steps < start_steps + 400
    assert executor.workers == [] and executor._placement_group is None   # actors killed
    assert _gone(executor.worker_pids[0], timeout_s=10)                   # rank 0 too
    with pytest.raises(EngineDeadError):
        ray_llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)


def test_cluster_too_small_is_a_client_error_before_any_actor(ray_cluster, tiny_model_dirs):
    with pytest.raises(ClientError, match=r"Ray cluster has 2 CPU but 4 ranks need"):
        LLM(str(tiny_model_dirs["llama"]), tensor_parallel_size=4,
            distributed_executor_backend="ray", **ENGINE)
    assert _freed(timeout_s=0.5)


def test_missing_ray_is_a_client_error_naming_pip_install(monkeypatch, tiny_model_dirs):
    monkeypatch.setitem(sys.modules, "ray", None)     # what `import ray` sees without ray
    with pytest.raises(ClientError, match="pip install ray"):
        LLM(str(tiny_model_dirs["llama"]), distributed_executor_backend="ray", **ENGINE)


def test_pagellm_imports_ray_only_for_the_ray_backend(tiny_model_dirs):
    code = ("import sys; from pagellm import LLM; "
            f"llm = LLM({str(tiny_model_dirs['llama'])!r}, device='cpu', "
            "kv_cache_memory_bytes=2**20); "
            "from pagellm.config.engine_args import create_engine_config; "
            "create_engine_config(distributed_executor_backend='ray'); "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def _gone(pid: int, timeout_s: float) -> bool:
    """Whether process ``pid`` exits within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_bad_configuration_found_by_the_ranks_is_a_client_error(ray_cluster, tiny_model_dirs):
    """A KV budget too small for max_model_len fails in every rank's determine_num_blocks:
    the ranks' WorkerFailed(client_error) becomes a ClientError and the actors are freed."""
    with pytest.raises(ClientError, match="max_model_len=512 needs more"):
        LLM(str(tiny_model_dirs["llama"]), tensor_parallel_size=2,
            distributed_executor_backend="ray", **{**ENGINE, "kv_cache_memory_bytes": 2**12})
    assert _freed(timeout_s=10)


def _freed(timeout_s: float) -> bool:
    """Whether every CPU of the Ray cluster is free again within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU") == ray.cluster_resources()["CPU"]:
            return True
        time.sleep(0.1)
    return False
