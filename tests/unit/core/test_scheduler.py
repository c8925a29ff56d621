"""Scheduler: token budget, seq limit, stop rules, abort, preemption (recompute and swap),
priority policy and scheduler_delay_factor, each checked against exact state."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

import pagellm.core.scheduler as scheduler_module
from pagellm.core.request import RequestStatus
from tests.unit.core.builders import (EOS, cached_rows, make_request, make_scheduler, play_runner,
                                      step)


def scheduled(output) -> dict[str, int]:
    return dict(output.num_scheduled_tokens)


def tokens(start: int, count: int) -> list[int]:
    """A prompt that shares no block with prompts of other starts."""
    return list(range(start, start + count))


def all_blocks_free(scheduler) -> bool:
    return scheduler.kv.pool.num_free_blocks == scheduler.kv.pool.num_blocks


# ---- token budget and limits ------------------------------------------------------------------

def test_running_first_then_waiting_and_long_prompts_chunk():
    scheduler = make_scheduler(max_num_batched_tokens=10)
    scheduler.add_request(make_request("a", 6))
    output, _ = step(scheduler)
    assert scheduled(output) == {"a": 6}
    assert [r.request_id for r in output.scheduled_new_reqs] == ["a"]

    scheduler.add_request(make_request("b", tokens(500, 20)))
    output, engine_outputs = step(scheduler)
    assert list(output.num_scheduled_tokens.items()) == [("a", 1), ("b", 9)]
    assert output.total_num_scheduled_tokens == 10
    assert [(c.request_id, c.num_computed_tokens) for c in cached_rows(output)] == [("a", 6)]
    (new_b,) = output.scheduled_new_reqs
    assert (new_b.request_id, new_b.num_computed_tokens, new_b.block_ids) == ("b", 0, [2, 3, 4])
    assert [o.request_id for o in engine_outputs] == ["a"]       # b's chunk samples nothing

    output, _ = step(scheduler)
    assert list(output.num_scheduled_tokens.items()) == [("a", 1), ("b", 9)]
    assert [(c.request_id, c.num_computed_tokens, c.new_block_ids)
            for c in cached_rows(output)] == [("a", 7, []), ("b", 9, [5, 6])]

    output, engine_outputs = step(scheduler)
    assert scheduled(output) == {"a": 1, "b": 2}
    assert [o.request_id for o in engine_outputs] == ["a", "b"]
    assert scheduler.requests["b"].num_computed_tokens == 20
    assert scheduler.requests["b"].output_token_ids == [7]


def test_without_chunked_prefill_a_prompt_over_the_budget_waits():
    scheduler = make_scheduler(max_num_batched_tokens=10, enable_chunked_prefill=False)
    scheduler.add_request(make_request("a", 6, max_tokens=2))
    assert scheduled(step(scheduler)[0]) == {"a": 6}
    scheduler.add_request(make_request("b", tokens(500, 10)))
    scheduler.add_request(make_request("c", tokens(600, 3)))
    output, engine_outputs = step(scheduler)
    assert scheduled(output) == {"a": 1}      # b needs 10 > 9 left; c waits behind it
    assert engine_outputs[0].finish_reason == "length"
    assert [r.request_id for r in scheduler.waiting] == ["b", "c"]

    assert scheduled(step(scheduler)[0]) == {"b": 10}            # whole prompt only
    assert scheduled(step(scheduler)[0]) == {"b": 1, "c": 3}


def test_max_num_seqs():
    scheduler = make_scheduler(max_num_seqs=2)
    for name in "abc":
        scheduler.add_request(make_request(name, 3, max_tokens=2))
    assert scheduled(step(scheduler)[0]) == {"a": 3, "b": 3}
    assert scheduled(step(scheduler)[0]) == {"a": 1, "b": 1}     # both finish
    assert scheduled(step(scheduler)[0]) == {"c": 3}


# ---- finishing ----------------------------------------------------------------------------

def run_until_finished(scheduler, tokens: list[int]):
    """Step with the given sampled tokens in turn; return the last engine output."""
    for token_id in tokens:
        _, engine_outputs = step(scheduler, token_id)
        (out,) = engine_outputs
        if out.finished:
            return out
    return out


def test_finish_by_max_tokens_frees_blocks_and_reports_the_id():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 5, max_tokens=3))
    out = run_until_finished(scheduler, [7, 7, 7])
    assert (out.finish_reason, out.stop_reason, out.new_token_ids) == ("length", None, [7])
    assert "a" not in scheduler.requests
    assert scheduler.running == [] and not scheduler.has_unfinished_requests()
    assert all_blocks_free(scheduler)
    assert scheduler.schedule().finished_req_ids == {"a"}
    assert scheduler.schedule().finished_req_ids == set()


def test_finish_by_eos():
    scheduler = make_scheduler()
    request = make_request("a", 5)
    scheduler.add_request(request)
    out = run_until_finished(scheduler, [7, EOS])
    assert (out.finish_reason, out.stop_reason) == ("stop", None)
    assert request.status == RequestStatus.FINISHED_STOPPED
    assert request.output_token_ids == [7, EOS]


def test_finish_by_stop_token_id():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 5, stop_token_ids=[9]))
    out = run_until_finished(scheduler, [7, 9])
    assert (out.finish_reason, out.stop_reason) == ("stop", 9)


def test_min_tokens_holds_back_eos_and_stop_ids():
    scheduler = make_scheduler()
    request = make_request("a", 5, min_tokens=3, stop_token_ids=[9])
    scheduler.add_request(request)
    out = run_until_finished(scheduler, [EOS, 9, EOS])
    assert request.output_token_ids == [EOS, 9, EOS]
    assert (out.finish_reason, out.stop_reason) == ("stop", None)


def test_ignore_eos_runs_to_max_tokens_but_stop_ids_still_stop():
    scheduler = make_scheduler()
    request = make_request("a", 5, max_tokens=3, ignore_eos=True)
    scheduler.add_request(request)
    out = run_until_finished(scheduler, [EOS, EOS, EOS])
    assert request.output_token_ids == [EOS, EOS, EOS]
    assert out.finish_reason == "length"

    scheduler.add_request(make_request("b", 5, ignore_eos=True, stop_token_ids=[9]))
    out = run_until_finished(scheduler, [EOS, 9])
    assert (out.finish_reason, out.stop_reason) == ("stop", 9)


def test_finish_at_max_model_len():
    scheduler = make_scheduler(max_model_len=8)
    request = make_request("a", 6, max_tokens=16)
    scheduler.add_request(request)
    out = run_until_finished(scheduler, [7, 7, 7])
    assert out.finish_reason == "length"
    assert request.num_tokens == 8


# ---- abort --------------------------------------------------------------------------------

def test_abort_frees_blocks_and_reports_the_id_next_step():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 9))
    scheduler.add_request(make_request("b", 9))
    step(scheduler)
    scheduler.add_request(make_request("w", 3))      # still waiting
    assert scheduler.abort_requests(["a", "w", "nope"]) == ["a", "w"]
    assert scheduler.abort_requests(["a"]) == []
    assert [r.request_id for r in scheduler.running] == ["b"]
    assert list(scheduler.waiting) == []
    assert scheduler.kv.block_ids("a") == []
    assert scheduler.kv.pool.num_free_blocks == 64 - 3
    output = scheduler.schedule()
    assert output.finished_req_ids == {"a", "w"}
    assert scheduled(output) == {"b": 1}


def test_abort_while_the_step_runs_drops_the_sampled_token():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 5))
    output = scheduler.schedule()
    runner_output = play_runner(scheduler, output)
    request = scheduler.requests["a"]
    scheduler.abort_requests(["a"])
    assert len(scheduler.update_from_output(output, runner_output)) == 0
    assert request.status == RequestStatus.FINISHED_ABORTED
    assert request.output_token_ids == []
    assert all_blocks_free(scheduler)


# ---- preemption ---------------------------------------------------------------------------

def two_full_requests(**options):
    """4 blocks of 4; a and b each hold 2 blocks and need a third for their next token."""
    scheduler = make_scheduler(num_blocks=4, **options)
    scheduler.add_request(make_request("a", 8, arrival_time=0.0, priority=options.get("_", 0)))
    scheduler.add_request(make_request("b", list(range(200, 208)), arrival_time=1.0))
    output, _ = step(scheduler)
    assert [r.block_ids for r in output.scheduled_new_reqs] == [[0, 1], [2, 3]]
    return scheduler


def test_preempt_by_recompute_evicts_the_last_running(caplog):
    scheduler = two_full_requests()
    victim = scheduler.requests["b"]
    with caplog.at_level(logging.WARNING, logger="pagellm.core.scheduler"):
        output, _ = step(scheduler)
    assert scheduled(output) == {"a": 1}
    assert [(c.request_id, c.new_block_ids) for c in cached_rows(output)] == [("a", [3])]
    assert output.num_preempted == 1
    assert output.preempted_req_ids == {"b"}
    assert output.finished_req_ids == set()
    assert output.blocks_to_swap_out == []
    assert (victim.status, victim.num_computed_tokens, victim.num_preemptions) == (
        RequestStatus.PREEMPTED, 0, 1)
    assert list(scheduler.waiting) == [victim]
    assert scheduler.kv.block_ids("b") == []
    assert scheduler.kv.block_ids("a") == [0, 1, 3]
    assert scheduler.num_preemptions == 1
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "PreemptionMode.RECOMPUTE" in record.getMessage()
    assert "total_cumulative_preemption_cnt=1" in record.getMessage()
    assert "Sequence group b" in record.getMessage()


def test_fcfs_victim_is_the_last_running_not_the_next():
    scheduler = make_scheduler(num_blocks=6)
    for index, name in enumerate("abc"):
        scheduler.add_request(make_request(name, list(range(10 * index, 10 * index + 8))))
    step(scheduler)
    output, _ = step(scheduler)
    assert scheduled(output) == {"a": 1, "b": 1}
    assert output.preempted_req_ids == {"c"}
    assert [r.request_id for r in scheduler.running] == ["a", "b"]


def test_recompute_victim_resumes_with_its_output_tokens():
    scheduler = two_full_requests()
    step(scheduler)                                   # b preempted, a decodes
    scheduler.abort_requests(["a"])
    output, _ = step(scheduler)
    (resumed,) = output.scheduled_new_reqs
    assert resumed.request_id == "b"
    assert resumed.token_ids == list(range(200, 208)) + [7]
    # Its first block is still cached (a took its last one): a prefix hit.
    assert (resumed.num_computed_tokens, resumed.block_ids) == (4, [2, 3, 1])
    assert scheduled(output) == {"b": 5}
    assert output.finished_req_ids == {"a"}


def test_no_admissions_in_a_step_with_a_preemption():
    scheduler = make_scheduler(num_blocks=4, policy="priority")
    scheduler.add_request(make_request("a", 8, priority=0, arrival_time=0.0))
    scheduler.add_request(make_request("b", list(range(200, 208)), priority=1, arrival_time=1.0))
    step(scheduler)
    scheduler.add_request(make_request("small", [1, 2, 3], priority=0, arrival_time=2.0))
    output, _ = step(scheduler)          # b preempted: one block stays free, small still waits
    assert scheduled(output) == {"a": 1}
    assert output.preempted_req_ids == {"b"}
    assert scheduler.kv.pool.num_free_blocks == 1
    output, _ = step(scheduler)
    assert scheduled(output) == {"a": 1, "small": 3}


def test_preempt_by_swap_then_swap_in():
    scheduler = two_full_requests(preemption_mode="swap", num_swap_blocks=8,
                                  enable_prefix_caching=False)
    victim = scheduler.requests["b"]
    scheduler.requests["a"].max_tokens = 2
    output, engine_outputs = step(scheduler)         # a finishes, b swapped out
    assert scheduled(output) == {"a": 1}
    assert output.blocks_to_swap_out == [(2, 0), (3, 1)]
    assert output.blocks_to_swap_in == []
    assert output.preempted_req_ids == {"b"}
    assert (victim.status, victim.num_computed_tokens) == (RequestStatus.SWAPPED, 8)
    assert scheduler.kv.req_to_swap_blocks == {"b": [0, 1]}
    assert (scheduler.kv.num_swapped_out_blocks, scheduler.kv.num_swapped_in_blocks) == (2, 0)
    assert engine_outputs[0].finish_reason == "length"

    output, _ = step(scheduler)
    assert output.blocks_to_swap_in == [(0, 2), (1, 3)]
    assert output.blocks_to_swap_out == []
    (resumed,) = output.scheduled_new_reqs
    assert (resumed.request_id, resumed.block_ids, resumed.num_computed_tokens) == ("b", [2, 3, 1], 8)
    assert resumed.token_ids == list(range(200, 208)) + [7]
    assert scheduled(output) == {"b": 1}
    assert victim.status == RequestStatus.RUNNING
    assert scheduler.kv.req_to_swap_blocks == {}
    assert sorted(scheduler.kv.free_swap_blocks) == list(range(8))
    assert (scheduler.kv.num_swapped_out_blocks, scheduler.kv.num_swapped_in_blocks) == (2, 2)


def test_swap_falls_back_to_recompute_when_swap_space_is_short(caplog):
    scheduler = two_full_requests(preemption_mode="swap", num_swap_blocks=1)
    with caplog.at_level(logging.WARNING, logger="pagellm.core.scheduler"):
        output, _ = step(scheduler)
    assert output.blocks_to_swap_out == []
    victim = scheduler.requests["b"]
    assert (victim.status, victim.num_computed_tokens) == (RequestStatus.PREEMPTED, 0)
    assert scheduler.kv.free_swap_blocks == [0]
    assert scheduler.kv.num_swapped_out_blocks == 0
    assert "PreemptionMode.RECOMPUTE" in caplog.text


def test_swap_log_names_swap_mode(caplog):
    scheduler = two_full_requests(preemption_mode="swap", num_swap_blocks=8)
    with caplog.at_level(logging.WARNING, logger="pagellm.core.scheduler"):
        step(scheduler)
    assert "PreemptionMode.SWAP" in caplog.text
    assert "total_cumulative_preemption_cnt=1" in caplog.text


# ---- priority -------------------------------------------------------------------------------

def test_priority_admits_lower_values_first():
    scheduler = make_scheduler(policy="priority", max_num_seqs=1)
    scheduler.add_request(make_request("late-low", 3, max_tokens=1, priority=2, arrival_time=0.0))
    scheduler.add_request(make_request("high", 3, max_tokens=1, priority=0, arrival_time=1.0))
    scheduler.add_request(make_request("mid-b", 3, max_tokens=1, priority=1, arrival_time=3.0))
    scheduler.add_request(make_request("mid-a", 3, max_tokens=1, priority=1, arrival_time=2.0))
    order = [list(scheduled(step(scheduler)[0])) for _ in range(4)]
    assert order == [["high"], ["mid-a"], ["mid-b"], ["late-low"]]


def test_priority_victim_is_the_highest_value_even_if_first():
    scheduler = make_scheduler(num_blocks=4, policy="priority")
    scheduler.add_request(make_request("x", 5, priority=1, arrival_time=0.0))
    step(scheduler)                                   # x: blocks 0, 1; 6 tokens
    scheduler.add_request(make_request("y", tokens(500, 8), priority=0, arrival_time=1.0))
    output, _ = step(scheduler)
    assert scheduled(output) == {"x": 1, "y": 8}      # y: blocks 2, 3; 9 tokens
    # x (first in running) is scheduled, then y needs a block: x, not y, is the victim.
    output, _ = step(scheduler)
    assert scheduled(output) == {"y": 1}
    assert [(c.request_id, c.new_block_ids) for c in cached_rows(output)] == [("y", [1])]
    assert output.total_num_scheduled_tokens == 1
    assert output.preempted_req_ids == {"x"}
    x = scheduler.requests["x"]
    assert (x.status, x.num_computed_tokens) == (RequestStatus.PREEMPTED, 0)
    assert scheduler.kv.block_ids("y") == [2, 3, 1]
    assert [r.request_id for r in scheduler.running] == ["y"]


def test_a_victim_ahead_of_the_requester_does_not_skip_the_next_request():
    scheduler = make_scheduler(num_blocks=5, policy="priority")
    scheduler.add_request(make_request("x", 5, priority=1, arrival_time=0.0))
    step(scheduler)
    scheduler.add_request(make_request("y", tokens(500, 8), priority=0, arrival_time=1.0))
    scheduler.add_request(make_request("z", tokens(600, 2), priority=0, arrival_time=2.0))
    assert scheduled(step(scheduler)[0]) == {"x": 1, "y": 8, "z": 2}
    output, _ = step(scheduler)                       # y needs a block; x goes
    assert output.preempted_req_ids == {"x"}
    assert scheduled(output) == {"y": 1, "z": 1}
    assert scheduler.kv.block_ids("y") == [2, 3, 1]


# ---- scheduler_delay_factor -------------------------------------------------------------------

def test_delay_factor_holds_new_prompts_while_requests_run(monkeypatch):
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(scheduler_module, "time", SimpleNamespace(time=lambda: clock.now))
    scheduler = make_scheduler(scheduler_delay_factor=0.5)
    scheduler.add_request(make_request("a", 5, max_tokens=100, arrival_time=0.0))
    assert scheduled(step(scheduler)[0]) == {"a": 5}  # nothing running: admitted at once

    clock.now = 10.0                                  # the prompt step took 10 s
    scheduler.add_request(make_request("b", tokens(500, 5), arrival_time=10.0))
    assert scheduled(step(scheduler)[0]) == {"a": 1}  # waited 0 <= 0.5 * 10
    clock.now = 15.0
    assert scheduled(step(scheduler)[0]) == {"a": 1}  # waited 5, not more than 5
    clock.now = 15.5
    output, _ = step(scheduler)
    assert scheduled(output) == {"a": 1, "b": 5}
    assert scheduler.requests["b"].first_scheduled_time == 15.5


def test_delay_factor_latency_counts_only_the_prompt_step(monkeypatch):
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(scheduler_module, "time", SimpleNamespace(time=lambda: clock.now))
    scheduler = make_scheduler(scheduler_delay_factor=1.0)
    scheduler.add_request(make_request("a", 5, max_tokens=100))
    step(scheduler)                                   # prompt step at t=0
    clock.now = 2.0
    step(scheduler)                                   # latency 2; decode step
    clock.now = 100.0
    scheduler.add_request(make_request("b", tokens(500, 5), arrival_time=100.0))
    step(scheduler)                                   # decode step: latency stays 2
    clock.now = 102.5
    assert scheduled(step(scheduler)[0]) == {"a": 1, "b": 5}


# ---- prefix caching through the scheduler --------------------------------------------------

def test_prefix_hits_and_stats():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 10))
    step(scheduler)
    scheduler.add_request(make_request("b", 10))
    output, engine_outputs = step(scheduler)
    (new_b,) = output.scheduled_new_reqs
    assert (new_b.num_computed_tokens, new_b.block_ids) == (8, [0, 1, 3])
    assert scheduled(output) == {"a": 1, "b": 2}
    assert {o.request_id: o.num_cached_tokens for o in engine_outputs} == {"a": 0, "b": 8}
    stats = scheduler.kv.prefix_stats
    assert (stats.queries, stats.hits) == (20, 8)


def test_siblings_in_one_step_share_blocks_without_prefix_caching():
    scheduler = make_scheduler(enable_prefix_caching=False)
    for index in range(2):
        scheduler.add_request(make_request(f"g-{index}", 9, group_id="g"))
    scheduler.add_request(make_request("u", 9))
    output, _ = step(scheduler)
    assert [(r.request_id, r.block_ids, r.num_computed_tokens) for r in output.scheduled_new_reqs] == [
        ("g-0", [0, 1, 2], 0), ("g-1", [0, 1, 3], 8), ("u", [4, 5, 6], 0)]
    assert scheduled(output) == {"g-0": 9, "g-1": 1, "u": 9}


def test_add_request_rejects_a_live_duplicate_id():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 3))
    with pytest.raises(ValueError, match="already in use"):
        scheduler.add_request(make_request("a", 3))


def test_delay_factor_measures_the_prompt_step_even_when_the_next_step_preempts(monkeypatch):
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(scheduler_module, "time", SimpleNamespace(time=lambda: clock.now))
    scheduler = make_scheduler(num_blocks=4, scheduler_delay_factor=1.0)
    scheduler.add_request(make_request("a", 8, arrival_time=0.0))
    scheduler.add_request(make_request("b", tokens(500, 8), arrival_time=0.0))
    step(scheduler)                                   # the prompt step, t=0..1
    clock.now = 1.0
    assert step(scheduler)[0].preempted_req_ids == {"b"}
    scheduler.abort_requests(["b"])
    clock.now = 2.0
    scheduler.add_request(make_request("c", tokens(600, 3), arrival_time=2.0))
    assert scheduled(step(scheduler)[0]) == {"a": 1}
    clock.now = 2.5
    assert scheduled(step(scheduler)[0]) == {"a": 1}  # waited 0.5 <= 1.0 × 1 s
    clock.now = 3.5
    assert scheduled(step(scheduler)[0]) == {"a": 1, "c": 3}


def test_a_victim_unscheduled_mid_step_leaves_no_hash_for_unwritten_kv():
    """x fills its block 1 this step, then is preempted before the step runs (y needs blocks,
    x has the worst priority), and y preempts itself too: x's block 1 never receives the K/V
    of its last token, so it must not stay findable under the hash of x's tokens."""
    scheduler = make_scheduler(num_blocks=14, max_num_batched_tokens=13, policy="priority")
    scheduler.add_request(make_request("x", tokens(100, 3), max_tokens=100, priority=2))
    step(scheduler)
    scheduler.add_request(make_request("y", tokens(500, 60), priority=1, arrival_time=1.0))
    for _ in range(4):
        step(scheduler)
    x, y = scheduler.requests["x"], scheduler.requests["y"]
    assert (x.num_computed_tokens, x.num_tokens, y.num_computed_tokens) == (7, 8, 48)
    assert scheduler.kv.block_ids("x") == [0, 4]
    assert scheduler.kv.pool.num_free_blocks == 0

    output = scheduler.schedule()          # x scheduled (fills block 4), then both preempted
    assert output.preempted_req_ids == {"x", "y"}
    assert scheduled(output) == {}
    x_prefix = make_request("z", x.all_token_ids + [7])
    blocks, num_hit_tokens = scheduler.kv.get_computed_blocks(x_prefix)
    assert ([b.block_id for b in blocks], num_hit_tokens) == ([0], 4)
    assert scheduler.kv.pool.blocks[4].block_hash is None


