"""AsyncLLM over a real engine-core process (tiny llama): same tokens as the offline LLM,
streaming, aborts that free KV blocks, n > 1, stop strings, and bad input."""

from __future__ import annotations

import asyncio

import pytest

from pagellm import LLM, SamplingParams
from pagellm.engine.async_engine import AsyncLLM
from pagellm.errors import ClientError

ENGINE_ARGS = dict(kv_cache_memory_bytes=8 * 2**20, dtype="float32", block_size=4)
PROMPTS = ["Hello, my name is", "The capital of France", "1, 2, 3,", "def f(x):", "abc"]
TIMEOUT_S = 30


class EngineRunner:
    """An AsyncLLM on its own event loop, shared by the tests of this module."""

    def __init__(self, model_dir: str):
        self.loop = asyncio.new_event_loop()
        self.engine: AsyncLLM = self.run(AsyncLLM.from_engine_args(model=model_dir, **ENGINE_ARGS))

    def run(self, coro, timeout_s: float = TIMEOUT_S):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout_s))

    def close(self) -> None:
        self.run(self.engine.shutdown())
        self.loop.close()


@pytest.fixture(scope="module")
def runner(tiny_model_dirs):
    runner = EngineRunner(str(tiny_model_dirs["llama"]))
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def offline_llm(tiny_model_dirs):
    return LLM(str(tiny_model_dirs["llama"]), **ENGINE_ARGS)


async def _final(engine: AsyncLLM, prompt, params: SamplingParams, request_id=None):
    last = None
    async for output in engine.generate(prompt, params, request_id):
        last = output
    return last


