"""Adaptive speculation length (speculative_config "adaptive") and speculation under async
scheduling, at exact scheduler state: k shrinks, turns off, grows back per request from given
acceptance histories; the per-step draft budget goes to the best requests first; under async
scheduling a request with drafts in flight waits and stale drafts are never scheduled."""

from __future__ import annotations

import pytest

from pagellm.config.cache import CacheConfig
from pagellm.config.scheduler import SchedulerConfig
from pagellm.config.spec_adaptive import adaptive_settings
from pagellm.core.sched_output import ModelRunnerOutput
from pagellm.core.scheduler import Scheduler
from pagellm.core.spec_adaptive import SpecAcceptance, best_num_drafts
from pagellm.errors import ClientError
from tests.unit.core.builders import make_request, runner_output, unpack

ADAPTIVE = {"adaptive": True, "adaptive_ewma_decay": 0.5, "draft_token_cost": 0.15,
            "max_num_draft_tokens_per_step": None}


def adaptive_scheduler(k: int = 4, budget_per_step: int | None = None,
                       async_scheduling: bool = False) -> Scheduler:
    settings = dict(ADAPTIVE, max_num_draft_tokens_per_step=budget_per_step)
    return Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8),
                     CacheConfig(block_size=4, enable_prefix_caching=False), 256, 64,
                     max_concurrent_batches=2 if async_scheduling else 1,
                     async_scheduling=async_scheduling, num_speculative_tokens=k,
                     spec_adaptive=settings)


def answer(scheduler, sched, tokens: dict[str, list[int]], drafts: dict[str, list[int]]):
    ids = list(tokens)
    output = runner_output(ids, [tokens[i] for i in ids],
                               spec_token_ids=[drafts.get(i, []) for i in ids])
    return unpack(scheduler.update_from_output(sched, output))


def step(scheduler, tokens, drafts):
    sched = scheduler.schedule()
    answer(scheduler, sched, tokens, drafts)
    return sched


def test_best_num_drafts():
    # gain(k) = (1 + a + ... + a^k) / (1 + 0.15 k): the smallest k with the best gain
    assert [best_num_drafts(a, 4, 0.15) for a in (0.0, 0.1, 0.3, 0.5, 0.7, 1.0)] == [0, 0, 1, 2, 3, 4]
    assert best_num_drafts(0.01, 4, 0.0) == 4 and best_num_drafts(0.0, 4, 0.0) == 0


def test_acceptance_estimate():
    acceptance = SpecAcceptance()
    acceptance.observe_verified(num_drafts=4, num_accepted=2, decay=0.5)  # 2 of 3 trials
    assert (acceptance.successes, acceptance.trials) == (2.5, 3.5)
    acceptance.observe_verified(num_drafts=3, num_accepted=3, decay=0.5)  # no rejection
    assert (acceptance.successes, acceptance.trials) == (4.25, 4.75)
    acceptance.observe_shadow(first_draft=9, token_id=8, decay=0.5)
    assert (acceptance.successes, acceptance.trials) == (2.125, 3.375)


def test_k_shrinks_turns_off_and_grows_back():
    scheduler = adaptive_scheduler()
    request = make_request("a", 6, max_tokens=64)
    scheduler.add_request(request)
    step(scheduler, {"a": [7]}, {"a": [8, 9, 10, 11]})              # prefill
    sched = step(scheduler, {"a": [5]}, {"a": [12, 13, 14, 15]})    # all 4 rejected
    assert sched.scheduled_spec_decode_tokens == {"a": [8, 9, 10, 11]}
    assert request.spec_acceptance.rate == pytest.approx(1 / 3)
    sched = step(scheduler, {"a": [6]}, {"a": [16, 17, 18, 19]})    # k = 1, rejected
    assert sched.scheduled_spec_decode_tokens == {"a": [12]}
    assert request.spec_acceptance.rate == pytest.approx(1 / 7)
    assert request.num_computed_tokens == 8 and request.num_tokens == 9
    # k = 0: a plain decode step; its proposal is shadow-checked: 16 came, as drafted
    sched = step(scheduler, {"a": [16]}, {"a": [20, 21, 22, 23]})
    assert sched.scheduled_spec_decode_tokens == {} and sched.num_scheduled_tokens == {"a": 1}
    assert request.spec_acceptance.rate == pytest.approx(0.6)
    sched = step(scheduler, {"a": [20, 21, 24]}, {"a": [25, 26, 27, 28]})   # k = 2, both taken
    assert sched.scheduled_spec_decode_tokens == {"a": [20, 21]}
    assert request.spec_acceptance.rate == pytest.approx(2.5625 / 2.9375)
    sched = step(scheduler, {"a": [25]}, {})                        # k = 4 again
    assert sched.scheduled_spec_decode_tokens == {"a": [25, 26, 27, 28]}
    stats = scheduler.spec_stats
    assert (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens) == (4, 11, 2)


