"""long_prefill_token_threshold: decode-first steps whose prompt tokens are capped while
requests decode, checked as exact tokens per request per step and their order."""

from __future__ import annotations

import pytest

from pagellm.config.scheduler import SchedulerConfig
from tests.unit.core.builders import make_request, make_scheduler, step


def per_step(output) -> list[tuple[str, int]]:
    return list(output.num_scheduled_tokens.items())


def tokens(start: int, count: int) -> list[int]:
    return list(range(start, start + count))


def decoding_scheduler(threshold: int, num_decodes: int = 3, **options):
    """A scheduler with ``num_decodes`` short requests past their prompts."""
    scheduler = make_scheduler(num_blocks=256, max_num_batched_tokens=64,
                               long_prefill_token_threshold=threshold, **options)
    for index in range(num_decodes):
        scheduler.add_request(make_request(f"d{index}", tokens(1000 * (index + 1), 4), max_tokens=50))
    assert per_step(step(scheduler)[0]) == [(f"d{i}", 4) for i in range(num_decodes)]
    return scheduler


def test_a_long_prompt_arriving_during_decodes_runs_in_threshold_chunks():
    scheduler = decoding_scheduler(threshold=8)
    scheduler.add_request(make_request("long", tokens(500, 30)))
    chunks = []
    for _ in range(4):
        output, _ = step(scheduler)
        assert per_step(output)[:3] == [("d0", 1), ("d1", 1), ("d2", 1)]   # decodes first
        assert output.total_num_scheduled_tokens <= 3 + 8
        chunks.append(dict(output.num_scheduled_tokens)["long"])
    assert chunks == [8, 8, 8, 6]
    assert scheduler.requests["long"].num_computed_tokens == 30
    assert len(scheduler.requests["long"].output_token_ids) == 1   # the last chunk sampled


def test_without_the_knob_the_prompt_takes_all_the_budget_left():
    scheduler = decoding_scheduler(threshold=0)
    scheduler.add_request(make_request("long", tokens(500, 100)))
    output, _ = step(scheduler)
    assert per_step(output) == [("d0", 1), ("d1", 1), ("d2", 1), ("long", 61)]


def test_with_nothing_decoding_a_prompt_uses_the_whole_budget():
    scheduler = make_scheduler(num_blocks=256, max_num_batched_tokens=64, long_prefill_token_threshold=8)
    scheduler.add_request(make_request("long", tokens(500, 100)))
    assert per_step(step(scheduler)[0]) == [("long", 64)]
    # Still no decode (the prompt is not done): the next chunk is uncapped too.
    assert per_step(step(scheduler)[0]) == [("long", 36)]


def test_the_cap_covers_all_prompts_of_a_step_together():
    scheduler = decoding_scheduler(threshold=10)
    scheduler.add_request(make_request("p1", tokens(500, 6)))
    scheduler.add_request(make_request("p2", tokens(600, 20)))
    output, _ = step(scheduler)
    assert per_step(output) == [("d0", 1), ("d1", 1), ("d2", 1), ("p1", 6), ("p2", 4)]
    output, _ = step(scheduler)   # p1 now decodes, p2 continues with a capped chunk
    assert per_step(output) == [("d0", 1), ("d1", 1), ("d2", 1), ("p1", 1), ("p2", 10)]


def test_a_prompt_waits_while_the_allowance_is_spent():
    scheduler = decoding_scheduler(threshold=10)
    scheduler.add_request(make_request("long", tokens(500, 25)))
    scheduler.add_request(make_request("short", tokens(600, 3)))
    steps = [per_step(step(scheduler)[0])[3:] for _ in range(3)]
    assert steps == [[("long", 10)], [("long", 10)], [("long", 5), ("short", 3)]]


def test_threshold_is_validated():
    with pytest.raises(ValueError, match="long_prefill_token_threshold"):
        SchedulerConfig(long_prefill_token_threshold=-1)