async def _wait_idle(engine: AsyncLLM, timeout_s: float = 5.0):
    """Poll the core's stats until no request holds KV blocks."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        stats = await engine.stats()
        if stats.kv_cache_usage == 0.0 and stats.num_running == 0 and stats.num_waiting == 0:
            return stats
        assert asyncio.get_running_loop().time() < deadline, f"still busy: {stats}"
        await asyncio.sleep(0.02)


def test_concurrent_greedy_equals_offline(runner, offline_llm):
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    expected = offline_llm.generate(PROMPTS, params, use_tqdm=False)

    async def all_prompts():
        return await asyncio.gather(*(_final(runner.engine, p, params) for p in PROMPTS))

    outputs = runner.run(all_prompts())
    for got, want in zip(outputs, expected):
        assert got.finished and got.outputs[0].finish_reason == "length"
        assert got.outputs[0].token_ids == want.outputs[0].token_ids
        assert got.outputs[0].text == want.outputs[0].text
        assert got.prompt_token_ids == want.prompt_token_ids
    assert runner.engine.num_unfinished_requests == 0


def test_streaming_deltas_concatenate_to_final(runner):
    final = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    delta = final.clone(output_kind="delta")

    async def both():
        chunks = [o async for o in runner.engine.generate(PROMPTS[0], delta)]
        return chunks, await _final(runner.engine, PROMPTS[0], final)

    chunks, whole = runner.run(both())
    assert len(chunks) > 1 and chunks[-1].finished and not any(c.finished for c in chunks[:-1])
    assert "".join(c.outputs[0].text for c in chunks) == whole.outputs[0].text
    assert sum((c.outputs[0].token_ids for c in chunks), []) == whole.outputs[0].token_ids


def test_one_output_per_request_per_step_and_slow_consumers_merge(runner, offline_llm):
    """Each step hands every running request at most one output (one put and one wake-up for
    the step, not one per token); a consumer that falls behind reads several steps' deltas
    merged into one read, with the same tokens and text as one that keeps up."""
    max_tokens = 12
    whole = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    expected = offline_llm.generate(PROMPTS[:4], whole, use_tqdm=False)
    delta = whole.clone(output_kind="delta")

    async def consume(index: int, delay_s: float):
        request_id = f"merge-{index}"
        chunks, collector = [], None
        async for output in runner.engine.generate(PROMPTS[index], delta, request_id):
            collector = collector or runner.engine._queues[request_id]
            chunks.append(output)
            await asyncio.sleep(delay_s)
        return chunks, collector

    async def all_requests():
        return await asyncio.gather(*(consume(i, 0.2 if i % 2 else 0.0) for i in range(4)))

    for index, ((chunks, collector), want) in enumerate(zip(runner.run(all_requests()),
                                                            expected)):
        assert collector.num_puts == max_tokens        # one output per step, one token each
        assert collector.num_reads == len(chunks)
        if index % 2:
            assert len(chunks) < max_tokens            # slow: merged reads
        assert sum((c.outputs[0].token_ids for c in chunks), []) == want.outputs[0].token_ids
        assert "".join(c.outputs[0].text for c in chunks) == want.outputs[0].text
        assert chunks[-1].finished and not any(c.finished for c in chunks[:-1])


def test_cancelled_consumer_aborts_and_frees_kv(runner):
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True, output_kind="delta")

    async def cancel_one():
        started = asyncio.Event()

        async def consume():
            async for _ in runner.engine.generate(PROMPTS[1], params):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        assert (await runner.engine.stats()).kv_cache_usage > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert runner.engine.num_unfinished_requests == 0
        return await _wait_idle(runner.engine)

    stats = runner.run(cancel_one())
    assert stats.generation_tokens < 400


def test_break_and_aclose_aborts(runner):
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True, output_kind="delta")

    async def break_early():
        stream = runner.engine.generate(PROMPTS[2], params, request_id="leaves-early")
        async for _ in stream:
            break
        await stream.aclose()
        assert runner.engine.num_unfinished_requests == 0
        await _wait_idle(runner.engine)
        # the id is free again
        return await _final(runner.engine, PROMPTS[2], SamplingParams(max_tokens=2),
                            "leaves-early")

    assert runner.run(break_early()).finished


def test_abort_by_id_ends_the_generator(runner):
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True, output_kind="delta")

    async def abort_from_outside():
        received = []
        async for output in runner.engine.generate(PROMPTS[3], params, request_id="victim"):
            received.append(output)
            if len(received) == 2:
                await runner.engine.abort("victim")
        await _wait_idle(runner.engine)
        return received

    received = runner.run(abort_from_outside())
    assert len(received) == 2 and not received[-1].finished


def test_n_greater_than_one_equals_offline(runner, offline_llm):
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=12, ignore_eos=True)
    expected = offline_llm.generate([PROMPTS[4]], params, use_tqdm=False)[0]
    output = runner.run(_final(runner.engine, PROMPTS[4], params))
    assert [c.index for c in output.outputs] == [0, 1, 2]
    assert [c.token_ids for c in output.outputs] == [c.token_ids for c in expected.outputs]
    assert len({tuple(c.token_ids) for c in output.outputs}) > 1


def test_stop_string_ends_request_in_core(runner, offline_llm):
    probe = offline_llm.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=30,
                                                               ignore_eos=True),
                                 use_tqdm=False)[0].outputs[0].text
    stop = probe[5:7]
    assert len(stop) == 2
    params = SamplingParams(temperature=0.0, max_tokens=300, ignore_eos=True, stop=[stop])

    async def run_and_settle():
        output = await _final(runner.engine, PROMPTS[0], params)
        await _wait_idle(runner.engine)
        return output

    output = runner.run(run_and_settle())
    assert output.outputs[0].finish_reason == "stop" and output.outputs[0].stop_reason == stop
    assert output.outputs[0].text == probe[:probe.index(stop)]


def test_bad_input_raises_client_error_and_engine_serves_on(runner):
    async def bad_then_good():
        for prompt, params in (("x", SamplingParams(max_tokens=10_000)), ([], SamplingParams()),
                               ([10**6], SamplingParams()), ("x", SamplingParams(logprobs=99))):
            with pytest.raises(ClientError):
                await _final(runner.engine, prompt, params)
        with pytest.raises(ClientError, match="priority"):
            await runner.engine.generate("x", priority=1).__anext__()
        stream = runner.engine.generate("x", SamplingParams(max_tokens=50, ignore_eos=True,
                                                            output_kind="delta"),
                                        request_id="dup")
        await stream.__anext__()
        with pytest.raises(ClientError, match="already in use"):
            await _final(runner.engine, "x", SamplingParams(), "dup")
        await stream.aclose()
        assert runner.engine.num_unfinished_requests == 0
        return await _final(runner.engine, "x", SamplingParams(temperature=0.0, max_tokens=3,
                                                               ignore_eos=True))

    output = runner.run(bad_then_good())
    assert output.finished and len(output.outputs[0].token_ids) == 3
    assert runner.engine.is_healthy()