def test_stale_proposal_not_shadow_checked_and_other_requests_unaffected():
    scheduler = adaptive_scheduler()
    a, b = make_request("a", 6, max_tokens=64), make_request("b", 5, max_tokens=64)
    scheduler.add_request(a)
    scheduler.add_request(b)
    step(scheduler, {"a": [7], "b": [7]}, {"a": [8, 9, 10, 11], "b": [11, 12, 13, 14]})
    sched = step(scheduler, {"a": [5], "b": [11, 12, 13, 14, 9]}, {"a": [1], "b": [1]})
    assert sched.scheduled_spec_decode_tokens == {"a": [8, 9, 10, 11], "b": [11, 12, 13, 14]}
    assert a.spec_acceptance.rate == pytest.approx(1 / 3)
    assert b.spec_acceptance.rate == 1.0
    sched = step(scheduler, {"a": [3], "b": [1, 9]}, {})
    assert sched.scheduled_spec_decode_tokens == {"a": [1], "b": [1]}


def test_draft_budget_per_step_goes_to_the_best_acceptance_first():
    scheduler = adaptive_scheduler(budget_per_step=5)
    requests = [make_request(name, 6, max_tokens=64) for name in "abc"]
    for request in requests:
        scheduler.add_request(request)
    step(scheduler, {"a": [7], "b": [7], "c": [7]},
         {"a": [1, 2, 3, 4], "b": [1, 2, 3, 4], "c": [1, 2, 3, 4]})
    requests[0].spec_acceptance.observe_verified(4, 1, 0.5)         # a: rate 0.6 -> k = 2
    requests[2].spec_acceptance.observe_verified(4, 3, 0.5)         # c: rate 6/7 -> k = 4
    sched = scheduler.schedule()
    # 5 draft tokens, by acceptance: b (1.0) takes its 4, c (6/7) the last one, a (0.6) none
    assert sched.scheduled_spec_decode_tokens == {"b": [1, 2, 3, 4], "c": [1]}
    assert sched.num_scheduled_tokens == {"a": 1, "b": 5, "c": 2}


def test_async_drafts_in_flight_wait_and_stale_drafts_are_dropped():
    scheduler = adaptive_scheduler(async_scheduling=True)
    a, b = make_request("a", 6, max_tokens=64), make_request("b", 5, max_tokens=64)
    scheduler.add_request(a)
    scheduler.add_request(b)
    first = scheduler.schedule()                                    # prefills
    second = scheduler.schedule()      # before the prefill output: plain steps, no drafts
    assert second.num_scheduled_tokens == {"a": 1, "b": 1}
    assert a.num_output_placeholders == 2
    answer(scheduler, first, {"a": [7], "b": [7]}, {"a": [8, 9], "b": [8, 9]})
    # the proposals follow token 7, but the token after it is still in flight: not used
    third = scheduler.schedule()
    assert third.scheduled_spec_decode_tokens == {} and third.num_scheduled_tokens == {"a": 1, "b": 1}
    # each proposal is shadow-checked against the token at its first position
    answer(scheduler, second, {"a": [8], "b": [3]}, {"a": [9, 10, 11], "b": [4, 5]})
    answer(scheduler, third, {"a": [9], "b": [4]}, {"a": [10, 11, 12], "b": [5, 6]})
    assert (a.spec_acceptance.successes, a.spec_acceptance.trials) == (1.75, 1.75)
    assert (b.spec_acceptance.successes, b.spec_acceptance.trials) == (1.25, 1.75)
    fourth = scheduler.schedule()                  # nothing in flight: fresh drafts verified
    assert fourth.scheduled_spec_decode_tokens == {"a": [10, 11, 12], "b": [5, 6]}
    assert a.num_output_placeholders == 0 and a.num_computed_tokens == 12
    fifth = scheduler.schedule()           # both verify drafts in flight: neither runs
    assert fifth.num_scheduled_tokens == {}
    answer(scheduler, fourth, {"a": [10, 11, 30], "b": [5, 6, 40]}, {"a": [1], "b": [1]})
    answer(scheduler, fifth, {}, {})
    assert a.output_token_ids == [7, 8, 9, 10, 11, 30] and a.num_computed_tokens == 11
    assert b.output_token_ids == [7, 3, 4, 5, 6, 40] and b.num_computed_tokens == 10
    assert a.spec_acceptance.rate == 2.875 / 3.875
    stats = scheduler.spec_stats
    assert (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens) == (2, 5, 4)
    sixth = scheduler.schedule()
    assert sixth.scheduled_spec_decode_tokens == {"a": [1], "b": [1]}


@pytest.mark.parametrize("spec, match", [
    ({"adaptive": 1}, "adaptive must be"),
    ({"adaptive_ewma_decay": 1.0}, "adaptive_ewma_decay"),
    ({"draft_token_cost": -0.1}, "draft_token_cost"),
    ({"max_num_draft_tokens_per_step": -1}, "max_num_draft_tokens_per_step"),
])
def test_adaptive_settings_errors(spec, match):
    with pytest.raises(ClientError, match=match):
        adaptive_settings(spec)
