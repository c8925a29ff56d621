"""AsyncLLM's per-request OutputCollector (deltas a slow consumer has not read merge into one
read) and the API server's disconnect watch (one waiting receive per request, no polling)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from pagellm.engine.async_engine import OutputCollector, merge_delta_outputs
from pagellm.entrypoints.openai.api_server import _unless_disconnected
from pagellm.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput


def _delta(step: int, n: int = 2, finished: bool = False) -> RequestOutput:
    """Step ``step``'s delta of a 2-choice request: token 10 * step + i and text "s{step}c{i}"
    for choice i, with one logprob position each."""
    completions = [CompletionOutput(i, f"s{step}c{i}", [10 * step + i], -float(step),
                                    [{10 * step + i: Logprob(-0.5, 1, f"t{step}")}],
                                    "length" if finished else None, None)
                   for i in range(n)]
    return RequestOutput("r", None, [1, 2], [None, {2: Logprob(-1.0)}], completions, finished,
                         RequestMetrics(100.0 + step), num_cached_tokens=step)


def test_merge_delta_outputs_concatenates_every_choice():
    merged = merge_delta_outputs(_delta(1), _delta(2))
    merged = merge_delta_outputs(merged, _delta(3, finished=True))
    assert [c.text for c in merged.outputs] == ["s1c0s2c0s3c0", "s1c1s2c1s3c1"]
    assert [c.token_ids for c in merged.outputs] == [[10, 20, 30], [11, 21, 31]]
    assert [[list(p) for p in c.logprobs] for c in merged.outputs] == [[[10], [20], [30]],
                                                                      [[11], [21], [31]]]
    assert [c.cumulative_logprob for c in merged.outputs] == [-3.0, -3.0]
    assert [c.finish_reason for c in merged.outputs] == ["length", "length"]
    assert merged.finished and merged.num_cached_tokens == 3
    assert merged.metrics.arrival_time == 103.0


def test_collector_merges_unread_outputs_into_one_read():
    async def scenario():
        collector = OutputCollector()
        for step in range(1, 5):        # the consumer fell 4 steps behind
            collector.put(_delta(step, n=1))
        first = await collector.get(lambda: False)
        collector.put(_delta(5, n=1, finished=True))
        second = await collector.get(lambda: False)
        return collector, first, second

    collector, first, second = asyncio.run(scenario())
    assert first.outputs[0].token_ids == [10, 20, 30, 40]
    assert first.outputs[0].text == "s1c0s2c0s3c0s4c0"
    assert second.outputs[0].token_ids == [50] and second.finished
    assert (collector.num_puts, collector.num_reads) == (5, 2)


def test_collector_verdict_after_outputs_and_dropped_outputs():
    async def scenario():
        failed = OutputCollector()
        failed.put(_delta(1, n=1))
        failed.end(RuntimeError("core died"))
        aborted = OutputCollector()
        aborted.put(_delta(1, n=1))
        aborted.end(None)
        aborted.end(RuntimeError("later verdicts are ignored"))
        return ([await failed.get(lambda: False), await failed.get(lambda: False)],
                await aborted.get(lambda: True))

    (output, error), verdict = asyncio.run(scenario())
    assert output.outputs[0].token_ids == [10]      # outputs first, then the error
    assert isinstance(error, RuntimeError)
    assert verdict is None                          # dropped: the abort's verdict only


def _request_with_receive(receive) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/v1/completions",
                    "headers": []}, receive)


def test_disconnect_watch_waits_without_polling():
    """A request waiting 0.3 s for its first token costs one pending receive(), where the
    50 ms poll it replaced called it (and built a cancel scope) six times."""
    calls = []

    async def receive():
        calls.append(1)
        await asyncio.sleep(3600)       # the client stays connected

    async def scenario():
        handler = asyncio.ensure_future(asyncio.sleep(0.3, result="answer"))
        return await _unless_disconnected(_request_with_receive(receive), handler)

    assert asyncio.run(scenario()) == "answer"
    assert len(calls) == 1


def test_disconnect_watch_cancels_the_handler_when_the_client_leaves():
    async def receive():
        await asyncio.sleep(0.05)
        return {"type": "http.disconnect"}

    async def scenario():
        handler = asyncio.ensure_future(asyncio.sleep(3600))
        result = await _unless_disconnected(_request_with_receive(receive), handler)
        return result, handler

    result, handler = asyncio.run(scenario())
    assert result is None and handler.cancelled()
