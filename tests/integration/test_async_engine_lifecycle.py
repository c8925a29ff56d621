"""The engine-core process's life: a failing forward pass fails every in-flight request
promptly, shutdown leaves no process behind, and a core that cannot start says why."""

from __future__ import annotations

import asyncio
import os

import psutil
import pytest

from pagellm import SamplingParams
from pagellm.engine.async_engine import AsyncLLM
from pagellm.engine.engine_core import FAULT_INJECT_ENV, SLOW_STEP_ENV
from pagellm.errors import ClientError, EngineDeadError, ServerError, ServiceUnavailableError

ENGINE_ARGS = dict(kv_cache_memory_bytes=8 * 2**20, dtype="float32", block_size=4)
LONG = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True, output_kind="delta")


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _engine_processes() -> list[psutil.Process]:
    """Our child processes, less multiprocessing's resource tracker (it lives until exit)."""
    return [p for p in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline())]


async def _drain(stream) -> None:
    async for _ in stream:
        pass


def test_fault_in_forward_fails_every_request(tiny_model_dirs, monkeypatch):
    monkeypatch.setenv(FAULT_INJECT_ENV, "6")

    async def scenario():
        engine = await AsyncLLM.from_engine_args(model=str(tiny_model_dirs["llama"]),
                                                 **ENGINE_ARGS)
        monkeypatch.delenv(FAULT_INJECT_ENV)
        pid = engine.client.clients[0].process.pid
        received = {i: 0 for i in range(3)}

        async def consume(i):
            async for _ in engine.generate(f"prompt {i}", LONG):
                received[i] += 1

        tasks = [asyncio.create_task(consume(i)) for i in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
        assert all(isinstance(r, EngineDeadError) for r in results), results
        assert "InjectedFault" in str(results[0]) and sum(received.values()) > 0
        assert engine.errored and not engine.is_healthy()
        with pytest.raises(EngineDeadError):
            await engine.generate("again").__anext__()
        with pytest.raises(EngineDeadError):
            await engine.stats()
        await asyncio.wait_for(engine.shutdown(), 15)
        return pid, engine.client.clients[0].process.exitcode

    pid, exit_code = asyncio.run(scenario())
    assert exit_code == 1 and _gone(pid)


def test_shutdown_leaves_no_process(tiny_model_dirs):
    async def scenario():
        engine = await AsyncLLM.from_engine_args(model=str(tiny_model_dirs["llama"]),
                                                 **ENGINE_ARGS)
        pid, socket_dir = engine.client.clients[0].process.pid, engine.client.clients[0].socket_dir
        assert psutil.Process(pid).ppid() == os.getpid() and engine.is_healthy()
        await engine.check_health()
        stream = engine.generate("still running", LONG)
        await stream.__anext__()
        await asyncio.wait_for(engine.shutdown(), 15)
        with pytest.raises(EngineDeadError):      # in-flight requests end, they do not hang
            await asyncio.wait_for(_drain(stream), 5)
        assert not engine.is_healthy()
        return pid, socket_dir, engine.client.clients[0].process.exitcode

    pid, socket_dir, exit_code = asyncio.run(scenario())
    assert exit_code == 0 and _gone(pid) and not os.path.exists(socket_dir)
    assert not _engine_processes()


def test_core_that_cannot_start_says_why(tiny_model_dirs):
    async def start():
        # a KV cache of 1 byte cannot hold max_model_len tokens: rejected in the core process
        args = dict(ENGINE_ARGS, kv_cache_memory_bytes=1)
        await AsyncLLM.from_engine_args(model=str(tiny_model_dirs["llama"]), **args)

    with pytest.raises(ClientError, match="the KV cache holds 0 tokens"):
        asyncio.run(asyncio.wait_for(start(), 60))
    assert not _engine_processes()


def test_drain_finishes_short_requests_and_aborts_long_ones(tiny_model_dirs, monkeypatch):
    # 10 ms per step: the 3-token request ends well inside the 1 s drain, the 400-token one
    # (4 s) cannot, however fast or loaded the machine is.
    monkeypatch.setenv(SLOW_STEP_ENV, "0.01")
    short = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)

    async def scenario():
        engine = await AsyncLLM.from_engine_args(model=str(tiny_model_dirs["llama"]),
                                                 **ENGINE_ARGS)
        long_stream = engine.generate("long", LONG, request_id="long")
        await long_stream.__anext__()
        short_task = asyncio.create_task(_last(engine.generate("short", short)))
        await asyncio.sleep(0)
        drain = asyncio.create_task(engine.drain(timeout_s=1.0))
        await asyncio.sleep(0)
        with pytest.raises(ServiceUnavailableError, match="shutting down"):
            await engine.generate("late").__anext__()
        short_output = await asyncio.wait_for(short_task, 10)
        aborted = await asyncio.wait_for(drain, 10)
        with pytest.raises(ServiceUnavailableError, match="drain timeout"):
            await asyncio.wait_for(_drain(long_stream), 5)
        stats = await engine.stats()
        await engine.shutdown()
        return short_output, aborted, stats, engine.client.clients[0].process.exitcode

    short_output, aborted, stats, exit_code = asyncio.run(scenario())
    assert short_output.finished and len(short_output.outputs[0].token_ids) == 3
    assert aborted == ["long"] and stats.kv_cache_usage == 0.0 and exit_code == 0


async def _last(stream):
    last = None
    async for last in stream:
        pass
    return last


def test_num_waiting_requests_counts_what_exceeds_the_batch(tiny_model_dirs):
    async def scenario():
        engine = await AsyncLLM.from_engine_args(model=str(tiny_model_dirs["llama"]),
                                                 max_num_seqs=2, **ENGINE_ARGS)
        counts = [engine.num_waiting_requests]
        streams = [engine.generate(f"prompt {i}", LONG) for i in range(3)]
        for stream in streams[:2]:
            await stream.__anext__()
        next_third = asyncio.create_task(streams[2].__anext__())
        await asyncio.sleep(0.2)
        counts.append(engine.num_waiting_requests)
        await streams[0].aclose()
        await asyncio.wait_for(next_third, 10)     # the third gets the freed slot
        counts.append(engine.num_waiting_requests)
        for stream in streams[1:]:
            await stream.aclose()
        await engine.shutdown()
        return counts

    assert asyncio.run(scenario()) == [0, 1, 0]