def test_a_prompt_chunk_with_prompt_logprobs_is_reported_without_tokens():
    """Columnar outputs: a chunk that samples nothing still reports its prompt logprobs, as a
    request with 0 new tokens; a request that samples shares the flattened token list."""
    import numpy as np

    from pagellm.core.sched_output import ModelRunnerOutput, TopLogprobs

    scheduler = make_scheduler(max_num_batched_tokens=8)
    scheduler.add_request(make_request("a", 3, prompt_logprobs=1))
    scheduler.add_request(make_request("b", 10, prompt_logprobs=1))
    output = scheduler.schedule()
    assert output.num_scheduled_tokens == {"a": 3, "b": 5}               # b is chunked
    rows = TopLogprobs(np.zeros((2, 2), np.int64), np.zeros((2, 2), np.float32),
                       np.ones(2, np.int64))
    outputs = scheduler.update_from_output(output, ModelRunnerOutput(
        ["a"], [9], prompt_logprobs={"a": (1, rows), "b": (1, rows)}))
    assert outputs.req_ids == ["a", "b"] and outputs.num_new_tokens == [1, 0]
    assert outputs.new_token_ids == [9] and outputs.finish_reasons == [None, None]
    assert set(outputs.new_prompt_logprobs) == {"a", "b"}


def test_prompt_logprobs_of_a_request_that_finishes_in_the_same_step_are_kept():
    """max_tokens=1 with prompt_logprobs (scoring a sequence): the step's one token finishes
    the request, which leaves the scheduler's requests before its prompt logprobs are passed
    on; they must still reach the outputs (the offline API and the fp8-cache test use this)."""
    import numpy as np

    from pagellm.core.sched_output import ModelRunnerOutput, TopLogprobs

    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 4, max_tokens=1, prompt_logprobs=0))
    output = scheduler.schedule()
    rows = TopLogprobs(np.zeros((3, 1), np.int64), np.zeros((3, 1), np.float32),
                       np.ones(3, np.int64))
    outputs = scheduler.update_from_output(output, ModelRunnerOutput(
        ["a"], [9], prompt_logprobs={"a": (1, rows)}))
    assert outputs.req_ids == ["a"] and outputs.finish_reasons == ["length"]
    assert outputs.new_prompt_logprobs["a"][0] == 1
    assert outputs.new_prompt_logprobs["a"][1].num_rows == 3
