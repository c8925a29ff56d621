"""The scheduler with several batches in flight (pipeline parallelism, max_concurrent_batches
> 1): micro-batches share the requests, in-flight requests are neither rescheduled nor
preempted, running requests carry their sampled tokens to the earlier stages, and outputs of
requests aborted in flight are dropped (even when a new request reuses the id)."""

from __future__ import annotations

from pagellm.core.request import RequestStatus
from pagellm.core.sched_output import ModelRunnerOutput
from tests.unit.core.builders import cached_rows, make_request, make_scheduler, unpack


def sampled_all(output, token_id: int = 7) -> ModelRunnerOutput:
    """The last stage's output for a batch of decodes / final prefill chunks."""
    ids = list(output.num_scheduled_tokens)
    return ModelRunnerOutput(req_ids=ids, sampled_token_ids=[token_id] * len(ids))


def test_batches_split_the_requests_and_in_flight_ones_wait_for_their_output():
    scheduler = make_scheduler(max_concurrent_batches=2)
    for name in "abcd":
        scheduler.add_request(make_request(name, 5, ignore_eos=True))
    first = scheduler.schedule()
    second = scheduler.schedule()
    third = scheduler.schedule()            # everything is in flight
    assert list(first.num_scheduled_tokens) == ["a", "b"]
    assert list(second.num_scheduled_tokens) == ["c", "d"]
    assert third.num_scheduled_tokens == {}
    assert set(scheduler.in_flight) == set("abcd")
    scheduler.update_from_output(third, ModelRunnerOutput([], []))

    outputs = unpack(scheduler.update_from_output(first, sampled_all(first, 11)))
    assert [(o.request_id, o.new_token_ids) for o in outputs] == [("a", [11]), ("b", [11])]
    assert set(scheduler.in_flight) == {"c", "d"}
    fourth = scheduler.schedule()            # a and b again; c and d still in the pipeline
    assert fourth.num_scheduled_tokens == {"a": 1, "b": 1}
    assert [(c.request_id, c.num_computed_tokens, c.new_token_ids)
            for c in cached_rows(fourth)] == [("a", 5, [11]), ("b", 5, [11])]


def test_one_batch_per_step_without_pipelining_sends_no_token_ids():
    scheduler = make_scheduler()
    for name in "abcd":
        scheduler.add_request(make_request(name, 5))
    first = scheduler.schedule()
    assert list(first.num_scheduled_tokens) == list("abcd")
    scheduler.update_from_output(first, sampled_all(first))
    second = scheduler.schedule()
    assert all(c.new_token_ids == [] for c in cached_rows(second))
    assert scheduler.in_flight == {}


def test_a_victim_is_never_a_request_in_flight():
    scheduler = make_scheduler(num_blocks=4, block_size=4, max_concurrent_batches=2,
                               enable_prefix_caching=False)
    scheduler.add_request(make_request("a", 8, ignore_eos=True))
    scheduler.add_request(make_request("b", 8, ignore_eos=True))
    first = scheduler.schedule()             # a: blocks 0-1
    second = scheduler.schedule()            # b: blocks 2-3, none left
    assert list(first.num_scheduled_tokens) == ["a"]
    assert list(second.num_scheduled_tokens) == ["b"]
    assert scheduler.kv.pool.num_free_blocks == 0
    scheduler.update_from_output(first, sampled_all(first))
    # a's token at position 8 needs a third block: the FCFS victim would be b, the last
    # running request, but b is in flight (its KV is still being written), so a yields
    third = scheduler.schedule()
    assert third.num_scheduled_tokens == {} and third.preempted_req_ids == {"a"}
    assert scheduler.requests["a"].status == RequestStatus.PREEMPTED
    assert scheduler.requests["b"].status == RequestStatus.RUNNING
    scheduler.update_from_output(third, ModelRunnerOutput([], []))
    outputs = unpack(scheduler.update_from_output(second, sampled_all(second, 9)))
    assert [(o.request_id, o.new_token_ids) for o in outputs] == [("b", [9])]


def test_an_aborted_in_flight_request_drops_its_output_even_when_its_id_is_reused():
    scheduler = make_scheduler(max_concurrent_batches=2)
    scheduler.add_request(make_request("a", 5, ignore_eos=True))
    first = scheduler.schedule()
    assert list(first.num_scheduled_tokens) == ["a"]
    assert scheduler.abort_requests(["a"]) == ["a"]
    reused = make_request("a", 3, ignore_eos=True)
    scheduler.add_request(reused)
    second = scheduler.schedule()            # the new "a" waits for the old one's batch
    assert second.num_scheduled_tokens == {} and second.finished_req_ids == {"a"}
    scheduler.update_from_output(second, ModelRunnerOutput([], []))

    outputs = unpack(scheduler.update_from_output(first, sampled_all(first, 11)))
    assert outputs == []                      # the old a's token went nowhere
    assert reused.output_token_ids == [] and reused.status == RequestStatus.WAITING
    third = scheduler.schedule()
    assert third.num_scheduled_tokens == {"a": 3}
    outputs = unpack(scheduler.update_from_output(third, sampled_all(third, 13)))
    assert [(o.request_id, o.new_token_ids) for o in outputs] == [("a", [13])]
    assert reused.output_token_ids == [13]
