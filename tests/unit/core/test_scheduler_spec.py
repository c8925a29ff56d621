"""Scheduler under speculative decoding: drafts scheduled as lookahead tokens, cut to the
limits, accepted-token counts and the rollback of rejected drafts, checked at exact state."""

from __future__ import annotations

import pytest

from pagellm.config.cache import CacheConfig
from pagellm.config.scheduler import SchedulerConfig
from pagellm.core.sched_output import ModelRunnerOutput
from pagellm.core.scheduler import Scheduler
from tests.unit.core.builders import EOS, make_request, runner_output, unpack


def spec_scheduler(k: int = 3, num_blocks: int = 64, block_size: int = 4, budget: int = 64,
                   max_model_len: int = 256) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=8),
                     CacheConfig(block_size=block_size, enable_prefix_caching=True),
                     max_model_len, num_blocks, num_speculative_tokens=k)


def run(scheduler, tokens: dict[str, list[int]], drafts: dict[str, list[int]]):
    """Schedule one step and answer it with the given new tokens and next drafts."""
    sched = scheduler.schedule()
    ids = list(tokens)
    output = runner_output(ids, [tokens[i] for i in ids],
                               spec_token_ids=[drafts.get(i, []) for i in ids])
    return sched, {o.request_id: o for o in unpack(scheduler.update_from_output(sched, output))}


def test_drafts_scheduled_accepted_and_rejected_rolled_back():
    scheduler = spec_scheduler()
    request = make_request("a", 6)
    scheduler.add_request(request)
    run(scheduler, {"a": [7]}, {"a": [8, 9, 10]})                 # prefill
    assert request.spec_token_ids == [8, 9, 10]

    sched, outs = run(scheduler, {"a": [8, 9, 11]}, {"a": [12]})  # 2 of 3 accepted + 11
    assert sched.num_scheduled_tokens == {"a": 4}
    assert sched.scheduled_spec_decode_tokens == {"a": [8, 9, 10]}
    assert outs["a"].new_token_ids == [8, 9, 11]
    assert request.output_token_ids == [7, 8, 9, 11]
    # positions 0..9 ran; the rejected draft's position 9 is rolled back
    assert request.num_computed_tokens == 9 and request.num_tokens == 10
    assert len(scheduler.kv.block_ids("a")) == 3                  # lookahead slots kept
    stats = scheduler.spec_stats
    assert (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens,
            stats.num_accepted_tokens_per_pos) == (1, 3, 2, [1, 1, 0])

    sched, outs = run(scheduler, {"a": [5]}, {"a": []})            # the draft rejected
    assert sched.num_scheduled_tokens == {"a": 2}
    assert request.num_computed_tokens == 10 and request.num_tokens == 11
    assert (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens,
            stats.num_accepted_tokens_per_pos) == (2, 4, 2, [1, 1, 0])

    sched, _ = run(scheduler, {"a": [6]}, {})                       # no drafts: plain decode
    assert sched.num_scheduled_tokens == {"a": 1} and not sched.scheduled_spec_decode_tokens
    assert request.num_computed_tokens == 11


def test_all_accepted_bonus_then_stop_truncates():
    scheduler = spec_scheduler()
    request = make_request("a", 6)
    scheduler.add_request(request)
    run(scheduler, {"a": [7]}, {"a": [8, EOS, 9]})
    _, outs = run(scheduler, {"a": [8, EOS, 9, 4]}, {"a": [1]})    # EOS ends it mid-list
    assert outs["a"].new_token_ids == [8, EOS]
    assert outs["a"].finish_reason == "stop"
    assert request.output_token_ids == [7, 8, EOS]
    assert scheduler.kv.pool.num_free_blocks == scheduler.kv.pool.num_blocks
    assert scheduler.spec_stats.num_accepted_tokens == 3


@pytest.mark.parametrize("max_tokens, budget, max_model_len, expected", [
    (3, 64, 256, [8]),              # max_tokens: 1 output + this step's 1 + 1 draft
    (16, 3, 256, [8, 9]),           # the budget: 3 tokens = last token + 2 drafts
    (16, 64, 9, [8]),               # max_model_len: 6 prompt + 1 output + 1 + 1 draft
])
def test_drafts_cut_to_limits(max_tokens, budget, max_model_len, expected):
    scheduler = spec_scheduler(budget=budget, max_model_len=max_model_len)
    request = make_request("a", 6, max_tokens=max_tokens)
    scheduler.add_request(request)
    while not request.output_token_ids:
        run(scheduler, {"a": [7]} if budget >= 6 or request.num_computed_tokens >= 3 else {},
            {"a": [8, 9, 10]})
    sched, _ = run(scheduler, {"a": expected + [11]}, {})
    assert sched.scheduled_spec_decode_tokens == {"a": expected}
    assert sched.num_scheduled_tokens == {"a": 1 + len(expected)}


def test_preemption_drops_drafts_and_blocks():
    scheduler = spec_scheduler(num_blocks=5)
    a, b = make_request("a", 6), make_request("b", list(range(300, 308)))
    scheduler.add_request(a)
    scheduler.add_request(b)
    run(scheduler, {"a": [7], "b": [7]}, {"a": [8, 9, 10], "b": [8, 9, 10]})
    # a needs a 3rd block for its lookahead, b one too: 5 blocks hold 2 + 2, so b is preempted
    sched, _ = run(scheduler, {"a": [8, 9, 10, 11]}, {"a": []})
    assert sched.preempted_req_ids == {"b"}
    assert b.spec_token_ids == [] and b.num_computed_tokens == 0
    assert a.num_computed_tokens == 10 and a.num_tokens == 11
    assert scheduler.spec_stats.num_accepted_tokens_per_pos == [1, 1, 1]
