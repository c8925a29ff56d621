"""Several API servers in front of one engine core (``--api-server-count``): a step's columnar
outputs split by the client each request came from (tokens, logprob rows and prompt logprobs
follow their request, stats go to every client, a request nobody owns is dropped); a real
engine-core process serving two clients sends each one its own requests' outputs and both the
stats; the flag's argparse type rejects counts below 1."""

from __future__ import annotations

import argparse
import asyncio

import numpy as np
import pytest

from pagellm.core.request import Request
from pagellm.core.sched_output import EngineCoreOutputs, TopLogprobs
from pagellm.core.stats import EngineStats
from pagellm.engine.core_proc import split_outputs
from pagellm.entrypoints.cli.serve import api_server_count
from pagellm.sampling_params import SamplingParams


def _outputs() -> EngineCoreOutputs:
    """Four requests: a (2 tokens), b (1, finished), c (0: a prompt chunk), d (1 token)."""
    rows = 4            # flattened tokens: a a b d
    logprobs = TopLogprobs(np.arange(rows * 2, dtype=np.int64).reshape(rows, 2),
                           np.arange(rows * 2, dtype=np.float32).reshape(rows, 2) / -10,
                           np.arange(1, rows + 1, dtype=np.int64))
    prompt = TopLogprobs(np.zeros((1, 2), np.int64), np.zeros((1, 2), np.float32),
                         np.ones(1, np.int64))
    stats = EngineStats(3, 1, 0.25, 0, 0, 0, 7)
    return EngineCoreOutputs(
        req_ids=["a", "b", "c", "d"], num_new_tokens=[2, 1, 0, 1],
        new_token_ids=[10, 11, 20, 40], finish_reasons=[None, "stop", None, None],
        stop_reasons=[None, 0, None, None], num_cached_tokens=[0, 16, 0, 32],
        first_scheduled_times=[1.0, 2.0, None, 4.0], num_preemptions=[0, 1, 0, 0],
        new_logprobs=logprobs, new_prompt_logprobs={"c": (0, prompt), "d": (3, prompt)},
        stats=stats, timestamp=9.5)


def test_split_outputs_gives_each_client_its_requests_columns_and_every_client_the_stats():
    outputs = _outputs()
    first, second, third = split_outputs(outputs, {"a": 1, "b": 0, "c": 1}, num_clients=3)
    assert first.req_ids == ["b"] and first.new_token_ids == [20]
    assert (first.finish_reasons, first.stop_reasons, first.num_cached_tokens,
            first.first_scheduled_times, first.num_preemptions) == (
        ["stop"], [0], [16], [2.0], [1])
    assert first.new_logprobs.token_ids.tolist() == [[4, 5]]       # row 2: b's token
    assert first.new_logprobs.ranks.tolist() == [3]
    assert first.new_prompt_logprobs == {}
    assert second.req_ids == ["a", "c"] and second.num_new_tokens == [2, 0]
    assert second.new_token_ids == [10, 11]
    assert second.new_logprobs.token_ids.tolist() == [[0, 1], [2, 3]]
    assert np.allclose(second.new_logprobs.logprobs, [[0, -0.1], [-0.2, -0.3]])
    assert list(second.new_prompt_logprobs) == ["c"]
    assert second.token_offsets() == [0, 2, 2]
    # "d" belongs to no client (aborted meanwhile): dropped; client 2 gets the stats alone
    assert len(third) == 0 and third.new_token_ids == [] and third.new_logprobs.num_rows == 0
    for batch in (first, second, third):
        assert batch.stats is outputs.stats and batch.timestamp == 9.5


def test_split_outputs_without_logprobs_and_with_an_empty_batch():
    outputs = _outputs()
    outputs.new_logprobs = None
    first, second = split_outputs(outputs, {"a": 0, "b": 0, "c": 0, "d": 0}, num_clients=2)
    assert first.req_ids == ["a", "b", "c", "d"] and first.new_token_ids == [10, 11, 20, 40]
    assert first.new_logprobs is None and len(second) == 0
    empty = split_outputs(EngineCoreOutputs(stats=outputs.stats), {}, num_clients=2)
    assert [len(batch) for batch in empty] == [0, 0]
    assert all(batch.stats is outputs.stats for batch in empty)


@pytest.mark.parametrize("text, expected", [("1", 1), ("4", 4)])
def test_api_server_count_accepts_positive_counts(text, expected):
    assert api_server_count(text) == expected


@pytest.mark.parametrize("text, message", [("0", "must be >= 1"), ("-2", "must be >= 1"),
                                           ("two", "not an integer")])
def test_api_server_count_rejects_others_naming_the_problem(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        api_server_count(text)


def test_an_engine_core_with_two_clients_routes_outputs_to_the_sender(tmp_path):
    """A real engine-core process started for two clients (as the serve supervisor does):
    each client's request comes back to it only, all its tokens; both clients see the core's
    stats, which count the requests received from each client (the DP balancer's in-flight
    count: nothing left in flight once the outputs arrived)."""
    from pagellm.engine.dp_client import DPClient, start_engine_cores
    from pagellm.engine.llm_engine import resolve_config
    from tests.helpers.tiny_models import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path, "llama")
    config, _ = resolve_config(model=str(model_dir), device="cpu", max_model_len=128,
                               kv_cache_memory_bytes=2**20)
    cores = start_engine_cores(config, num_clients=2)

    async def run():
        clients = [await DPClient.connect(config, cores.socket_dir, cores.pids, index, 120)
                   for index in range(2)]
        params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
        prompts = {0: [5, 6, 7], 1: [9, 8, 7, 6]}
        for index, client in enumerate(clients):
            await client.add_requests([Request(f"r{index}", prompts[index], params, 4, 0,
                                               0.0)])
        received = {0: {}, 1: {}}
        stats_seen = [0, 0]
        last_stats = [None, None]
        def done(index: int) -> bool:
            # all of its tokens, and stats pushed after the core took both requests: the
            # clients' messages reach the core in either order, so r0 can finish first
            return (len(received[index].get(f"r{index}", ())) == 4 and last_stats[index]
                    is not None and sum(last_stats[index].num_requests_received) == 2)

        for index, client in enumerate(clients):
            while not done(index):
                _, batch = await asyncio.wait_for(client.get_output(), 60)
                stats_seen[index] += batch.stats is not None
                last_stats[index] = batch.stats or last_stats[index]
                offsets = batch.token_offsets()
                for row, request_id in enumerate(batch.req_ids):
                    received[index].setdefault(request_id, []).extend(
                        batch.new_token_ids[offsets[row]:offsets[row + 1]])
        in_flight = [client.balancer.replicas[0].num_waiting
                     - last_stats[index].num_waiting for index, client in enumerate(clients)]
        for client in clients:
            await client.shutdown()
        return received, stats_seen, last_stats, in_flight

    try:
        received, stats_seen, last_stats, in_flight = asyncio.run(run())
    finally:
        for process in cores.processes:
            process.kill()
            process.join(10)
    assert list(received[0]) == ["r0"] and list(received[1]) == ["r1"]
    assert all(len(tokens) == 4 for r in received.values() for tokens in r.values())
    assert min(stats_seen) >= 1
    assert [stats.num_requests_received for stats in last_stats] == [[1, 1], [1, 1]]
    assert in_flight == [0, 0]
